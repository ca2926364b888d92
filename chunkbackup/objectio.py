"""Writer and reader objects for drivers whose store takes whole bodies.

Object stores (Swift, GCS, S3) upload a body in one request (or their
client splits it), so a writer collects what ``write`` receives and
uploads it once the ``with`` block exits cleanly, and never otherwise:
a failed write leaves no object behind.
"""
from typing import Callable


class BufferedWriter:
    """Collects ``write`` calls; ``upload(body)`` on a clean exit only."""

    def __init__(self, upload: Callable[[bytes], None]):
        self._upload = upload
        self._parts = []

    def __enter__(self):
        return self

    def write(self, data) -> None:
        # Keep a copy of mutable buffers: the caller may reuse them.
        self._parts.append(data if isinstance(data, bytes) else bytes(data))

    def __exit__(self, exc_type, exc, tb):
        parts, self._parts = self._parts, []
        if exc_type is None:
            # The engine writes one bytes object: no copy for it.
            self._upload(parts[0] if len(parts) == 1 else b''.join(parts))
        return False


class Reader:
    """``read()`` returns ``download()``: the whole body."""

    def __init__(self, download: Callable[[], bytes]):
        self._download = download

    def __enter__(self):
        return self

    def read(self) -> bytes:
        return self._download()

    def __exit__(self, exc_type, exc, tb):
        return False
