"""Limits on the bytes per second of object bodies sent and received.

A ``TokenBucket`` is one limit, shared by every thread (and, through
``build_store``, every driver) of the process. ``RateLimitedStore``
charges what goes up to its upload buckets and what comes down to its
download buckets, chunk by chunk as streams pass, so a limit holds for
streamed, whole and ranged transfers alike.
"""
import threading
import time
from typing import Callable, Generator, Optional, Sequence, Tuple

from chunkbackup.storage import base


class TokenBucket:
    """Bytes per second, with bursts of up to ``burst`` seconds' worth.

    ``take(n)`` may overdraw: a body larger than the burst goes at once and
    later callers wait until the debt is paid, so the average holds for
    bodies of any size, shared by every thread of the driver.
    """

    def __init__(self, rate: float,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 burst: float = 1.0):
        if rate <= 0:
            raise ValueError('a token bucket needs a positive rate')
        if burst < 0:
            raise ValueError('a token bucket needs a burst >= 0 seconds')
        self.rate = float(rate)
        self.capacity = self.rate * burst
        self._tokens = self.capacity
        self._clock = clock
        self._sleep = sleep
        self._last = clock()
        self._lock = threading.Lock()

    def take(self, count: int) -> float:
        """Spend ``count`` tokens, waiting while in debt; returns the wait."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity,
                               self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= count
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait


def _charge(buckets: Tuple[TokenBucket, ...], count: int) -> None:
    for bucket in buckets:
        bucket.take(count)


class RateLimitedStore(base.ForwardingStore):
    """Holds the bodies of puts and gets to their buckets' rates.

    ``bucket`` limits both directions together; ``upload`` and
    ``download`` buckets one direction each. A put is charged before each
    chunk goes (the wait is where the link would be busy), a get after
    each chunk came.
    """

    def __init__(self, inner: base.ObjectStore,
                 bucket: Optional[TokenBucket] = None,
                 upload: Sequence[TokenBucket] = (),
                 download: Sequence[TokenBucket] = ()):
        super().__init__(inner)
        self.bucket = bucket
        both = (bucket,) if bucket is not None else ()
        self.upload = both + tuple(upload)
        self.download = both + tuple(download)

    def put(self, container: str, name: str, body: bytes,
            extra_metadata: Optional[dict] = None) -> None:
        _charge(self.upload, len(body))
        self.inner.put(container, name, body, extra_metadata)

    def put_stream(self, container: str, name: str, produce: base.Produce,
                   extra_metadata: Optional[dict] = None) -> None:
        def limited():
            for chunk in produce():
                _charge(self.upload, len(chunk))
                yield chunk
        self.inner.put_stream(container, name, limited, extra_metadata)

    def get(self, container: str, name: str,
            extra_metadata: Optional[dict] = None) -> bytes:
        body = self.inner.get(container, name, extra_metadata)
        _charge(self.download, len(body))
        return body

    def get_stream(self, container: str, name: str,
                   extra_metadata: Optional[dict] = None,
                   chunk_size: int = base.DEFAULT_CHUNK_SIZE
                   ) -> Generator[bytes, None, None]:
        for chunk in self.inner.get_stream(container, name, extra_metadata,
                                           chunk_size):
            _charge(self.download, len(chunk))
            yield chunk

    def get_range(self, container: str, name: str, offset: int,
                  length: int, extra_metadata: Optional[dict] = None
                  ) -> bytes:
        body = self.inner.get_range(container, name, offset, length,
                                    extra_metadata)
        _charge(self.download, len(body))
        return body
