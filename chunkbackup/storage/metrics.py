"""Counts, bytes and seconds of every storage operation.

``MeteredStore`` records each attempt the driver makes (it sits inside the
retries), so a retried put counts twice. ``StoreMetrics.snapshot()`` is
what tests and an exporter read.
"""
import dataclasses
import threading
import time
from typing import Callable, Dict, Generator, List, Optional

from chunkbackup.storage import base

# 'get' counts whole, streamed and ranged reads; 'head' asks for a size.
OPERATIONS = ('ensure_container', 'put', 'get', 'head', 'list', 'delete',
              'copy')


@dataclasses.dataclass
class OperationStats:
    calls: int = 0      # attempts, failed ones included
    errors: int = 0     # attempts that raised
    bytes: int = 0      # body bytes sent (put) or received (get)
    seconds: float = 0.0


class StoreMetrics:
    """Per-operation totals, safe to update from many threads."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._stats = {op: OperationStats() for op in OPERATIONS}
        self._lock = threading.Lock()

    def record(self, operation: str, seconds: float, nbytes: int = 0,
               failed: bool = False) -> None:
        with self._lock:
            stats = self._stats[operation]
            stats.calls += 1
            stats.errors += int(failed)
            stats.bytes += nbytes
            stats.seconds += seconds

    def snapshot(self) -> Dict[str, OperationStats]:
        """A copy of the totals, by operation."""
        with self._lock:
            return {op: dataclasses.replace(stats)
                    for op, stats in self._stats.items()}


class MeteredStore(base.ForwardingStore):

    def __init__(self, inner: base.ObjectStore, metrics: StoreMetrics):
        super().__init__(inner)
        self.metrics = metrics

    def _timed(self, operation, nbytes, fn, *args):
        start = self.metrics.clock()
        try:
            result = fn(*args)
        except BaseException:
            self.metrics.record(operation, self.metrics.clock() - start,
                                failed=True)
            raise
        if callable(nbytes):
            nbytes = nbytes(result)
        self.metrics.record(operation, self.metrics.clock() - start, nbytes)
        return result

    def ensure_container(self, container: str) -> None:
        self._timed('ensure_container', 0, self.inner.ensure_container,
                    container)

    def put(self, container: str, name: str, body: bytes,
            extra_metadata: Optional[dict] = None) -> None:
        self._timed('put', len(body), self.inner.put, container, name, body,
                    extra_metadata)

    def put_stream(self, container: str, name: str, produce: base.Produce,
                   extra_metadata: Optional[dict] = None) -> None:
        sent = [0]

        def counted():
            sent[0] = 0  # each attempt of the caller's retries anew
            for chunk in produce():
                sent[0] += len(chunk)
                yield chunk
        self._timed('put', lambda _: sent[0], self.inner.put_stream,
                    container, name, counted, extra_metadata)

    def get(self, container: str, name: str,
            extra_metadata: Optional[dict] = None) -> bytes:
        return self._timed('get', len, self.inner.get, container, name,
                           extra_metadata)

    def get_stream(self, container: str, name: str,
                   extra_metadata: Optional[dict] = None,
                   chunk_size: int = base.DEFAULT_CHUNK_SIZE
                   ) -> Generator[bytes, None, None]:
        # Time spent in the consumer between chunks is not storage time.
        received = 0
        busy = 0.0
        chunks = self.inner.get_stream(container, name, extra_metadata,
                                       chunk_size)
        while True:
            start = self.metrics.clock()
            try:
                chunk = next(chunks)
            except StopIteration:
                busy += self.metrics.clock() - start
                self.metrics.record('get', busy, received)
                return
            except BaseException:
                busy += self.metrics.clock() - start
                self.metrics.record('get', busy, received, failed=True)
                raise
            busy += self.metrics.clock() - start
            received += len(chunk)
            yield chunk

    def get_range(self, container: str, name: str, offset: int,
                  length: int, extra_metadata: Optional[dict] = None
                  ) -> bytes:
        return self._timed('get', len, self.inner.get_range, container,
                           name, offset, length, extra_metadata)

    def object_size(self, container: str, name: str,
                    extra_metadata: Optional[dict] = None) -> int:
        return self._timed('head', 0, self.inner.object_size, container,
                           name, extra_metadata)

    def list(self, container: str, prefix: str) -> List[str]:
        return self._timed('list', 0, self.inner.list, container, prefix)

    def copy(self, container: str, name: str, dest_container: str,
             dest_name: str) -> None:
        self._timed('copy', 0, self.inner.copy, container, name,
                    dest_container, dest_name)

    def delete(self, container: str, name: str) -> None:
        self._timed('delete', 0, self.inner.delete, container, name)
