"""Object body codecs, by the label stored in ``_metadata``.

The labels and bodies are Cinder's (doc/format.md): ``zlib``/``gzip`` is one
zlib stream, ``bz2``/``bzip2`` one bz2 stream, ``zstd`` one frame that carries
its content size. Decompression is always bounded by the length the metadata
records, so a corrupt or hostile body cannot make us allocate more than one
object's worth of memory.
"""
import bz2
import zlib
from typing import Callable, Dict, Optional, Tuple, Union

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
            # write_content_size: Cinder's reader needs it in the header.
            cctx = zstandard.ZstdCompressor(level=self.level,
                                            write_content_size=True)
            self._local.zstd = cctx
        return cctx.compress(data)

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

    def compress(self, data: Union[bytes, memoryview]
                 ) -> Tuple[str, Union[bytes, memoryview]]:
        """Return (label, body): the raw data labelled none when smaller."""
        if self._compress is None:
            return 'none', data
        if self.family != 'zstd' and self._looks_incompressible(data):
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
