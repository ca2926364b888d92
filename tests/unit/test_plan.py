"""The restore plan, from hand-made metadata and block maps (no store)."""
import hashlib
import types

import pytest

from chunkbackup import backupformat as fmt
from chunkbackup.engine import blockmap
from chunkbackup.engine import documents
from chunkbackup.engine import plan as restore_plan
from chunkbackup import exception

BS = 4096


def _layer(backup_id, objects, parent_id=None):
    """A layer whose objects are (offset, length) pairs, named in order."""
    entries = [fmt.ObjectEntry('%s-%05d' % (backup_id, n + 1), offset,
                               length, 'none', '0' * 32)
               for n, (offset, length) in enumerate(objects)]
    return documents.Layer(
        types.SimpleNamespace(id=backup_id),
        documents.Location('container', backup_id),
        fmt.Metadata(backup_id, 'vol', parent_id, entries))


def _block_map(kinds, size=None):
    """A map of blocks 'D' (data) and 'Z' (zeros); ``size`` sets the tail."""
    digests = []
    for i, kind in enumerate(kinds):
        length = BS
        if size is not None and i == len(kinds) - 1 and size % BS:
            length = size % BS
        digests.append(fmt.zero_digest(length) if kind == 'Z'
                       else hashlib.sha256(b'%d' % i).digest())
    block_map = blockmap.BlockMap(BS)
    block_map.append(b''.join(digests))
    return block_map


def _plan(chain, kinds, size=None):
    size_ = restore_plan.check_chain(chain, BS)
    if size is not None:
        assert size_ == size
    return restore_plan.plan(chain, _block_map(kinds, size_), size_)


def _fetched(plan):
    return [(f.entry.name, f.pieces) for f in plan.fetches]


def test_uncovered_zero_ranges_become_zero_runs():
    chain = [_layer('a', [(0, 2 * BS), (4 * BS, BS), (7 * BS, BS)])]
    plan = _plan(chain, 'DDZZDZZD', size=8 * BS)
    assert _fetched(plan) == [('a-00001', [(0, 2 * BS)]),
                              ('a-00002', [(4 * BS, 5 * BS)]),
                              ('a-00003', [(7 * BS, 8 * BS)])]
    assert plan.zero_runs == [(2 * BS, 4 * BS), (5 * BS, 7 * BS)]
    assert plan.zero_bytes == 4 * BS
    assert plan.size == 8 * BS


def test_uncovered_non_zero_range_is_an_error_naming_its_offset():
    chain = [_layer('a', [(0, BS), (6 * BS, BS)])]
    with pytest.raises(exception.InvalidBackupMetadata) as info:
        _plan(chain, 'DZZDZZD')
    assert 'at offset %d,' % (3 * BS) in str(info.value)
    assert 'not zeros' in str(info.value)


def test_overlapping_objects_of_a_layer_later_one_wins():
    # A folded backup lists its parent's objects first; later objects win
    # where they overlap, as Cinder's restore writes them in list order.
    chain = [_layer('a', [(0, 2 * BS), (BS, 2 * BS)])]
    plan = _plan(chain, 'DDD', size=3 * BS)
    assert _fetched(plan) == [('a-00001', [(0, BS)]),
                              ('a-00002', [(BS, 3 * BS)])]


def test_overlap_whatever_the_listed_order():
    chain = [_layer('a', [(4 * BS, 2 * BS), (0, BS), (5 * BS, BS)])]
    plan = _plan(chain, 'DZZZDD', size=6 * BS)
    assert _fetched(plan) == [('a-00002', [(0, BS)]),
                              ('a-00001', [(4 * BS, 5 * BS)]),
                              ('a-00003', [(5 * BS, 6 * BS)])]


def test_object_may_end_inside_a_block_a_later_object_rewrites():
    # A folded parent's short last block, rewritten whole by the child
    # after the volume grew.
    chain = [_layer('a', [(0, BS + 100), (BS, 2 * BS)])]
    plan = _plan(chain, 'DDD', size=3 * BS)
    assert _fetched(plan) == [('a-00001', [(0, BS)]),
                              ('a-00002', [(BS, 3 * BS)])]


@pytest.mark.parametrize('objects', [
    [(100, BS)],                         # starts inside a block
    [(0, BS + 100), (2 * BS, BS)],       # ends inside a block, not the end
])
def test_unaligned_objects_are_refused(objects):
    with pytest.raises(exception.InvalidBackupMetadata,
                       match='not aligned to the 4096-byte SHA blocks'):
        restore_plan.check_chain([_layer('a', objects)], BS)


def test_an_unaligned_end_is_the_volume_end():
    chain = [_layer('a', [(0, BS), (BS, BS + 100)])]
    assert restore_plan.check_chain(chain, BS) == 2 * BS + 100


def test_a_parents_unaligned_end_inside_a_grown_child():
    chain = [_layer('a', [(0, BS + 100)]),
             _layer('b', [(BS, 3 * BS)], parent_id='a')]
    plan = _plan(chain, 'DDDD', size=4 * BS)
    assert _fetched(plan) == [('a-00001', [(0, BS)]),
                              ('b-00001', [(BS, 4 * BS)])]


def test_newest_layer_wins_and_shadowed_objects_are_not_fetched():
    chain = [_layer('a', [(0, 4 * BS), (4 * BS, 4 * BS)]),
             _layer('b', [(BS, 2 * BS), (4 * BS, 4 * BS)], parent_id='a'),
             _layer('c', [(2 * BS, BS)], parent_id='b')]
    plan = _plan(chain, 'DDDDDDDD', size=8 * BS)
    assert _fetched(plan) == [
        ('a-00001', [(0, BS), (3 * BS, 4 * BS)]),
        ('b-00001', [(BS, 2 * BS)]),
        ('c-00001', [(2 * BS, 3 * BS)]),
        ('b-00002', [(4 * BS, 8 * BS)])]
    assert plan.zero_runs == []


def test_objects_that_hold_only_zeros_in_the_target_are_not_fetched():
    # Data in the full backup turned to zeros in the incremental.
    chain = [_layer('a', [(0, 4 * BS)]),
             _layer('b', [(BS, 2 * BS)], parent_id='a')]
    plan = _plan(chain, 'DZZD')
    assert _fetched(plan) == [('a-00001', [(0, BS), (3 * BS, 4 * BS)])]
    assert plan.zero_runs == [(BS, 3 * BS)]


def test_short_last_block_of_zeros():
    size = 2 * BS + 1000
    chain = [_layer('a', [(0, BS), (2 * BS, 1000)])]
    plan = _plan(chain, 'DZZ', size=size)
    assert _fetched(plan) == [('a-00001', [(0, BS)])]
    assert plan.zero_runs == [(BS, size)]


def test_short_last_block_with_data_is_fetched():
    size = 2 * BS + 1000
    chain = [_layer('a', [(0, BS), (2 * BS, 1000)])]
    plan = _plan(chain, 'DZD', size=size)
    assert _fetched(plan) == [('a-00001', [(0, BS)]),
                              ('a-00002', [(2 * BS, size)])]
    assert plan.zero_runs == [(BS, 2 * BS)]


def test_block_map_of_another_size_is_refused():
    chain = [_layer('a', [(0, 3 * BS)])]
    with pytest.raises(exception.InvalidBackupMetadata,
                       match='lists 4 blocks but the objects of the chain '
                             'make a 12288-byte volume'):
        restore_plan.plan(chain, _block_map('DDDD'), 3 * BS)


def test_empty_volume():
    chain = [_layer('a', [])]
    plan = _plan(chain, '', size=0)
    assert plan.fetches == [] and plan.zero_runs == []
