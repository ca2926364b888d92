"""Retries of transient storage failures, with backoff and jitter."""
import random
import time
from typing import Callable, Generator, List, Optional

from oslo_log import log as logging

from chunkbackup import exception
from chunkbackup.storage import base

LOG = logging.getLogger(__name__)


class RetryingStore(base.ForwardingStore):
    """Retries TransientStorageError with exponential backoff and jitter.

    Each retry is logged once, with the attempt number and the delay; after
    ``retries`` retries the last error is raised unchanged. A stream that
    breaks off is opened again and the bytes already delivered skipped.
    """

    def __init__(self, inner: base.ObjectStore, retries: int, backoff: float,
                 max_delay: float,
                 sleep: Callable[[float], None] = time.sleep,
                 rng: Optional[random.Random] = None):
        super().__init__(inner)
        self.retries = retries
        self.backoff = backoff
        self.max_delay = max_delay
        self._sleep = sleep
        self._rng = rng or random.Random()

    def _wait(self, attempt: int, operation: str, target: str,
              error: exception.TransientStorageError) -> int:
        """Sleep before retry ``attempt + 1``, or raise when none is left."""
        if attempt >= self.retries:
            raise error
        attempt += 1
        # "Full jitter": spreads the retries of parallel workers.
        delay = min(self.max_delay, self.backoff * (2 ** (attempt - 1)))
        delay = self._rng.uniform(delay / 2, delay)
        LOG.warning('Retrying %(op)s of %(target)s in %(delay).2fs '
                    '(retry %(n)d of %(max)d) after: %(err)s',
                    {'op': operation, 'target': target, 'delay': delay,
                     'n': attempt, 'max': self.retries, 'err': error})
        self._sleep(delay)
        return attempt

    def _retry(self, operation, target, fn, *args):
        attempt = 0
        while True:
            try:
                return fn(*args)
            except exception.TransientStorageError as e:
                attempt = self._wait(attempt, operation, target, e)

    def ensure_container(self, container: str) -> None:
        self._retry('put_container', container,
                    self.inner.ensure_container, container)

    def put(self, container: str, name: str, body: bytes,
            extra_metadata: Optional[dict] = None) -> None:
        self._retry('put', base.target_of(container, name), self.inner.put,
                    container, name, body, extra_metadata)

    def put_stream(self, container: str, name: str, produce: base.Produce,
                   extra_metadata: Optional[dict] = None) -> None:
        self._retry('put', base.target_of(container, name),
                    self.inner.put_stream, container, name, produce,
                    extra_metadata)

    def get(self, container: str, name: str,
            extra_metadata: Optional[dict] = None) -> bytes:
        return self._retry('get', base.target_of(container, name),
                           self.inner.get, container, name, extra_metadata)

    def get_stream(self, container: str, name: str,
                   extra_metadata: Optional[dict] = None,
                   chunk_size: int = base.DEFAULT_CHUNK_SIZE
                   ) -> Generator[bytes, None, None]:
        delivered = 0
        attempt = 0
        while True:
            skip = delivered
            try:
                for chunk in self.inner.get_stream(container, name,
                                                   extra_metadata,
                                                   chunk_size):
                    if skip:
                        # Delivered by an earlier attempt: objects never
                        # change, so the same bytes come first again.
                        if len(chunk) <= skip:
                            skip -= len(chunk)
                            continue
                        chunk = chunk[skip:]
                        skip = 0
                    delivered += len(chunk)
                    yield chunk
                return
            except exception.TransientStorageError as e:
                attempt = self._wait(attempt, 'get',
                                     base.target_of(container, name), e)

    def get_range(self, container: str, name: str, offset: int,
                  length: int, extra_metadata: Optional[dict] = None
                  ) -> bytes:
        return self._retry('get', base.target_of(container, name),
                           self.inner.get_range, container, name, offset,
                           length, extra_metadata)

    def object_size(self, container: str, name: str,
                    extra_metadata: Optional[dict] = None) -> int:
        return self._retry('head', base.target_of(container, name),
                           self.inner.object_size, container, name,
                           extra_metadata)

    def list(self, container: str, prefix: str) -> List[str]:
        return self._retry('list', '%s/%s*' % (container, prefix),
                           self.inner.list, container, prefix)

    def copy(self, container: str, name: str, dest_container: str,
             dest_name: str) -> None:
        # Idempotent: the same bytes under the same name again.
        self._retry('copy', base.target_of(container, name),
                    self.inner.copy, container, name, dest_container,
                    dest_name)

    def delete(self, container: str, name: str) -> None:
        self._retry('delete', base.target_of(container, name),
                    self.inner.delete, container, name)
