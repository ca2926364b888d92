"""Block maps: the SHA-256 of every block of a volume, compact and streamed.

A block map holds 32 raw bytes a block, in volume order. Small maps stay in
memory; past a budget the map spills to an unlinked temporary file and is
read back with ``pread``, so a terabyte volume (a gigabyte of digests) costs
a few megabytes of memory. The page cache holds the file, not our heap.

``_sha256file`` documents are written and read as streams of chunks: a
terabyte volume's document is 2.4 GB of JSON, which never exists in memory
as text or as a list of strings. The bytes written are exactly what
``json.dumps(doc, sort_keys=True, indent=2)`` gives, as Cinder writes them.
"""
import json
import os
import re
import tempfile
from typing import Callable, Iterable, Iterator, Optional

from chunkbackup import backupformat as fmt
from chunkbackup import exception

DIGEST_SIZE = fmt.DIGEST_SIZE
# Digests held in memory before the map spills to a temporary file.
DEFAULT_MEMORY_BUDGET = 16 * 2 ** 20
# Digests per chunk when a map is streamed (1 MiB of digests, 2 MiB of hex).
STREAM_BLOCKS = 32768


class BlockMap:
    """Digests of a volume's blocks in order; append, then read by range."""

    def __init__(self, block_size: int,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET,
                 temp_dir: Optional[str] = None):
        self.block_size = block_size
        self.memory_budget = memory_budget
        self.temp_dir = temp_dir
        self._memory = bytearray()
        self._fd: Optional[int] = None
        self._spilled = 0  # bytes in the file
        self._pending = bytearray()  # appended, not yet in the file

    @property
    def block_count(self) -> int:
        return (self._spilled + len(self._pending) + len(self._memory)) \
            // DIGEST_SIZE

    @property
    def spilled(self) -> bool:
        return self._fd is not None

    def append(self, digests) -> None:
        if self._fd is None:
            self._memory += digests
            if len(self._memory) > self.memory_budget:
                self._spill()
            return
        self._pending += digests
        if len(self._pending) >= 2 ** 20:
            self._flush()

    def _spill(self) -> None:
        fd, path = tempfile.mkstemp(prefix='chunkbackup-blockmap-',
                                    dir=self.temp_dir)
        os.unlink(path)  # nothing to clean up after a crash
        self._fd = fd
        self._pending = self._memory
        self._memory = bytearray()
        self._flush()

    def _flush(self) -> None:
        view = memoryview(self._pending)
        while view:
            written = os.pwrite(self._fd, view, self._spilled)
            self._spilled += written
            view = view[written:]
        self._pending = bytearray()

    def read(self, first: int, count: int) -> bytes:
        """The digests of blocks [first, first + count), fewer at the end."""
        start = first * DIGEST_SIZE
        end = min(start + count * DIGEST_SIZE,
                  self.block_count * DIGEST_SIZE)
        if start >= end:
            return b''
        if self._fd is None:
            return bytes(self._memory[start:end])
        if end > self._spilled:
            self._flush()
        parts = []
        while start < end:
            data = os.pread(self._fd, end - start, start)
            if not data:
                raise OSError('block map temporary file is short')
            parts.append(data)
            start += len(data)
        return b''.join(parts)

    def digest(self, index: int) -> bytes:
        return self.read(index, 1)

    def chunks(self, first: int = 0, count: Optional[int] = None,
               blocks_per_chunk: int = STREAM_BLOCKS) -> Iterator[bytes]:
        """Digests of a range of blocks, a chunk at a time, in order."""
        end = self.block_count if count is None else min(
            self.block_count, first + count)
        for start in range(first, end, blocks_per_chunk):
            yield self.read(start, min(blocks_per_chunk, end - start))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._memory = bytearray()
        self._pending = bytearray()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        fd = getattr(self, '_fd', None)
        if fd is not None:
            os.close(fd)


# ----------------------------------------------------------------------
# Writing a _sha256file.

_ITEM_SEPARATOR = '",\n    "'


def sha256file_chunks(block_map: BlockMap,
                      common: dict) -> Callable[[], Iterator[bytes]]:
    """A producer of the ``_sha256file`` document, chunk by chunk.

    Calling it again starts again (a retried upload replays it).
    """
    doc = dict(common)
    doc['version'] = fmt.VERSION
    doc['chunk_size'] = block_map.block_size
    doc['sha256s'] = []
    text = json.dumps(doc, sort_keys=True, indent=2)
    marker = '"sha256s": []'
    at = text.index(marker) + len(marker) - 1  # just before the ']'
    head, tail = text[:at], text[at:]

    def produce() -> Iterator[bytes]:
        yield head.encode('ascii')
        separator = '\n    "'
        any_digest = False
        for chunk in block_map.chunks():
            if not chunk:
                continue
            # One hex string per digest, separated by newlines, then the
            # newlines widened to JSON's: all in C, no per-digest objects.
            hexes = chunk.hex('\n', DIGEST_SIZE).replace('\n',
                                                         _ITEM_SEPARATOR)
            yield (separator + hexes + '"').encode('ascii')
            separator = _ITEM_SEPARATOR[1:]
            any_digest = True
        yield (('\n  ' if any_digest else '') + tail).encode('utf-8')
    return produce


# ----------------------------------------------------------------------
# Reading a _sha256file.

_KEY = re.compile(rb'"sha256s"\s*:\s*\[')
_WHITESPACE = b' \t\r\n'
_UNIT = 67  # '"' + 64 hex digits + '"' + ','
# A document's other keys are a few hundred bytes: anything far larger
# before "sha256s" is not a _sha256file.
_MAX_HEAD = 16 * 2 ** 20


def read_sha256file(chunks: Iterable[bytes], backup_id: str,
                    object_name: str, memory_budget: int =
                    DEFAULT_MEMORY_BUDGET,
                    temp_dir: Optional[str] = None) -> BlockMap:
    """Parse a streamed ``_sha256file`` into a BlockMap, checking it.

    The ``sha256s`` array is decoded a chunk at a time (strip whitespace,
    check the shape of each ``"<64 hex>",`` item, decode the hex); the rest
    of the document is parsed as JSON and checked as any document is.
    """
    def invalid(reason):
        return exception.InvalidBackupMetadata(
            backup_id=backup_id, object=object_name, reason=reason)

    stream = iter(chunks)
    head = bytearray()
    match = None
    for chunk in stream:
        searched = max(0, len(head) - 32)
        head += chunk
        match = _KEY.search(head, searched)
        if match or len(head) > _MAX_HEAD:
            break
    if match is None:
        # Not the shape we stream; a small document still parses whole.
        if len(head) > _MAX_HEAD:
            raise invalid('it has no "sha256s" list')
        sha = fmt.parse_sha256file(bytes(head), backup_id, object_name)
        block_map = BlockMap(sha.chunk_size, memory_budget, temp_dir)
        block_map.append(sha.digests)
        return block_map
    rest = bytes(head[match.end():])
    head = bytes(head[:match.end()])
    digests = _DigestDecoder(invalid, memory_budget, temp_dir)
    tail = digests.feed(rest)
    for chunk in stream:
        if tail is not None:
            tail += chunk
            continue
        tail = digests.feed(chunk)
    if tail is None:
        raise invalid('the "sha256s" list never ends: the object is '
                      'truncated')
    header = fmt.parse_sha256file(head + b']' + bytes(tail), backup_id,
                                  object_name)
    return digests.finish(header.chunk_size)


class _DigestDecoder:
    """Turns the text of a ``sha256s`` array into raw digests."""

    def __init__(self, invalid, memory_budget, temp_dir):
        self.invalid = invalid
        self.carry = b''
        self.map_args = (memory_budget, temp_dir)
        self.parts = BlockMap(1, *self.map_args)

    def feed(self, chunk: bytes) -> Optional[bytearray]:
        """Decode a chunk; once the array ends, return what follows it."""
        end = chunk.find(b']')
        body = chunk if end < 0 else chunk[:end]
        text = self.carry + body.translate(None, _WHITESPACE)
        if end >= 0:
            if text:
                text += b','  # the last item has no comma of its own
            usable = len(text)
            if usable % _UNIT:
                raise self.invalid('the "sha256s" list holds an item that '
                                   'is not a quoted hex SHA-256')
        else:
            usable = len(text) - len(text) % _UNIT
        self._decode(text[:usable])
        self.carry = text[usable:]
        return None if end < 0 else bytearray(chunk[end + 1:])

    def _decode(self, units: bytes) -> None:
        count = len(units) // _UNIT
        if not count:
            return
        if (units[0::_UNIT] != b'"' * count or
                units[65::_UNIT] != b'"' * count or
                units[66::_UNIT] != b',' * count):
            raise self.invalid('the "sha256s" list holds an item that is '
                               'not a quoted hex SHA-256')
        try:
            self.parts.append(bytes.fromhex(
                units.translate(None, b'",').decode('ascii')))
        except (ValueError, UnicodeDecodeError):
            raise self.invalid('the "sha256s" list holds a value that is '
                               'not hex')

    def finish(self, block_size: int) -> BlockMap:
        self.parts.block_size = block_size
        return self.parts
