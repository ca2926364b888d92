"""Object body codecs, by the label stored in ``_metadata``.

The labels and bodies are Cinder's (doc/format.md): ``zlib``/``gzip`` is one
zlib stream, ``bz2``/``bzip2`` one bz2 stream, ``zstd`` one frame that carries
its content size. Decompression is always bounded by the length the metadata
records, so a corrupt or hostile body cannot make us allocate more than one
object's worth of memory.

Objects are compressed and decompressed as streams, a piece at a time
(``Compressor.stream``, ``decompress_stream``), so memory does not follow
the object size. A streamed body is byte-for-byte the body ``compress``
makes of the whole object: every codec's streaming output here does not
depend on how the input is cut (zstd is always driven as a stream that
is told the object's size, so its frame carries the content size).
"""
import bz2
import zlib
from typing import (Callable, Dict, Iterable, Iterator, Optional, Tuple,
                    Union)

import zstandard

from chunkbackup import concurrency
from chunkbackup import exception

NONE_LABELS = frozenset(('none', 'off', 'no'))
_FAMILIES = {'zlib': 'zlib', 'gzip': 'zlib', 'bz2': 'bz2', 'bzip2': 'bz2',
             'zstd': 'zstd'}
READABLE_LABELS = frozenset(_FAMILIES) | frozenset(['none'])

# Levels chosen for backup throughput; [chunkbackup] compression_level wins.
_DEFAULT_LEVELS = {'zlib': 1, 'bz2': 9, 'zstd': 1}
# The levels each codec takes, (lowest, highest); zstd's negative levels
# trade ratio for speed (ZSTD_minCLevel() is -2**17).
LEVEL_RANGES = {'zlib': (0, 9), 'bz2': (1, 9),
                'zstd': (-2 ** 17, zstandard.MAX_COMPRESSION_LEVEL)}

# Data whose sampled zstd-1 ratio is above this is stored raw without trying
# the configured (slower) codec on all of it.
_INCOMPRESSIBLE_RATIO = 0.97
_SAMPLE_COUNT = 8
_SAMPLE_SIZE = 32 * 1024


def storage_label(algorithm: str) -> str:
    """The label Cinder would store for a configured algorithm name."""
    label = (algorithm or 'none').lower()
    if label in NONE_LABELS:
        return 'none'
    if label not in _FAMILIES:
        raise exception.InvalidConfiguration(
            reason="[chunkbackup] compression_algorithm %r is unknown; use "
                   "one of zstd, zlib, gzip, bz2, bzip2, none" % algorithm)
    return label


def check_level(algorithm: str, level: Optional[int]) -> Optional[int]:
    """Refuse a compression level the configured codec does not take.

    Checked when the options are read, so a wrong level never surfaces as
    a codec's ValueError in the middle of a backup.
    """
    family = _FAMILIES.get(storage_label(algorithm))
    if level is None or family is None:
        return level
    low, high = LEVEL_RANGES[family]
    if not low <= level <= high:
        raise exception.InvalidConfiguration(
            reason='[chunkbackup] compression_level = %d is out of range for '
                   '%s: use %d to %d, or leave it unset for %d'
                   % (level, algorithm, low, high, _DEFAULT_LEVELS[family]))
    return level


class Compressor:
    """Compresses object bodies for one label; safe to share across threads.

    python-zstandard compressors must not be shared between threads (doing
    so crashed the interpreter in our measurements), so each native thread
    gets its own.
    """

    def __init__(self, algorithm: str, level: Optional[int] = None):
        self.label = storage_label(algorithm)
        self.family = _FAMILIES.get(self.label)
        level = check_level(algorithm, level)
        if level is None and self.family is not None:
            level = _DEFAULT_LEVELS.get(self.family)
        self.level = level
        self._local = concurrency.native_thread_local()
        self._compress: Optional[
            Callable[[Union[bytes, memoryview]], bytes]] = {
            'zlib': self._zlib, 'bz2': self._bz2, 'zstd': self._zstd,
            None: None}[self.family]

    def _zlib(self, data):
        return zlib.compress(data, self.level)

    def _bz2(self, data):
        return bz2.compress(data, self.level)

    def _zstd(self, data):
        cctx = getattr(self._local, 'zstd', None)
        if cctx is None:
            cctx = self._zstd_compressor()
            self._local.zstd = cctx
        # As a stream told the size, like ``stream``: one-shot compress()
        # cuts blocks differently, and both must store the same bytes.
        encoder = cctx.compressobj(size=len(data))
        return encoder.compress(data) + encoder.flush()

    def _zstd_compressor(self) -> zstandard.ZstdCompressor:
        # write_content_size: Cinder's reader needs it in the header.
        return zstandard.ZstdCompressor(level=self.level,
                                        write_content_size=True)

    def _looks_incompressible(self, data) -> bool:
        """Estimate from a few samples whether compressing can pay off.

        zlib spends ~35 MB/s of a core on random data only to store it raw
        in the end; a zstd-1 pass over 8 x 32 KiB samples costs ~1% of that.
        """
        if len(data) <= _SAMPLE_COUNT * _SAMPLE_SIZE * 2:
            return False
        stride = len(data) // _SAMPLE_COUNT
        cctx = getattr(self._local, 'probe', None)
        if cctx is None:
            cctx = zstandard.ZstdCompressor(level=1)
            self._local.probe = cctx
        raw = packed = 0
        for i in range(_SAMPLE_COUNT):
            sample = data[i * stride:i * stride + _SAMPLE_SIZE]
            raw += len(sample)
            packed += len(cctx.compress(sample))
        return packed > raw * _INCOMPRESSIBLE_RATIO

    def stream(self, length: int, sample: Union[bytes, memoryview]
               ) -> 'StreamEncoder':
        """An encoder for an object of ``length`` bytes.

        Its label is chosen from ``sample`` (the object's first piece):
        data that looks incompressible is stored raw. Unlike ``compress``
        a stream cannot fall back to raw at the end, so an object whose
        later pieces do not compress stays compressed (a few bytes more);
        an object that is its first piece is given to ``compress`` whole
        (the label is then final after the first ``compress`` call).
        """
        if self._compress is None:
            return _raw_encoder()
        if len(sample) >= length:
            return _WholeEncoder(self)
        if self._looks_incompressible(sample):
            return _raw_encoder()
        return _stream_encoder(self, length)

    def compress(self, data: Union[bytes, memoryview]
                 ) -> Tuple[str, Union[bytes, memoryview]]:
        """Return (label, body): the raw data labelled none when smaller."""
        if self._compress is None:
            return 'none', data
        if self._looks_incompressible(data):
            return 'none', data
        body = self._compress(data)
        if len(body) >= len(data):
            return 'none', data
        return self.label, body


def _bounded_zlib(body, length):
    dec = zlib.decompressobj()
    out = dec.decompress(body, length + 1)
    if len(out) > length or dec.unconsumed_tail:
        raise ValueError("decompresses to more than the recorded %d bytes"
                         % length)
    if not dec.eof:
        raise ValueError("the zlib stream is truncated")
    if dec.unused_data:
        raise ValueError("%d bytes follow the zlib stream"
                         % len(dec.unused_data))
    return out


def _bounded_bz2(body, length):
    dec = bz2.BZ2Decompressor()
    out = dec.decompress(body, max_length=length + 1)
    if len(out) > length or (not dec.eof and dec.needs_input is False):
        raise ValueError("decompresses to more than the recorded %d bytes"
                         % length)
    if not dec.eof:
        raise ValueError("the bz2 stream is truncated")
    if dec.unused_data:
        raise ValueError("%d bytes follow the bz2 stream"
                         % len(dec.unused_data))
    return out


def _bounded_zstd(body, length):
    size = zstandard.frame_content_size(body)
    if size > length:
        # Refused from the header alone, before allocating anything.
        raise ValueError("the zstd frame says %d bytes, the metadata %d"
                         % (size, length))
    dctx = zstandard.ZstdDecompressor()
    # A frame without a content size is bounded by max_output_size.
    return dctx.decompress(body, max_output_size=length,
                           allow_extra_data=False)


class StreamEncoder:
    """Compresses one object a piece at a time; ``label`` is its label.

    Not thread-safe, but it may move between threads: calls are made in
    order, one at a time.
    """

    def __init__(self, label: str,
                 compress: Callable[[Union[bytes, memoryview]],
                                    Union[bytes, memoryview]],
                 flush: Callable[[], bytes]) -> None:
        self.label = label
        self.compress = compress
        self.flush = flush


class _WholeEncoder(StreamEncoder):
    """An object that is one piece: ``Compressor.compress`` decides.

    It keeps the raw fallback for data that does not shrink; ``label``
    is known once ``compress`` was called.
    """

    def __init__(self, compressor: 'Compressor') -> None:
        super().__init__(compressor.label, self._compress, lambda: b'')
        self._compressor = compressor

    def _compress(self, data):
        self.label, body = self._compressor.compress(data)
        return body


def _raw_encoder() -> StreamEncoder:
    # The data itself: a caller that reuses its buffer copies or waits.
    return StreamEncoder('none', lambda data: data, lambda: b'')


def _stream_encoder(compressor: 'Compressor', length: int) -> StreamEncoder:
    family = compressor.family
    level = (compressor.level if compressor.level is not None
             else _DEFAULT_LEVELS[family or 'zstd'])
    if family == 'zstd':
        # A compressor per object: two objects' streams interleave on the
        # same native threads, and a zstd context serves one stream.
        obj = compressor._zstd_compressor().compressobj(size=length)
    elif family == 'zlib':
        obj = zlib.compressobj(level)
    else:
        obj = bz2.BZ2Compressor(level)
    return StreamEncoder(compressor.label, obj.compress, obj.flush)


_DECOMPRESSORS: Dict[str, Callable] = {
    'zlib': _bounded_zlib, 'bz2': _bounded_bz2, 'zstd': _bounded_zstd}


def decompress(label: str, body: bytes, length: int) -> bytes:
    """Return the uncompressed body, exactly ``length`` bytes, or raise.

    Raises ValueError with the reason when the body is not a valid stream of
    that label or does not decompress to exactly ``length`` bytes.
    """
    if label in NONE_LABELS:
        out = body
    else:
        family = _FAMILIES.get(label)
        if family is None:
            raise ValueError("unknown compression label %r" % (label,))
        try:
            out = _DECOMPRESSORS[family](body, length)
        except (zlib.error, OSError, EOFError, zstandard.ZstdError) as e:
            raise ValueError("not a valid %s body: %s" % (label, e))
    if len(out) != length:
        raise ValueError("holds %d bytes, the metadata records %d"
                         % (len(out), length))
    return out


class _Chunks:
    """A file-like ``read`` over an iterator of chunks (for zstd)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._rest = memoryview(b'')

    def read(self, size: int = -1) -> bytes:
        if not self._rest:
            self._rest = memoryview(next(self._chunks, b''))
        if size < 0 or size >= len(self._rest):
            out, self._rest = self._rest, memoryview(b'')
        else:
            # A view moves on; only the part read is copied.
            out, self._rest = self._rest[:size], self._rest[size:]
        # Bytes, not the view: zstd keeps what read() returned.
        return bytes(out)

    def peek(self, size: int) -> bytes:
        """The first ``size`` bytes, or fewer, left for the next read."""
        if not self._rest:
            self._rest = memoryview(next(self._chunks, b''))
        return bytes(self._rest[:size])


def _zlib_stream(chunks, piece):
    dec = zlib.decompressobj()
    for chunk in chunks:
        if dec.eof:
            if chunk:
                raise ValueError("bytes follow the zlib stream")
            continue
        while chunk:
            out = dec.decompress(chunk, piece)
            chunk = dec.unconsumed_tail
            if out:
                yield out
            if dec.eof:
                if chunk or dec.unused_data:
                    raise ValueError("bytes follow the zlib stream")
                break
    out = dec.flush()
    if out:
        yield out
    if not dec.eof:
        raise ValueError("the zlib stream is truncated")


def _bz2_stream(chunks, piece):
    dec = bz2.BZ2Decompressor()
    for chunk in chunks:
        if dec.eof:
            if chunk:
                raise ValueError("bytes follow the bz2 stream")
            continue
        data = chunk
        while not dec.eof:
            out = dec.decompress(data, max_length=piece)
            data = b''
            if out:
                yield out
            if dec.needs_input:
                break
        if dec.eof and dec.unused_data:
            raise ValueError("bytes follow the bz2 stream")
    if not dec.eof:
        raise ValueError("the bz2 stream is truncated")


# A zstd frame header is at most this long (magic, descriptor, window,
# dictionary id, content size).
_ZSTD_MAX_HEADER = 18


def _zstd_stream(chunks, piece, length):
    source = _Chunks(chunks)
    head = source.peek(_ZSTD_MAX_HEADER)
    if head:
        size = zstandard.frame_content_size(head)
        if size > length:
            # Refused from the header alone, before allocating anything.
            raise ValueError("the zstd frame says %d bytes, the metadata %d"
                             % (size, length))
    dctx = zstandard.ZstdDecompressor()
    # read_to_iter holds an input buffer of read_size.
    yield from dctx.read_to_iter(source, read_size=piece, write_size=piece)


def _pieces_of(chunks: Iterable[bytes], piece_size: int
               ) -> Iterator[Union[bytes, memoryview]]:
    """Chunks cut to at most piece_size (views: nothing is copied)."""
    for chunk in chunks:
        if len(chunk) <= piece_size:
            yield chunk
            continue
        view = memoryview(chunk)
        for start in range(0, len(chunk), piece_size):
            yield view[start:start + piece_size]


def decompress_stream(label: str, chunks: Iterable[bytes], length: int,
                      piece_size: int) -> Iterator[Union[bytes, memoryview]]:
    """The uncompressed body of ``chunks``, in pieces of at most piece_size.

    Exactly ``length`` bytes in all, or ValueError saying what is wrong;
    never more than a piece is held, whatever the body claims.
    """
    if label in NONE_LABELS:
        pieces: Iterator[Union[bytes, memoryview]] = _pieces_of(
            chunks, piece_size)
    else:
        family = _FAMILIES.get(label)
        if family is None:
            raise ValueError("unknown compression label %r" % (label,))
        pieces = (_zstd_stream(chunks, piece_size, length)
                  if family == 'zstd' else
                  {'zlib': _zlib_stream, 'bz2': _bz2_stream}[family](
                      chunks, piece_size))
    total = 0
    try:
        for out in pieces:
            total += len(out)
            if total > length:
                raise ValueError("decompresses to more than the recorded "
                                 "%d bytes" % length)
            yield out
    except (zlib.error, OSError, EOFError, zstandard.ZstdError) as e:
        raise ValueError("not a valid %s body: %s" % (label, e))
    if total != length:
        raise ValueError("holds %d bytes, the metadata records %d"
                         % (total, length))
