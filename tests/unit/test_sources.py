"""Sources: which blocks to read, hole or take from the parent."""
import errno
import io
import os
import random

import pytest

from chunkbackup import chunked
from chunkbackup.engine import sources
from chunkbackup.testing.record import BackupRecord

R, H, K = sources.READ, sources.HOLE, sources.KNOWN


def _kinds(segments):
    return [(s.first, s.end, s.kind) for s in segments]


# ----------------------------------------------------------------------
# to_blocks and classify.

def test_to_blocks_widens_merges_and_clips():
    bs = 4096
    ranges = [(0, 1), (4095, 4097), (3 * bs, 4 * bs), (4 * bs, 4 * bs + 1),
              (6 * bs + 10, 6 * bs + 20), (9 * bs, 20 * bs)]
    assert sources.to_blocks(ranges, bs, 10) == [(0, 2), (3, 5), (6, 7),
                                                 (9, 10)]


def test_to_blocks_drops_empty_and_out_of_range():
    assert sources.to_blocks([(4096, 4096), (50000, 60000)], 4096, 10) == []


def test_classify_without_holes_or_map_reads_everything():
    assert _kinds(sources.classify(10, None, None, 0)) == [(0, 10, R)]


def test_classify_empty_volume():
    assert _kinds(sources.classify(0, None, None, 0)) == []
    assert _kinds(sources.classify(0, [], [], 0)) == []


def test_classify_holes():
    assert _kinds(sources.classify(10, [(2, 4), (6, 7)], None, 0)) == [
        (0, 2, H), (2, 4, R), (4, 6, H), (6, 7, R), (7, 10, H)]
    assert _kinds(sources.classify(4, [], None, 0)) == [(0, 4, H)]


def test_classify_map():
    assert _kinds(sources.classify(10, None, [(3, 5)], 10)) == [
        (0, 3, K), (3, 5, R), (5, 10, K)]
    # An empty map: nothing changed.
    assert _kinds(sources.classify(10, None, [], 10)) == [(0, 10, K)]


def test_classify_blocks_past_the_parent_are_read():
    assert _kinds(sources.classify(12, None, [(3, 5)], 8)) == [
        (0, 3, K), (3, 5, R), (5, 8, K), (8, 12, R)]
    assert _kinds(sources.classify(12, None, [], 0)) == [(0, 12, R)]


def test_classify_holes_win_over_the_map():
    assert _kinds(sources.classify(10, [(0, 2), (5, 10)], [(1, 6)], 8)) == [
        (0, 1, K), (1, 2, R), (2, 5, H), (5, 6, R), (6, 8, K), (8, 10, R)]


def _reference(block_count, data, changed, parent_blocks):
    kinds = []
    for b in range(block_count):
        in_data = data is None or any(a <= b < e for a, e in data)
        unchanged = changed is not None and b < parent_blocks and not any(
            a <= b < e for a, e in changed)
        kinds.append(H if not in_data else K if unchanged else R)
    return kinds


def _random_ranges(rng, block_count):
    out, cursor = [], 0
    while cursor < block_count and rng.random() < 0.8:
        start = cursor + rng.randrange(0, 4)
        end = start + rng.randrange(1, 5)
        out.append((start, end))
        cursor = end + 1
    return out


def test_classify_matches_a_block_by_block_reference():
    rng = random.Random(7)
    for _ in range(500):
        count = rng.randrange(0, 30)
        data = None if rng.random() < 0.3 else _random_ranges(rng, count)
        changed = None if rng.random() < 0.3 else _random_ranges(rng, count)
        parent = rng.randrange(0, count + 3)
        segments = list(sources.classify(count, data, changed, parent))
        got = []
        for before, after in zip(segments, segments[1:]):
            assert before.end == after.first and before.kind != after.kind
        for s in segments:
            assert s.first < s.end
            got += [s.kind] * (s.end - s.first)
        assert got == _reference(count, data, changed, parent), (
            count, data, changed, parent)


# ----------------------------------------------------------------------
# File data ranges (SEEK_DATA / SEEK_HOLE on the test's file system).

FS_BLOCK = 4096


def _sparse_file(path, size, writes):
    with open(path, 'wb') as f:
        f.truncate(size)
        for offset, data in writes:
            f.seek(offset)
            f.write(data)
    return path


@pytest.fixture
def seek_data(tmp_path):
    """Skip unless the tmp file system reports holes of FS_BLOCK bytes."""
    path = _sparse_file(str(tmp_path / 'probe'), 64 * FS_BLOCK,
                        [(16 * FS_BLOCK, b'x')])
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            start = os.lseek(fd, 0, os.SEEK_DATA)
            end = os.lseek(fd, start, os.SEEK_HOLE)
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.ENXIO):
                pytest.skip('the tmp file system has no SEEK_DATA')
            raise
    finally:
        os.close(fd)
    if (start, end) != (16 * FS_BLOCK, 17 * FS_BLOCK):
        pytest.skip('the tmp file system reports holes as %r' % ((start,
                                                                  end),))


def _data_ranges(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        return list(sources.file_data_ranges(fd, os.fstat(fd).st_size))
    finally:
        os.close(fd)


def test_file_data_ranges_of_a_sparse_file(seek_data, tmp_path):
    size = 40 * FS_BLOCK + 123  # the tail is in a hole
    path = _sparse_file(str(tmp_path / 'sparse'), size, [
        (3 * FS_BLOCK - 1, b'ab'),           # across a block boundary
        (10 * FS_BLOCK, b'x' * FS_BLOCK),
        (11 * FS_BLOCK, b'y'),               # touching: one range
        (30 * FS_BLOCK + 5, b'z')])
    assert _data_ranges(path) == [
        (2 * FS_BLOCK, 4 * FS_BLOCK), (10 * FS_BLOCK, 12 * FS_BLOCK),
        (30 * FS_BLOCK, 31 * FS_BLOCK)]


def test_file_data_ranges_clipped_at_an_odd_end(seek_data, tmp_path):
    size = 8 * FS_BLOCK + 100
    path = _sparse_file(str(tmp_path / 'tail'), size,
                        [(8 * FS_BLOCK + 10, b'end')])
    assert _data_ranges(path) == [(8 * FS_BLOCK, size)]


def test_file_data_ranges_of_a_hole_and_of_an_empty_file(seek_data,
                                                         tmp_path):
    assert _data_ranges(_sparse_file(str(tmp_path / 'h'), 10 ** 6, [])) == []
    assert _data_ranges(_sparse_file(str(tmp_path / 'e'), 0, [])) == []


def test_file_source_data_ranges_follow_skip_holes(seek_data, tmp_path):
    path = _sparse_file(str(tmp_path / 'f'), 16 * FS_BLOCK,
                        [(4 * FS_BLOCK, b'q')])
    with open(path, 'rb') as f:
        thin = sources.open_source(f, skip_holes=True)
        assert isinstance(thin, sources.FileSource)
        assert list(thin.data_ranges()) == [(4 * FS_BLOCK, 5 * FS_BLOCK)]
        assert sources.open_source(f, skip_holes=False).data_ranges() is None


# ----------------------------------------------------------------------
# Stream sources: file objects without a descriptor.

class _NoDescriptor:
    """A file object with read, seek and tell only (no fileno, readinto)."""

    def __init__(self, data):
        self._f = io.BytesIO(data)
        self.reads = 0

    def read(self, n=-1):
        self.reads += 1
        return self._f.read(min(n, 5000) if n and n > 0 else n)

    def seek(self, offset, whence=os.SEEK_SET):
        return self._f.seek(offset, whence)

    def tell(self):
        return self._f.tell()


def test_stream_source_reads_short_reads_to_the_end():
    data = os.urandom(70000)
    source = sources.open_source(_NoDescriptor(data), skip_holes=True)
    assert isinstance(source, sources.StreamSource)
    assert source.size == len(data)
    assert source.data_ranges() is None
    buffer = bytearray(65536)
    assert source.read_into(0, buffer) == 65536
    assert bytes(buffer) == data[:65536]
    assert source.read_into(65536, buffer) == len(data) - 65536
    assert bytes(buffer[:len(data) - 65536]) == data[65536:]


def _backup_stream(make_posix, ops, data):
    driver = make_posix()
    volume = _NoDescriptor(data)
    record = BackupRecord('vol-1')
    stats = chunked.BackupStats()
    driver.backup(record, volume, stats=stats)
    record.status = 'available'
    assert volume.reads > 1  # short reads were continued
    with open(ops.restore(driver, record), 'rb') as f:
        assert f.read() == data
    return stats


STREAM_VOLUME = os.urandom(64 * 1024 * 2 + 5) + bytes(64 * 1024 * 3) + b'end'


def test_backup_of_a_file_object_without_descriptor(make_posix, ops):
    stats = _backup_stream(make_posix, ops, STREAM_VOLUME)
    # A stream cannot say where its holes are.
    assert stats.hole_bytes == 0
    assert stats.stored_logical_bytes == len(STREAM_VOLUME)


def test_backup_of_a_stream_counts_the_bytes_read(make_posix, ops):
    stats = _backup_stream(make_posix, ops, STREAM_VOLUME)
    assert stats.bytes_read == len(STREAM_VOLUME)
