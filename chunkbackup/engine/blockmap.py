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
import array
import binascii
import json
import os
import re
import tempfile
from typing import Callable, Iterable, Iterator, List, Optional, Tuple

from chunkbackup import backupformat as fmt
from chunkbackup import checksums
from chunkbackup import exception

DIGEST_SIZE = fmt.DIGEST_SIZE
# Digests held in memory before the map spills to a temporary file.
DEFAULT_MEMORY_BUDGET = 16 * 2 ** 20
# Digests in a page: the unit a map keeps, spills and streams.
PAGE_BLOCKS = 1024
PAGE_BYTES = PAGE_BLOCKS * DIGEST_SIZE
_ZERO = -1
# Largest block size whose zero pages are kept as a flag.
MAX_COMPACT_BLOCK = 16 * 2 ** 20


class BlockMap:
    """Digests of a volume's blocks in order; append, then read by range.

    Digests are kept in pages of PAGE_BLOCKS. A page of nothing but the
    zero block's digest (most of a thin volume) is a flag, not 32 KiB;
    other pages stay in memory up to ``memory_budget`` bytes, then go to
    an unlinked temporary file.
    """

    def __init__(self, block_size: int,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET,
                 temp_dir: Optional[str] = None,
                 digests: checksums.Digests = checksums.PLAIN):
        self.block_size = block_size
        # How its digests were made: plain SHA-256, or keyed (encrypted).
        self.digests = digests
        self.memory_budget = memory_budget
        self.temp_dir = temp_dir
        # Only for block sizes a backup can use: a hostile document's
        # chunk_size must not cost a hash of gigabytes of zeros.
        self.zero_page = (digests.zero(block_size) * PAGE_BLOCKS
                          if 0 < block_size <= MAX_COMPACT_BLOCK else None)
        # Per full page: _ZERO, a file offset (>= 0), or -2 - the index of
        # a page held in memory.
        self._pages = array.array('q')
        self._memory: List[bytes] = []
        self._tail = bytearray()  # the last, incomplete page
        self._fd: Optional[int] = None
        self._file_size = 0
        self._unwritten: List[bytes] = []

    @property
    def block_count(self) -> int:
        return len(self._pages) * PAGE_BLOCKS + len(self._tail) // DIGEST_SIZE

    @property
    def spilled(self) -> bool:
        return self._fd is not None

    def append(self, digests: bytes) -> None:
        tail = self._tail
        tail += digests
        if len(tail) < PAGE_BYTES:
            return
        view = memoryview(tail)
        whole = len(tail) - len(tail) % PAGE_BYTES
        for start in range(0, whole, PAGE_BYTES):
            self._add_page(view[start:start + PAGE_BYTES])
        view.release()
        del tail[:whole]
        if self._unwritten:
            self._flush()

    def _add_page(self, page) -> None:
        # bytes.startswith is a memcmp; == against a memoryview is not.
        if self.zero_page is not None and self.zero_page.startswith(page):
            self._pages.append(_ZERO)
        elif (len(self._memory) + 1) * PAGE_BYTES <= self.memory_budget:
            self._pages.append(-2 - len(self._memory))
            self._memory.append(bytes(page))
        else:
            if self._fd is None:
                fd, path = tempfile.mkstemp(prefix='chunkbackup-blockmap-',
                                            dir=self.temp_dir)
                os.unlink(path)  # nothing to clean up after a crash
                self._fd = fd
            offset = self._file_size + len(self._unwritten) * PAGE_BYTES
            self._pages.append(offset)
            self._unwritten.append(bytes(page))

    def _descriptor(self) -> int:
        assert self._fd is not None, 'the block map has not spilled'
        return self._fd

    def _flush(self) -> None:
        fd = self._descriptor()
        data = memoryview(b''.join(self._unwritten))
        self._unwritten = []
        while data:
            written = os.pwrite(fd, data, self._file_size)
            self._file_size += written
            data = data[written:]

    def _page(self, index: int) -> bytes:
        if index == len(self._pages):
            return bytes(self._tail)
        where = self._pages[index]
        if where == _ZERO and self.zero_page is not None:
            return self.zero_page
        if where < 0:
            return self._memory[-2 - where]
        data = os.pread(self._descriptor(), PAGE_BYTES, where)
        if len(data) != PAGE_BYTES:
            raise OSError('block map temporary file is short')
        return data

    def page_is_zero(self, index: int) -> bool:
        return index < len(self._pages) and self._pages[index] == _ZERO

    def read(self, first: int, count: int) -> bytes:
        """The digests of blocks [first, first + count), fewer at the end."""
        end = min(first + count, self.block_count)
        if first >= end:
            return b''
        parts = []
        for index in range(first // PAGE_BLOCKS,
                           (end - 1) // PAGE_BLOCKS + 1):
            page = self._page(index)
            base = index * PAGE_BLOCKS
            lo = max(first - base, 0) * DIGEST_SIZE
            hi = (min(end - base, PAGE_BLOCKS)) * DIGEST_SIZE
            parts.append(page if lo == 0 and hi == len(page)
                         else page[lo:hi])
        return parts[0] if len(parts) == 1 else b''.join(parts)

    def digest(self, index: int) -> bytes:
        return self.read(index, 1)

    def pages(self) -> Iterator[Tuple[bytes, bool]]:
        """(digests, is the zero page) of every page, in order."""
        for index in range(len(self._pages) + (1 if self._tail else 0)):
            yield self._page(index), self.page_is_zero(index)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._memory = []
        self._tail = bytearray()

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

# json.dumps(indent=2) puts each digest of the list on a line of its own:
# an item is '\n    "<hex>"', and items are joined by ','.
_ITEM_HEAD = b'\n    "'
_ITEM_SEPARATOR = b'",\n    "'


class _ItemWriter:
    """The JSON list items of pages of digests, joined by commas."""

    def __init__(self, zero_page: Optional[bytes]):
        zero = zero_page[:DIGEST_SIZE] if zero_page else bytes(DIGEST_SIZE)
        zero_item = _ITEM_HEAD + zero.hex().encode() + b'"'
        # A thin volume's map is mostly zero pages: one precomputed text.
        self.zero_page_text = (zero_item + b',') * (PAGE_BLOCKS - 1) + \
            zero_item

    def items(self, page: bytes, is_zero: bool) -> bytes:
        if is_zero:
            return self.zero_page_text
        # One hex string per digest, separated by newlines, then the
        # newlines widened to JSON's: all in C, no per-digest objects.
        hexes = binascii.hexlify(page, b'\n', DIGEST_SIZE)
        return _ITEM_HEAD + hexes.replace(b'\n', _ITEM_SEPARATOR) + b'"'


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
    head, tail = text[:at].encode('utf-8'), text[at:].encode('utf-8')
    writer = _ItemWriter(block_map.zero_page)

    def produce() -> Iterator[bytes]:
        yield head
        pending = []  # joined into writes of about a MiB
        size = 0
        first = True
        for page, is_zero in block_map.pages():
            if not first:
                pending.append(b',')
            pending.append(writer.items(page, is_zero))
            size += len(pending[-1])
            first = False
            if size >= 2 ** 20:
                yield b''.join(pending)
                pending, size = [], 0
        yield b''.join(pending) + (b'' if first else b'\n  ') + tail
    return produce


# ----------------------------------------------------------------------
# Reading a _sha256file.

_KEY = re.compile(rb'"sha256s"\s*:\s*\[')
_CHUNK_SIZE = re.compile(rb'"chunk_size"\s*:\s*(\d{1,12})\s*[,}]')
_WHITESPACE = b' \t\r\n'
_UNIT = 67  # '"' + 64 hex digits + '"' + ','
# A document's other keys are a few hundred bytes: anything far larger
# before "sha256s" is not a _sha256file.
_MAX_HEAD = 16 * 2 ** 20


def read_sha256file(chunks: Iterable[bytes], backup_id: str,
                    object_name: str, memory_budget: int =
                    DEFAULT_MEMORY_BUDGET,
                    temp_dir: Optional[str] = None,
                    hashing: checksums.Digests = checksums.PLAIN
                    ) -> BlockMap:
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
        block_map = BlockMap(sha.chunk_size, memory_budget, temp_dir,
                             hashing)
        block_map.append(sha.digests)
        return block_map
    rest = bytes(head[match.end():])
    head_text = bytes(head[:match.end()])
    # Keys are sorted: chunk_size comes first, and lets runs of the zero
    # block's digest decode by one comparison.
    hint = _CHUNK_SIZE.search(head_text)
    block_size = int(hint.group(1)) if hint else 0
    if not 0 < block_size <= MAX_COMPACT_BLOCK:
        block_size = 0
    digests = _DigestDecoder(invalid, block_size, memory_budget, temp_dir,
                             hashing)
    tail = digests.feed(rest)
    for chunk in stream:
        if tail is not None:
            tail += chunk
            continue
        tail = digests.feed(chunk)
    if tail is None:
        raise invalid('the "sha256s" list never ends: the object is '
                      'truncated')
    header = fmt.parse_sha256file(head_text + b']' + bytes(tail), backup_id,
                                  object_name)
    if block_size and block_size != header.chunk_size:
        raise invalid('it names two chunk sizes')
    return digests.finish(header.chunk_size)


class _DigestDecoder:
    """Turns the text of a ``sha256s`` array into raw digests.

    Text laid out as ``json.dumps(indent=2)`` lays it (Cinder's and ours)
    is decoded by position, a page of the zero block's digest by one
    comparison; any other layout by stripping whitespace first.
    """

    def __init__(self, invalid, block_size, memory_budget, temp_dir,
                 digests=checksums.PLAIN):
        self.invalid = invalid
        self.carry = b''
        self.parts = BlockMap(block_size, memory_budget, temp_dir, digests)
        self.canonical = True
        self.zero_text = None
        if block_size:
            item = (_ITEM_HEAD + digests.zero(block_size).hex().encode() +
                    b'",')
            self.zero_text = item * PAGE_BLOCKS

    def feed(self, chunk: bytes) -> Optional[bytearray]:
        """Decode a chunk; once the array ends, return what follows it."""
        end = chunk.find(b']')
        body = chunk if end < 0 else chunk[:end]
        text = self.carry + body if self.carry else body
        if end < 0 and self.canonical:
            used = self._canonical(text)
            if used is not None:
                self.carry = text[used:]
                return None
            self.canonical = False
        text = text.translate(None, _WHITESPACE)
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

    def _canonical(self, text: bytes) -> Optional[int]:
        """Decode whole items of indent-2 text; None if laid out otherwise.

        An item is '\n    "<64 hex>",' (72 bytes).
        """
        used = len(text) - len(text) % _CANONICAL_UNIT
        view = memoryview(text)
        step = PAGE_BLOCKS * _CANONICAL_UNIT
        for start in range(0, used, step):
            units = view[start:min(start + step, used)]
            if self.zero_text is not None and \
                    self.zero_text.startswith(units):
                count = len(units) // _CANONICAL_UNIT
                self.parts.append(self.parts.zero_page[:count * DIGEST_SIZE])
                continue
            if not self._canonical_units(bytes(units)):
                if start:
                    return start
                return None
        return used

    def _canonical_units(self, units: bytes) -> bool:
        count = len(units) // _CANONICAL_UNIT
        for position, char in _CANONICAL_MARKS:
            if units[position::_CANONICAL_UNIT] != char * count:
                return False
        hexes = units.translate(None, _CANONICAL_NOISE)
        if len(hexes) != count * 2 * DIGEST_SIZE:
            # Noise inside the quotes, not between items.
            raise self.invalid('the "sha256s" list holds an item that is '
                               'not a quoted hex SHA-256')
        try:
            self.parts.append(binascii.unhexlify(hexes))
        except binascii.Error:
            raise self.invalid('the "sha256s" list holds a value that is '
                               'not hex')
        return True

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
            self.parts.append(binascii.unhexlify(
                units.translate(None, b'",')))
        except binascii.Error:
            raise self.invalid('the "sha256s" list holds a value that is '
                               'not hex')

    def finish(self, block_size: int) -> BlockMap:
        self.parts.block_size = block_size
        return self.parts


_CANONICAL_UNIT = 72
_CANONICAL_MARKS = ((0, b'\n'), (1, b' '), (2, b' '), (3, b' '), (4, b' '),
                    (5, b'"'), (70, b'"'), (71, b','))
_CANONICAL_NOISE = b'\n ",'
