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
