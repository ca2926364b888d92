"""Writer and reader objects for drivers whose store takes whole bodies.

Object stores (Swift, GCS, S3) upload a body in one request (or their
client splits it), so a writer collects what ``write`` receives and
uploads it once the ``with`` block exits cleanly, and never otherwise:
a failed write leaves no object behind.
"""
from typing import Callable, List, Optional, Union


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
