"""The chunkbackup command end to end: real processes, real files, and the
catalog on SQLite, PostgreSQL and MariaDB."""
import contextlib
import json
import os

import pytest

from chunkbackup.testing import volumes
from tests.functional.clitool import Cli
from tests.functional import databases

MiB = 2 ** 20


def _same(a, b):
    with open(a, 'rb') as fa, open(b, 'rb') as fb:
        return fa.read() == fb.read()


def _copy(src, dst):
    with open(src, 'rb') as s, open(dst, 'wb') as d:
        d.write(s.read())
    return dst


@contextlib.contextmanager
def catalog_cli(kind, tmp_path):
    """A Cli on a fresh catalog: a databases.CATALOG_KINDS key."""
    if kind == 'sqlite':
        yield Cli(tmp_path)
        return
    with databases.scratch_database(kind) as url:
        yield Cli(tmp_path, url)


@pytest.fixture(params=databases.CATALOG_KINDS)
def cli(request, tmp_path):
    """The CLI against a fresh catalog on each database engine."""
    with catalog_cli(request.param, tmp_path) as made:
        yield made


def test_backup_lifecycle(cli, tmp_path):
    vol = str(tmp_path / 'disk.img')
    volumes.write_volume(vol, 3 * MiB + 4321, 'mixed', seed=1,
                         region_size=64 * 1024)
    snaps = [_copy(vol, str(tmp_path / 'snap0'))]
    full = cli.json('backup-create', vol, '--name', 'first',
                    '--description', 'the full one')
    assert full['status'] == 'available' and not full['incremental']
    assert full['name'] == 'first' and full['size_bytes'] == 3 * MiB + 4321
    chain = [full]
    for i in (1, 2, 3):
        volumes.change_blocks(vol, 0.05, 16384, seed=i, max_run=4)
        inc = cli.json('backup-create', vol, '--incremental')
        assert inc['incremental'] and inc['parent_id'] == chain[-1]['id']
        chain.append(inc)
        snaps.append(_copy(vol, str(tmp_path / ('snap%d' % i))))

    listed = cli.json('backup-list')
    assert [b['id'] for b in listed] == [b['id'] for b in chain]
    assert cli.json('backup-list', '--volume-id', 'other') == []
    table = cli.run('backup-list').stdout.splitlines()
    assert table[0].split()[:3] == ['ID', 'Volume', 'Status']
    assert len(table) == 5
    shown = cli.json('backup-show', chain[2]['id'])
    assert shown['parent_id'] == chain[1]['id']

    for record, snap in zip(chain, snaps):
        out = str(tmp_path / ('out-%s' % record['id']))
        cli.json('backup-restore', record['id'], out)
        assert _same(out, snap)
        verified = cli.json('backup-verify', record['id'])
        assert verified['status'] == 'verified'

    # Restoring over a file with data needs --force.
    out = str(tmp_path / 'out-force')
    _copy(snaps[0], out)
    line = cli.fails('backup-restore', chain[3]['id'], out)
    assert '--force' in line
    cli.json('backup-restore', chain[3]['id'], out, '--force')
    assert _same(out, snaps[3])

    # With --no-fold a parent cannot be deleted (Cinder's rule; without it
    # it is folded, see test_fold.py); the newest incremental can.
    line = cli.fails('backup-delete', chain[2]['id'], '--no-fold')
    assert chain[3]['id'] in line and 'parent' in line
    cli.json('backup-delete', chain[3]['id'])
    assert len(cli.json('backup-list')) == 3
    # The next incremental's parent is the newest available one.
    nxt = cli.json('backup-create', vol, '--incremental')
    assert nxt['parent_id'] == chain[2]['id']
    out = str(tmp_path / 'out-next')
    cli.json('backup-restore', nxt['id'], out)
    assert _same(out, vol)


def test_export_import_into_fresh_catalog(tmp_path):
    cli = Cli(tmp_path)
    vol = str(tmp_path / 'disk.img')
    volumes.write_volume(vol, 2 * MiB, 'mixed', seed=2, region_size=65536)
    full = cli.json('backup-create', vol)
    volumes.change_blocks(vol, 0.1, 16384, seed=3)
    inc = cli.json('backup-create', vol, '--incremental')
    exports = [cli.json('backup-export', b['id']) for b in (full, inc)]
    assert exports[0]['backup_service'] == \
        'chunkbackup.drivers.posix.PosixBackupDriver'

    fresh = Cli(tmp_path)  # same store, new catalog
    fresh.home = tmp_path / 'home2'
    fresh.home.mkdir()
    assert fresh.json('backup-list') == []
    line = fresh.fails('backup-import', exports[1]['backup_service'],
                       exports[1]['backup_url'])
    assert 'import the parent first' in line
    for export in exports:
        fresh.json('backup-import', export['backup_service'],
                   export['backup_url'])
    out = str(tmp_path / 'restored')
    fresh.json('backup-restore', inc['id'], out)
    assert _same(out, vol)
    line = fresh.fails('backup-import', exports[0]['backup_service'],
                       exports[0]['backup_url'])
    assert 'already in the catalog' in line
    assert 'base64' in fresh.fails('backup-import', 'posix', 'not-base64!')


def test_import_of_a_cinder_export(tmp_path):
    """A backup_url as cinder backup-export prints it (Cinder's fields)."""
    import base64
    cli = Cli(tmp_path)
    vol = str(tmp_path / 'disk.img')
    volumes.write_volume(vol, MiB, 'text', seed=4, region_size=65536)
    ours = cli.json('backup-create', vol)
    record = {
        'id': ours['id'], 'user_id': 'u', 'project_id': 'p',
        'volume_id': ours['volume_id'], 'host': 'backup-host',
        'availability_zone': 'nova', 'container': ours['container'],
        'parent_id': None, 'status': 'available', 'fail_reason': None,
        'size': 1, 'display_name': 'from cinder',
        'display_description': None,
        'service_metadata': ours['object_prefix'],
        'service': 'cinder.backup.drivers.posix.PosixBackupDriver',
        'object_count': 3, 'temp_volume_id': None, 'temp_snapshot_id': None,
        'num_dependent_backups': 0, 'snapshot_id': None,
        'data_timestamp': '2026-11-21T00:37:25Z', 'restore_volume_id': None,
        'metadata': {}, 'encryption_key_id': None,
        'created_at': '2026-11-21T00:37:25Z', 'updated_at': None,
        'deleted_at': None, 'deleted': False, 'driver_info': {}}
    url = base64.b64encode(json.dumps(record).encode()).decode()
    fresh = Cli(tmp_path)
    fresh.home = tmp_path / 'home2'
    fresh.home.mkdir()
    imported = fresh.json('backup-import',
                          'cinder.backup.drivers.posix.PosixBackupDriver',
                          url)
    assert imported['name'] == 'from cinder' and imported['driver'] == 'posix'
    out = str(tmp_path / 'restored')
    fresh.json('backup-restore', ours['id'], out)
    assert _same(out, vol)


def test_catalog_rebuild_after_losing_the_catalog(tmp_path):
    cli = Cli(tmp_path)
    vol = str(tmp_path / 'disk.img')
    volumes.write_volume(vol, 2 * MiB, 'mixed', seed=5, region_size=65536)
    full = cli.json('backup-create', vol, '--name', 'keep-me')
    volumes.change_blocks(vol, 0.1, 16384, seed=6)
    inc = cli.json('backup-create', vol, '--incremental')
    catalog = tmp_path / 'home' / 'data' / 'chunkbackup' / 'catalog.sqlite'
    assert oct(catalog.stat().st_mode & 0o777) == '0o600'
    catalog.unlink()
    assert cli.json('backup-list') == []
    added = cli.json('catalog-rebuild')
    assert sorted(a['id'] for a in added) == sorted([full['id'], inc['id']])
    rebuilt = {b['id']: b for b in cli.json('backup-list')}
    assert rebuilt[inc['id']]['parent_id'] == full['id']
    assert rebuilt[full['id']]['name'] == 'keep-me'
    out = str(tmp_path / 'restored')
    cli.json('backup-restore', inc['id'], out)
    assert _same(out, vol)
    assert cli.json('catalog-rebuild') == []  # nothing new the second time
    nxt = cli.json('backup-create', vol, '--incremental')
    assert nxt['parent_id'] == inc['id']


@pytest.mark.parametrize('args,expected', [
    (['backup-create', '/no/such/volume'], 'does not exist'),
    (['backup-create', '{tmp}'], 'is a directory'),
    (['backup-restore', 'no-such-id', '{tmp}/x'], 'No backup no-such-id'),
    (['backup-show', 'no-such-id'], 'No backup no-such-id'),
    (['backup-delete', 'no-such-id'], 'No backup no-such-id'),
    (['backup-verify', 'no-such-id'], 'No backup no-such-id'),
    (['backup-frobnicate'], 'invalid choice'),
    (['backup-create'], 'required: volume'),
    (['backup-list', '--format', 'xml'], 'invalid choice'),
])
def test_bad_arguments_give_one_clear_line(tmp_path, args, expected):
    cli = Cli(tmp_path)
    line = cli.fails(*[a.format(tmp=tmp_path) for a in args])
    assert expected in line, line


def test_incremental_without_parent(tmp_path):
    cli = Cli(tmp_path)
    vol = str(tmp_path / 'disk.img')
    volumes.write_volume(vol, MiB, 'random', seed=7)
    line = cli.fails('backup-create', vol, '--incremental=strict')
    assert 'make a full backup first' in line
    assert cli.json('backup-list') == []
    # Without strict: a full backup, and one line saying so.
    made = cli.run('backup-create', vol, '--incremental', '--format',
                   'json')
    record = json.loads(made.stdout)
    assert record['status'] == 'available' and not record['incremental']
    (said,) = made.stderr.strip().splitlines()
    assert 'making a full backup' in said and vol in said, made.stderr
    assert record['stats']['incremental_fallback']
    # With a parent, --incremental=strict makes an incremental.
    inc = cli.json('backup-create', vol, '--incremental=strict')
    assert inc['parent_id'] == record['id']


def test_bad_option_value_names_the_option(tmp_path):
    cli = Cli(tmp_path)
    cli.config.write_text('[backup_posix]\nobject_size = 1000\n'
                          '[chunkbackup]\nsha_block_size = 4096\n')
    vol = str(tmp_path / 'disk.img')
    volumes.write_volume(vol, MiB, 'random', seed=7)
    line = cli.fails('backup-create', vol)
    assert '[backup_posix] object_size' in line
    cli.config.write_text('[chunkbackup]\ncompression_algorithm = lzma\n')
    line = cli.fails('backup-create', vol)
    assert 'compression_algorithm' in line
    cli.config.write_text('[chunkbackup]\ndriver = nosuchstore\n')
    line = cli.fails('backup-create', vol)
    assert 'nosuchstore' in line and 'driver' in line


def test_defaults_without_a_config_file(tmp_path):
    """No config: posix under ~/.local/share/chunkbackup, SQLite catalog."""
    cli = Cli(tmp_path)
    vol = str(tmp_path / 'disk.img')
    volumes.write_volume(vol, MiB, 'text', seed=8, region_size=65536)
    record = cli.run('backup-create', vol, '--format', 'json',
                     config=False)
    data = json.loads(record.stdout)
    store = tmp_path / 'home' / 'data' / 'chunkbackup' / 'backups'
    assert (store / data['container']).is_dir()
    user_conf = tmp_path / 'home' / '.config' / 'chunkbackup'
    user_conf.mkdir(parents=True)
    (user_conf / 'chunkbackup.conf').write_text(
        '[backup_posix]\npath = %s\n' % (tmp_path / 'elsewhere'))
    data = json.loads(cli.run('backup-create', vol, '--format', 'json',
                              config=False).stdout)
    assert (tmp_path / 'elsewhere' / data['container']).is_dir()


@pytest.mark.parametrize('config,option', [
    ('[chunkbackup]\nobjects_in_flight = many\n', 'objects_in_flight'),
    ('[chunkbackup]\nobjects_in_flight = 0\n', 'objects_in_flight'),
    ('[chunkbackup]\nrestore_check_md5 = perhaps\n', 'restore_check_md5'),
    ('[backup_posix]\nobject_size = -5\n', 'object_size'),
    ('[chunkbackup]\nstorage_retry_backoff = soon\n',
     'storage_retry_backoff'),
])
def test_wrong_option_types_fail_at_start_naming_the_option(tmp_path, config,
                                                            option):
    cli = Cli(tmp_path)
    cli.config.write_text(config)
    line = cli.fails('backup-list')
    assert option in line and '[' in line, line


def _run_on_terminal(cli, *args):
    """Run with stderr on a pseudo-terminal; return what it showed."""
    import pty
    import subprocess
    master, slave = pty.openpty()
    proc = subprocess.Popen(cli.command(*args), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=slave,
                            env=cli.env())
    os.close(slave)
    shown = b''
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the terminal's other end closed
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    proc.stdout.read()
    assert proc.wait() == 0, shown
    return shown.decode('utf-8', 'replace')


def test_progress_bar_on_a_terminal_only(tmp_path):
    cli = Cli(tmp_path)
    vol = str(tmp_path / 'disk.img')
    volumes.write_volume(vol, 8 * MiB, 'mixed', seed=9, region_size=65536)
    quiet = cli.run('backup-create', vol)
    assert quiet.stderr == ''  # not a terminal: no bar, no log lines
    shown = _run_on_terminal(cli, 'backup-create', vol)
    # tqdm's bar: the operation, 100%, bytes done, rate and ETA.
    assert 'backup' in shown and '100%' in shown, shown
    assert '8.00M/8.00M' in shown and 'B/s]' in shown and '<' in shown
    backup_id = cli.json('backup-list')[-1]['id']
    shown = _run_on_terminal(cli, 'backup-restore', backup_id,
                             str(tmp_path / 'out'))
    assert 'restore' in shown and '100%' in shown, shown
