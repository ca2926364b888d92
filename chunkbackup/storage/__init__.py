"""The one seam between the engine and a driver's object I/O.

A driver supplies Cinder's hooks (``put_container``, ``get_object_writer``,
``get_object_reader``, ``get_container_entries``, ``delete_object``) and
``classify_error``. The engine never calls the hooks: it calls an
``ObjectStore`` that ``build_store`` makes, the one place where the chain
is put together::

    RetryingStore                      [chunkbackup] storage_retries ...
      extra wrappers                   add_wrapper(): tests' fault injection
        RateLimitedStore               [chunkbackup] storage_rate_limit
          MeteredStore                 metrics_of(driver.store)
            DeadlineStore              [chunkbackup] storage_request_timeout,
                                       storage_min_rate, operation_timeout
              driver.wrap_store(...)   the driver's own hook
                DriverStore            hooks + names + classify_error

Every wrapper is a ``ForwardingStore`` overriding only what it needs. A
driver never knows it is being retried, metered or limited.
"""
import threading
from typing import Callable, Optional, TYPE_CHECKING

from oslo_config import cfg

from chunkbackup import opts  # noqa: F401  (registers [chunkbackup])
from chunkbackup.storage import base
from chunkbackup.storage import deadline
from chunkbackup.storage import driverstore
from chunkbackup.storage import errors
from chunkbackup.storage import metrics
from chunkbackup.storage import ratelimit
from chunkbackup.storage import retry

if TYPE_CHECKING:
    from chunkbackup.chunked import ChunkedBackupDriver

CONF = cfg.CONF

DEFAULT_CHUNK_SIZE = base.DEFAULT_CHUNK_SIZE
ObjectStore = base.ObjectStore
ForwardingStore = base.ForwardingStore
Produce = base.Produce
DriverStore = driverstore.DriverStore
RetryingStore = retry.RetryingStore
RateLimitedStore = ratelimit.RateLimitedStore
TokenBucket = ratelimit.TokenBucket
MeteredStore = metrics.MeteredStore
DeadlineStore = deadline.DeadlineStore
StorageTimedOut = deadline.StorageTimedOut
StoreMetrics = metrics.StoreMetrics
classify_default = errors.classify_default
translated = errors.translated

Wrapper = Callable[[ObjectStore], ObjectStore]

# One bucket per process: the limit is on this process's traffic, whatever
# number of drivers (operations) share it.
_bucket: Optional[ratelimit.TokenBucket] = None
_bucket_lock = threading.Lock()


def _shared_bucket(rate: int) -> ratelimit.TokenBucket:
    global _bucket
    with _bucket_lock:
        if _bucket is None or _bucket.rate != rate:
            _bucket = ratelimit.TokenBucket(rate)
        return _bucket


def build_store(driver: 'ChunkedBackupDriver') -> ObjectStore:
    """The driver's ObjectStore with every cross-cutting wrapper."""
    conf = CONF.chunkbackup
    store = driver.wrap_store(DriverStore(driver))
    limits = deadline.Limits.from_conf(conf)
    if limits.active:
        store = DeadlineStore(store, store_name(driver), limits)
    store = MeteredStore(store, StoreMetrics())
    if conf.storage_rate_limit:
        store = RateLimitedStore(store,
                                 _shared_bucket(conf.storage_rate_limit))
    for wrap in getattr(driver, 'extra_store_wrappers', ()):
        store = wrap(store)
    return RetryingStore(store, retries=conf.storage_retries,
                         backoff=conf.storage_retry_backoff,
                         max_delay=conf.storage_retry_max_delay)


def store_name(driver: 'ChunkedBackupDriver') -> str:
    """How messages name a driver's store: posix, swift, google, s3 ..."""
    return getattr(driver, 'store_name', None) or \
        type(driver).__module__.rsplit('.', 1)[-1]


def add_wrapper(driver: 'ChunkedBackupDriver', wrap: Wrapper) -> None:
    """Wrap ``driver``'s store just inside its retries from now on.

    For tests (fault injection); the store is rebuilt on next use.
    """
    driver.extra_store_wrappers.append(wrap)
    driver._store = None


def metrics_of(store: ObjectStore) -> Optional[StoreMetrics]:
    """The metrics of a store that ``build_store`` made."""
    current: Optional[ObjectStore] = store
    while current is not None:
        if isinstance(current, MeteredStore):
            return current.metrics
        current = getattr(current, 'inner', None)
    return None
