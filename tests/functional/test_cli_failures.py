"""The chunkbackup command when things go wrong (issue 15): what it
refuses, what it says in one line, and what it leaves behind."""
import os
import signal
import subprocess
import time

import pytest

from chunkbackup.testing import volumes
from tests.functional.clitool import Cli

MiB = 2 ** 20


def _volume(tmp_path, size=MiB, kind='mixed', seed=1):
    vol = str(tmp_path / 'disk.img')
    volumes.write_volume(vol, size, kind, seed=seed, region_size=65536)
    return vol


@pytest.mark.parametrize('config,expected', [
    ('compression_algorithm = zstd\ncompression_level = 99\n',
     '[chunkbackup] compression_level = 99 is out of range for zstd'),
    ('compression_algorithm = zlib\ncompression_level = 42\n',
     '[chunkbackup] compression_level = 42 is out of range for zlib'),
    ('compression_algorithm = bz2\ncompression_level = 0\n',
     '[chunkbackup] compression_level = 0 is out of range for bz2'),
    ('[backup_posix]\nobject_size = 4294967296\n',
     '[backup_posix] object_size = 4294967296 is larger than'),
    ('[backup_posix]\nobject_size = 34359738368\n',
     '[backup_posix] object_size = 34359738368 is larger than'),
    ('[backup_posix]\nobject_size = -5\n',
     '[backup_posix] object_size in '),
])
def test_option_values_checked_at_start(tmp_path, config, expected):
    cli = Cli(tmp_path)
    vol = _volume(tmp_path, kind='random')
    cli.config.write_text(
        cli.config.read_text() + ('' if config.startswith('[') else
                                  '[chunkbackup]\n') + config)
    for args in (('backup-list',), ('backup-create', vol)):
        line = cli.fails(*args)
        assert expected in line, line
        assert 'LocationInfo' not in line and 'unexpected' not in line
    # Nothing was started: no record, not even a failed one.
    cli.config.write_text(Cli(tmp_path).config.read_text())
    assert cli.json('backup-list') == []


def test_only_volumes_are_backed_up(tmp_path):
    cli = Cli(tmp_path)
    fifo = str(tmp_path / 'fifo')
    os.mkfifo(fifo)  # no writer: opening it would block for ever
    for source, kind in (('/dev/null', 'a character device'),
                         ('/dev/zero', 'a character device'),
                         (fifo, 'a FIFO')):
        line = cli.fails('backup-create', source)
        assert '%s is %s, not a volume' % (source, kind) in line, line
        assert 'regular file, a block device or an NBD export' in line
    assert cli.json('backup-list') == []
    # A 0-byte volume is backed up, with a warning.
    empty = tmp_path / 'empty.img'
    empty.write_bytes(b'')
    result = cli.run('backup-create', str(empty))
    (line,) = result.stderr.strip().splitlines()  # one line, not a log
    assert '0 bytes' in line and line.startswith('chunkbackup: warning:')


def _flip_byte(path, offset=100):
    with open(path, 'r+b') as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xff]))


def test_verify_reports_every_bad_object_and_marks_the_backup(tmp_path):
    cli = Cli(tmp_path)
    vol = _volume(tmp_path, 4 * 262144, 'random')
    backup = cli.json('backup-create', vol)
    directory = tmp_path / 'store' / backup['container']
    objects = sorted(p for p in directory.iterdir()
                     if not p.name.endswith(('_metadata', '_sha256file')))
    assert len(objects) == 4
    saved = {p: p.read_bytes() for p in objects}
    _flip_byte(objects[0])
    _flip_byte(objects[2])
    line = cli.fails('backup-verify', backup['id'])
    assert 'failed verification: 2 bad object(s)' in line, line
    assert objects[0].name in line and objects[2].name in line
    listed = cli.json('backup-list')[0]
    assert listed['verify_status'] == 'failed'
    assert 'Verify' in cli.run('backup-list').stdout.splitlines()[0]
    shown = cli.json('backup-show', backup['id'])
    assert shown['verify_status'] == 'failed'
    assert objects[2].name in shown['verify_reason']
    for path, body in saved.items():
        path.write_bytes(body)
    assert cli.json('backup-verify', backup['id'])['status'] == 'verified'
    shown = cli.json('backup-show', backup['id'])
    assert shown['verify_status'] == 'passed'
    assert shown['verify_reason'] is None and shown['verified_at']


def _files_below(path):
    return [os.path.join(d, f) for d, _, files in os.walk(path)
            for f in files]


def _default_signals():
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.mark.parametrize('signum,word,rc', [
    (signal.SIGINT, 'interrupted', 130),
    (signal.SIGTERM, 'terminated', 143)])
def test_a_signal_cleans_up_the_backup(tmp_path, signum, word, rc):
    cli = Cli(tmp_path)
    # Slow enough to be caught in the middle: 64 KiB/s of object bodies.
    cli.config.write_text(cli.config.read_text()
                          + 'storage_rate_limit = 65536\n')
    vol = _volume(tmp_path, 4 * MiB, 'random')
    store = str(tmp_path / 'store')
    # Default handlers even when this run's own SIGINT is ignored (a
    # background job): Python then turns SIGINT into KeyboardInterrupt.
    proc = subprocess.Popen(cli.command('backup-create', vol), env=cli.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_default_signals)
    deadline = time.monotonic() + 120
    while not _files_below(store):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == rc, (out, err)
    assert err.strip().splitlines() == ['chunkbackup: %s' % word], err
    [record] = cli.json('backup-list')
    assert record['status'] == 'error'
    # Its objects and its (now empty) directories are gone.
    assert _files_below(store) == []
    assert os.listdir(store) == []


def test_failed_restores_say_the_target_is_incomplete(tmp_path):
    cli = Cli(tmp_path)
    vol = _volume(tmp_path, 4 * 262144, 'random')
    backup = cli.json('backup-create', vol)
    # The target is full (a real ENOSPC, from /dev/full).
    line = cli.fails('backup-restore', backup['id'], '/dev/full', '--force')
    assert 'to /dev/full stopped: No space left on device' in line, line
    assert 'the target is incomplete: rerun with --force' in line
    # A corrupt object stops a restore half way: said so, with the path.
    directory = tmp_path / 'store' / backup['container']
    objects = sorted(p for p in directory.iterdir()
                     if not p.name.endswith(('_metadata', '_sha256file')))
    _flip_byte(objects[-1])
    target = str(tmp_path / 'restored.img')
    line = cli.fails('backup-restore', backup['id'], target)
    assert 'to %s stopped: Backup %s is corrupt' % (target, backup['id']) \
        in line, line
    assert 'the target is incomplete: rerun with --force' in line
    assert cli.json('backup-show', backup['id'])['status'] == 'available'


def _catalog(tmp_path):
    return tmp_path / 'home' / 'data' / 'chunkbackup' / 'catalog.sqlite'


def test_a_damaged_catalog_is_explained_and_replaced(tmp_path):
    cli = Cli(tmp_path)
    vol = _volume(tmp_path)
    backup = cli.json('backup-create', vol)
    catalog = _catalog(tmp_path)
    catalog.write_bytes(b'SQLite format 3\0' + os.urandom(8192))
    for args in (('backup-list',), ('catalog-rebuild',)):
        line = cli.fails(*args)
        assert line.startswith('chunkbackup: error: the catalog %s is '
                               'damaged' % catalog), line
        assert 'move the file aside' in line
        assert 'catalog-rebuild --replace' in line
    added = cli.json('catalog-rebuild', '--replace')
    assert [a['id'] for a in added] == [backup['id']]
    assert [b['id'] for b in cli.json('backup-list')] == [backup['id']]
    assert [p.name for p in catalog.parent.iterdir()
            if '.damaged-' in p.name]


def test_a_read_only_catalog_is_one_line(tmp_path):
    cli = Cli(tmp_path)
    vol = _volume(tmp_path)
    cli.json('backup-list')  # creates the catalog
    catalog = _catalog(tmp_path)
    cli.config.write_text(
        cli.config.read_text() + '[database]\nconnection = '
        'sqlite:///file:%s?mode=ro&uri=true\n' % catalog)
    line = cli.fails('backup-create', vol)
    assert 'the catalog file:%s' % catalog in line, line
    assert 'cannot be written' in line and 'writable' in line
    assert 'unexpected' not in line and 'INSERT' not in line
    assert _files_below(str(tmp_path / 'store')) == []
