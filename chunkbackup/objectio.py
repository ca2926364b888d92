"""Writer and reader objects, and stream pieces, for remote drivers.

Whole bodies: for Cinder's ``get_object_writer`` contract an object store
(Swift, GCS, S3) collects what ``write`` receives and uploads it once the
``with`` block exits cleanly, and never otherwise: a failed write leaves
no object behind.

Streams: ``put_object_stream`` hooks get an iterator of chunks and must
never hold the whole object. ``peek`` says whether it fits in one request,
``parts`` cuts it into a store's part size (one part buffer),
``ChunkFile`` hands it to a client that reads a file, ``MD5Tap`` hashes
what passes. ``ChunkReader`` and ``RangedReader`` are readers that fetch
a body piece by piece.
"""
import hashlib
from typing import (Any, Callable, Iterable, Iterator, List, Optional, Tuple,
                    Union)

Buffer = Union[bytes, bytearray, memoryview]


class BufferedWriter:
    """Collects ``write`` calls; ``upload(body)`` on a clean exit only."""

    def __init__(self, upload: Callable[[bytes], None]):
        self._upload = upload
        self._parts: List[bytes] = []

    def __enter__(self):
        return self

    def write(self, data: Union[bytes, bytearray, memoryview]) -> None:
        # Keep a copy of mutable buffers: the caller may reuse them.
        self._parts.append(data if isinstance(data, bytes) else bytes(data))

    def __exit__(self, exc_type, exc, tb):
        parts, self._parts = self._parts, []
        if exc_type is None:
            # The engine writes one bytes object: no copy for it.
            self._upload(parts[0] if len(parts) == 1 else b''.join(parts))
        return False


class Reader:
    """Reads what ``download()`` returns: the whole body, fetched once.

    ``read()`` returns the rest of it, ``read(size)`` at most ``size``
    bytes of it (b'' at the end), so the store can hand it on in chunks.
    """

    def __init__(self, download: Callable[[], bytes]):
        self._download = download
        self._body: Optional[bytes] = None
        self._offset = 0

    def __enter__(self):
        return self

    def read(self, size: int = -1) -> bytes:
        if self._body is None:
            self._body = self._download()
        body = self._body
        start = self._offset
        if start == 0 and (size is None or size < 0 or size >= len(body)):
            self._offset = len(body)
            return body  # the common case: no copy
        end = (len(body) if size is None or size < 0
               else min(len(body), start + size))
        self._offset = end
        return body[start:end]

    def __exit__(self, exc_type, exc, tb):
        self._body = None
        return False


def peek(chunks: Iterable[Buffer], limit: int
         ) -> Tuple[Optional[bytes], Iterator[bytes]]:
    """``(body, rest)``: the whole body if it has at most ``limit`` bytes.

    Otherwise ``body`` is None and ``rest`` yields every chunk, the ones
    already read first; at most ``limit`` bytes and one chunk are held.
    Chunks are copied as they are read (a producer may reuse a buffer).
    """
    iterator = iter(chunks)
    head: List[bytes] = []
    held = 0
    for chunk in iterator:
        if not chunk:
            continue
        head.append(bytes(chunk))
        held += len(chunk)
        if held > limit:
            return None, _chain(head, iterator)
    body = head[0] if len(head) == 1 else b''.join(head)
    return body, iter(())


def _chain(head: List[bytes], rest: Iterator[Buffer]) -> Iterator[bytes]:
    # The head is released as it is sent.
    yield from handed_over(head, (
        chunk if isinstance(chunk, bytes) else bytes(chunk)
        for chunk in rest if chunk))


def handed_over(head: List[Any], rest: Iterable[Any]) -> Iterator[Any]:
    """``head``'s items, each dropped from it as it goes, then ``rest``'s."""
    while head:
        yield head.pop(0)
    yield from rest


def parts(chunks: Iterable[Buffer], size: int) -> Iterator[bytearray]:
    """The stream cut into pieces of exactly ``size`` bytes, the last shorter.

    Each part is a buffer of its own, handed over as it is (no copy of
    it is made or kept). An empty stream yields nothing.
    """
    buffer = bytearray()
    for chunk in chunks:
        view = memoryview(chunk).cast('B')
        while len(buffer) + len(view) >= size:
            take = size - len(buffer)
            buffer += view[:take]
            yield buffer
            buffer = bytearray()
            view = view[take:]
        buffer += view
    if buffer:
        yield buffer


class MD5Tap:
    """Passes chunks on and keeps the MD5 of everything that went by."""

    def __init__(self, chunks: Iterable[Buffer]):
        self._chunks = chunks
        self._md5 = hashlib.md5(usedforsecurity=False)
        self.size = 0

    def __iter__(self) -> Iterator[Buffer]:
        for chunk in self._chunks:
            self._md5.update(chunk)
            self.size += len(chunk)
            yield chunk

    def hexdigest(self) -> str:
        return self._md5.hexdigest()

    def digest(self) -> bytes:
        return self._md5.digest()


class ChunkFile:
    """A read-only file over a stream of chunks, for clients that read files.

    ``read(size)`` holds at most one chunk beyond what it returns.
    """

    def __init__(self, chunks: Iterable[Buffer]):
        self._chunks = iter(chunks)
        self._pending = memoryview(b'')
        self._position = 0

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def read(self, size: Optional[int] = -1) -> bytes:
        pieces: List[memoryview] = []
        got = 0
        while size is None or size < 0 or got < size:
            if not self._pending:
                chunk = next(self._chunks, None)
                if chunk is None:
                    break
                self._pending = memoryview(chunk).cast('B')
                continue
            want = (len(self._pending) if size is None or size < 0
                    else min(size - got, len(self._pending)))
            pieces.append(self._pending[:want])
            got += want
            self._pending = self._pending[want:]
        self._position += got
        return b''.join(pieces)  # one copy


class ChunkReader:
    """A reader over ``open_chunks()``: an iterator of the body's chunks.

    Opened on the first ``read``; ``read(size)`` returns at most ``size``
    bytes, b'' at the end, holding one chunk of the store's.
    """

    def __init__(self, open_chunks: Callable[[], Iterator[bytes]],
                 close: Optional[Callable[[], None]] = None):
        self._open = open_chunks
        self._close = close
        self._file: Optional[ChunkFile] = None

    def __enter__(self):
        return self

    def read(self, size: int = -1) -> bytes:
        if self._file is None:
            self._file = ChunkFile(self._open())
        return self._file.read(size)

    def __exit__(self, exc_type, exc, tb):
        self._file = None
        if self._close is not None:
            self._close()
        return False


class RangedReader:
    """A reader that asks ``read_range(offset, length)`` for each piece.

    For stores whose streamed download is a series of ranged requests;
    ``read()`` of the whole body uses ``read_all`` when given.
    """

    def __init__(self, read_range: Callable[[int, int], bytes],
                 piece: int,
                 read_all: Optional[Callable[[], bytes]] = None):
        self._read_range = read_range
        self._piece = piece
        self._read_all = read_all
        self._offset = 0
        self._done = False

    def __enter__(self):
        return self

    def read(self, size: int = -1) -> bytes:
        if self._done:
            return b''
        if (size is None or size < 0) and self._offset == 0 and \
                self._read_all is not None:
            # The whole body in one request (checked whole, if the store
            # can check it).
            self._done = True
            return self._read_all()
        if size is None or size < 0:
            pieces: List[bytes] = []
            while True:
                piece = self.read(self._piece)
                if not piece:
                    return b''.join(pieces)
                pieces.append(piece)
        body = self._read_range(self._offset, size)
        self._offset += len(body)
        if len(body) < size:
            self._done = True
        return body

    def __exit__(self, exc_type, exc, tb):
        return False
