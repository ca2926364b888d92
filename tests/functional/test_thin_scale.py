"""A 1 TiB thin volume through the real CLI, in bounded memory.

A sparse file of 1 TiB holds a few MiB of data at scattered places. A full
backup, an incremental with a changed-block map, a restore to a new file
and a verify each run as a child process whose peak RSS is measured; each
must stay under 256 MiB, at the default settings (32 MiB objects, 32 KiB
blocks: a 2.4 GB _sha256file per backup). No timing is asserted.

The restore is compared without reading a terabyte of zeros: the union of
both files' allocated ranges (SEEK_DATA/SEEK_HOLE) is compared byte for
byte, and everything outside it is a hole in both, so reads as zeros.
"""
import json
import os
import random
import shutil

import pytest

from chunkbackup.testing import volumes
from tests.functional.clitool import Cli

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40
SIZE = TiB + 12345  # and an odd tail
BS = 32768  # the default sha_block_size
RSS_LIMIT = 256 * MiB
# Two _sha256file documents of ~2.4 GB, block maps spilled to disk (1 GiB
# per map), the restored file's data, with room to spare.
NEEDED_FREE = 12 * GiB


def _scattered_pieces(rng, count, length):
    """``count`` pieces of random data at random unaligned offsets."""
    pieces = []
    for _ in range(count):
        offset = rng.randrange(0, SIZE - length)
        pieces.append((offset, volumes.random_bytes(rng, length)))
    return pieces


def _write(path, pieces):
    with open(path, 'r+b') as f:
        for offset, data in pieces:
            f.seek(offset)
            f.write(data)


def _data_ranges(path):
    out, pos = [], 0
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            pos = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            out.append((start, pos))
    finally:
        os.close(fd)
    return out


def _union(a, b):
    merged = []
    for start, end in sorted(a + b):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


def _same_thin_files(expected, got):
    """Equal bytes, read only where either file has data."""
    assert os.path.getsize(got) == os.path.getsize(expected)
    ranges = _union(_data_ranges(expected), _data_ranges(got))
    assert sum(e - s for s, e in ranges) < 256 * MiB, 'not thin any more'
    with open(expected, 'rb') as fe, open(got, 'rb') as fg:
        for start, end in ranges:
            while start < end:
                n = min(end - start, 8 * MiB)
                a = os.pread(fe.fileno(), n, start)
                b = os.pread(fg.fileno(), n, start)
                assert a == b, 'restored bytes differ near offset %d' % start
                start += n
    # Outside those ranges both are holes: spot-check that they read zeros.
    for start, end in zip([0] + [e for _, e in ranges],
                          [s for s, _ in ranges] + [os.path.getsize(got)]):
        if start < end:
            with open(got, 'rb') as f:
                middle = (start + end) // 2
                assert os.pread(f.fileno(), 1, middle) == b'\0'


def _measured(cli, tmp_path, *args):
    return cli.measured(*args, limit=RSS_LIMIT)


@pytest.fixture
def big_tmp(tmp_path):
    """tmp_path, with the gigabytes this test stores removed afterwards.

    pytest keeps the last few base directories; 5 GB each would add up.
    """
    yield tmp_path
    shutil.rmtree(tmp_path / 'store', ignore_errors=True)


def test_terabyte_thin_volume_in_bounded_memory(big_tmp):
    tmp_path = big_tmp
    free = shutil.disk_usage(tmp_path).free
    if free < NEEDED_FREE:
        pytest.fail('%s has %.1f GiB free; this test needs %d GiB (set '
                    'TMPDIR or --basetemp to a larger file system)'
                    % (tmp_path, free / GiB, NEEDED_FREE // GiB),
                    pytrace=False)
    cli = Cli(tmp_path)
    spill = tmp_path / 'spill'
    spill.mkdir()
    # The defaults but for where things go.
    cli.config.write_text('[backup_posix]\npath = %s\n[chunkbackup]\n'
                          'temp_dir = %s\n' % (tmp_path / 'store', spill))
    rng = random.Random(1099511627776)
    vol = str(tmp_path / 'thin.img')
    with open(vol, 'wb') as f:
        f.truncate(SIZE)
    pieces = _scattered_pieces(rng, 48, 64 * KiB)
    pieces.append((SIZE - 999, volumes.random_bytes(rng, 999)))
    _write(vol, pieces)
    written = sum(len(d) for _, d in pieces)
    rss = {}

    full, rss['full'] = _measured(cli, tmp_path, 'backup-create', vol)
    stats = full['stats']
    assert full['size_bytes'] == SIZE
    # Each piece touches two or three blocks at most.
    assert written <= stats['bytes_read'] <= written + 2 * BS * len(pieces)
    assert stats['hole_bytes'] == SIZE - stats['bytes_read']

    # Overwrite parts of some pieces and write new data in holes.
    changes = [(offset + 1000, volumes.random_bytes(rng, 5000))
               for offset, _ in pieces[:16]]
    changes += _scattered_pieces(rng, 8, 20000)
    _write(vol, changes)
    map_path = tmp_path / 'changes.json'
    map_path.write_text(json.dumps([[o, len(d)] for o, d in changes]))
    inc, rss['incremental'] = _measured(
        cli, tmp_path, 'backup-create', vol, '--incremental',
        '--changed-extents', str(map_path))
    stats = inc['stats']
    assert stats['changed_map'] == 'used', stats
    changed = sum(len(d) for _, d in changes)
    sampled = stats['blocks_sampled'] * BS
    assert changed <= stats['bytes_read'] - sampled <= changed + 2 * BS * len(
        changes)
    assert stats['stored_logical_bytes'] <= changed + 2 * BS * len(changes)

    out = str(tmp_path / 'restored.img')
    restored, rss['restore'] = _measured(cli, tmp_path, 'backup-restore',
                                         inc['id'], out)
    assert restored['status'] == 'restored'
    _same_thin_files(vol, out)
    os.unlink(out)

    verified, rss['verify'] = _measured(cli, tmp_path, 'backup-verify',
                                        inc['id'])
    assert verified['status'] == 'verified'
    assert verified['chain_length'] == 2
    print('peak RSS MiB: %s' % {k: round(v / MiB) for k, v in rss.items()})
