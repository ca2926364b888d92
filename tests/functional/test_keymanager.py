"""Master keys in a real OpenStack Barbican, through castellan.

CastellanKeys in this process, and the ``chunkbackup`` command end to end:
an encrypted chain under a key-manager key, key-rotate to a new key made
in Barbican and to one given by id, restores byte-exact.
"""
import json
import os

from oslo_config import cfg
import pytest

from chunkbackup.crypto import keymanager
from chunkbackup.crypto import keys
from chunkbackup import opts  # noqa: F401 (registers [chunkbackup])
from chunkbackup.testing import volumes
from tests.functional.clitool import Cli
from tests.functional import servers

CONF = cfg.CONF
MiB = 2 ** 20
BS = 16384
MISSING = '00000000-0000-4000-8000-000000000000'


@pytest.fixture
def barbican_conf(barbican_server):
    """castellan's options, pointed at the test Barbican, for one test."""
    from castellan import options
    options.set_defaults(CONF, backend='barbican')
    CONF.set_override('barbican_endpoint', barbican_server.endpoint,
                      'barbican')
    yield barbican_server
    CONF.clear_override('barbican_endpoint', 'barbican')
    CONF.clear_override('master_key_id', 'chunkbackup')


def test_create_wrap_and_get_from_a_new_instance(barbican_conf):
    made = keymanager.CastellanKeys().create()
    data_key = keys.new_data_key()
    wrapped = made.wrap(data_key, b'chain-1')
    # A new instance (no cache) fetches the same key from Barbican.
    again = keymanager.CastellanKeys().get(made.key_id)
    assert again.key_id == made.key_id
    assert again.unwrap(wrapped, b'chain-1') == data_key
    CONF.set_override('master_key_id', made.key_id, 'chunkbackup')
    assert keymanager.CastellanKeys().current().unwrap(
        wrapped, b'chain-1') == data_key
    # Two keys made are different keys.
    other = keymanager.CastellanKeys().create()
    assert other.key_id != made.key_id
    with pytest.raises(keys.WrongKey):
        other.unwrap(wrapped, b'chain-1')


def test_missing_key_is_one_line(barbican_conf):
    with pytest.raises(keys.KeyUnavailable) as e:
        keymanager.CastellanKeys().get(MISSING)
    text = str(e.value)
    assert '\n' not in text
    assert text.startswith('master key %s is not in the key manager at %s; '
                           % (MISSING, barbican_conf.endpoint))


def test_unreachable_endpoint_is_one_line(barbican_conf):
    # A port nobody listens on.
    endpoint = 'http://127.0.0.1:%d' % servers.free_port()
    CONF.set_override('barbican_endpoint', endpoint, 'barbican')
    with pytest.raises(keys.KeyUnavailable) as e:
        keymanager.CastellanKeys().get(MISSING)
    text = str(e.value)
    assert '\n' not in text
    assert text.startswith('cannot reach the key manager at %s' % endpoint)
    assert 'barbican_endpoint' in text


def _cli(tmp_path, barbican_server, key_id):
    cli = Cli(tmp_path)
    cli.config.write_text(cli.config.read_text() + '\n'.join([
        'encryption = aes-256-gcm',
        'master_key_id = %s' % key_id,
        '[key_manager]', 'backend = barbican',
        '[barbican]', 'barbican_endpoint = %s' % barbican_server.endpoint,
    ]) + '\n')
    return cli


def _set_key(cli, key_id):
    lines = [('master_key_id = %s' % key_id
              if line.startswith('master_key_id') else line)
             for line in cli.config.read_text().splitlines()]
    cli.config.write_text('\n'.join(lines) + '\n')


def _restored(cli, tmp_path, backup_id, name):
    target = str(tmp_path / name)
    cli.json('backup-restore', backup_id, target)
    with open(target, 'rb') as f:
        return f.read()


def _doc_key_ids(tmp_path):
    found = set()
    for root, _, files in os.walk(tmp_path / 'store'):
        for name in files:
            if name.endswith('_metadata'):
                with open(os.path.join(root, name)) as f:
                    found.add(json.load(f)['encryption']['key_id'])
    return found


def test_chunkbackup_with_barbican_keys_and_rotation(
        tmp_path, barbican_server, barbican_conf):
    first = keymanager.CastellanKeys().create()
    cli = _cli(tmp_path, barbican_server, first.key_id)
    vol = str(tmp_path / 'vol.img')
    volumes.write_volume(vol, 2 * MiB, 'mixed', seed=3)
    full = cli.json('backup-create', vol)
    with open(vol, 'rb') as f:
        original = f.read()
    volumes.change_blocks(vol, 0.2, BS, seed=4)
    incr = cli.json('backup-create', vol, '--incremental')
    assert incr['parent_id'] == full['id']
    assert cli.json('backup-show', full['id'])['stats']['encryption'] == \
        'aes-256-gcm'
    assert _doc_key_ids(tmp_path) == {first.key_id}
    with open(vol, 'rb') as f:
        expected = f.read()
    assert _restored(cli, tmp_path, incr['id'], 'r1.img') == expected

    # A key made in Barbican by key-rotate.
    rotated = cli.json('key-rotate', '--create-master-key')
    second = rotated['key_id']
    assert second != first.key_id
    assert sorted(r['result'] for r in rotated['backups']) == \
        ['rewrapped', 'rewrapped']
    assert _doc_key_ids(tmp_path) == {second}
    _set_key(cli, second)
    assert _restored(cli, tmp_path, incr['id'], 'r2.img') == expected

    # A key given by id.
    third = keymanager.CastellanKeys().create().key_id
    rotated = cli.json('key-rotate', '--new-master-key-id', third)
    assert rotated['key_id'] == third
    assert _doc_key_ids(tmp_path) == {third}
    _set_key(cli, third)
    assert _restored(cli, tmp_path, full['id'], 'r3.img') == original
    assert _restored(cli, tmp_path, incr['id'], 'r4.img') == expected

    # A master_key_id that Barbican does not have: one line.
    _set_key(cli, MISSING)
    line = cli.fails('backup-create', vol)
    assert line.startswith('master key %s is not in the key manager at %s'
                           % (MISSING, barbican_server.endpoint)) or \
        ('master key %s is not in the key manager at %s'
         % (MISSING, barbican_server.endpoint)) in line
