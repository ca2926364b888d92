"""The one seam between the engine and a driver's object I/O.

A driver supplies Cinder's hooks (``put_container``, ``get_object_writer``,
``get_object_reader``, ``get_container_entries``, ``delete_object``). The
engine never calls them directly: it calls an ``ObjectStore``, built from
the hooks by ``DriverStore`` and wrapped by the concerns every driver needs
(retries here; fault injection and metrics wrap the same interface). A
driver never knows it is being retried.
"""
import random
import socket
import time
from typing import Callable, List, Optional

from oslo_log import log as logging

from chunkbackup import exception
from chunkbackup import names

LOG = logging.getLogger(__name__)


class ObjectStore:
    """Five operations on named objects; every wrapper implements them."""

    def ensure_container(self, container: str) -> None:
        raise NotImplementedError

    def put(self, container: str, name: str, body: bytes,
            extra_metadata=None) -> None:
        raise NotImplementedError

    def get(self, container: str, name: str, extra_metadata=None) -> bytes:
        raise NotImplementedError

    def list(self, container: str, prefix: str) -> List[str]:
        raise NotImplementedError

    def delete(self, container: str, name: str) -> None:
        """Delete an object; deleting one that does not exist succeeds."""
        raise NotImplementedError


def default_is_transient(exc: BaseException) -> bool:
    """Failures that a later attempt may not meet."""
    if isinstance(exc, exception.TransientStorageError):
        return True
    if isinstance(exc, exception.ChunkBackupError):
        return False
    return isinstance(exc, (ConnectionError, TimeoutError, socket.timeout))


class DriverStore(ObjectStore):
    """Adapts a driver's Cinder-style hooks to ``ObjectStore``.

    Errors leave here as chunkbackup exceptions: transient ones (as the
    driver's ``is_transient_error`` judges them) as TransientStorageError,
    missing objects as StorageObjectNotFound, the rest as StorageError
    unless the driver already raised a chunkbackup error.
    """

    def __init__(self, driver):
        self.driver = driver

    def _call(self, operation, target, fn, *args, **kwargs):
        # Every name reaches a driver through here: check them once for all.
        names.check_relative('container', args[0])
        if operation not in ('put_container', 'list'):
            names.check_relative('object name', args[1])
        try:
            return fn(*args, **kwargs)
        except exception.ChunkBackupError as e:
            if (self.driver.is_transient_error(e) and
                    not isinstance(e, exception.TransientStorageError)):
                raise exception.TransientStorageError(
                    operation=operation, target=target, reason=e) from e
            raise
        except FileNotFoundError as e:
            raise exception.StorageObjectNotFound(
                operation=operation, target=target, reason=e) from e
        except Exception as e:
            cls = (exception.TransientStorageError
                   if self.driver.is_transient_error(e)
                   else exception.StorageError)
            raise cls(operation=operation, target=target,
                      reason='%s: %s' % (type(e).__name__, e)) from e

    def ensure_container(self, container):
        self._call('put_container', container,
                   self.driver.put_container, container)

    def _put(self, container, name, body, extra_metadata):
        writer = self.driver.get_object_writer(
            container, name, extra_metadata=extra_metadata)
        with writer:
            writer.write(body)

    def put(self, container, name, body, extra_metadata=None):
        self._call('put', '%s/%s' % (container, name), self._put,
                   container, name, body, extra_metadata)

    def _get(self, container, name, extra_metadata):
        reader = self.driver.get_object_reader(
            container, name, extra_metadata=extra_metadata)
        with reader:
            return reader.read()

    def get(self, container, name, extra_metadata=None):
        return self._call('get', '%s/%s' % (container, name), self._get,
                          container, name, extra_metadata)

    def list(self, container, prefix):
        return list(self._call('list', '%s/%s*' % (container, prefix),
                               self.driver.get_container_entries,
                               container, prefix))

    def delete(self, container, name):
        try:
            self._call('delete', '%s/%s' % (container, name),
                       self.driver.delete_object, container, name)
        except exception.StorageObjectNotFound:
            pass


class RetryingStore(ObjectStore):
    """Retries transient failures with exponential backoff and jitter.

    Each retry is logged once, with the attempt number and the delay; after
    ``retries`` retries the last error is raised unchanged.
    """

    def __init__(self, inner: ObjectStore, retries: int, backoff: float,
                 max_delay: float,
                 sleep: Callable[[float], None] = time.sleep,
                 rng: Optional[random.Random] = None):
        self.inner = inner
        self.retries = retries
        self.backoff = backoff
        self.max_delay = max_delay
        self._sleep = sleep
        self._rng = rng or random.Random()

    def _retry(self, operation, target, fn, *args):
        attempt = 0
        while True:
            try:
                return fn(*args)
            except exception.TransientStorageError as e:
                if attempt >= self.retries:
                    raise
                attempt += 1
                # "Full jitter": spreads the retries of parallel workers.
                delay = min(self.max_delay,
                            self.backoff * (2 ** (attempt - 1)))
                delay = self._rng.uniform(delay / 2, delay)
                LOG.warning('Retrying %(op)s of %(target)s in %(delay).2fs '
                            '(retry %(n)d of %(max)d) after: %(err)s',
                            {'op': operation, 'target': target,
                             'delay': delay, 'n': attempt,
                             'max': self.retries, 'err': e})
                self._sleep(delay)

    def ensure_container(self, container):
        self._retry('put_container', container,
                    self.inner.ensure_container, container)

    def put(self, container, name, body, extra_metadata=None):
        self._retry('put', '%s/%s' % (container, name), self.inner.put,
                    container, name, body, extra_metadata)

    def get(self, container, name, extra_metadata=None):
        return self._retry('get', '%s/%s' % (container, name),
                           self.inner.get, container, name, extra_metadata)

    def list(self, container, prefix):
        return self._retry('list', '%s/%s*' % (container, prefix),
                           self.inner.list, container, prefix)

    def delete(self, container, name):
        self._retry('delete', '%s/%s' % (container, name),
                    self.inner.delete, container, name)
