"""Codecs: labels, raw fallback, and bounded decompression."""
import bz2
import os
import tracemalloc
import zlib

import pytest
import zstandard

from chunkbackup import compression
from chunkbackup import exception


@pytest.mark.parametrize('algorithm', ['zlib', 'gzip', 'bz2', 'bzip2',
                                       'zstd'])
def test_round_trip_and_raw_fallback(algorithm):
    comp = compression.Compressor(algorithm)
    text = b'backup volume chunk ' * 50000
    label, body = comp.compress(text)
    assert label == algorithm and len(body) < len(text)
    assert compression.decompress(label, body, len(text)) == text
    noise = os.urandom(1 << 20)
    label, body = comp.compress(noise)
    assert label == 'none' and body == noise


def test_unknown_algorithm_is_a_configuration_error():
    with pytest.raises(exception.InvalidConfiguration,
                       match='compression_algorithm'):
        compression.Compressor('lz77')


@pytest.mark.parametrize('label,make', [
    ('zlib', lambda d: zlib.compress(d)),
    ('bz2', lambda d: bz2.compress(d)),
    ('zstd', lambda d: zstandard.ZstdCompressor().compress(d)),
])
def test_bomb_refused_without_allocating(label, make):
    bomb = make(bytes(256 << 20))  # 256 MiB of zeros, a few KiB stored
    tracemalloc.start()
    with pytest.raises(ValueError, match='more than|says'):
        compression.decompress(label, bomb, 4096)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 8 << 20


def test_zstd_frame_without_content_size_is_bounded():
    cobj = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    body = cobj.compress(bytes(1 << 20)) + cobj.flush()
    assert compression.decompress('zstd', body, 1 << 20) == bytes(1 << 20)
    with pytest.raises(ValueError):
        compression.decompress('zstd', body, 1000)


@pytest.mark.parametrize('label,body,reason', [
    ('zlib', zlib.compress(b'abc') + zlib.compress(b'def'), 'follow'),
    ('zlib', zlib.compress(b'abc' * 1000)[:-4], 'truncated|not a valid'),
    ('zlib', b'not zlib at all', 'not a valid'),
    ('bz2', b'BZh9garbage', 'not a valid'),
    ('zstd', b'\x28\xb5\x2f\xfdgarbage', 'not a valid|says'),
    ('none', b'short', 'holds 5 bytes'),
    ('lz4', b'x', 'unknown compression'),
])
def test_bad_bodies(label, body, reason):
    with pytest.raises(ValueError, match=reason):
        compression.decompress(label, body, 3000)


def _mixed(size_mib=9):
    text = b'backup volume chunk %d\n'
    parts = []
    for i in range(size_mib):
        parts.append(os.urandom(1 << 20) if i % 3 == 0 else
                     b''.join(text % n for n in range(i << 15, (i + 1) << 15))
                     [:1 << 20] if i % 3 == 1 else bytes(1 << 20))
    return b''.join(parts)


@pytest.mark.parametrize('algorithm', ['zlib', 'bz2', 'zstd'])
@pytest.mark.parametrize('cut', [1, 4096, 1000003, 3 << 20])
def test_a_streamed_body_is_the_whole_body(algorithm, cut):
    """However an object is cut into pieces, it stores the same bytes."""
    data = _mixed()
    comp = compression.Compressor(algorithm)
    label, whole = comp.compress(data)
    encoder = comp.stream(len(data), data[:4 << 20])
    cut = len(data) if cut == 1 else cut
    body = b''.join([encoder.compress(data[i:i + cut])
                     for i in range(0, len(data), cut)] + [encoder.flush()])
    assert encoder.label == label == algorithm
    assert body == whole
    # Stock Cinder decompresses a body whole, with the codec's own call.
    plain = {'zlib': zlib.decompress, 'bz2': bz2.decompress,
             'zstd': zstandard.ZstdDecompressor().decompress}[algorithm]
    assert plain(body) == data


def test_a_stream_that_looks_incompressible_is_raw():
    noise = os.urandom(6 << 20)
    encoder = compression.Compressor('zlib').stream(
        len(noise), noise[:4 << 20])
    assert encoder.label == 'none'
    assert encoder.compress(noise[:10]) == noise[:10]


def test_an_object_of_one_piece_keeps_the_raw_fallback():
    noise = os.urandom(100000)
    encoder = compression.Compressor('zstd').stream(len(noise), noise)
    assert encoder.compress(noise) == noise and encoder.label == 'none'


@pytest.mark.parametrize('algorithm', ['zlib', 'bz2', 'zstd', 'none'])
def test_decompress_stream_gives_bounded_pieces(algorithm):
    data = _mixed()
    label, body = compression.Compressor(algorithm).compress(data)
    chunks = (body[i:i + 65537] for i in range(0, len(body), 65537))
    pieces = list(compression.decompress_stream(label, chunks, len(data),
                                                1 << 20))
    assert b''.join(pieces) == data
    if label != 'none':
        assert max(len(p) for p in pieces) <= 1 << 20


@pytest.mark.parametrize('label,make', [
    ('zlib', lambda d: zlib.compress(d)),
    ('bz2', lambda d: bz2.compress(d)),
    ('zstd', lambda d: zstandard.ZstdCompressor().compress(d)),
    ('zstd', lambda d: zstandard.ZstdCompressor(
        write_content_size=False).compress(d)),
])
def test_stream_bomb_refused_without_allocating(label, make):
    bomb = make(bytes(256 << 20))
    tracemalloc.start()
    with pytest.raises(ValueError, match='more than|says'):
        for _ in compression.decompress_stream(label, [bomb], 4096,
                                               1 << 20):
            pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 8 << 20


@pytest.mark.parametrize('label,body,reason', [
    ('zlib', zlib.compress(b'abc') + zlib.compress(b'def'), 'follow'),
    ('zlib', zlib.compress(b'abc' * 1000)[:-4], 'truncated|not a valid'),
    ('zlib', b'not zlib at all', 'not a valid'),
    ('bz2', bz2.compress(b'abc' * 1000)[:-4], 'truncated|not a valid'),
    ('bz2', b'BZh9garbage', 'not a valid'),
    ('zstd', b'\x28\xb5\x2f\xfdgarbage', 'not a valid|says'),
    ('zstd', zstandard.ZstdCompressor().compress(b'abc' * 1000)[:-4],
     'holds|not a valid'),
    ('none', b'short', 'holds 5 bytes'),
    ('lz4', b'x', 'unknown compression'),
])
def test_bad_streamed_bodies(label, body, reason):
    with pytest.raises(ValueError, match=reason):
        for _ in compression.decompress_stream(
                label, [body[:7], body[7:]], 3000, 1 << 20):
            pass
