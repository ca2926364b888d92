"""Block maps: pages, zero pages, spilling, and the _sha256file stream.

The bytes written must be exactly ``json.dumps(doc, sort_keys=True,
indent=2)`` (Cinder's serialisation), and every layout a JSON writer may
produce must read back, while broken documents end in a clear error.
"""
import hashlib
import json
import os
import tracemalloc

import pytest

from chunkbackup import backupformat as fmt
from chunkbackup.engine import blockmap
from chunkbackup import exception

PAGE = blockmap.PAGE_BLOCKS
BS = 4096
ZERO = fmt.zero_digest(BS)
COMMON = {'backup_id': 'b-1', 'volume_id': 'v-1', 'backup_name': 'n\u00e9',
          'backup_description': None, 'created_at': '2026-01-01 00:00:00'}


def _digest(i: int) -> bytes:
    return hashlib.sha256(i.to_bytes(8, 'little')).digest()


def _digests(count: int, zero_every: int = 0) -> bytes:
    return b''.join(ZERO if zero_every and i % zero_every == 0
                    else _digest(i) for i in range(count))


def _map(digests: bytes, step: int = 7 * 32, **kw) -> blockmap.BlockMap:
    block_map = blockmap.BlockMap(BS, **kw)
    for i in range(0, len(digests), step):
        block_map.append(digests[i:i + step])
    return block_map


def _expected_document(digests: bytes, block_size: int = BS) -> bytes:
    doc = dict(COMMON, version=fmt.VERSION, chunk_size=block_size,
               sha256s=[digests[i:i + 32].hex()
                        for i in range(0, len(digests), 32)])
    return json.dumps(doc, sort_keys=True, indent=2).encode('utf-8')


def _read(data: bytes, chunk: int = 2 ** 20, **kw) -> blockmap.BlockMap:
    pieces = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    return blockmap.read_sha256file(pieces, 'b-1', 'x_sha256file', **kw)


# ----------------------------------------------------------------------
# BlockMap.

@pytest.mark.parametrize('budget', [blockmap.DEFAULT_MEMORY_BUDGET, 0])
def test_append_and_read_across_page_boundaries(budget, tmp_path):
    digests = _digests(3 * PAGE + 100)
    with _map(digests, memory_budget=budget,
              temp_dir=str(tmp_path)) as block_map:
        assert block_map.block_count == 3 * PAGE + 100
        assert block_map.spilled == (budget == 0)
        for first, count in [(0, 1), (PAGE - 1, 2), (PAGE - 3, PAGE + 6),
                             (0, 3 * PAGE + 100), (3 * PAGE + 99, 5),
                             (2 * PAGE, PAGE), (3 * PAGE, 100),
                             (3 * PAGE + 100, 1)]:
            assert block_map.read(first, count) == \
                digests[first * 32:(first + count) * 32], (first, count)
        assert block_map.digest(PAGE) == _digest(PAGE)
        # Spilled to an unlinked file: nothing is left in the directory.
        assert os.listdir(str(tmp_path)) == []


def test_zero_pages_are_flags_and_cost_no_memory_budget():
    digests = (_digests(PAGE) + ZERO * (5 * PAGE) + _digests(10))
    # Room for one page of digests: the five zero pages must not use it.
    with _map(digests, step=PAGE * 32 + 32,
              memory_budget=blockmap.PAGE_BYTES) as block_map:
        assert not block_map.spilled
        assert [block_map.page_is_zero(i) for i in range(7)] == [
            False, True, True, True, True, True, False]
        assert block_map.read(PAGE - 1, 3) == digests[(PAGE - 1) * 32:
                                                      (PAGE + 2) * 32]
        assert block_map.read(0, 7 * PAGE) == digests


def test_a_second_page_of_data_spills_past_a_one_page_budget():
    with _map(_digests(2 * PAGE),
              memory_budget=blockmap.PAGE_BYTES) as block_map:
        assert block_map.spilled
        assert block_map.read(PAGE - 1, 2) == _digest(PAGE - 1) + \
            _digest(PAGE)


def test_zero_page_of_another_block_size_is_not_a_flag():
    other = fmt.zero_digest(BS * 2) * PAGE
    with _map(other) as block_map:
        assert not block_map.page_is_zero(0)
        assert block_map.read(0, PAGE) == other


def test_pages_in_order_with_zero_flags_and_short_last_page():
    digests = _digests(PAGE) + ZERO * PAGE + _digests(PAGE + 5)[PAGE * 32:]
    with _map(digests, memory_budget=0) as block_map:
        pages = list(block_map.pages())
    assert [(len(p), z) for p, z in pages] == [
        (blockmap.PAGE_BYTES, False), (blockmap.PAGE_BYTES, True),
        (5 * 32, False)]
    assert b''.join(p for p, _ in pages) == digests


def test_pages_of_whole_pages_has_no_empty_tail():
    with _map(_digests(2 * PAGE)) as block_map:
        assert [len(p) for p, _ in block_map.pages()] == \
            [blockmap.PAGE_BYTES] * 2


# ----------------------------------------------------------------------
# Writing _sha256file.

CASES = {
    'empty': b'',
    'one': _digest(1),
    'one-zero': ZERO,
    'short-page': _digests(PAGE - 1),
    'many': _digests(3 * PAGE + 17),
    'mixed-zero-pages': (_digests(PAGE) + ZERO * (2 * PAGE) +
                         _digests(PAGE, zero_every=3) + ZERO * 9),
    'zero-tail': _digests(PAGE) + ZERO * (PAGE + 1),
    # Past the writer's 1 MiB batching.
    'large': _digests(20000, zero_every=5) + ZERO * (3 * PAGE),
}


@pytest.mark.parametrize('name', sorted(CASES))
def test_sha256file_is_cinders_serialisation(name):
    digests = CASES[name]
    with _map(digests, step=PAGE * 32 - 64, memory_budget=0) as block_map:
        produce = blockmap.sha256file_chunks(block_map, COMMON)
        written = b''.join(produce())
        again = b''.join(produce())  # a retried upload replays it
    assert written == _expected_document(digests)
    assert again == written


# ----------------------------------------------------------------------
# Reading _sha256file.

ROUND_TRIP = _digests(2 * PAGE + 3, zero_every=4) + ZERO * (PAGE + 2)


@pytest.mark.parametrize('chunk', [1, 71, 72, 73, 4096, 2 ** 22])
def test_read_round_trip_in_every_chunking(chunk):
    digests = ROUND_TRIP if chunk > 1 else ROUND_TRIP[:(PAGE + 9) * 32]
    with _map(digests) as written:
        data = b''.join(blockmap.sha256file_chunks(written, COMMON)())
    with _read(data, chunk) as block_map:
        assert block_map.block_size == BS
        assert block_map.block_count == len(digests) // 32
        assert block_map.read(0, block_map.block_count) == digests


@pytest.mark.parametrize('chunk', [1, 67, 1000, 2 ** 20])
def test_read_compact_json_with_unsorted_keys(chunk):
    digests = _digests(PAGE + 3, zero_every=2)
    doc = {'sha256s': [digests[i:i + 32].hex()
                       for i in range(0, len(digests), 32)],
           'chunk_size': BS, 'version': fmt.VERSION, 'backup_id': 'b-1'}
    data = json.dumps(doc, separators=(',', ':')).encode()
    with _read(data, chunk) as block_map:
        assert block_map.block_size == BS
        assert block_map.read(0, PAGE + 3) == digests


def test_read_other_whitespace_and_upper_case_hex():
    digests = _digests(5)
    items = ',\r\n\t'.join('"%s"' % digests[i:i + 32].hex().upper()
                           for i in range(0, len(digests), 32))
    data = ('{ "backup_id" : "b-1" , "chunk_size" : %d , "sha256s" : [ %s ]'
            ' , "version" : "1.0.0" }' % (BS, items)).encode()
    with _read(data, 7) as block_map:
        assert block_map.read(0, 5) == digests


def test_read_empty_list():
    with _read(_expected_document(b'')) as block_map:
        assert block_map.block_count == 0


def _assert_invalid(data: bytes, match: str, chunks=(1, 72, 2 ** 20)):
    for chunk in chunks:
        with pytest.raises(exception.InvalidBackupMetadata, match=match):
            _read(data, chunk)


def test_truncated_list_is_an_error():
    data = _expected_document(_digests(100))
    cut = data[:data.index(b']') - 300]
    _assert_invalid(cut, 'truncated')


def test_non_hex_value_is_an_error():
    digests = _digests(100)
    good = digests[32:64].hex()
    data = _expected_document(digests).replace(
        good.encode(), ('g' + good[1:]).encode())
    _assert_invalid(data, 'not hex')


@pytest.mark.parametrize('length', [63, 65])
def test_item_of_the_wrong_length_is_an_error(length):
    digests = _digests(100)
    good = digests[32:64].hex()
    bad = (good + 'a')[:length]
    data = _expected_document(digests).replace(good.encode(), bad.encode())
    _assert_invalid(data, 'not a quoted hex SHA-256')


@pytest.mark.parametrize('padding', ['  ', ', '])
def test_item_padded_with_whitespace_inside_the_quotes_is_an_error(padding):
    digests = _digests(300)
    good = digests[32:64].hex()
    data = _expected_document(digests).replace(
        good.encode(), (good[:62] + padding).encode())
    # A JSON reader sees a 64-character string that is no hex SHA-256.
    assert len(json.loads(data)['sha256s'][1]) == 64
    _assert_invalid(data, 'not')


def test_missing_list_is_an_error():
    doc = dict(COMMON, version=fmt.VERSION, chunk_size=BS)
    _assert_invalid(json.dumps(doc, sort_keys=True, indent=2).encode(),
                    "'sha256s' is missing")


def test_two_chunk_sizes_are_an_error():
    # json.loads keeps the last of two keys; the stream saw the first.
    text = _expected_document(_digests(3)).decode()
    text = text.replace('"version"', '"chunk_size": 8192,\n  "version"')
    _assert_invalid(text.encode(), 'two chunk sizes')


def test_hostile_chunk_size_is_not_allocated():
    # 4 GiB blocks pass the document's range check; nothing of that size
    # (nor a zero page of it) may be allocated or hashed to read the map.
    data = _expected_document(_digests(10), block_size=2 ** 32)
    tracemalloc.start()
    try:
        with _read(data, 4096) as block_map:
            _, peak = tracemalloc.get_traced_memory()
            assert block_map.block_size == 2 ** 32
            assert block_map.read(0, 10) == _digests(10)
    finally:
        tracemalloc.stop()
    assert peak < 2 ** 20


def test_chunk_size_out_of_range_is_an_error():
    data = _expected_document(_digests(3), block_size=10 ** 12)
    _assert_invalid(data, 'chunk_size')
