"""The chunkbackup command when things go wrong (issue 15): what it
refuses, what it says in one line, and what it leaves behind."""
import os

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
    assert '0 bytes' in result.stderr and 'WARNING' in result.stderr
