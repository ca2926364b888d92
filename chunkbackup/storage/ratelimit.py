"""A limit on the bytes per second of object bodies sent and received."""
import threading
import time
from typing import Callable, Generator, Optional

from chunkbackup.storage import base


class TokenBucket:
    """Bytes per second, with bursts of up to one second's worth.

    ``take(n)`` may overdraw: a body larger than the burst goes at once and
    later callers wait until the debt is paid, so the average holds for
    bodies of any size, shared by every thread of the driver.
    """

    def __init__(self, rate: float,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        if rate <= 0:
            raise ValueError('a token bucket needs a positive rate')
        self.rate = float(rate)
        self._tokens = self.rate
        self._clock = clock
        self._sleep = sleep
        self._last = clock()
        self._lock = threading.Lock()

    def take(self, count: int) -> float:
        """Spend ``count`` tokens, waiting while in debt; returns the wait."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.rate,
                               self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= count
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait


class RateLimitedStore(base.ForwardingStore):
    """Holds the bodies of puts and gets to ``bucket``'s rate."""

    def __init__(self, inner: base.ObjectStore, bucket: TokenBucket):
        super().__init__(inner)
        self.bucket = bucket

    def put(self, container: str, name: str, body: bytes,
            extra_metadata: Optional[dict] = None) -> None:
        self.bucket.take(len(body))
        self.inner.put(container, name, body, extra_metadata)

    def put_stream(self, container: str, name: str, produce: base.Produce,
                   extra_metadata: Optional[dict] = None) -> None:
        def limited():
            for chunk in produce():
                self.bucket.take(len(chunk))
                yield chunk
        self.inner.put_stream(container, name, limited, extra_metadata)

    def get(self, container: str, name: str,
            extra_metadata: Optional[dict] = None) -> bytes:
        body = self.inner.get(container, name, extra_metadata)
        self.bucket.take(len(body))
        return body

    def get_stream(self, container: str, name: str,
                   extra_metadata: Optional[dict] = None,
                   chunk_size: int = base.DEFAULT_CHUNK_SIZE
                   ) -> Generator[bytes, None, None]:
        for chunk in self.inner.get_stream(container, name, extra_metadata,
                                           chunk_size):
            self.bucket.take(len(chunk))
            yield chunk
