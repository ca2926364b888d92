"""The Swift driver against a real Swift (proxy, account, container, object).

The session fixture ``swift_server`` runs pip ``swift`` on 127.0.0.1 with
tempauth v1. Volumes are a few hundred KiB to a few MiB and objects 64-256
KiB, so every backup spans many objects and the module runs in seconds.
"""
import filecmp
import os
import re
import shutil
import threading
import types
from unittest import mock
import uuid

from oslo_config import cfg
import pytest
from swiftclient import client as swift_client
from swiftclient import exceptions as swift_exc

from chunkbackup import backupformat as fmt
from chunkbackup import checksums
from chunkbackup.drivers import posix
from chunkbackup.drivers import swift
from chunkbackup import exception
from chunkbackup import storage
from chunkbackup.testing import conformance
from chunkbackup.testing.record import BackupRecord
from chunkbackup.testing import volumes
from tests.functional import servers
from tests.functional import streaming

CONF = cfg.CONF
KiB = 1024
OBJECT_SIZE = 256 * KiB
PREFIX_RE = re.compile(r'^volume_(?P<vol>[^/]+)/(?P<ts>\d{14})/'
                       r'az_(?P<az>[^/]+)_backup_(?P<id>[^/]+)$')


OVERRIDE_GROUP = swift.GROUP  # the default group of the overrides fixture


@pytest.fixture
def container():
    return 'cbtest-%s' % uuid.uuid4().hex[:12]


@pytest.fixture
def configured(swift_server, overrides, container):
    overrides('auth_mode', 'single_user')
    overrides('auth_url', swift_server.auth_url)
    overrides('auth_version', '1')
    overrides('user', swift_server.user)
    overrides('key', swift_server.key)
    overrides('container', container)
    overrides('object_size', OBJECT_SIZE)
    overrides('timeout', 30.0)
    # A failing test should fail fast rather than back off for a minute.
    overrides('storage_retry_backoff', 0.01, 'chunkbackup')
    overrides('storage_retry_max_delay', 0.05, 'chunkbackup')
    overrides('cancel_check_interval', 0, 'chunkbackup')
    return overrides


@pytest.fixture
def driver(configured):
    return swift.SwiftBackupDriver(context=None)


@pytest.fixture
def raw(swift_server):
    """Our own swiftclient connection, to look at and damage objects."""
    conn = swift_client.Connection(authurl=swift_server.auth_url,
                                   user=swift_server.user,
                                   key=swift_server.key, retries=0)
    yield conn
    conn.close()


def write_volume(path, size, seed, kind='mixed'):
    volumes.write_volume(str(path), size, kind, seed=seed,
                         region_size=48 * KiB)
    return str(path)


def backup_file(driver, record, path):
    with open(path, 'rb') as f:
        driver.backup(record, f)
    record.status = 'available'
    return record


def restore_to(driver, record, path, new=True):
    mode = 'wb+' if new else 'rb+'
    with open(path, mode) as f:
        driver.restore(record, record.volume_id, f, volume_is_new=new)
    return str(path)


def same(a, b):
    return filecmp.cmp(a, b, shallow=False)


def object_names(raw, container, prefix):
    _headers, listing = raw.get_container(container, prefix=prefix,
                                          full_listing=True)
    return [entry['name'] for entry in listing]


class _Tap(storage.ForwardingStore):
    """Passes every call through, counts it, and runs a hook after puts."""

    def __init__(self, inner, after_put=None):
        super().__init__(inner)
        self.after_put = after_put
        self.calls = {'ensure_container': 0, 'put': 0, 'get': 0, 'list': 0,
                      'delete': 0}

    def ensure_container(self, container):
        self.calls['ensure_container'] += 1
        self.inner.ensure_container(container)

    def put(self, container, name, body, extra_metadata=None):
        self.calls['put'] += 1
        self.inner.put(container, name, body, extra_metadata)
        if self.after_put is not None:
            self.after_put(name)

    def put_stream(self, container, name, produce, extra_metadata=None):
        self.calls['put'] += 1
        self.inner.put_stream(container, name, produce, extra_metadata)
        if self.after_put is not None:
            self.after_put(name)

    def get(self, container, name, extra_metadata=None):
        self.calls['get'] += 1
        return self.inner.get(container, name, extra_metadata)

    def get_stream(self, container, name, extra_metadata=None,
                   chunk_size=storage.DEFAULT_CHUNK_SIZE):
        self.calls['get'] += 1
        return self.inner.get_stream(container, name, extra_metadata,
                                     chunk_size)

    def list(self, container, prefix):
        self.calls['list'] += 1
        return self.inner.list(container, prefix)

    def delete(self, container, name):
        self.calls['delete'] += 1
        self.inner.delete(container, name)


class TappedSwiftDriver(swift.SwiftBackupDriver):
    """The Swift driver with a _Tap at its storage seam (inside retries)."""

    def __init__(self, context, db=None, after_put=None):
        super().__init__(context, db=db)
        self.after_put = after_put

    def wrap_store(self, store):
        self.tap = _Tap(store, self.after_put)
        return self.tap


# The conformance suite every driver passes ------------------------------

class TestSwiftConformance(conformance.DriverConformance):

    @pytest.fixture
    def make_driver(self, configured, raw):
        configured('object_size', 64 * KiB)
        self.raw = raw
        return lambda: swift.SwiftBackupDriver(context=None)

    def corrupt(self, driver, container, name, body):
        # Through the Swift API, not through the driver under test.
        self.raw.put_object(container, name, body)


# Swift specifics ---------------------------------------------------------

def test_layout_is_cinders(configured, raw, container, tmp_path):
    """Names as doc/format.md says for swift: prefix with slashes, az, %05d."""
    configured('availability_zone', 'zone-7')
    driver = swift.SwiftBackupDriver(context=None)  # reads its options once
    vol = write_volume(tmp_path / 'vol', 5 * OBJECT_SIZE + 4321, seed=1)
    record = backup_file(driver, BackupRecord('vol-a'), vol)
    assert record.container == container  # the configured default
    match = PREFIX_RE.match(record.service_metadata)
    assert match, record.service_metadata
    assert match.group('vol') == 'vol-a'
    assert match.group('az') == 'zone-7'
    assert match.group('id') == record.id
    names = object_names(raw, container, record.service_metadata)
    data = ['%s-%05d' % (record.service_metadata, n) for n in range(1, 7)]
    assert sorted(names) == sorted(data + [
        record.service_metadata + '_metadata',
        record.service_metadata + '_sha256file'])
    assert record.object_count == len(names) - 2   # data objects
    # Each data object's ETag is the MD5 of the stored body.
    headers, body = raw.get_object(container, data[0])
    assert headers['etag'] == checksums.md5_hex(body)
    meta = fmt.parse_metadata(
        raw.get_object(container, record.service_metadata + '_metadata')[1],
        record.id, 'metadata')
    assert [e.name for e in meta.objects] == data


def test_chain_restores_on_new_and_existing_files(driver, tmp_path):
    vol = write_volume(tmp_path / 'vol', 3 * OBJECT_SIZE + 7777, seed=2)
    chain, snaps = [], []
    for depth in range(4):
        if depth:
            volumes.change_blocks(vol, 0.08, 32 * KiB, seed=depth, max_run=2)
        if depth == 2:  # data turns to zeros in an incremental
            with open(vol, 'r+b') as f:
                f.seek(OBJECT_SIZE)
                f.write(bytes(100 * KiB))
        snap = str(tmp_path / ('snap%d' % depth))
        shutil.copyfile(vol, snap)
        snaps.append(snap)
        parent = chain[-1] if chain else None
        chain.append(backup_file(driver, BackupRecord('vol-b', parent=parent),
                                 vol))
    assert chain[1].object_count < chain[0].object_count
    for i, (record, snap) in enumerate(zip(chain, snaps)):
        driver.verify(record)
        out = restore_to(driver, record, tmp_path / ('new%d' % i))
        assert same(out, snap), i
        # An existing volume full of other data, same size.
        existing = write_volume(tmp_path / ('old%d' % i),
                                os.path.getsize(snap), seed=50 + i,
                                kind='random')
        restore_to(driver, record, existing, new=False)
        assert same(existing, snap), i


def test_delete_removes_every_object(driver, raw, container, tmp_path):
    vol = write_volume(tmp_path / 'vol', 2 * OBJECT_SIZE, seed=3)
    full = backup_file(driver, BackupRecord('vol-c'), vol)
    volumes.change_blocks(vol, 0.1, 32 * KiB, seed=4)
    inc = backup_file(driver, BackupRecord('vol-c', parent=full), vol)
    with pytest.raises(exception.BackupInUse):
        driver.delete_backup(full)
    driver.delete_backup(inc)
    inc.status = 'deleted'
    assert object_names(raw, container, inc.service_metadata) == []
    assert object_names(raw, container, full.service_metadata) != []
    driver.delete_backup(full)
    assert object_names(raw, container, 'volume_vol-c/') == []


def test_object_overwritten_in_swift_is_detected(configured, raw, container,
                                                 tmp_path):
    configured('compression_algorithm', 'none', 'chunkbackup')
    driver = swift.SwiftBackupDriver(context=None)
    vol = write_volume(tmp_path / 'vol', 3 * OBJECT_SIZE, seed=5)
    record = backup_file(driver, BackupRecord('vol-d'), vol)
    name = '%s-%05d' % (record.service_metadata, 2)
    _headers, body = raw.get_object(container, name)
    damaged = bytearray(body)
    damaged[12345] ^= 0xff
    raw.put_object(container, name, bytes(damaged))
    with pytest.raises(exception.BackupCorrupted) as info:
        driver.verify(record)
    assert name in str(info.value)
    with pytest.raises(exception.BackupCorrupted):
        restore_to(driver, record, tmp_path / 'out')
    # Another body altogether (not even the right length) is caught too.
    raw.put_object(container, name, b'not the data')
    with pytest.raises(exception.BackupCorrupted):
        restore_to(driver, record, tmp_path / 'out2')


def test_wrong_key_is_refused_once(configured, tmp_path):
    configured('key', 'not-the-key')
    configured('storage_retries', 5, 'chunkbackup')
    driver = TappedSwiftDriver(context=None)
    vol = write_volume(tmp_path / 'vol', OBJECT_SIZE, seed=6)
    record = BackupRecord('vol-e')
    with mock.patch.object(swift_client, 'get_auth_1_0',
                           wraps=swift_client.get_auth_1_0) as auth:
        with pytest.raises(exception.StorageAuthError) as info:
            backup_file(driver, record, vol)
    message = str(info.value)
    assert '401' in message and '[backup_swift] user/key' in message
    assert driver.tap.calls['ensure_container'] == 1  # the engine: no retry
    # swiftclient logs in again once after a 401 (token expiry), no more.
    assert 1 <= auth.call_count <= 2
    assert driver.tap.calls['put'] == 0
    with pytest.raises(exception.StorageAuthError):
        driver.check_for_setup_error()


def test_proxy_stopped_mid_backup(configured, swift_server, raw, container,
                                  tmp_path):
    configured('storage_retries', 1, 'chunkbackup')
    configured('objects_in_flight', 2, 'chunkbackup')
    stopped = []

    def stop_after_third(name):
        if not stopped and name.endswith('-00003'):
            stopped.append(name)
            swift_server.stop_proxy()

    driver = TappedSwiftDriver(context=None, after_put=stop_after_third)
    vol = write_volume(tmp_path / 'vol', 16 * OBJECT_SIZE, seed=7,
                       kind='random')
    record = BackupRecord('vol-f')
    try:
        with pytest.raises(exception.StorageError) as info:
            backup_file(driver, record, vol)
    finally:
        swift_server.start_proxy()
    assert stopped, 'the proxy was never stopped'
    assert 'cannot reach Swift' in str(info.value), info.value
    assert not isinstance(info.value, exception.StorageAuthError)
    prefix = record.service_metadata
    with pytest.raises(swift_exc.ClientException) as missing:
        raw.head_object(container, prefix + '_metadata')
    assert missing.value.http_status == 404
    assert prefix + '_sha256file' not in object_names(raw, container, prefix)
    with pytest.raises(exception.BackupIncomplete):
        driver.verify(record)
    # The server and the driver work again once the proxy is back.
    again = backup_file(driver, BackupRecord('vol-f'), vol)
    driver.verify(again)


def test_posix_backup_copied_into_swift_restores(driver, raw, container,
                                                 overrides, tmp_path):
    overrides('object_size', OBJECT_SIZE, posix.GROUP)
    posix_driver = posix.PosixBackupDriver(
        None, backup_path=str(tmp_path / 'posix'))
    vol = write_volume(tmp_path / 'vol', 3 * OBJECT_SIZE + 999, seed=8)
    full = backup_file(posix_driver, BackupRecord('vol-g'), vol)
    volumes.change_blocks(vol, 0.1, 32 * KiB, seed=9)
    inc = backup_file(posix_driver, BackupRecord('vol-g', parent=full), vol)
    raw.put_container(container)
    copied = None
    for record in (full, inc):
        directory = os.path.join(str(tmp_path / 'posix'), record.container)
        names = [n for n in os.listdir(directory)
                 if n.startswith(record.service_metadata)]
        assert len(names) >= 3
        for name in names:
            with open(os.path.join(directory, name), 'rb') as f:
                raw.put_object(container, name, f.read())
        copied = BackupRecord('vol-g', id=record.id, parent=copied,
                              container=container, status='available',
                              service_metadata=record.service_metadata)
    driver.verify(copied)
    out = restore_to(driver, copied, tmp_path / 'out')
    assert same(out, vol)
    # And the Swift driver can continue the chain it did not start.
    volumes.change_blocks(vol, 0.1, 32 * KiB, seed=10)
    child = backup_file(driver, BackupRecord('vol-g', parent=copied), vol)
    assert same(restore_to(driver, child, tmp_path / 'out2'), vol)


@pytest.mark.parametrize('endpoint_from', ['catalog', 'url'])
def test_per_user_token_and_endpoint(configured, swift_server, tmp_path,
                                     endpoint_from):
    storage_url, token = swift_client.get_auth(
        swift_server.auth_url, swift_server.user, swift_server.key)
    configured('auth_mode', 'per_user')
    for name in ('auth_url', 'user', 'key'):
        configured(name, None)
    if endpoint_from == 'url':
        configured('url', storage_url[:-len('test')])
    context = types.SimpleNamespace(
        auth_token=token, project_id='test',
        service_catalog=[
            {'type': 'identity', 'endpoints': [
                {'publicURL': 'http://127.0.0.1:1/v3'}]},
            {'type': 'object-store', 'name': 'swift', 'endpoints': [
                {'region': 'RegionOne', 'publicURL': storage_url}]}])
    driver = swift.SwiftBackupDriver(context)
    driver.check_for_setup_error()
    vol = write_volume(tmp_path / 'vol', 2 * OBJECT_SIZE + 5, seed=11)
    record = backup_file(driver, BackupRecord('vol-h'), vol)
    assert same(restore_to(driver, record, tmp_path / 'out'), vol)
    # A damaged token (a fernet token: 'AUTH_tk' ones need memcached here).
    context.auth_token = token[:-6] + 'AAAAAA'
    with pytest.raises(exception.StorageAuthError) as info:
        swift.SwiftBackupDriver(context).verify(record)
    assert 'token of the request' in str(info.value)


def test_storage_policy_of_created_container(configured, raw, container):
    # The test server has one policy (see servers/swift.py); that the
    # header is sent shows in the refusal of an unknown policy below.
    configured('storage_policy', 'Policy-0')
    driver = swift.SwiftBackupDriver(context=None)
    driver.put_container(container)
    assert raw.head_container(container)['x-storage-policy'] == 'Policy-0'
    configured('storage_policy', 'no-such-policy')
    other = container + '-x'
    with pytest.raises(exception.StorageError) as info:
        swift.SwiftBackupDriver(context=None).store.ensure_container(other)
    assert not isinstance(info.value, exception.TransientStorageError)
    assert '400' in str(info.value) and 'no-such-policy' in str(info.value)


def test_missing_container_not_created_when_told(configured, raw, container,
                                                 tmp_path):
    configured('create_container', False)
    driver = swift.SwiftBackupDriver(context=None)
    vol = write_volume(tmp_path / 'vol', OBJECT_SIZE, seed=12)
    with pytest.raises(exception.StorageContainerNotFound) as info:
        backup_file(driver, BackupRecord('vol-i'), vol)
    assert container in str(info.value)
    assert 'create_container' in str(info.value)
    with pytest.raises(swift_exc.ClientException):
        raw.head_container(container)
    raw.put_container(container)  # made by an administrator: now it works
    record = backup_file(driver, BackupRecord('vol-i'), vol)
    driver.verify(record)


def test_check_for_setup_error(configured):
    swift.SwiftBackupDriver(context=None).check_for_setup_error()
    configured('user', None)
    with pytest.raises(exception.InvalidConfiguration) as info:
        swift.SwiftBackupDriver(context=None).check_for_setup_error()
    assert 'user' in str(info.value)
    configured('user', 'test:tester')
    configured('auth_url', 'http://127.0.0.1:%d/auth/v1.0'
               % servers.free_port())
    with pytest.raises(exception.StorageError) as info:
        swift.SwiftBackupDriver(context=None).check_for_setup_error()
    assert 'cannot reach Swift' in str(info.value)


# Streams, auth and rate limits (issue 13) --------------------------------

MiB = 1024 * KiB


def test_streamed_object_is_one_plain_object(driver, raw, container):
    """Chunked transfer, no segments: Cinder GETs and DELETEs it by name."""
    body = os.urandom(swift.WHOLE_PUT_LIMIT + 3 * MiB + 5)
    driver.store.ensure_container(container)
    driver.store.put_stream(container, 'streamed', streaming.uneven(body))
    driver.store.put(container, 'whole', body)
    headers, stored = raw.get_object(container, 'streamed')
    assert stored == body
    assert headers['etag'] == checksums.md5_hex(body)
    assert 'x-object-manifest' not in headers
    assert 'x-static-large-object' not in headers
    assert raw.get_object(container, 'whole')[1] == stored
    assert object_names(raw, container, '') == ['streamed', 'whole']
    raw.delete_object(container, 'streamed')  # as Cinder deletes it
    assert object_names(raw, container, '') == ['whole']


def test_streamed_upload_failing_half_way_leaves_nothing(
        configured, swift_server, driver, raw, container):
    configured('storage_retries', 0, 'chunkbackup')
    driver.store.ensure_container(container)
    # Twelve MiB sent, then the producer fails.
    producer_fails = streaming.failing_after(12)
    chunk = os.urandom(MiB)

    with pytest.raises(RuntimeError):
        driver.store.put_stream(container, 'cut-by-producer', producer_fails)

    stopped = []

    def store_fails():
        for n in range(20):
            if n == 12:
                stopped.append(True)
                swift_server.stop_proxy()
            yield chunk

    try:
        with pytest.raises(exception.TransientStorageError):
            driver.store.put_stream(container, 'cut-by-store', store_fails)
    finally:
        swift_server.start_proxy()
    assert stopped
    assert object_names(raw, container, 'cut-') == []
    for name in ('cut-by-producer', 'cut-by-store'):
        with pytest.raises(swift_exc.ClientException) as missing:
            raw.head_object(container, name)
        assert missing.value.http_status == 404
    # The driver works again with the same connections and token.
    driver.store.put_stream(container, 'after', lambda: [chunk] * 9)
    assert driver.store.object_size(container, 'after') == 9 * MiB


def _auth_requests(swift_server):
    with open(swift_server.log_path('proxy'), errors='replace') as f:
        return sum(1 for line in f if 'GET /auth/v1.0' in line)


def _settled_auth_requests(swift_server):
    """The count once the proxy's log has caught up.

    The proxy logs a request after it has answered it.
    """
    import time
    last = -1
    for _ in range(20):
        count = _auth_requests(swift_server)
        if count == last:
            return count
        last = count
        time.sleep(0.25)
    return last


def test_one_login_for_sixteen_threads(configured, swift_server, container):
    import concurrent.futures
    before = _settled_auth_requests(swift_server)
    driver = swift.SwiftBackupDriver(context=None)
    driver.store.ensure_container(container)
    bodies = {'obj-%02d' % i: os.urandom(64 * KiB + i) for i in range(64)}

    def work(name):
        driver.store.put(container, name, bodies[name])
        assert driver.store.get(container, name) == bodies[name]
        assert driver.store.get_range(container, name, 10, 5) == \
            bodies[name][10:15]
        return threading.get_ident()

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        threads = set(pool.map(work, sorted(bodies)))
    assert len(threads) > 1
    logins = _settled_auth_requests(swift_server) - before
    assert before > 0  # the log does count auth requests
    assert logins == 1 and driver.logins == 1, logins


def test_rate_limits_hold(configured, driver, container):
    """max_upload_rate and max_download_rate hold within 10% over ~10 s."""
    import time
    rate = 2 * MiB
    configured('max_upload_rate', rate, 'chunkbackup')
    configured('max_download_rate', rate, 'chunkbackup')
    driver._store = None
    size = 10 * rate  # ten seconds' worth each way
    chunk = os.urandom(MiB)
    driver.store.ensure_container(container)
    start = time.monotonic()
    driver.store.put_stream(container, 'limited',
                            lambda: [chunk] * (size // MiB))
    put_seconds = time.monotonic() - start
    start = time.monotonic()
    received = sum(len(c) for c in driver.store.get_stream(
        container, 'limited', chunk_size=MiB))
    get_seconds = time.monotonic() - start
    assert received == size
    print('upload %.2fs (%.3f MiB/s), download %.2fs (%.3f MiB/s)'
          % (put_seconds, size / MiB / put_seconds, get_seconds,
             size / MiB / get_seconds))
    assert 9.0 <= put_seconds <= 11.0, put_seconds
    assert 9.0 <= get_seconds <= 11.0, get_seconds


def test_a_big_object_is_never_held_whole(driver, container):
    driver.store.ensure_container(container)
    streaming.assert_bounded(driver.store, container, 'big')


def test_a_refused_token_is_renewed_once(configured, swift_server, driver,
                                         container):
    driver.store.ensure_container(container)
    assert driver.logins == 1
    before = _settled_auth_requests(swift_server)
    url, _token = driver._token
    driver._token = (url, 'expired-token')  # as if it had expired
    driver.store.put(container, 'after-401', b'x' * 1000)
    assert driver.logins == 2
    assert driver.store.get(container, 'after-401') == b'x' * 1000
    # A streamed put cannot be sent again by the driver: the seam does.
    driver._token = (url, 'expired-token')
    body = os.urandom(swift.WHOLE_PUT_LIMIT + MiB)
    driver.store.put_stream(container, 'stream-after-401',
                            lambda: [body[:MiB], body[MiB:]])
    assert driver.store.get(container, 'stream-after-401') == body
    assert driver.logins == 3
    assert _settled_auth_requests(swift_server) - before == 2


def test_folds_and_synthetic_full(driver, tmp_path):
    """Middle backups of chains of 5 forgotten in every order (Swift's
    server-side COPY), a synthetic full; every result restored byte-exact
    and verified.
    """
    from chunkbackup.testing import folds
    assert folds.fold_chain_checks(driver, str(tmp_path)) == 20
