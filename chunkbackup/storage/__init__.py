"""The one seam between the engine and a driver's object I/O.

A driver supplies Cinder's hooks (``put_container``, ``get_object_writer``,
``get_object_reader``, ``get_container_entries``, ``delete_object``) and
``classify_error``. The engine never calls the hooks: it calls an
``ObjectStore`` that ``build_store`` makes, the one place where the chain
is put together::

    RetryingStore                      [chunkbackup] storage_retries ...
      extra wrappers                   add_wrapper(): tests' fault injection
        RateLimitedStore               [chunkbackup] max_upload_rate,
                                       max_download_rate, storage_rate_limit
          MeteredStore                 metrics_of(driver.store)
            DeadlineStore              [chunkbackup] storage_request_timeout,
                                       storage_min_rate, operation_timeout
              driver.wrap_store(...)   the driver's own hook
                DriverStore            hooks + names + classify_error

Every wrapper is a ``ForwardingStore`` overriding only what it needs. A
driver never knows it is being retried, metered or limited.
"""
import threading
from typing import Callable, Dict, Optional, TYPE_CHECKING

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

# One bucket per limit per process: a limit is on this process's traffic,
# whatever number of drivers (operations) and threads share it.
_buckets: Dict[str, ratelimit.TokenBucket] = {}
_bucket_lock = threading.Lock()
# Bursts of the per-direction limits: small, so that a limit holds within a
# few per cent over any ten seconds (the combined storage_rate_limit keeps
# the one second it always allowed).
DIRECTION_BURST = 0.1


def _shared_bucket(kind: str, rate: int,
                   burst: float = 1.0) -> ratelimit.TokenBucket:
    with _bucket_lock:
        bucket = _buckets.get(kind)
        if bucket is None or bucket.rate != rate:
            bucket = _buckets[kind] = ratelimit.TokenBucket(rate,
                                                            burst=burst)
        return bucket


def rate_limited(store: ObjectStore,
                 conf: cfg.ConfigOpts.GroupAttr) -> ObjectStore:
    """``store`` held to this process's rate limits, if any is set."""
    combined = conf.storage_rate_limit
    upload = conf.max_upload_rate
    download = conf.max_download_rate
    if not (combined or upload or download):
        return store
    return RateLimitedStore(
        store,
        _shared_bucket('both', combined) if combined else None,
        upload=[_shared_bucket('upload', upload, DIRECTION_BURST)]
        if upload else [],
        download=[_shared_bucket('download', download, DIRECTION_BURST)]
        if download else [])


def connections_needed(conf: Optional[cfg.ConfigOpts.GroupAttr] = None
                       ) -> int:
    """HTTP connections a driver's pool should keep for its I/O threads.

    As many as objects move at once, uploads or downloads, plus one for
    the metadata and listings that go alongside.
    """
    conf = conf if conf is not None else CONF.chunkbackup
    uploads = conf.objects_in_flight
    # [chunkbackup] restore_objects_in_flight is the engine's; read it
    # whether or not this version registers it.
    downloads = getattr(conf, 'restore_objects_in_flight', 16)
    return max(uploads, downloads) + 1


def build_store(driver: 'ChunkedBackupDriver') -> ObjectStore:
    """The driver's ObjectStore with every cross-cutting wrapper."""
    conf = CONF.chunkbackup
    store = driver.wrap_store(DriverStore(driver))
    limits = deadline.Limits.from_conf(conf)
    if limits.active:
        store = DeadlineStore(store, store_name(driver), limits)
    store = MeteredStore(store, StoreMetrics())
    store = rate_limited(store, conf)
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
