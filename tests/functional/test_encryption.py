"""Client-side encryption through the ``chunkbackup`` command, on every
driver against its real server: round trips of encrypted chains, no
plaintext anywhere in the store, tampering named, keys and rotation.
"""
import hashlib
import json
import os
import subprocess
import sys

import pytest

from chunkbackup.testing import volumes
from tests.functional.clitool import Cli
from tests.functional import stores

KiB = 1024
MiB = 2 ** 20
BS = 16384
OBJECT = 262144
# Text that compresses to literals: a plain backup stores it as it is.
MARKER = b'chunkbackup-marker-7f3a9c1e5d2b4a68'
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _configure(cli, tmp_path, request, driver, key=None, encrypt=True):
    lines = ['[chunkbackup]', 'driver = %s' % driver,
             'sha_block_size = %d' % BS]
    if encrypt:
        lines.append('encryption = aes-256-gcm')
    if key:
        lines.append('key_file = %s' % key)
    store = stores.store_lines(driver, request, tmp_path)
    store.append('object_size = %d' % OBJECT)
    cli.config.write_text('\n'.join(lines + store) + '\n')


def _set(cli, **values):
    """Change [chunkbackup] options of the config in place."""
    text = cli.config.read_text().splitlines()
    out = []
    for line in text:
        name = line.split('=')[0].strip()
        if name in values:
            continue
        out.append(line)
        if line == '[chunkbackup]':
            out += ['%s = %s' % kv for kv in values.items()
                    if kv[1] is not None]
    cli.config.write_text('\n'.join(out) + '\n')


def _marked_volume(path, size, seed):
    """A mixed volume with the marker in every 64 KiB, as text is."""
    volumes.write_volume(path, size, 'mixed', seed=seed)
    with open(path, 'r+b') as f:
        for offset in range(4096, size, 64 * KiB):
            f.seek(offset)
            f.write(MARKER)


def _stored(cli, tmp_path, name):
    out = tmp_path / name
    env = dict(cli.env(), PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, '-m', 'tests.functional.storedump',
                           str(cli.config), str(out)], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return {p.name: p.read_bytes() for p in out.iterdir()}


def _block_digests(path, count):
    with open(path, 'rb') as f:
        return [hashlib.sha256(f.read(BS)).hexdigest() for _ in range(count)]


def _restored(cli, tmp_path, backup_id, name):
    target = str(tmp_path / name)
    cli.json('backup-restore', backup_id, target)
    with open(target, 'rb') as f:
        return f.read()


@pytest.mark.parametrize('driver', ['posix', 'swift', 's3', 'gcs'])
def test_encrypted_chains_round_trip_and_store_no_plaintext(
        tmp_path, request, driver):
    cli = Cli(tmp_path)
    key = str(tmp_path / 'master.key')
    made = cli.json('key-create', key)
    assert oct(os.stat(key).st_mode & 0o777) == '0o600'
    _configure(cli, tmp_path, request, driver, key)
    vol = str(tmp_path / 'vol.img')
    _marked_volume(vol, 3 * MiB + 5 * KiB, seed=3)
    with open(vol, 'rb') as f:
        v0 = f.read()
    full = cli.json('backup-create', vol)
    volumes.change_blocks(vol, 0.05, BS, seed=4, max_run=3)
    with open(vol, 'r+b') as f:  # the marker in changed data too
        f.seek(2 * MiB + 100)
        f.write(MARKER)
        f.seek(0)
        v1 = f.read()
    incr = cli.json('backup-create', vol, '--incremental')
    assert incr['parent_id'] == full['id']
    shown = cli.json('backup-show', incr['id'])
    assert shown['stats']['encryption'] == 'aes-256-gcm'
    assert _restored(cli, tmp_path, full['id'], 'r0.img') == v0
    assert _restored(cli, tmp_path, incr['id'], 'r1.img') == v1
    assert cli.json('backup-verify', incr['id'])['status'] == 'verified'
    # Nothing of the plaintext is in the store: not the marker, not the
    # SHA-256 of a block, not an object's MD5.
    stored = _stored(cli, tmp_path, 'dump')
    digests = set(_block_digests(vol, 8))
    metadata = [json.loads(body) for name, body in stored.items()
                if name.endswith('_metadata')]
    assert len(metadata) == 2
    for doc in metadata:
        assert doc['version'] == '1.0.0-aes-256-gcm'
        assert doc['encryption']['key_id'] == made['key_id']
    for name, body in stored.items():
        assert MARKER not in body, name
        for digest in digests:
            assert digest.encode() not in body, name
    # The same volume in plain backups does show: the check can fail.
    plain_tmp = tmp_path / 'plain'
    plain_tmp.mkdir()
    plain = Cli(plain_tmp)
    _configure(plain, plain_tmp, request, driver, encrypt=False)
    plain.json('backup-create', vol)
    plain_stored = _stored(plain, plain_tmp, 'dump')
    assert any(MARKER in body for body in plain_stored.values())
    assert any(d.encode() in body for body in plain_stored.values()
               for d in digests if d != hashlib.sha256(bytes(BS)).hexdigest())


def _posix_chain(tmp_path, request):
    cli = Cli(tmp_path)
    key = str(tmp_path / 'master.key')
    cli.json('key-create', key)
    _configure(cli, tmp_path, request, 'posix', key)
    vol = str(tmp_path / 'vol.img')
    volumes.write_volume(vol, 2 * MiB, 'random', seed=5)
    full = cli.json('backup-create', vol)
    volumes.change_blocks(vol, 0.2, BS, seed=6, max_run=4)
    incr = cli.json('backup-create', vol, '--incremental')
    return cli, key, vol, full, incr


def _objects(tmp_path, backup):
    directory = tmp_path / 'store' / backup['container']
    return sorted(p for p in directory.iterdir()
                  if p.name.startswith(backup['object_prefix']) and
                  not p.name.endswith(('_metadata', '_sha256file')))


def _metadata_file(tmp_path, backup):
    return (tmp_path / 'store' / backup['container'] /
            (backup['object_prefix'] + '_metadata'))


def test_tampering_is_detected_and_named(tmp_path, request):
    cli, key, vol, full, incr = _posix_chain(tmp_path, request)
    full = cli.json('backup-show', full['id'])
    incr = cli.json('backup-show', incr['id'])
    objects = _objects(tmp_path, full)
    assert len(objects) >= 3
    saved = {p: p.read_bytes() for p in objects}
    target = str(tmp_path / 'out.img')

    def fails_naming(backup, *names):
        # Objects are fetched in parallel: with two bad objects, either may
        # be the one the restore stops at.
        line = cli.fails('backup-restore', backup['id'], target, '--force')
        assert 'is corrupt' in line, line
        assert any(name in line for name in names), line
        assert 'does not authenticate' in line, line

    # A flipped byte.
    body = bytearray(saved[objects[1]])
    body[len(body) // 2] ^= 0x01
    objects[1].write_bytes(bytes(body))
    fails_naming(full, objects[1].name)
    objects[1].write_bytes(saved[objects[1]])
    # Two objects swapped.
    objects[0].write_bytes(saved[objects[2]])
    objects[2].write_bytes(saved[objects[0]])
    fails_naming(full, objects[0].name, objects[2].name)
    for path, body in saved.items():
        path.write_bytes(body)
    # An object of the full backup moved into the incremental.
    [theirs, *_] = _objects(tmp_path, incr)
    kept = theirs.read_bytes()
    theirs.write_bytes(saved[objects[0]])
    fails_naming(incr, theirs.name)
    theirs.write_bytes(kept)
    # An edited _metadata (an object's offset): its HMAC fails.
    meta = _metadata_file(tmp_path, full)
    original = meta.read_text()
    doc = json.loads(original)
    name = next(iter(doc['objects'][1]))
    doc['objects'][1][name]['offset'] += BS
    meta.write_text(json.dumps(doc, indent=2, sort_keys=True))
    line = cli.fails('backup-restore', full['id'], target, '--force')
    assert 'does not authenticate' in line and '_metadata' in line, line
    meta.write_text(original)
    # Restored whole, everything back in place.
    with open(vol, 'rb') as f:
        assert _restored(cli, tmp_path, incr['id'], 'ok.img') == f.read()


def test_wrong_missing_and_exposed_keys_are_one_line(tmp_path, request):
    cli, key, vol, full, incr = _posix_chain(tmp_path, request)
    target = str(tmp_path / 'out.img')
    other = str(tmp_path / 'other.key')
    other_id = cli.json('key-create', other)['key_id']
    _set(cli, key_file=other)
    line = cli.fails('backup-restore', incr['id'], target)
    assert 'backup %s is encrypted with key file-' % full['id'] in line
    assert 'holds key %s' % other_id in line and '\n' not in line, line
    _set(cli, key_file=str(tmp_path / 'gone.key'))
    line = cli.fails('backup-restore', incr['id'], target, '--force')
    assert 'gone.key does not exist' in line, line
    _set(cli, key_file=None)
    line = cli.fails('backup-verify', incr['id'])
    assert 'no master key is configured' in line, line
    os.chmod(key, 0o644)
    _set(cli, key_file=key)
    line = cli.fails('backup-restore', incr['id'], target, '--force')
    assert 'accessible by group or others (mode 0644)' in line, line
    assert 'chmod 600 %s' % key in line
    line = cli.fails('key-create', key)
    assert 'exists already' in line, line
    os.chmod(key, 0o600)
    with open(vol, 'rb') as f:
        assert _restored(cli, tmp_path, incr['id'], 'ok.img') == f.read()


def test_rotation_rewraps_keys_without_rewriting_data(tmp_path, request):
    cli, key, vol, full, incr = _posix_chain(tmp_path, request)
    full = cli.json('backup-show', full['id'])
    incr = cli.json('backup-show', incr['id'])
    data = {p: p.read_bytes() for b in (full, incr)
            for p in _objects(tmp_path, b)}
    new = str(tmp_path / 'new.key')
    new_id = cli.json('key-create', new)['key_id']
    rotated = cli.json('key-rotate', '--new-key-file', new)
    assert rotated['key_id'] == new_id
    assert sorted(r['result'] for r in rotated['backups']) == \
        ['rewrapped', 'rewrapped']
    # Data objects untouched; both _metadata name the new key.
    assert {p: p.read_bytes() for p in data} == data
    for backup in (full, incr):
        doc = json.loads(_metadata_file(tmp_path, backup).read_text())
        assert doc['encryption']['key_id'] == new_id
    # The old key file is no longer needed.
    os.unlink(key)
    _set(cli, key_file=new)
    with open(vol, 'rb') as f:
        assert _restored(cli, tmp_path, incr['id'], 'ok.img') == f.read()
    again = cli.json('key-rotate', '--new-key-file', new)
    assert [r['result'] for r in again['backups']] == ['current', 'current']
    # And a new incremental continues the chain under the new key.
    volumes.change_blocks(vol, 0.1, BS, seed=9)
    third = cli.json('backup-create', vol, '--incremental')
    assert third['parent_id'] == incr['id']
    with open(vol, 'rb') as f:
        assert _restored(cli, tmp_path, third['id'], 'ok3.img') == f.read()


def test_mixing_plain_and_encrypted_is_refused_clearly(tmp_path, request):
    cli = Cli(tmp_path)
    key = str(tmp_path / 'master.key')
    cli.json('key-create', key)
    _configure(cli, tmp_path, request, 'posix', key, encrypt=False)
    vol = str(tmp_path / 'vol.img')
    volumes.write_volume(vol, MiB, 'random', seed=11)
    plain = cli.json('backup-create', vol)
    _set(cli, encryption='aes-256-gcm')
    line = cli.fails('backup-create', vol, '--incremental')
    assert 'parent %s is not encrypted' % plain['id'] in line, line
    assert 'make a full backup' in line
    # A full one is encrypted; an incremental of it follows it even with
    # encryption turned off again.
    full = cli.json('backup-create', vol)
    _set(cli, encryption='none')
    volumes.change_blocks(vol, 0.1, BS, seed=12)
    incr = cli.json('backup-create', vol, '--incremental')
    assert incr['parent_id'] == full['id']
    doc = json.loads(_metadata_file(
        tmp_path, cli.json('backup-show', incr['id'])).read_text())
    assert doc['version'] == '1.0.0-aes-256-gcm'
    with open(vol, 'rb') as f:
        assert _restored(cli, tmp_path, incr['id'], 'ok.img') == f.read()


@pytest.mark.parametrize('driver', ['posix', 's3'])
def test_encrypted_chains_fold_and_make_synthetic_fulls(
        tmp_path, request, driver):
    cli = Cli(tmp_path)
    key = str(tmp_path / 'master.key')
    cli.json('key-create', key)
    _configure(cli, tmp_path, request, driver, key)
    vol = str(tmp_path / 'vol.img')
    _marked_volume(vol, 2 * MiB + 3 * KiB, seed=13)
    chain, images = [], []
    for step in range(4):
        if step:
            volumes.change_blocks(vol, 0.15, BS, seed=20 + step, max_run=3)
        with open(vol, 'rb') as f:
            images.append(f.read())
        args = ['--incremental'] if step else []
        chain.append(cli.json('backup-create', vol, *args)['id'])
    # Forget the full, then a middle one: each folds into its child.
    cli.json('backup-delete', chain[0])
    cli.json('backup-delete', chain[2])
    shown = cli.json('backup-show', chain[3])
    assert shown['parent_id'] == chain[1]
    assert cli.json('backup-show', chain[1])['parent_id'] is None
    for backup, image in ((chain[1], images[1]), (chain[3], images[3])):
        assert _restored(cli, tmp_path, backup, 'f-%s' % backup) == image
    assert cli.json('backup-verify', chain[3])['status'] == 'verified'
    # A synthetic full of the newest, restored on its own.
    synthetic = cli.json('backup-create', vol, '--synthetic-full')
    assert synthetic['parent_id'] is None
    assert _restored(cli, tmp_path, synthetic['id'], 's.img') == images[3]
    # Still nothing in the clear, and every _metadata signed.
    stored = _stored(cli, tmp_path, 'dump')
    for name, body in stored.items():
        assert MARKER not in body, name
        if name.endswith('_metadata'):
            assert json.loads(body)['encryption']['mac']
    # A re-homed object moved back under another name is still caught.
    if driver == 'posix':
        full = cli.json('backup-show', chain[1])
        objects = _objects(tmp_path, full)
        first, second = objects[0].read_bytes(), objects[1].read_bytes()
        objects[0].write_bytes(second)
        line = cli.fails('backup-restore', chain[1], str(tmp_path / 'x'))
        assert 'does not authenticate' in line, line
        objects[0].write_bytes(first)
