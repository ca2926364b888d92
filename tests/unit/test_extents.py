"""Changed-block maps (chunkbackup.extents), from the tools' real outputs."""
import json
import tracemalloc

import pytest

from chunkbackup import exception
from chunkbackup import extents
from chunkbackup.extents import ExtentMap
from chunkbackup.extents import parse_changed_extents

KiB = 1024
MiB = 1024 * KiB
BLOCK = 32 * KiB

# Captured with qemu-img 7.2 and nbdinfo 1.14 (Debian 12) from a 4 MiB qcow2
# with a dirty bitmap b1 added before three writes: 'write -P 0x41 1M 64k',
# 'write -P 0x42 3M 100k', 'write -P 0x43 0 4k'; served by
# 'qemu-nbd -r -f qcow2 -x vol -B b1' (bitmap granularity 64 KiB).
QEMU_IMG_DIRTY = b'''\
[{ "start": 0, "length": 65536, "depth": 0, "present": false, "zero": false, \
"data": false},
{ "start": 65536, "length": 983040, "depth": 0, "present": true, \
"zero": false, "data": true, "offset": 65536},
{ "start": 1048576, "length": 65536, "depth": 0, "present": false, \
"zero": false, "data": false},
{ "start": 1114112, "length": 2031616, "depth": 0, "present": true, \
"zero": false, "data": true, "offset": 1114112},
{ "start": 3145728, "length": 131072, "depth": 0, "present": false, \
"zero": false, "data": false},
{ "start": 3276800, "length": 917504, "depth": 0, "present": true, \
"zero": false, "data": true, "offset": 3276800}]
'''
NBDINFO_DIRTY = b'''\
[
{ "offset": 0, "length": 65536, "type": 1, "description": "dirty"},
{ "offset": 65536, "length": 983040, "type": 0, "description": "clean"},
{ "offset": 1048576, "length": 65536, "type": 1, "description": "dirty"},
{ "offset": 1114112, "length": 2031616, "type": 0, "description": "clean"},
{ "offset": 3145728, "length": 131072, "type": 1, "description": "dirty"},
{ "offset": 3276800, "length": 917504, "type": 0, "description": "clean"}
]
'''
DIRTY_4M = [(0, 64 * KiB), (1 * MiB, 64 * KiB), (3 * MiB, 128 * KiB)]

# The same export's allocation maps: what a user gets by leaving out
# x-dirty-bitmap, or by running nbdinfo --map without a context.
QEMU_IMG_ALLOCATION = b'''\
[{ "start": 0, "length": 4096, "depth": 0, "present": true, "zero": false, \
"data": true, "offset": 0},
{ "start": 4096, "length": 61440, "depth": 0, "present": true, "zero": true, \
"data": true, "offset": 4096},
{ "start": 65536, "length": 983040, "depth": 0, "present": true, "zero": true,\
 "data": false, "offset": 65536}]
'''
NBDINFO_ALLOCATION = b'''\
[
{ "offset": 0, "length": 4096, "type": 0, "description": "data"},
{ "offset": 4096, "length": 61440, "type": 2, "description": "zero"},
{ "offset": 65536, "length": 983040, "type": 3, "description": "hole,zero"}
]
'''
# qemu-img map of the qcow2 file itself (no NBD): holes are present false.
QEMU_IMG_FILE = b'''\
[{ "start": 0, "length": 4096, "depth": 0, "present": true, "zero": false, \
"data": true, "offset": 524288},
{ "start": 65536, "length": 983040, "depth": 0, "present": false, \
"zero": true, "data": false}]
'''

# A 1050112-byte volume (not a multiple of the 64 KiB granularity nor of the
# 32 KiB SHA block) with writes at 100000 (1000 bytes) and 1000000 (to the
# end), captured the same way.
ODD_SIZE = 1050112
QEMU_IMG_ODD = b'''\
[{ "start": 0, "length": 65536, "depth": 0, "present": true, "zero": false, \
"data": true, "offset": 0},
{ "start": 65536, "length": 65536, "depth": 0, "present": false, \
"zero": false, "data": false},
{ "start": 131072, "length": 851968, "depth": 0, "present": true, \
"zero": false, "data": true, "offset": 131072},
{ "start": 983040, "length": 67072, "depth": 0, "present": false, \
"zero": false, "data": false}]
'''
NBDINFO_ODD = b'''\
[
{ "offset": 0, "length": 65536, "type": 0, "description": "clean"},
{ "offset": 65536, "length": 65536, "type": 1, "description": "dirty"},
{ "offset": 131072, "length": 851968, "type": 0, "description": "clean"},
{ "offset": 983040, "length": 67072, "type": 1, "description": "dirty"}
]
'''

# rbd diff --format json: Ceph's JSONFormatter output of its diff callback
# (src/tools/rbd/action/Diff.cc dumps offset, length and exists as the
# string "true" or "false"); no Ceph cluster here to capture one.
RBD_DIFF = (b'[{"offset":0,"length":4194304,"exists":"true"},'
            b'{"offset":8388608,"length":4194304,"exists":"false"},'
            b'{"offset":12582912,"length":1048576,"exists":"true"}]')


def ranges(extent_map):
    return list(extent_map)


def error_of(data, volume_size=4 * MiB, source='map.json'):
    with pytest.raises(exception.InvalidChangedExtents) as info:
        parse_changed_extents(data, volume_size, source=source)
    message = str(info.value)
    assert '\n' not in message
    assert message.startswith('Cannot use the changed-extents map %s: '
                              % source)
    for accepted in ('qemu-img map', 'nbdinfo', 'rbd diff',
                     '[offset, length] pairs'):
        assert accepted in message
    return message


# The four formats -----------------------------------------------------------

def test_qemu_img_dirty_bitmap_map_reads_data_false_as_changed():
    extent_map = parse_changed_extents(QEMU_IMG_DIRTY, 4 * MiB)
    assert ranges(extent_map) == DIRTY_4M
    assert extent_map.changed_bytes == 256 * KiB
    assert extent_map.volume_size == 4 * MiB


def test_nbdinfo_dirty_bitmap_map_reads_type_1_as_changed():
    extent_map = parse_changed_extents(NBDINFO_DIRTY, 4 * MiB)
    assert ranges(extent_map) == DIRTY_4M
    assert extent_map == parse_changed_extents(QEMU_IMG_DIRTY, 4 * MiB)


def test_text_input_is_accepted_as_well_as_bytes():
    assert ranges(parse_changed_extents(NBDINFO_DIRTY.decode(),
                                        4 * MiB)) == DIRTY_4M


@pytest.mark.parametrize('captured', [QEMU_IMG_ODD, NBDINFO_ODD])
def test_map_of_an_odd_sized_volume_ends_with_a_short_range(captured):
    extent_map = parse_changed_extents(captured, ODD_SIZE)
    assert ranges(extent_map) == [(65536, 65536), (983040, 67072)]
    # The last SHA block is short (1050112 = 32 * 32768 + 1536): aligning
    # keeps the range ending at the volume's end, not at a block boundary.
    assert ranges(extent_map.align(BLOCK)) == ranges(extent_map)


def test_rbd_diff_reads_discarded_ranges_as_changed_too():
    extent_map = parse_changed_extents(RBD_DIFF, 16 * MiB)
    assert ranges(extent_map) == [(0, 4 * MiB), (8 * MiB, 5 * MiB)]


def test_rbd_diff_with_nothing_changed_is_an_empty_list():
    extent_map = parse_changed_extents(b'[]', 16 * MiB)
    assert ranges(extent_map) == [] and len(extent_map) == 0
    assert extent_map.changed_bytes == 0
    assert ranges(extent_map.complement()) == [(0, 16 * MiB)]


def test_plain_pairs_and_extents_object():
    pairs = [[4096, 4096], [0, 4096], [100, 10]]
    expected = [(0, 8192)]
    assert ranges(parse_changed_extents(json.dumps(pairs), MiB)) == expected
    wrapped = json.dumps({'extents': pairs})
    assert ranges(parse_changed_extents(wrapped, MiB)) == expected


def test_a_byte_order_mark_and_surrounding_whitespace_are_fine():
    data = b'\xef\xbb\xbf \n [ [1, 2] ,\n [3,4] ] \n'
    assert ranges(parse_changed_extents(data, 100)) == [(1, 6)]


# Merging --------------------------------------------------------------------

def test_unsorted_overlapping_and_touching_ranges_merge():
    pairs = [[900, 100], [0, 10], [5, 10], [20, 5], [15, 5], [500, 0],
             [950, 10], [0, 10]]
    extent_map = parse_changed_extents(json.dumps(pairs), 2000)
    # [15, 20) touches [5, 15) and [20, 25): one range; the empty one is
    # ignored; duplicates and contained ranges add nothing.
    assert ranges(extent_map) == [(0, 25), (900, 100)]
    assert extent_map.changed_bytes == 125


def test_sorted_input_merges_in_one_pass():
    pairs = [[0, 10], [10, 10], [15, 2], [30, 1]]
    assert ranges(parse_changed_extents(json.dumps(pairs), 100)) == [
        (0, 20), (30, 1)]


def test_constructor_normalises_like_the_parser():
    extent_map = ExtentMap([(50, 10), (0, 5), (3, 4), (55, 100)], 100)
    assert ranges(extent_map) == [(0, 7), (50, 50)]
    with pytest.raises(ValueError):
        ExtentMap([(100, 1)], 100)
    with pytest.raises(ValueError):
        ExtentMap([(-1, 1)], 100)
    with pytest.raises(ValueError):
        ExtentMap([], -1)


# Alignment and clipping -----------------------------------------------------

def test_align_widens_unaligned_extents_to_32k_blocks():
    volume = 10 * BLOCK
    extent_map = ExtentMap([(1000, 10), (3 * BLOCK - 1, 2),
                            (6 * BLOCK + 5, BLOCK)], volume)
    assert ranges(extent_map.align(BLOCK)) == [
        (0, BLOCK), (2 * BLOCK, 2 * BLOCK), (6 * BLOCK, 2 * BLOCK)]


def test_align_merges_ranges_that_come_to_share_a_block():
    extent_map = ExtentMap([(10, 10), (BLOCK - 10, 20), (BLOCK + 40, 1)],
                           4 * BLOCK)
    assert ranges(extent_map.align(BLOCK)) == [(0, 2 * BLOCK)]


def test_align_clips_the_short_last_block_to_the_volume():
    volume = 3 * BLOCK + 1000
    extent_map = ExtentMap([(3 * BLOCK + 10, 5)], volume)
    assert ranges(extent_map.align(BLOCK)) == [(3 * BLOCK, 1000)]


def test_align_refuses_a_bad_block_size():
    with pytest.raises(ValueError):
        ExtentMap([(0, 1)], 10).align(0)


def test_range_running_past_the_end_is_clipped():
    extent_map = parse_changed_extents(b'[[90, 50], [0, 1]]', 100)
    assert ranges(extent_map) == [(0, 1), (90, 10)]


def test_qemu_img_map_past_a_short_volume_end_is_clipped():
    # A raw image of 1000 bytes is mapped in whole 512-byte sectors.
    data = (b'[{"start": 0, "length": 1024, "depth": 0, "present": false,'
            b' "zero": false, "data": false}]')
    assert ranges(parse_changed_extents(data, 1000)) == [(0, 1000)]


def test_range_starting_at_the_volume_end_is_an_error():
    message = error_of(b'[[0, 1], [100, 5]]', volume_size=100)
    assert 'entry 1 [100, 5]' in message
    assert 'the 100-byte volume' in message
    assert 'another volume' in message


def test_clean_range_of_a_larger_volume_is_an_error_too():
    message = error_of(NBDINFO_DIRTY, volume_size=3 * MiB)
    assert '"offset": 3145728' in message and '3145728-byte' in message


def test_whole_volume_map_shorter_than_the_volume_is_an_error():
    message = error_of(QEMU_IMG_DIRTY, volume_size=8 * MiB)
    assert 'ends at byte 4194304' in message
    assert '8388608 bytes' in message


def test_gap_in_a_whole_volume_map_is_an_error():
    entries = json.loads(NBDINFO_DIRTY)
    del entries[1]
    message = error_of(json.dumps(entries).encode())
    assert 'gap or overlap at byte 65536' in message


# Queries --------------------------------------------------------------------

def test_contains_overlaps_and_intersection():
    extent_map = ExtentMap([(100, 100), (300, 50)], 1000)
    assert extent_map.contains(100, 100)
    assert extent_map.contains(150, 10)
    assert not extent_map.contains(150, 100)
    assert not extent_map.contains(0, 10)
    assert not extent_map.contains(200, 1)
    assert extent_map.overlaps(0, 101)
    assert not extent_map.overlaps(0, 100)
    assert not extent_map.overlaps(200, 100)
    assert extent_map.overlaps(349, 1000)
    assert not extent_map.overlaps(350, 650)
    assert list(extent_map.intersection(150, 200)) == [(150, 50), (300, 50)]
    assert list(extent_map.intersection(0, 100)) == []
    assert list(extent_map.intersection(320, 10)) == [(320, 10)]


def test_complement_gives_the_unchanged_ranges():
    extent_map = ExtentMap([(0, 10), (20, 10)], 40)
    complement = extent_map.complement()
    assert ranges(complement) == [(10, 10), (30, 10)]
    assert complement.changed_bytes + extent_map.changed_bytes == 40
    assert ranges(ExtentMap([(5, 35)], 40).complement()) == [(0, 5)]


def test_repr_and_equality():
    extent_map = ExtentMap([(0, 1)], 2)
    assert repr(extent_map) == 'ExtentMap([(0, 1)], volume_size=2)'
    assert extent_map == ExtentMap([(0, 1)], 2)
    assert extent_map != ExtentMap([(0, 1)], 3)
    assert extent_map != ExtentMap([(1, 1)], 2)


# Errors ---------------------------------------------------------------------

@pytest.mark.parametrize('captured, hint', [
    (QEMU_IMG_ALLOCATION, 'x-dirty-bitmap=qemu:dirty-bitmap:NAME'),
    (QEMU_IMG_FILE, 'x-dirty-bitmap=qemu:dirty-bitmap:NAME'),
    (NBDINFO_ALLOCATION, 'not a map of base:allocation'),
])
def test_allocation_maps_are_refused(captured, hint):
    message = error_of(captured)
    assert 'entry' in message and hint in message


def test_nbdinfo_allocation_map_without_zero_flags_is_refused():
    data = b'[{"offset": 0, "length": 4194304, "type": 1, "description": ' \
           b'"hole"}]'
    assert 'not a dirty-bitmap entry' in error_of(data)


@pytest.mark.parametrize('data, expected', [
    (b'not json', 'it is not JSON'),
    (b'[[0, 1], [2, 3]', 'it is not JSON'),
    (b'[[0, 1] [2, 3]]', "expected ',' or ']' at character 8"),
    (b'[[0, 1]] x', 'extra data after the list'),
    (b'{"extents": [[0, 1]], "more": 1}', 'neither a JSON list'),
    (b'42', 'neither a JSON list'),
    (b'\xff\xfe', 'not UTF-8'),
    (b'[{"offset": 0, "length": 1}]', 'unknown shape'),
    (b'["0-1"]', 'unknown shape'),
    (b'[[0, 1], {"offset": 2, "length": 1}]',
     'entry 1 {"length": 1, "offset": 2} is not an [offset, length] pair'),
    (b'[[0, 1, 2]]', 'is not an [offset, length] pair'),
    (b'[[-1, 10]]', 'entry 0 [-1, 10]: "offset" is negative'),
    (b'[[0, -10]]', '"length" is negative'),
    (b'[[0.5, 10]]', '"offset" is not an integer'),
    (b'[["0", 10]]', '"offset" is not an integer'),
    (b'[[0, true]]', '"length" is not an integer'),
    (b'[[0, NaN]]', '"length" is not an integer'),
    (b'[{"offset": 0, "length": 1, "exists": "maybe"}]',
     '"exists" is not "true" or "false"'),
    (b'[{"offset": 0, "length": 1, "exists": []}]',
     '"exists" is not "true" or "false"'),
    (b'[{"offset": 0, "length": 1, "exists": "true"}, [1, 1]]',
     'is not an object like the first entry (rbd diff)'),
    (b'[{"offset": 0, "type": 1}]', 'has no "length"'),
    (b'[{"start": 0, "length": 4194304, "data": "no"}]',
     '"data" is not true or false'),
    (b'[{"offset": 0, "length": 4194304, "type": 1.0}]',
     '"type" is not an integer'),
])
def test_bad_maps_are_one_line_errors(data, expected):
    assert expected in error_of(data)


def test_read_changed_extents_names_the_file(tmp_path):
    path = tmp_path / 'dirty.json'
    path.write_bytes(NBDINFO_DIRTY)
    assert ranges(extents.read_changed_extents(str(path), 4 * MiB)) == \
        DIRTY_4M
    path.write_bytes(b'[[0, 1]')
    assert str(path) in error_of_file(str(path))
    missing = str(tmp_path / 'missing.json')
    assert 'cannot be read (No such file or directory)' in \
        error_of_file(missing)


def error_of_file(path):
    with pytest.raises(exception.InvalidChangedExtents) as info:
        extents.read_changed_extents(path, 4 * MiB)
    return str(info.value)


def test_help_names_the_dirty_bitmap_forms():
    assert 'x-dirty-bitmap' in extents.CHANGED_EXTENTS_HELP
    assert '"data": false' in extents.CHANGED_EXTENTS_HELP
    assert 'qemu:dirty-bitmap:NAME' in extents.CHANGED_EXTENTS_HELP


# Large maps -----------------------------------------------------------------

def _nbdinfo_map(entries, granule):
    lines = ['{ "offset": %d, "length": %d, "type": %d, "description": '
             '"%s"}' % (i * granule, granule, i % 2,
                        'dirty' if i % 2 else 'clean')
             for i in range(entries)]
    return ('[\n' + ',\n'.join(lines) + '\n]\n').encode()


def _large_map(count, granule, volume):
    """count alternating clean/dirty entries, then clean up to the end."""
    return _nbdinfo_map(count, granule)[:-3] + (
        b',\n{ "offset": %d, "length": %d, "type": 0, "description": '
        b'"clean"}\n]\n' % (count * granule, volume - count * granule))


def test_map_of_100k_ranges_of_a_1_tib_volume():
    granule = 64 * KiB
    count = 100000
    volume = 2 ** 40
    extent_map = parse_changed_extents(_large_map(count, granule, volume),
                                       volume)
    assert len(extent_map) == count // 2
    assert extent_map.changed_bytes == count // 2 * granule
    assert list(extent_map)[-1] == ((count - 1) * granule, granule)
    assert extent_map.overlaps(volume - 1, 1) is False
    assert extent_map.align(2 * granule).changed_bytes == count * granule


def test_large_map_is_decoded_entry_by_entry():
    granule = 64 * KiB
    count = 20000
    data = _large_map(count, granule, 2 ** 40)
    tracemalloc.start()
    try:
        extent_map = parse_changed_extents(data, 2 ** 40)
        _size, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(extent_map) == count // 2
    # Decoding the whole document at once holds every entry as a dict (five
    # times the text); entry by entry, the peak is the text and the arrays.
    assert peak < 2 * len(data) + MiB, (peak, len(data))
