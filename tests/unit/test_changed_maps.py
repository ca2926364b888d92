"""Changed-block maps from each tool, given to an incremental backup.

A right map means only the changed blocks are read. A wrong one (it misses
changed blocks, or is empty) is caught by the sample, reported, and the
volume read whole, so the backup is still exact. Sampling is what
protects: without it a wrong map makes a wrong backup.
"""
import dataclasses
import json
import logging
import os
import random

import pytest

from chunkbackup import backupformat as fmt
from chunkbackup import chunked
from chunkbackup import exception
from chunkbackup import extents
from chunkbackup.testing.record import BackupRecord

KiB = 1024
OBJECT = 64 * KiB
BS = 1 * KiB


@pytest.fixture
def driver(make_posix):
    return make_posix(object_size=OBJECT, block_size=BS)


def _set(driver, **options):
    driver.engine_options = dataclasses.replace(driver.engine_options,
                                                **options)


def _volume(tmp_path, size, seed=0):
    path = str(tmp_path / 'vol')
    with open(path, 'wb') as f:
        f.write(random.Random(seed).randbytes(size))
    return path


def _backup(driver, path, parent=None, changed_extents=None):
    record = BackupRecord('vol-1', parent=parent)
    stats = chunked.BackupStats()
    with open(path, 'rb') as f:
        driver.backup(record, f, changed_extents=changed_extents,
                      stats=stats)
    record.status = 'available'
    return record, stats


def _change(path, ranges, seed=1):
    """Write new random bytes over each (offset, length)."""
    rng = random.Random(seed)
    with open(path, 'r+b') as f:
        for offset, length in ranges:
            f.seek(offset)
            f.write(rng.randbytes(length))


def _stored_blocks(driver, record):
    body = driver.store.get(record.container,
                            fmt.metadata_name(record.service_metadata))
    blocks = set()
    for e in fmt.parse_metadata(body, record.id, 'metadata').objects:
        blocks.update(range(e.offset // BS, -(-e.end // BS)))
    return blocks


def _blocks(ranges):
    return {b for offset, length in ranges
            for b in range(offset // BS, -(-(offset + length) // BS))}


def _restored(driver, ops, record):
    with open(ops.restore(driver, record), 'rb') as f:
        return f.read()


def _read(path):
    with open(path, 'rb') as f:
        return f.read()


# ----------------------------------------------------------------------
# The map formats, each as its tool prints it.

def _whole_volume(changes, size):
    """(offset, length, dirty) pieces covering the volume in order."""
    pieces, cursor = [], 0
    for offset, length in sorted(changes):
        if offset > cursor:
            pieces.append((cursor, offset - cursor, False))
        pieces.append((offset, length, True))
        cursor = offset + length
    if cursor < size:
        pieces.append((cursor, size - cursor, False))
    return pieces


def qemu_img_map(changes, size):
    # x-dirty-bitmap mode: a dirty range reads as "data": false.
    return json.dumps([
        {'start': o, 'length': n, 'depth': 0, 'present': not dirty,
         'zero': False, 'data': not dirty}
        for o, n, dirty in _whole_volume(changes, size)], indent=2)


def nbdinfo_map(changes, size):
    return json.dumps([
        {'offset': o, 'length': n, 'type': int(dirty),
         'description': 'dirty' if dirty else 'clean'}
        for o, n, dirty in _whole_volume(changes, size)])


def rbd_diff(changes, size):
    return json.dumps([{'offset': o, 'length': n, 'exists': 'true'}
                       for o, n in changes])


def plain_list(changes, size):
    return json.dumps([[o, n] for o, n in reversed(changes)])


def extents_object(changes, size):
    return json.dumps({'extents': [[o, n] for o, n in changes]})


FORMATS = [qemu_img_map, nbdinfo_map, rbd_diff, plain_list, extents_object]

SIZE = 16 * OBJECT + 500
# Unaligned byte ranges: inside a block, across blocks, across an object
# boundary, and in the short last block.
CHANGES = [(3 * BS + 100, 200), (10 * BS - 1, 2), (OBJECT - 300, 700),
           (5 * OBJECT + 7 * BS, 5 * BS), (SIZE - 20, 20)]


@pytest.mark.parametrize('render', FORMATS, ids=lambda f: f.__name__)
def test_a_right_map_reads_only_the_changed_blocks(driver, ops, tmp_path,
                                                   render):
    volume = _volume(tmp_path, SIZE)
    full, _ = _backup(driver, volume)
    _change(volume, CHANGES)
    extent_map = extents.parse_changed_extents(render(CHANGES, SIZE), SIZE,
                                               source=render.__name__)
    inc, stats = _backup(driver, volume, parent=full,
                         changed_extents=list(extent_map))
    assert stats.changed_map == 'used', stats.map_mismatch
    changed = _blocks(CHANGES)
    # Only the changed blocks are read (the short last block is 500 bytes)
    # and the sample of those the map calls unchanged.
    changed_bytes = len(changed) * BS - (BS - 500)
    assert stats.blocks_sampled > 0
    assert stats.bytes_read == changed_bytes + stats.blocks_sampled * BS
    assert stats.known_bytes == SIZE - changed_bytes
    assert _stored_blocks(driver, inc) == changed
    assert _restored(driver, ops, inc) == _read(volume)


def test_a_discarded_rbd_range_is_a_change(driver, ops, tmp_path):
    volume = _volume(tmp_path, SIZE)
    full, _ = _backup(driver, volume)
    with open(volume, 'r+b') as f:  # discarded: reads as zeros now
        f.seek(2 * OBJECT)
        f.write(bytes(3 * BS))
    diff = json.dumps([{'offset': 2 * OBJECT, 'length': 3 * BS,
                        'exists': 'false'}])
    inc, stats = _backup(driver, volume, parent=full,
                         changed_extents=list(extents.parse_changed_extents(
                             diff, SIZE)))
    assert stats.changed_map == 'used'
    assert stats.bytes_read == 3 * BS + stats.blocks_sampled * BS
    assert _stored_blocks(driver, inc) == _blocks([(2 * OBJECT, 3 * BS)])
    assert _restored(driver, ops, inc) == _read(volume)


# ----------------------------------------------------------------------
# Wrong maps.

# 8192 blocks, of which 10% change: a map that misses m of them goes
# unseen by a 3% sample with probability 0.97 ** m, 1e-8 for m = 600.
BIG = 8192 * BS


def _change_tenth(volume, seed):
    rng = random.Random(seed)
    blocks = sorted(rng.sample(range(BIG // BS), BIG // BS // 10))
    changes = [(b * BS, BS) for b in blocks]
    _change(volume, changes, seed)
    return changes


def _assert_rejected(driver, ops, volume, inc, stats, changes, caplog):
    assert stats.changed_map == 'rejected'
    assert 'changed although the map says it did not' in stats.map_mismatch
    assert stats.blocks_sampled > 0
    # Read whole instead, after the sample that found the miss.
    assert stats.bytes_read == BIG + stats.blocks_sampled * BS
    assert stats.known_bytes == 0
    assert any('changed-block map is wrong' in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)
    assert _stored_blocks(driver, inc) == _blocks(changes)
    driver.verify(inc)
    assert _restored(driver, ops, inc) == _read(volume)


def test_a_map_that_misses_changed_blocks_is_rejected(driver, ops,
                                                      tmp_path, caplog):
    volume = _volume(tmp_path, BIG)
    full, _ = _backup(driver, volume)
    changes = _change_tenth(volume, seed=5)
    told = changes[::4]  # misses three quarters: 614 blocks
    caplog.set_level(logging.WARNING)
    inc, stats = _backup(driver, volume, parent=full,
                         changed_extents=list(extents.parse_changed_extents(
                             plain_list(told, BIG), BIG)))
    _assert_rejected(driver, ops, volume, inc, stats, changes, caplog)


@pytest.mark.parametrize('render', [plain_list, qemu_img_map],
                         ids=lambda f: f.__name__)
def test_an_empty_map_when_a_tenth_changed_is_rejected(driver, ops,
                                                       tmp_path, caplog,
                                                       render):
    volume = _volume(tmp_path, BIG)
    full, _ = _backup(driver, volume)
    changes = _change_tenth(volume, seed=6)
    empty = extents.parse_changed_extents(render([], BIG), BIG)
    assert list(empty) == []
    caplog.set_level(logging.WARNING)
    inc, stats = _backup(driver, volume, parent=full,
                         changed_extents=list(empty))
    _assert_rejected(driver, ops, volume, inc, stats, changes, caplog)


def test_without_sampling_a_wrong_map_makes_a_backup_that_verifies_but_restores_stale_data(  # noqa: E501
        driver, ops, tmp_path):
    # What the sample protects against: with changed_extents_sample = 0
    # nothing checks the map, the missed blocks take the parent's digests
    # and data, and the backup is self-consistent but not the volume.
    _set(driver, changed_extents_sample=0.0)
    volume = _volume(tmp_path, SIZE)
    full, _ = _backup(driver, volume)
    before = _read(volume)
    _change(volume, CHANGES)
    told = CHANGES[:2]
    inc, stats = _backup(driver, volume, parent=full,
                         changed_extents=list(extents.parse_changed_extents(
                             plain_list(told, SIZE), SIZE)))
    assert stats.changed_map == 'used' and stats.blocks_sampled == 0
    driver.verify(inc)
    restored = _restored(driver, ops, inc)
    assert restored != _read(volume)
    for offset, length in CHANGES[2:]:  # the missed ranges are stale
        assert restored[offset:offset + length] == \
            before[offset:offset + length]


def test_a_map_without_a_parent_is_refused(driver, tmp_path):
    volume = _volume(tmp_path, 4 * OBJECT)
    with pytest.raises(exception.InvalidBackup,
                       match='a changed-block map needs a parent'):
        _backup(driver, volume, changed_extents=[(0, BS)])


def test_a_map_of_holes_the_parent_had_data_in_is_rejected_unsampled(
        make_posix, ops, tmp_path):
    # Unallocated blocks the map calls unchanged are checked against the
    # parent's digests for free: no sample needed.
    driver = make_posix(object_size=OBJECT, block_size=4 * KiB)
    _set(driver, changed_extents_sample=0.0)
    volume = str(tmp_path / 'vol')
    with open(volume, 'wb') as f:
        f.write(os.urandom(4 * OBJECT))
    full, _ = _backup(driver, volume)
    with open(volume, 'r+b') as f:
        f.truncate(0)
        f.truncate(4 * OBJECT)  # all hole now
    inc, stats = _backup(driver, volume, parent=full, changed_extents=[])
    assert stats.changed_map == 'rejected'
    assert 'unallocated blocks' in stats.map_mismatch
    assert _restored(driver, ops, inc) == _read(volume)


def test_a_right_map_is_used_when_the_source_says_nothing_of_holes(
        driver, ops, tmp_path):
    # Block devices, file objects and skip_holes = false give no allocation:
    # then no block is known to be a hole, and a right map must still pass.
    _set(driver, skip_holes=False)
    volume = _volume(tmp_path, SIZE)
    full, _ = _backup(driver, volume)
    _change(volume, CHANGES)
    inc, stats = _backup(driver, volume, parent=full,
                         changed_extents=CHANGES)
    assert stats.changed_map == 'used', stats.map_mismatch
    assert stats.hole_bytes == 0
    assert _stored_blocks(driver, inc) == _blocks(CHANGES)
    assert _restored(driver, ops, inc) == _read(volume)
