"""Thin volumes through the posix driver: holes are not read, nor stored,
and every restore is byte-exact, thin on a new file and punched on an old.

SHA blocks are 8 KiB and the file system's 4 KiB, so a hole may end in the
middle of a SHA block: data at a hole's edge shares a block with zeros.
"""
import dataclasses
import errno
import json
import os

import pytest

from chunkbackup import backupformat as fmt
from chunkbackup import chunked
from chunkbackup.engine import restore as restore_executor
from chunkbackup.testing.record import BackupRecord

KiB = 1024
OBJECT = 64 * KiB
BS = 8 * KiB
FS_BLOCK = 4 * KiB


@pytest.fixture(autouse=True)
def seek_data(tmp_path):
    """Skip unless the tmp file system reports holes of FS_BLOCK bytes."""
    path = str(tmp_path / 'probe')
    with open(path, 'wb') as f:
        f.truncate(16 * FS_BLOCK)
        f.seek(8 * FS_BLOCK)
        f.write(b'x')
    fd = os.open(path, os.O_RDONLY)
    try:
        found = (os.lseek(fd, 0, os.SEEK_DATA), os.lseek(fd, 8 * FS_BLOCK,
                                                         os.SEEK_HOLE))
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.ENXIO):
            pytest.skip('the tmp file system has no SEEK_DATA')
        raise
    finally:
        os.close(fd)
        os.unlink(path)
    if found != (8 * FS_BLOCK, 9 * FS_BLOCK):
        pytest.skip('the tmp file system reports holes as %r' % (found,))


def _punch_supported(tmp_path) -> bool:
    path = str(tmp_path / 'punch-probe')
    with open(path, 'wb') as f:
        f.write(b'x' * 2 * FS_BLOCK)
        f.flush()
        supported = restore_executor.punch_hole(f.fileno(), 0, FS_BLOCK)
    os.unlink(path)
    return supported


@pytest.fixture
def driver(make_posix):
    return make_posix(object_size=OBJECT, block_size=BS)


def _set(driver, **options):
    driver.engine_options = dataclasses.replace(driver.engine_options,
                                                **options)


def _sparse(path, size, writes):
    with open(path, 'wb') as f:
        f.truncate(size)
        for offset, data in writes:
            f.seek(offset)
            f.write(data)
    return str(path)


def _backup(driver, path, parent=None, changed_extents=None):
    record = BackupRecord('vol-1', parent=parent)
    stats = chunked.BackupStats()
    with open(path, 'rb') as f:
        driver.backup(record, f, changed_extents=changed_extents,
                      stats=stats)
    record.status = 'available'
    return record, stats


def _objects(driver, record):
    body = driver.store.get(record.container,
                            fmt.metadata_name(record.service_metadata))
    metadata = fmt.parse_metadata(body, record.id, 'metadata')
    return [(e.offset, e.length) for e in metadata.objects]


def _sha256file(driver, record):
    return json.loads(driver.store.get(
        record.container, fmt.sha256file_name(record.service_metadata)))


def _read(path):
    with open(path, 'rb') as f:
        return f.read()


def _allocated(path):
    return os.stat(path).st_blocks * 512


def _junk(tmp_path, size, name='junk'):
    path = str(tmp_path / name)
    with open(path, 'wb') as f:
        f.write(os.urandom(size))
    return path


def _data_block_bytes(path):
    """Bytes of the SHA blocks of a file that are not all zeros."""
    data = _read(path)
    return sum(len(data[i:i + BS]) for i in range(0, len(data), BS)
               if data[i:i + BS].count(0) != len(data[i:i + BS]))


def _check_restores(driver, ops, tmp_path, record, volume):
    """Byte-exact on a new file (thin) and on one full of junk (punched)."""
    driver.verify(record)
    size = os.path.getsize(volume)
    # Slack: a partial last 4 KiB block, and a block of the file's extent
    # tree (ext4 counts it in st_blocks).
    data_bytes = _data_block_bytes(volume) + FS_BLOCK
    new = ops.restore(driver, record, new=True)
    assert _read(new) == _read(volume)
    # Only blocks with data are written.
    assert _allocated(new) <= data_bytes + FS_BLOCK
    junk = _junk(tmp_path, size)
    old = ops.restore(driver, record, new=False, base=junk)
    assert _read(old) == _read(volume)
    if _punch_supported(tmp_path):
        # Zero runs were punched out of the junk: it shrank to the data.
        assert _allocated(old) <= data_bytes + FS_BLOCK
        if size > data_bytes + FS_BLOCK:
            assert _allocated(old) < _allocated(junk)


# Data at holes' edges: one byte each side of a 4 KiB boundary inside a
# SHA block, each side of an object boundary, and half a SHA block; then
# two windows of hole and an odd tail in a hole.
EDGES_SIZE = 6 * OBJECT + 3000
EDGES = [(BS - 1, b'ab'),
         (OBJECT - 1, b'cd'),
         (3 * OBJECT + FS_BLOCK, os.urandom(FS_BLOCK)),
         (3 * OBJECT + 5 * BS + 10, b'e')]


def _edges_volume(tmp_path, name='vol'):
    return _sparse(tmp_path / name, EDGES_SIZE, EDGES)


def test_data_at_holes_edges(driver, ops, tmp_path):
    volume = _edges_volume(tmp_path)
    record, stats = _backup(driver, volume)
    assert stats.hole_bytes > 0
    # Read: SHA blocks 0-1 (8191-8193), 7-8 (65535-65537), 24 (one 4 KiB
    # half of it is data) and 29: six 8 KiB blocks.
    assert stats.bytes_read == 6 * BS
    assert stats.hole_bytes + stats.bytes_read == EDGES_SIZE
    objects = _objects(driver, record)
    # No object in the two windows of hole; the last block is stored as
    # zeros so readers see the volume's size.
    assert not [o for o in objects
                if o[0] < 6 * OBJECT and o[0] + o[1] > 4 * OBJECT]
    assert objects[-1] == (EDGES_SIZE // BS * BS, EDGES_SIZE % BS)
    _check_restores(driver, ops, tmp_path, record, volume)


def test_thin_and_full_reads_make_the_same_block_map(driver, ops,
                                                     tmp_path):
    volume = _edges_volume(tmp_path)
    thin, thin_stats = _backup(driver, volume)
    _set(driver, skip_holes=False)
    full, full_stats = _backup(driver, volume)
    assert full_stats.hole_bytes == 0
    assert full_stats.bytes_read == EDGES_SIZE
    thin_map, full_map = _sha256file(driver, thin), _sha256file(driver, full)
    assert thin_map['chunk_size'] == full_map['chunk_size'] == BS
    assert len(thin_map['sha256s']) == -(-EDGES_SIZE // BS)
    assert thin_map['sha256s'] == full_map['sha256s']
    assert _read(ops.restore(driver, full)) == _read(volume)


@pytest.mark.parametrize('size', [3 * OBJECT, 3 * OBJECT + 100, 100])
def test_volume_that_is_all_hole(driver, ops, tmp_path, size):
    volume = _sparse(tmp_path / 'hole', size, [])
    record, stats = _backup(driver, volume)
    assert stats.bytes_read == 0 and stats.hole_bytes == size
    last = (size - 1) // BS * BS
    assert _objects(driver, record) == [(last, size - last)]
    _check_restores(driver, ops, tmp_path, record, volume)
    assert os.path.getsize(ops.restore(driver, record)) == size


def test_incremental_data_to_hole(driver, ops, tmp_path):
    size = 4 * OBJECT + 777
    volume = str(tmp_path / 'vol')
    with open(volume, 'wb') as f:
        f.write(os.urandom(size))
    full, _ = _backup(driver, volume)
    with open(volume, 'r+b') as f:
        # Half of block 7, all of block 8 (past an object boundary), half
        # of block 9.
        if not restore_executor.punch_hole(f.fileno(), OBJECT - FS_BLOCK,
                                           BS + BS):
            pytest.skip('the tmp file system cannot punch holes')
    inc, stats = _backup(driver, volume, parent=full)
    assert stats.hole_bytes == BS
    assert _objects(driver, inc) == [(OBJECT - BS, BS), (OBJECT, 2 * BS)]
    _check_restores(driver, ops, tmp_path, inc, volume)
    with open(ops.restore(driver, inc), 'rb') as f:
        f.seek(OBJECT - FS_BLOCK)
        assert f.read(2 * BS) == bytes(2 * BS)


def test_incremental_hole_to_data(driver, ops, tmp_path):
    volume = _edges_volume(tmp_path)
    full, _ = _backup(driver, volume)
    with open(volume, 'r+b') as f:
        f.seek(4 * OBJECT + BS + FS_BLOCK - 1)  # across a 4 KiB boundary
        f.write(b'new')
        f.seek(EDGES_SIZE - 1)  # the odd tail
        f.write(b'T')
    inc, stats = _backup(driver, volume, parent=full)
    assert _objects(driver, inc) == [
        (4 * OBJECT + BS, BS), (EDGES_SIZE // BS * BS, EDGES_SIZE % BS)]
    # Without a map every allocated block is read: the six of the parent,
    # the one that gained data and the tail.
    assert stats.bytes_read == 7 * BS + EDGES_SIZE % BS
    _check_restores(driver, ops, tmp_path, inc, volume)


def test_unchanged_thin_volume_stores_nothing(driver, ops, tmp_path):
    volume = _edges_volume(tmp_path)
    full, _ = _backup(driver, volume)
    inc, _ = _backup(driver, volume, parent=full)
    assert _objects(driver, inc) == []
    _check_restores(driver, ops, tmp_path, inc, volume)


def _grow(volume, size, writes):
    with open(volume, 'r+b') as f:
        f.truncate(size)
        for offset, data in writes:
            f.seek(offset)
            f.write(data)


GROWN = 5 * OBJECT + 77
PARENT = 2 * OBJECT + 1000  # the parent's last block is short


@pytest.mark.parametrize('map_names_growth', [True, False])
def test_grown_thin_volume_with_a_map(driver, ops, tmp_path,
                                      map_names_growth):
    volume = _sparse(tmp_path / 'vol', PARENT,
                     [(0, os.urandom(BS)), (PARENT - 10, b'tail')])
    full, _ = _backup(driver, volume)
    inside = (OBJECT + 3 * BS + 5, b'changed')
    _grow(volume, GROWN, [inside, (PARENT + 1, b'x'),
                          (4 * OBJECT, os.urandom(BS))])
    changed = [(inside[0], len(inside[1]))]
    if map_names_growth:
        changed.append((PARENT, GROWN - PARENT))
    inc, stats = _backup(driver, volume, parent=full,
                         changed_extents=changed)
    assert stats.changed_map == 'used'
    # The parent's short last block is never taken from it.
    assert (PARENT // BS * BS, BS) in _objects(driver, inc)
    _check_restores(driver, ops, tmp_path, inc, volume)


def test_incremental_data_to_hole_with_a_map(driver, ops, tmp_path):
    size = 4 * OBJECT + 777
    volume = str(tmp_path / 'vol')
    with open(volume, 'wb') as f:
        f.write(os.urandom(size))
    full, _ = _backup(driver, volume)
    punched = (2 * OBJECT, 3 * BS)
    with open(volume, 'r+b') as f:
        if not restore_executor.punch_hole(f.fileno(), *punched):
            pytest.skip('the tmp file system cannot punch holes')
    inc, stats = _backup(driver, volume, parent=full,
                         changed_extents=[punched])
    # The punched blocks are holes, neither read nor taken from the
    # parent; everything else the map vouches for.
    assert stats.changed_map == 'used'
    assert stats.hole_bytes == 3 * BS
    assert stats.known_bytes == size - 3 * BS
    # Only the map check's sample is read; the sample may hold the short
    # last block (777 bytes).
    assert stats.bytes_read in (stats.blocks_sampled * BS,
                                (stats.blocks_sampled - 1) * BS + 777)
    assert _objects(driver, inc) == [(2 * OBJECT, 3 * BS)]
    _check_restores(driver, ops, tmp_path, inc, volume)


def test_short_holes_stored_inside_objects_are_zeros_in_reused_buffers(
        driver, ops, tmp_path):
    # Few buffers, reused window after window: each window's short hole
    # sits where the windows before had data, so a hole merged into a
    # stored object must be zeroed, not left as what the buffer held.
    _set(driver, objects_in_flight=1)
    windows = 6
    writes = []
    holes = []
    for w in range(windows):
        base = w * OBJECT
        hole = base + (1 + 2 * (w % 3)) * BS   # two blocks, moving
        writes.append((base, os.urandom(hole - base)))
        writes.append((hole + 2 * BS, os.urandom(base + OBJECT - hole -
                                                 2 * BS)))
        holes.append(hole)
    path = _sparse(tmp_path / 'vol', windows * OBJECT, writes)
    record, stats = _backup(driver, path)
    assert stats.hole_bytes == windows * 2 * BS
    # Each window is one object, its hole inside it.
    assert _objects(driver, record) == [(w * OBJECT, OBJECT)
                                        for w in range(windows)]
    driver.verify(record)
    assert _read(ops.restore(driver, record)) == _read(path)
