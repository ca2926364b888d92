"""The Swift driver with swiftclient (and keystoneauth) mocked out.

What the driver hands to its client: auth variants, the ETag of every put,
how each failure is classified, names, and the container rules. The real
server behaviour is in tests/functional/test_swift.py.
"""
import hashlib
import re
import threading
import types
from unittest import mock

from keystoneauth1 import exceptions as ks_exc
from oslo_config import cfg
import pytest
import requests
from swiftclient import exceptions as swift_exc

from chunkbackup.drivers import swift
from chunkbackup import exception
from chunkbackup import storage
from chunkbackup.testing.record import BackupRecord

CONF = cfg.CONF
CATALOG = [
    {'type': 'identity', 'name': 'keystone',
     'endpoints': [{'publicURL': 'https://keystone:5000/v3'}]},
    {'type': 'object-store', 'name': 'swift', 'endpoints': [
        {'region': 'R1', 'publicURL': 'https://swift-r1/v1/AUTH_p',
         'internalURL': 'http://swift-r1.internal/v1/AUTH_p'},
        {'region': 'R2', 'publicURL': 'https://swift-r2/v1/AUTH_p'}]},
]


OVERRIDE_GROUP = swift.GROUP  # the default group of the overrides fixture


@pytest.fixture(autouse=True)
def _engine(overrides):
    # No retries or waits: each test sees exactly one attempt.
    overrides('storage_retries', 0, 'chunkbackup')
    overrides('storage_retry_backoff', 0, 'chunkbackup')
    overrides('cancel_check_interval', 0, 'chunkbackup')


@pytest.fixture
def v1(overrides):
    overrides('auth_url', 'http://swift:8080/auth/v1.0')
    overrides('user', 'acct:user')
    overrides('key', 'secret')
    return overrides


@pytest.fixture
def connection_cls():
    """swiftclient.client.Connection; every call makes a new mock."""
    with mock.patch.object(swift.swift_client, 'Connection') as cls, \
            mock.patch.object(swift.swift_client, 'get_auth') as get_auth:
        cls.side_effect = lambda *a, **kw: mock.MagicMock(name='conn')
        get_auth.return_value = ('http://swift:8080/v1/AUTH_acct', 'tk-1')
        cls.get_auth = get_auth
        yield cls


@pytest.fixture
def driver(v1, connection_cls):
    return swift.SwiftBackupDriver(context=None)


def client_error(status, msg='failed'):
    return swift_exc.ClientException(msg, http_status=status,
                                     http_reason='reason')


# Options -------------------------------------------------------------------

def test_defaults_are_cinders():
    conf = CONF[swift.GROUP]
    assert conf.container == 'volumebackups'
    assert conf.object_size == 52428800
    assert conf.catalog_info == 'object-store:swift:publicURL'
    assert conf.availability_zone == 'nova'
    assert conf.create_container is True
    key = [o for o in swift.OPTS if o.name == 'key'][0]
    assert key.secret
    assert all(o.help for o in swift.OPTS)


# Auth variants -------------------------------------------------------------

def test_v1_connection(v1, connection_cls):
    v1('ca_certificate_file', '/etc/ca.pem')
    v1('timeout', 12.5)
    driver = swift.SwiftBackupDriver(context=None)
    conn = driver._connection()
    # The driver logs in; its connections only use the token.
    connection_cls.get_auth.assert_called_once_with(
        'http://swift:8080/auth/v1.0', 'acct:user', 'secret',
        auth_version='1', cacert='/etc/ca.pem', insecure=False,
        timeout=12.5)
    connection_cls.assert_called_once_with(
        preauthurl='http://swift:8080/v1/AUTH_acct', preauthtoken='tk-1',
        retries=0, starting_backoff=0, cacert='/etc/ca.pem', insecure=False,
        timeout=12.5)
    assert driver._connection() is conn  # reused in the same thread


def test_v1_one_login_for_every_thread(driver, connection_cls):
    def work():
        driver.store.ensure_container('c')
    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert connection_cls.call_count == 8  # one connection per thread
    assert connection_cls.get_auth.call_count == 1 and driver.logins == 1


def test_v1_token_renewed_once_after_a_401(driver, connection_cls):
    conn = driver._connection()
    connection_cls.get_auth.return_value = ('http://swift:8080/v1/AUTH_acct',
                                            'tk-2')
    tokens = []

    def head_container(container, **kwargs):
        tokens.append(conn.token)
        if conn.token == 'tk-1':
            raise client_error(401)
        return {}

    conn.head_container.side_effect = head_container
    driver.put_container('c')
    assert tokens == ['tk-1', 'tk-2'] and driver.logins == 2
    # A streamed put cannot be replayed by the driver: the seam resends.
    conn.token = None
    driver._token = ('http://swift:8080/v1/AUTH_acct', 'tk-1')
    conn.put_object.side_effect = client_error(401)
    with pytest.raises(exception.TransientStorageError) as info:
        driver.put_object_stream('c', 'o', iter([b'x'] * 9000000))
    assert 'logged in again' in str(info.value)


def test_v3_through_one_keystone_session(overrides, connection_cls):
    overrides('auth_version', '3')
    overrides('auth_url', 'https://keystone:5000/v3')
    overrides('user', 'backup')
    overrides('key', 'pw')
    overrides('project_name', 'backups')
    overrides('project_domain_name', 'Default')
    overrides('user_domain_name', 'Users')
    overrides('region_name', 'R2')
    overrides('interface', 'internal')
    overrides('insecure', True)
    with mock.patch.object(swift.ks_v3, 'Password') as password, \
            mock.patch.object(swift.ks_session, 'Session') as session_cls:
        session = session_cls.return_value
        session.get_endpoint.return_value = 'https://swift-r2/v1/AUTH_x'
        driver = swift.SwiftBackupDriver(context=None)
        driver._connection()
        other = threading.Thread(target=driver._connection)
        other.start()
        other.join()
    password.assert_called_once_with(
        auth_url='https://keystone:5000/v3', username='backup',
        password='pw', project_name='backups', project_domain_name='Default',
        user_domain_name='Users')
    session_cls.assert_called_once_with(auth=password.return_value,
                                        verify=False, timeout=60.0)
    session.get_endpoint.assert_called_once_with(
        service_type='object-store', interface='internal', region_name='R2')
    assert connection_cls.call_count == 2  # one per thread, one session
    for call in connection_cls.call_args_list:
        assert call.kwargs['session'] is session
        assert call.kwargs['auth_version'] == '3'
        assert call.kwargs['retries'] == 0
        assert call.kwargs['preauthurl'] == 'https://swift-r2/v1/AUTH_x'
        assert call.kwargs['os_options'] == {
            'service_type': 'object-store', 'endpoint_type': 'internal',
            'region_name': 'R2'}


def test_v3_without_endpoint_in_catalog(overrides, connection_cls):
    overrides('auth_version', '3')
    for name, value in (('auth_url', 'https://ks/v3'), ('user', 'u'),
                        ('key', 'k'), ('project_name', 'p'),
                        ('project_domain_name', 'Default'),
                        ('user_domain_name', 'Default'),
                        ('region_name', 'R9')):
        overrides(name, value)
    with mock.patch.object(swift.ks_v3, 'Password'), \
            mock.patch.object(swift.ks_session, 'Session') as session_cls:
        session_cls.return_value.get_endpoint.return_value = None
        driver = swift.SwiftBackupDriver(context=None)
        with pytest.raises(exception.InvalidConfiguration) as info:
            driver.store.get('c', 'o')
    assert 'region R9' in str(info.value)
    assert 'object-store' in str(info.value)


def test_v3_needs_project_and_domains(overrides, connection_cls):
    overrides('auth_version', '3')
    overrides('auth_url', 'https://ks/v3')
    overrides('user', 'u')
    overrides('key', 'k')
    driver = swift.SwiftBackupDriver(context=None)
    with pytest.raises(exception.InvalidConfiguration) as info:
        driver.check_for_setup_error()
    for name in ('project_name', 'project_domain_name', 'user_domain_name'):
        assert name in str(info.value)
    connection_cls.assert_not_called()


def test_single_user_needs_credentials(overrides, connection_cls):
    overrides('auth_url', 'http://swift/auth/v1.0')
    driver = swift.SwiftBackupDriver(context=None)
    with pytest.raises(exception.InvalidConfiguration) as info:
        driver.check_for_setup_error()
    assert 'user, key' in str(info.value)
    assert '[backup_swift]' in str(info.value)


def per_user_context(**kw):
    values = dict(auth_token='user-token', project_id='p',
                  service_catalog=CATALOG)
    values.update(kw)
    return types.SimpleNamespace(**values)


def test_per_user_token_and_catalog_endpoint(overrides, connection_cls):
    overrides('auth_mode', 'per_user')
    driver = swift.SwiftBackupDriver(per_user_context())
    driver._connection()
    connection_cls.assert_called_once_with(
        preauthurl='https://swift-r1/v1/AUTH_p', preauthtoken='user-token',
        retries=0, starting_backoff=0, cacert=None, insecure=False,
        timeout=60.0)
    kwargs = connection_cls.call_args.kwargs
    assert 'user' not in kwargs and 'key' not in kwargs  # never re-login


@pytest.mark.parametrize('region,info,url', [
    ('R2', 'object-store:swift:publicURL', 'https://swift-r2/v1/AUTH_p'),
    (None, 'object-store:any-name:internalURL',
     'http://swift-r1.internal/v1/AUTH_p'),
])
def test_per_user_catalog_choice(overrides, connection_cls, region, info,
                                 url):
    overrides('auth_mode', 'per_user')
    overrides('region_name', region)
    overrides('catalog_info', info)
    swift.SwiftBackupDriver(per_user_context())._connection()
    assert connection_cls.call_args.kwargs['preauthurl'] == url


def test_per_user_url_option(overrides, connection_cls):
    overrides('auth_mode', 'per_user')
    overrides('url', 'http://swift:8080/v1/AUTH_')
    swift.SwiftBackupDriver(per_user_context(project_id='abc'))._connection()
    assert connection_cls.call_args.kwargs['preauthurl'] == \
        'http://swift:8080/v1/AUTH_abc'


@pytest.mark.parametrize('kw,info,words', [
    ({'service_catalog': []}, None, ['no publicURL endpoint',
                                     '[backup_swift] url']),
    ({}, 'object-store:publicURL', ['catalog_info']),
])
def test_per_user_without_endpoint(overrides, connection_cls, kw, info,
                                   words):
    overrides('auth_mode', 'per_user')
    if info:
        overrides('catalog_info', info)
    with pytest.raises(exception.InvalidConfiguration) as e:
        # A malformed catalog_info when the driver is made, a catalog
        # without the endpoint when it is first used.
        swift.SwiftBackupDriver(per_user_context(**kw)).store.list('c', 'p')
    for word in words:
        assert word in str(e.value)


def test_per_user_refused_token_says_so(overrides, connection_cls):
    overrides('auth_mode', 'per_user')
    driver = swift.SwiftBackupDriver(per_user_context())
    driver._connection().get_object.side_effect = client_error(401)
    with pytest.raises(exception.StorageAuthError) as info:
        driver.store.get('c', 'o')
    assert 'token of the request' in str(info.value)


# Object I/O ----------------------------------------------------------------

def test_put_sends_md5_as_etag(driver):
    conn = driver._connection()
    body = b'chunk' * 1000
    md5 = hashlib.md5(body).hexdigest()
    conn.put_object.return_value = md5
    with driver.get_object_writer('c', 'p-00001') as writer:
        writer.write(body[:10])
        writer.write(body[10:])
    conn.put_object.assert_called_once_with(
        'c', 'p-00001', body, content_length=len(body), etag=md5)


def test_put_of_a_memoryview_sends_bytes(driver):
    conn = driver._connection()
    conn.put_object.return_value = hashlib.md5(b'abc').hexdigest()
    driver.store.put('c', 'o', memoryview(b'abc'))
    assert conn.put_object.call_args.args[2] == b'abc'
    assert type(conn.put_object.call_args.args[2]) is bytes


def test_put_of_engine_body_is_not_copied(driver):
    conn = driver._connection()
    body = bytes(range(256)) * 64
    conn.put_object.return_value = hashlib.md5(body).hexdigest()
    driver.store.put('c', 'o', body)
    assert conn.put_object.call_args.args[2] is body


def test_put_with_other_stored_md5_fails(driver):
    conn = driver._connection()
    conn.put_object.return_value = '0' * 32
    with pytest.raises(exception.StorageError) as info:
        driver.store.put('c', 'o', b'data')
    assert '0' * 32 in str(info.value)


def test_failed_writer_puts_nothing(driver):
    conn = driver._connection()
    with pytest.raises(RuntimeError):
        with driver.get_object_writer('c', 'o') as writer:
            writer.write(b'partial')
            raise RuntimeError('interrupted')
    conn.put_object.assert_not_called()


def test_reader_returns_body(driver):
    conn = driver._connection()
    conn.get_object.return_value = ({'etag': 'x', 'content-length': '8'},
                                    iter([b'the ', b'body']))
    with driver.get_object_reader('c', 'o') as reader:
        assert reader.read(3) == b'the'
        assert reader.read() == b' body'
    conn.get_object.assert_called_once_with(
        'c', 'o', resp_chunk_size=swift.READ_PIECE)


def test_a_short_streamed_read_is_transient(driver):
    conn = driver._connection()
    conn.get_object.return_value = ({'content-length': '10'},
                                    iter([b'the ', b'body']))
    with pytest.raises(exception.TransientStorageError):
        b''.join(storage.DriverStore(driver).get_stream('c', 'o'))


def test_a_large_stream_is_sent_chunked_and_its_etag_checked(driver):
    conn = driver._connection()
    chunks = [b'a' * 5000000, b'b' * 5000000]
    sent = []

    def put_object(container, name, contents, **kwargs):
        sent.extend(contents)
        assert 'content_length' not in kwargs and 'etag' not in kwargs
        return hashlib.md5(b''.join(sent)).hexdigest()

    conn.put_object.side_effect = put_object
    storage.DriverStore(driver).put_stream('c', 'o', lambda: iter(chunks))
    assert sent == chunks
    conn.put_object.side_effect = lambda *a, **kw: (list(a[2]), 'bad')[1]
    with pytest.raises(exception.TransientStorageError) as info:
        storage.DriverStore(driver).put_stream('c', 'o',
                                               lambda: iter(chunks))
    assert 'deleted' in str(info.value)
    conn.delete_object.assert_called_once_with('c', 'o')


def test_listing_follows_pages(driver):
    conn = driver._connection()
    conn.get_container.return_value = ({}, [{'name': 'p-1'},
                                            {'name': 'p-2'}])
    driver.listing_page_size = 2
    assert driver.get_container_entries('c', 'p-') == ['p-1', 'p-2']
    conn.get_container.assert_called_once_with('c', prefix='p-', limit=2,
                                               full_listing=True)


def test_delete_of_missing_object_is_quiet(driver):
    conn = driver._connection()
    conn.delete_object.side_effect = client_error(404)
    driver.store.delete('c', 'gone')
    with pytest.raises(exception.StorageObjectNotFound):
        with storage.translated(driver, 'delete', 'c', 'gone'):
            driver.delete_object('c', 'gone')


def test_one_connection_per_thread(driver, connection_cls):
    seen = []

    def work():
        seen.append(driver._connection())
        seen.append(driver._connection())

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(c) for c in seen}) == 3
    assert all(seen[i] is seen[i + 1] for i in range(0, 6, 2))


def test_connection_failure_closes_the_http_connection(driver):
    conn = driver._connection()
    conn.get_object.side_effect = requests.exceptions.ConnectionError(
        'refused')
    with pytest.raises(exception.TransientStorageError):
        driver.store.get('c', 'o')
    conn.close.assert_called_once_with()
    assert driver._connection() is conn  # and keeps its token
    conn.get_object.side_effect = client_error(503)
    with pytest.raises(exception.TransientStorageError):
        driver.store.get('c', 'o')
    conn.close.assert_called_once_with()  # HTTP framing is fine after 503


# Errors --------------------------------------------------------------------

@pytest.mark.parametrize('error,cls,words', [
    (client_error(401), exception.StorageAuthError,
     ['401', '[backup_swift] user/key']),
    (client_error(403), exception.StorageAuthError, ['403']),
    (client_error(404), exception.StorageObjectNotFound, ['c/o']),
    (client_error(500), exception.TransientStorageError, ['500']),
    (client_error(503), exception.TransientStorageError, ['503']),
    (client_error(408), exception.TransientStorageError, ['408']),
    (client_error(429), exception.TransientStorageError, ['429']),
    (client_error(422), exception.TransientStorageError, ['422']),
    (client_error(None, 'Object GET failed: md5sum != etag'),
     exception.TransientStorageError, ['md5sum']),
    (client_error(400, 'bad request'), exception.StorageError, ['bad']),
    (client_error(409), exception.StorageError, ['409']),
    (client_error(413), exception.StorageError, ['413']),
    (requests.exceptions.ConnectionError('refused'),
     exception.TransientStorageError, ['cannot reach Swift', 'refused']),
    (requests.exceptions.ReadTimeout('slow'),
     exception.TransientStorageError, ['cannot reach Swift']),
    (ConnectionResetError('reset'), exception.TransientStorageError,
     ['reset']),
    (requests.exceptions.SSLError('certificate verify failed'),
     exception.StorageError, ['ca_certificate_file', 'insecure']),
    (ks_exc.Unauthorized(), exception.StorageAuthError, ['401']),
    (ks_exc.ConnectFailure('down'), exception.TransientStorageError,
     ['cannot reach Keystone', 'auth_url', 'down']),
    (ks_exc.EndpointNotFound('none'), exception.StorageError,
     ['EndpointNotFound']),
])
def test_errors_are_classified(driver, error, cls, words):
    driver._connection().get_object.side_effect = error
    with pytest.raises(exception.StorageError) as info:
        driver.store.get('c', 'o')
    assert type(info.value) is cls
    for word in words:
        assert word in str(info.value)
    assert info.value.__cause__ is error


def test_transient_classification_of_raw_exceptions(driver):
    def transient(exc):
        return driver.classify_error(exc)[0] == 'transient'
    assert transient(client_error(502))
    assert transient(client_error(None))
    assert transient(requests.exceptions.ConnectionError())
    assert not transient(client_error(401))
    assert not transient(client_error(404))
    assert not transient(client_error(400))
    assert not transient(requests.exceptions.SSLError())
    assert not transient(ValueError('bug'))


@pytest.mark.parametrize('error,attempts', [
    # A 401: the token is renewed and the request tried once more.
    (client_error(503), 3), (client_error(401), 2), (client_error(400), 1)])
def test_only_transient_errors_are_retried(driver, overrides, error,
                                           attempts):
    overrides('storage_retries', 2, 'chunkbackup')
    conn = driver._connection()
    conn.get_object.side_effect = error
    driver._store = None
    with pytest.raises(exception.StorageError):
        driver.store.get('c', 'o')
    assert conn.get_object.call_count == attempts


def test_listing_of_missing_container(driver):
    driver._connection().get_container.side_effect = client_error(404)
    with pytest.raises(exception.StorageContainerNotFound) as info:
        driver.store.list('backups-x', 'p')
    assert 'backups-x' in str(info.value)


# Naming --------------------------------------------------------------------

def test_prefix_is_cinders(v1, connection_cls):
    v1('availability_zone', 'az-2')
    driver = swift.SwiftBackupDriver(context=None)
    record = BackupRecord('vol-1')
    prefix = driver._generate_object_name_prefix(record)
    match = re.match(r'^volume_vol-1/(\d{14})/az_az-2_backup_(.+)$', prefix)
    assert match and match.group(2) == record.id


def test_prefix_refuses_unsafe_ids(driver):
    with pytest.raises(exception.InvalidName):
        driver._generate_object_name_prefix(BackupRecord('../x'))


def test_container_from_backup_or_default(driver, overrides):
    record = BackupRecord('v')
    assert driver.update_container_name(record, None) == 'volumebackups'
    assert driver.update_container_name(record, 'mine') == 'mine'
    overrides('container', 'other')
    driver = swift.SwiftBackupDriver(context=None)  # options read once
    assert driver.update_container_name(record, None) == 'other'
    for bad in ('a/b', 'x' * 257):
        with pytest.raises(exception.InvalidName):
            driver.update_container_name(record, bad)


# Containers ----------------------------------------------------------------

def test_existing_container_is_left_alone(driver):
    conn = driver._connection()
    driver.put_container('c')
    conn.head_container.assert_called_once_with('c')
    conn.put_container.assert_not_called()


def test_missing_container_created_with_policy(v1, connection_cls):
    v1('storage_policy', 'gold')
    driver = swift.SwiftBackupDriver(context=None)
    conn = driver._connection()
    conn.head_container.side_effect = client_error(404)
    driver.put_container('c')
    conn.put_container.assert_called_once_with(
        'c', headers={'X-Storage-Policy': 'gold'})


def test_missing_container_refused_when_told(v1, connection_cls):
    v1('create_container', False)
    driver = swift.SwiftBackupDriver(context=None)
    conn = driver._connection()
    conn.head_container.side_effect = client_error(404)
    with pytest.raises(exception.StorageContainerNotFound) as info:
        driver.store.ensure_container('backups-9')
    assert 'backups-9' in str(info.value)
    assert 'create_container' in str(info.value)
    conn.put_container.assert_not_called()


def test_container_head_failure_is_not_a_missing_container(driver):
    conn = driver._connection()
    conn.head_container.side_effect = client_error(401)
    with pytest.raises(exception.StorageAuthError):
        driver.store.ensure_container('c')
    conn.put_container.assert_not_called()


# Setup check ---------------------------------------------------------------

def test_check_for_setup_error_logs_in(driver):
    conn = driver._connection()
    driver.check_for_setup_error()
    conn.head_account.assert_called_once_with()


def test_check_for_setup_error_wrong_auth_url(driver):
    driver._connection().head_account.side_effect = client_error(404)
    with pytest.raises(exception.StorageError) as info:
        driver.check_for_setup_error()
    assert 'auth_url' in str(info.value)


def test_check_for_setup_error_per_user_needs_no_token(overrides,
                                                       connection_cls):
    overrides('auth_mode', 'per_user')
    swift.SwiftBackupDriver(context=None).check_for_setup_error()
    connection_cls.assert_not_called()
