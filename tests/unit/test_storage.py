"""The storage seam: the wrapper chain, streams, retries, limits, metrics."""
import pytest

from chunkbackup import exception
from chunkbackup import storage
from chunkbackup.storage import errors
from chunkbackup.testing import faults


def transient(target='c/o'):
    return exception.TransientStorageError(operation='get', target=target,
                                           reason='injected')


class MemoryStore(storage.ObjectStore):
    """Five methods only: streams come from ObjectStore's defaults."""

    def __init__(self):
        self.objects = {}

    def ensure_container(self, container):
        pass

    def put(self, container, name, body, extra_metadata=None):
        self.objects[(container, name)] = bytes(body)

    def get(self, container, name, extra_metadata=None):
        return self.objects[(container, name)]

    def list(self, container, prefix):
        return sorted(n for c, n in self.objects
                      if c == container and n.startswith(prefix))

    def delete(self, container, name):
        self.objects.pop((container, name), None)


class ChunkedStore(MemoryStore):
    """Streams in fixed chunks; fails as told, once per planned failure."""

    def __init__(self, chunk=3):
        super().__init__()
        self.chunk = chunk
        self.fail_after = []  # chunks delivered before a transient failure
        self.opened = 0

    def get_stream(self, container, name, extra_metadata=None,
                   chunk_size=storage.DEFAULT_CHUNK_SIZE):
        self.opened += 1
        body = self.objects[(container, name)]
        fail_after = self.fail_after.pop(0) if self.fail_after else None
        for n, start in enumerate(range(0, len(body), self.chunk)):
            if n == fail_after:
                raise transient()
            yield body[start:start + self.chunk]


def retrying(inner, retries=3):
    return storage.RetryingStore(inner, retries=retries, backoff=0.0,
                                 max_delay=0.0, sleep=lambda s: None)


# ObjectStore and ForwardingStore -------------------------------------------

def test_five_method_store_streams_through_the_defaults():
    store = MemoryStore()
    store.put_stream('c', 'o', lambda: iter([b'ab', b'', b'cd']))
    assert store.get('c', 'o') == b'abcd'
    assert b''.join(store.get_stream('c', 'o')) == b'abcd'


def test_forwarding_store_forwards_all_seven():
    inner = MemoryStore()
    store = storage.ForwardingStore(inner)
    store.ensure_container('c')
    store.put('c', 'a', b'1')
    store.put_stream('c', 'b', lambda: [b'2', b'3'])
    assert store.get('c', 'b') == b'23'
    assert list(store.get_stream('c', 'a')) == [b'1']
    assert store.list('c', '') == ['a', 'b']
    store.delete('c', 'a')
    assert inner.objects == {('c', 'b'): b'23'}


# DriverStore on the posix driver --------------------------------------------

def test_put_stream_writes_every_chunk(make_posix):
    driver = make_posix()
    store = storage.DriverStore(driver)
    store.ensure_container('c')
    store.put_stream('c', 'o', lambda: (bytes([i]) * 1000 for i in range(5)))
    assert store.get('c', 'o') == b''.join(bytes([i]) * 1000
                                           for i in range(5))


def test_failing_producer_leaves_nothing_and_its_error_unchanged(make_posix):
    driver = make_posix()
    store = storage.DriverStore(driver)
    store.ensure_container('c')

    def produce():
        yield b'first'
        raise ValueError('the volume could not be read')

    with pytest.raises(ValueError, match='could not be read'):
        store.put_stream('c', 'o', produce)
    assert store.list('c', '') == []


def test_get_stream_reads_the_file_in_pieces(make_posix):
    driver = make_posix()
    store = storage.DriverStore(driver)
    store.ensure_container('c')
    body = bytes(range(256)) * 40
    store.put('c', 'o', body)
    chunks = list(store.get_stream('c', 'o', chunk_size=1000))
    assert [len(c) for c in chunks] == [1000] * 10 + [240]
    assert b''.join(chunks) == body


def test_get_stream_of_a_missing_object(make_posix):
    driver = make_posix()
    store = storage.DriverStore(driver)
    store.ensure_container('c')
    with pytest.raises(exception.StorageObjectNotFound) as info:
        list(store.get_stream('c', 'gone'))
    assert 'c/gone' in str(info.value)


def test_reader_without_size_gives_one_chunk():
    class Reader:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self):
            return b'whole body'

    class Driver:
        def get_object_reader(self, container, name, extra_metadata=None):
            return Reader()

    chunks = list(storage.DriverStore(Driver()).get_stream('c', 'o',
                                                           chunk_size=2))
    assert chunks == [b'whole body']


@pytest.mark.parametrize('exc, operation, cls, target', [
    (FileNotFoundError('x'), 'get', exception.StorageObjectNotFound, 'c/o'),
    (FileNotFoundError('x'), 'list', exception.StorageContainerNotFound,
     'c'),
    (ConnectionResetError('x'), 'get', exception.TransientStorageError,
     'c/o'),
    (ValueError('x'), 'get', exception.StorageError, 'c/o'),
])
def test_one_place_builds_the_exception(exc, operation, cls, target):
    class Driver:
        classify_error = staticmethod(storage.classify_default)

    name = None if operation == 'list' else 'o'
    with pytest.raises(exception.StorageError) as info:
        with storage.translated(Driver(), operation, 'c', name):
            raise exc
    assert type(info.value) is cls
    assert info.value.kwargs['target'] == target
    assert info.value.__cause__ is exc
    assert errors.describe(exc) in str(info.value)


# Retries -------------------------------------------------------------------

def test_interrupted_stream_resumes_after_what_was_delivered():
    inner = ChunkedStore(chunk=3)
    inner.put('c', 'o', b'abcdefghij')
    inner.fail_after = [2, 1]  # after 'abcdef', then after 'abc'
    chunks = list(retrying(inner).get_stream('c', 'o'))
    assert b''.join(chunks) == b'abcdefghij'
    assert inner.opened == 3


def test_stream_gives_up_after_the_retries():
    inner = ChunkedStore(chunk=3)
    inner.put('c', 'o', b'abcdefghij')
    inner.fail_after = [1, 1, 1]
    delivered = []
    with pytest.raises(exception.TransientStorageError):
        for chunk in retrying(inner, retries=2).get_stream('c', 'o'):
            delivered.append(chunk)
    assert b''.join(delivered) == b'abc'  # never a byte twice


def test_put_stream_retry_calls_the_producer_again():
    calls = []

    class Flaky(MemoryStore):
        def put(self, container, name, body, extra_metadata=None):
            calls.append(body)
            if len(calls) == 1:
                raise transient()
            super().put(container, name, body)

    inner = Flaky()
    retrying(inner).put_stream('c', 'o', lambda: iter([b'ab', b'cd']))
    assert calls == [b'abcd', b'abcd']
    assert inner.objects[('c', 'o')] == b'abcd'


def test_permanent_failures_are_not_retried():
    calls = []

    class Broken(MemoryStore):
        def get(self, container, name, extra_metadata=None):
            calls.append(name)
            raise exception.StorageError(operation='get', target=name,
                                         reason='no')

    with pytest.raises(exception.StorageError):
        retrying(Broken()).get('c', 'o')
    assert calls == ['o']


# Rate limit ------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.now = 0.0
        self.slept = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def test_token_bucket_holds_the_average_rate():
    clock = Clock()
    bucket = storage.TokenBucket(1000, clock=clock, sleep=clock.sleep)
    assert bucket.take(1000) == 0  # a second's burst goes at once
    assert bucket.take(500) == pytest.approx(0.5)
    assert bucket.take(3000) == pytest.approx(3.0)  # large bodies too
    assert clock.now == pytest.approx(3.5)


def test_rate_limited_store_counts_bodies_both_ways():
    clock = Clock()
    bucket = storage.TokenBucket(100, clock=clock, sleep=clock.sleep)
    store = storage.RateLimitedStore(MemoryStore(), bucket)
    store.put('c', 'o', b'x' * 100)
    store.put_stream('c', 'p', lambda: [b'y' * 50, b'y' * 50])
    assert store.get('c', 'o') == b'x' * 100
    assert b''.join(store.get_stream('c', 'p')) == b'y' * 100
    store.list('c', '')
    assert clock.now == pytest.approx(3.0)  # 400 bytes, 100 of burst


# Metrics ---------------------------------------------------------------------

def test_metrics_count_calls_bytes_errors_and_time():
    clock = Clock()
    metrics = storage.StoreMetrics(clock=clock)

    class Slow(MemoryStore):
        def put(self, container, name, body, extra_metadata=None):
            clock.now += 2.0
            super().put(container, name, body)

    store = storage.MeteredStore(Slow(), metrics)
    store.put('c', 'o', b'12345')
    store.put_stream('c', 'p', lambda: [b'12', b'3'])
    assert b''.join(store.get_stream('c', 'o')) == b'12345'
    assert store.get('c', 'p') == b'123'
    with pytest.raises(KeyError):
        store.get('c', 'missing')
    stats = metrics.snapshot()
    assert (stats['put'].calls, stats['put'].bytes,
            stats['put'].seconds) == (2, 8, 4.0)
    assert (stats['get'].calls, stats['get'].bytes,
            stats['get'].errors) == (3, 8, 1)
    assert stats['list'].calls == 0


# The chain -------------------------------------------------------------------

def chain_of(store):
    kinds = []
    while store is not None:
        kinds.append(type(store).__name__)
        store = getattr(store, 'inner', None)
    return kinds


def test_one_root_builds_the_chain(make_posix, overrides):
    driver = make_posix()
    assert chain_of(driver.store) == ['RetryingStore', 'MeteredStore',
                                      'DeadlineStore', 'DriverStore']
    overrides('storage_rate_limit', 10 ** 6)
    driver = make_posix()
    injector = faults.install(driver, faults.FaultPlan())
    assert chain_of(driver.store) == [
        'RetryingStore', 'FaultInjectingStore', 'RateLimitedStore',
        'MeteredStore', 'DeadlineStore', 'DriverStore']
    # With every deadline off there is nothing to watch.
    for name in ('storage_request_timeout', 'storage_min_rate',
                 'operation_timeout'):
        overrides(name, 0)
    assert 'DeadlineStore' not in chain_of(make_posix().store)
    assert injector.inner is driver.store.inner.inner


def test_metrics_of_a_driver_store(make_posix):
    driver = make_posix()
    driver.store.ensure_container('c')
    driver.store.put('c', 'o', b'abc')
    assert driver.store.get('c', 'o') == b'abc'
    stats = storage.metrics_of(driver.store).snapshot()
    assert stats['put'].bytes == 3 and stats['get'].bytes == 3
    assert stats['ensure_container'].calls == 1


def test_injected_lost_reply_in_a_stream_is_resumed(make_posix, overrides):
    overrides('storage_retry_backoff', 0.0)
    driver = make_posix()
    driver.store.ensure_container('c')
    body = bytes(range(256)) * 100
    driver.store.put('c', 'o', body)
    injector = faults.install(driver, faults.FaultPlan(
        fail_on={('get', 1)}, kinds=('lost_reply',)))
    chunks = list(driver.store.get_stream('c', 'o', chunk_size=1000))
    assert b''.join(chunks) == body
    assert injector.injected == 1 and injector.calls['get'] == 2
