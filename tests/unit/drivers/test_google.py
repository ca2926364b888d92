"""Unit tests of the Google Cloud Storage driver, with no server.

The real google-cloud-storage client runs; only its HTTP transport is
replaced (a requests adapter mounted on the driver's own session), so the
requests it sends (pagination tokens, MD5s, resumable chunks, retries) are
the ones a real service would receive.
"""
import base64
import hashlib
import io
import json
import re
import time
from unittest import mock
import urllib.parse

from google.api_core import exceptions as api_exceptions
from google.api_core.retry import retry_unary
from google.auth import credentials as auth_credentials
from google.auth import exceptions as auth_exceptions
from google.cloud.storage import exceptions as gcs_exceptions
from oslo_config import cfg
import pytest
import requests
import urllib3

from chunkbackup import checksums
from chunkbackup.drivers import gcs as gcs_module
from chunkbackup.drivers import google
from chunkbackup import exception
from chunkbackup import opts
from chunkbackup import storage
from chunkbackup.testing.record import BackupRecord

CONF = cfg.CONF
ENDPOINT = 'http://gcs.test'
MiB = 1024 * 1024


class Reply:
    def __init__(self, status=200, body=b'', headers=None):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers = dict(headers or {}, **{
                'Content-Type': 'application/json'})
        self.status = status
        self.body = body
        self.headers = headers or {}


def error(status, message='nope'):
    return Reply(status, {'error': {'code': status, 'message': message,
                                    'errors': [{'message': message}]}})


class Sent:
    """One request as the service would see it."""

    def __init__(self, request):
        parsed = urllib.parse.urlsplit(request.url)
        self.method = request.method
        self.path = urllib.parse.unquote(parsed.path)
        self.query = dict(urllib.parse.parse_qsl(parsed.query))
        self.headers = request.headers
        body = request.body
        if hasattr(body, 'read'):
            body = body.read()
        self.body = body.encode() if isinstance(body, str) else (body or b'')

    def json(self):
        return json.loads(self.body)


class FakeService(requests.adapters.BaseAdapter):
    """A requests transport answering from ``handler(sent) -> Reply``."""

    def __init__(self, handler):
        super().__init__()
        self.handler = handler
        self.sent = []
        self.timeouts = []
        self.failures = []

    def send(self, request, stream=False, timeout=None, **kwargs):
        sent = Sent(request)
        self.sent.append(sent)
        self.timeouts.append(timeout)
        try:
            reply = self.handler(sent)
        except AssertionError as e:
            # Seen even when raised on a thread the client started itself.
            self.failures.append(e)
            raise
        if isinstance(reply, Exception):
            raise reply
        raw = urllib3.HTTPResponse(
            body=io.BytesIO(reply.body), headers=reply.headers,
            status=reply.status, preload_content=False,
            decode_content=False)
        return requests.adapters.HTTPAdapter().build_response(request, raw)

    def close(self):
        pass


class _NoLibraryRetries:
    """``time`` for google.api_core's retry loop.

    Its sleep (the pause before a retry) fails the test at once instead of
    backing off.
    """

    def __getattr__(self, name):
        return getattr(time, name)

    def sleep(self, seconds):
        raise AssertionError('google-cloud-storage retried on its own')


@pytest.fixture(autouse=True)
def no_library_retries():
    with mock.patch.object(retry_unary, 'time', _NoLibraryRetries()):
        yield


OVERRIDE_GROUP = google.GROUP  # the default group of the overrides fixture


@pytest.fixture
def configured(overrides):
    overrides('anonymous', True)
    overrides('endpoint', ENDPOINT)
    overrides('project_id', 'proj')
    overrides('bucket', 'bkt')
    overrides('object_size', 1 * MiB)
    overrides('storage_retries', 0, 'chunkbackup')
    return overrides


@pytest.fixture
def serve(configured):
    """serve(handler) -> (driver, fake service recording what was sent).

    The driver's client talks to ``handler``.
    """
    services = []

    def make(handler):
        driver = google.GoogleBackupDriver(context=None)
        service = FakeService(handler)
        driver.client._http.mount(ENDPOINT, service)
        services.append(service)
        return driver, service

    yield make
    for service in services:
        assert service.failures == []


def object_resource(bucket, name, body=b''):
    return {'kind': 'storage#object', 'bucket': bucket, 'name': name,
            'size': str(len(body)), 'generation': '1',
            'md5Hash': checksums.md5_base64(body)}


def upload_metadata(sent):
    """The JSON part of a multipart upload."""
    match = re.search(rb'\r\n\r\n(\{.*?\})\r\n--', sent.body, re.S)
    return json.loads(match.group(1))


# Options and modules ---------------------------------------------------------

def test_options_listed_once_under_backup_google():
    groups = [group for group, _ in opts.list_opts()]
    assert groups.count(google.GROUP) == 1
    names = {o.name for o in dict(opts.list_opts())[google.GROUP]}
    assert {'bucket', 'project_id', 'credentials_file', 'anonymous',
            'endpoint', 'object_size', 'bucket_location', 'storage_class',
            'create_bucket', 'proxy_url', 'upload_chunk_size', 'timeout',
            'availability_zone'} <= names
    assert all(o.help for o in google.OPTS)
    assert CONF[google.GROUP].object_size == 52428800
    assert CONF[google.GROUP].bucket == 'volumebackups'
    assert not hasattr(gcs_module, 'OPTS')
    assert not hasattr(gcs_module, 'GROUP')
    assert gcs_module.GoogleBackupDriver is google.GoogleBackupDriver


def test_upload_chunk_size_must_be_a_multiple_of_256k(configured):
    configured('upload_chunk_size', 256 * 1024 + 1)
    with pytest.raises(exception.InvalidConfiguration) as err:
        google.GoogleBackupDriver(context=None)
    assert 'upload_chunk_size' in str(err.value)


def test_anonymous_and_credentials_file_exclude_each_other(configured):
    configured('credentials_file', '/etc/key.json')
    with pytest.raises(exception.InvalidConfiguration) as err:
        google.GoogleBackupDriver(context=None)
    assert 'credentials_file' in str(err.value)


# Naming ----------------------------------------------------------------------

def test_object_name_prefix_and_container(configured):
    configured('availability_zone', 'zone-b')
    driver = google.GoogleBackupDriver(context=None)
    record = BackupRecord(volume_id='vol-9', id='bk-1')
    fixed = time.struct_time((2026, 11, 21, 0, 37, 25, 5, 325, 0))
    with mock.patch.object(google.time, 'gmtime', return_value=fixed):
        prefix = driver._generate_object_name_prefix(record)
    assert prefix == 'volume_vol-9/20261121003725/az_zone-b_backup_bk-1'
    assert driver.update_container_name(record, None) == 'bkt'
    assert driver.update_container_name(record, 'other') == 'other'


def test_unsafe_ids_are_refused(configured):
    driver = google.GoogleBackupDriver(context=None)
    with pytest.raises(exception.InvalidName):
        driver._generate_object_name_prefix(
            BackupRecord(volume_id='../x', id='bk-1'))


# Credentials and the client --------------------------------------------------

def test_anonymous_client_uses_the_endpoint(configured):
    driver = google.GoogleBackupDriver(context=None)
    client = driver.client
    assert isinstance(client._credentials,
                      auth_credentials.AnonymousCredentials)
    assert client.api_endpoint == ENDPOINT
    assert client.project == 'proj'
    assert driver.client is client  # built once


def test_credentials_file(configured, overrides):
    overrides('anonymous', False)
    overrides('credentials_file', '/etc/chunkbackup/gcs.json')
    overrides('project_id', None)
    overrides('endpoint', None)
    creds = mock.Mock(spec=auth_credentials.Credentials,
                      project_id='from-file',
                      universe_domain='googleapis.com')
    with mock.patch('google.oauth2.service_account.Credentials.'
                    'from_service_account_file',
                    return_value=creds) as load:
        client = google.GoogleBackupDriver(context=None).client
    load.assert_called_once_with('/etc/chunkbackup/gcs.json',
                                 scopes=google.SCOPES)
    assert client._credentials is creds
    assert client.project == 'from-file'
    assert client.api_endpoint == 'https://storage.googleapis.com'


def test_unreadable_credentials_file(configured, overrides, tmp_path):
    overrides('anonymous', False)
    overrides('credentials_file', str(tmp_path / 'missing.json'))
    driver = google.GoogleBackupDriver(context=None)  # no I/O yet
    with pytest.raises(exception.InvalidConfiguration) as err:
        driver.check_for_setup_error()
    assert '[backup_google] credentials_file' in str(err.value)
    assert 'missing.json' in str(err.value)


def test_application_default_credentials(configured, overrides):
    overrides('anonymous', False)
    creds = mock.Mock(spec=auth_credentials.Credentials,
                      universe_domain='googleapis.com')
    with mock.patch('google.auth.default',
                    return_value=(creds, 'adc-project')) as default:
        client = google.GoogleBackupDriver(context=None).client
    default.assert_called_once_with(scopes=google.SCOPES)
    assert client._credentials is creds
    assert client.project == 'proj'  # project_id wins over ADC's


def test_no_credentials_at_all(configured, overrides):
    overrides('anonymous', False)
    with mock.patch('google.auth.default', side_effect=auth_exceptions.
                    DefaultCredentialsError('none here')):
        driver = google.GoogleBackupDriver(context=None)
        with pytest.raises(exception.InvalidConfiguration) as err:
            driver.check_for_setup_error()
    assert 'credentials_file' in str(err.value)


def test_proxy_and_pool(configured, overrides):
    overrides('proxy_url', 'http://proxy.test:3128')
    overrides('objects_in_flight', 16, 'chunkbackup')
    session = google.GoogleBackupDriver(context=None).client._http
    assert session.proxies == {'http': 'http://proxy.test:3128',
                               'https': 'http://proxy.test:3128'}
    adapter = session.get_adapter('https://storage.googleapis.com/x')
    # A connection for each object in flight, up or down.
    assert adapter._pool_maxsize == storage.connections_needed() >= 16
    assert adapter.max_retries.total == 0


# Listing ---------------------------------------------------------------------

def test_listing_follows_every_page(configured, serve):
    pages = {None: (['p-1', 'p-2', 'p-3'], 't1'),
             't1': (['p-4', 'p-5', 'p-6'], 't2'),
             't2': (['p-7'], None)}

    def handler(sent):
        assert sent.method == 'GET' and sent.path == '/storage/v1/b/bkt/o'
        names, token = pages[sent.query.get('pageToken')]
        body = {'items': [{'name': n} for n in names]}
        if token:
            body['nextPageToken'] = token
        return Reply(200, body)

    driver, service = serve(handler)
    driver.listing_page_size = 3
    assert driver.get_container_entries('bkt', 'p-') == [
        'p-%d' % i for i in range(1, 8)]
    assert [s.query.get('pageToken') for s in service.sent] == [
        None, 't1', 't2']
    for sent in service.sent:
        assert sent.query['prefix'] == 'p-'
        assert sent.query['maxResults'] == '3'
        assert 'nextPageToken' in sent.query['fields']


def test_empty_listing(configured, serve):
    driver, _ = serve(lambda sent: Reply(200, {}))
    assert driver.get_container_entries('bkt', 'nothing') == []


def test_listing_a_missing_bucket(configured, serve):
    driver, _ = serve(lambda sent: error(404, 'The specified bucket does '
                                              'not exist.'))
    with pytest.raises(exception.StorageContainerNotFound) as err:
        driver.store.list('gone-bkt', 'p-')
    assert 'gone-bkt' in str(err.value)


# Uploads ---------------------------------------------------------------------

def test_small_upload_sends_the_md5(configured, serve):
    body = b'the body of an object' * 100

    def handler(sent):
        assert sent.query['uploadType'] == 'multipart'
        return Reply(200, object_resource('bkt', 'obj', body))

    driver, service = serve(handler)
    driver.store.put('bkt', 'obj', body)
    [sent] = service.sent
    assert sent.method == 'POST'
    assert sent.path == '/upload/storage/v1/b/bkt/o'
    metadata = upload_metadata(sent)
    assert metadata['name'] == 'obj'
    assert metadata['md5Hash'] == base64.b64encode(
        hashlib.md5(body).digest()).decode()
    assert body in sent.body
    assert service.timeouts == [60.0]


def test_large_upload_is_resumable_in_chunks_with_the_md5(configured, serve):
    configured('upload_chunk_size', 1 * MiB)
    body = bytes(range(256)) * (9 * MiB // 256 + 77)  # over 8 MiB
    session_url = ENDPOINT + '/upload/storage/v1/b/bkt/o?uploadType=' \
                             'resumable&upload_id=u1'
    received = bytearray()

    def handler(sent):
        if sent.method == 'POST':
            assert sent.query['uploadType'] == 'resumable'
            return Reply(200, b'', {'Location': session_url})
        assert sent.method == 'PUT' and sent.query['upload_id'] == 'u1'
        start, end, total = map(int, re.match(
            r'bytes (\d+)-(\d+)/(\d+)',
            sent.headers['content-range']).groups())
        assert start == len(received) and total == len(body)
        received.extend(sent.body)
        if len(received) < total:
            return Reply(308, b'', {'Range': 'bytes=0-%d' % end})
        return Reply(200, object_resource('bkt', 'big', bytes(received)))

    driver, service = serve(handler)
    # A whole body (Cinder's writer): its MD5 goes with the first request.
    with driver.get_object_writer('bkt', 'big') as writer:
        writer.write(body)
    initiate = service.sent[0]
    assert initiate.json()['md5Hash'] == checksums.md5_base64(body)
    chunks = service.sent[1:]
    assert len(chunks) == -(-len(body) // MiB)
    assert all(len(c.body) == MiB for c in chunks[:-1])
    assert bytes(received) == body


@pytest.mark.parametrize('size', [9 * MiB + 77, 9 * MiB])
def test_large_stream_is_resumable_in_chunks_md5_checked(configured, serve,
                                                         size):
    configured('upload_chunk_size', 1 * MiB)
    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    session_url = ENDPOINT + '/upload/storage/v1/b/bkt/o?uploadType=' \
                             'resumable&upload_id=u1'
    received = bytearray()
    ranges = []

    def handler(sent):
        if sent.method == 'POST':
            assert 'md5Hash' not in (sent.json() or {})  # not known yet
            return Reply(200, b'', {'Location': session_url})
        ranges.append(sent.headers['content-range'])
        received.extend(sent.body)
        if ranges[-1].endswith('/*'):
            return Reply(308, b'', {'Range': 'bytes=0-%d'
                                    % (len(received) - 1)})
        return Reply(200, object_resource('bkt', 'big', bytes(received)))

    driver, service = serve(handler)
    pieces = [body[i:i + 700001] for i in range(0, len(body), 700001)]
    driver.store.put_stream('bkt', 'big', lambda: iter(pieces))
    assert bytes(received) == body
    assert ranges[0] == 'bytes 0-%d/*' % (MiB - 1)
    assert ranges[-1].endswith('/%d' % size)


def test_writer_that_fails_sends_nothing(configured, serve):
    driver, service = serve(lambda sent: pytest.fail('nothing to send'))
    with pytest.raises(RuntimeError):
        with driver.get_object_writer('bkt', 'obj') as writer:
            writer.write(b'part')
            raise RuntimeError('interrupted')
    assert service.sent == []


def test_rejected_md5_is_a_clear_error(configured, serve):
    message = 'Provided MD5 hash doesn\'t match calculated MD5 hash.'
    driver, service = serve(lambda sent: error(400, message))
    with pytest.raises(exception.StorageError) as err:
        driver.store.put('bkt', 'obj', b'body')
    assert not isinstance(err.value, exception.TransientStorageError)
    assert 'MD5' in str(err.value) and 'bkt/obj' in str(err.value)


# Downloads -------------------------------------------------------------------

def test_download_checks_the_md5(configured, serve):
    body = b'stored bytes' * 1000

    def handler(sent):
        assert sent.path == '/download/storage/v1/b/bkt/o/a/b'
        assert sent.query['alt'] == 'media'
        return Reply(200, body, {
            'x-goog-hash': 'md5=%s' % checksums.md5_base64(body)})

    driver, _ = serve(handler)
    assert driver.store.get('bkt', 'a/b') == body


def test_download_damaged_on_the_way_is_transient(configured, serve):
    def handler(sent):
        return Reply(200, b'damaged', {
            'x-goog-hash': 'md5=%s' % checksums.md5_base64(b'original')})

    driver, _ = serve(handler)
    with pytest.raises(exception.TransientStorageError):
        driver.store.get('bkt', 'obj')


def test_missing_object_in_an_existing_bucket(configured, serve):
    def handler(sent):
        if sent.path == '/storage/v1/b/bkt':
            return Reply(200, {'name': 'bkt'})
        return error(404, 'No such object: bkt/obj')

    driver, _ = serve(handler)
    with pytest.raises(exception.StorageObjectNotFound) as err:
        driver.store.get('bkt', 'obj')
    assert 'bkt/obj' in str(err.value)


def test_missing_bucket_when_reading(configured, serve):
    driver, _ = serve(lambda sent: error(404, 'The specified bucket does '
                                              'not exist.'))
    with pytest.raises(exception.StorageContainerNotFound) as err:
        driver.store.get('gone-bkt', 'obj')
    assert 'gone-bkt' in str(err.value)


# Deletes ---------------------------------------------------------------------

def test_delete(configured, serve):
    def handler(sent):
        if sent.method == 'DELETE' and sent.path.endswith('/o/here'):
            return Reply(204)
        if sent.path == '/storage/v1/b/bkt':
            return Reply(200, {'name': 'bkt'})
        return error(404)

    driver, service = serve(handler)
    driver.delete_object('bkt', 'here')
    assert (service.sent[0].method, service.sent[0].path) == (
        'DELETE', '/storage/v1/b/bkt/o/here')
    with pytest.raises(exception.StorageObjectNotFound):
        with storage.translated(driver, 'delete', 'bkt', 'gone'):
            driver.delete_object('bkt', 'gone')
    driver.store.delete('bkt', 'gone')  # a missing object is deleted


# Errors and retries ----------------------------------------------------------

@pytest.mark.parametrize('status', [401, 403])
def test_refused_credentials(configured, status, serve):
    driver, _ = serve(lambda sent: error(status, 'Permission denied'))
    with pytest.raises(exception.StorageAuthError) as err:
        driver.store.get('bkt', 'obj')
    assert '[backup_google] credentials_file' in str(err.value)
    assert 'bkt/obj' in str(err.value)


def test_failed_token_refresh_is_an_auth_error(configured):
    driver = google.GoogleBackupDriver(context=None)
    with pytest.raises(exception.StorageAuthError) as err:
        with storage.translated(driver, 'get', 'bkt', 'obj'):
            raise auth_exceptions.RefreshError('invalid_grant')
    assert 'credentials_file' in str(err.value)


@pytest.mark.parametrize('status', [408, 429, 500, 502, 503, 504])
def test_transient_statuses_are_not_retried_by_the_library(configured,
                                                           status, serve):
    driver, service = serve(lambda sent: error(status, 'busy'))
    with pytest.raises(exception.TransientStorageError):
        driver.store.get('bkt', 'obj')
    # One request: the storage seam retries (0 times here), not the client.
    assert len(service.sent) == 1


def test_transient_failures_are_retried_by_the_seam(configured, serve):
    configured('storage_retries', 2, 'chunkbackup')
    configured('storage_retry_backoff', 0.0, 'chunkbackup')
    replies = [error(503), requests.ConnectionError('reset'),
               Reply(200, {'items': [{'name': 'x'}]})]
    driver, service = serve(lambda sent: replies.pop(0))
    assert driver.store.list('bkt', '') == ['x']
    assert len(service.sent) == 3


@pytest.mark.parametrize('exc, transient', [
    (api_exceptions.ServiceUnavailable('x'), True),
    (api_exceptions.TooManyRequests('x'), True),
    (api_exceptions.InternalServerError('x'), True),
    (api_exceptions.GatewayTimeout('x'), True),
    (api_exceptions.from_http_status(408, 'x'), True),
    (api_exceptions.BadRequest('x'), False),
    (api_exceptions.Forbidden('x'), False),
    (api_exceptions.NotFound('x'), False),
    (api_exceptions.Conflict('x'), False),
    (requests.ConnectionError('reset'), True),
    (requests.Timeout('slow'), True),
    (requests.exceptions.ChunkedEncodingError('cut'), True),
    (urllib3.exceptions.ProtocolError('cut'), True),
    (ConnectionResetError(), True),
    (TimeoutError(), True),
    (auth_exceptions.TransportError('token endpoint down'), True),
    (auth_exceptions.RefreshError('503 from the token endpoint',
                                  retryable=True), True),
    (auth_exceptions.RefreshError('invalid_grant'), False),
    (gcs_exceptions.DataCorruption(None, 'md5'), True),
    (gcs_exceptions.InvalidResponse(mock.Mock(status_code=503), 'x'), True),
    (gcs_exceptions.InvalidResponse(mock.Mock(status_code=400), 'x'), False),
    (ValueError('bug'), False),
    (exception.StorageAuthError(operation='get', target='b', reason='r'),
     False),
    (exception.TransientStorageError(operation='get', target='b',
                                     reason='r'), True),
])
def test_transient_classification(configured, exc, transient):
    driver = google.GoogleBackupDriver(context=None)
    assert (driver.classify_error(exc)[0] == 'transient') is transient


def test_other_client_errors_are_storage_errors(configured, serve):
    driver, _ = serve(lambda sent: error(412, 'Precondition Failed'))
    with pytest.raises(exception.StorageError) as err:
        driver.store.get('bkt', 'obj')
    assert type(err.value) is exception.StorageError
    assert '412' in str(err.value)


# Buckets ---------------------------------------------------------------------

def test_existing_bucket_is_used(configured, serve):
    driver, service = serve(lambda sent: Reply(200, {'name': 'bkt'}))
    driver.put_container('bkt')
    assert [(s.method, s.path) for s in service.sent] == [
        ('GET', '/storage/v1/b/bkt')]


def test_missing_bucket_is_created(configured, serve):
    configured('bucket_location', 'EUROPE-WEST1')
    configured('storage_class', 'COLDLINE')

    def handler(sent):
        if sent.method == 'GET':
            return error(404)
        return Reply(200, sent.json())

    driver, service = serve(handler)
    driver.put_container('new-bkt')
    create = service.sent[1]
    assert (create.method, create.path) == ('POST', '/storage/v1/b')
    assert create.query['project'] == 'proj'
    assert create.json() == {'name': 'new-bkt', 'location': 'EUROPE-WEST1',
                             'storageClass': 'COLDLINE'}


def test_bucket_created_meanwhile(configured, serve):
    replies = [error(404), error(409, 'You already own this bucket.')]
    driver, service = serve(lambda sent: replies.pop(0))
    driver.put_container('bkt')
    assert len(service.sent) == 2


def test_missing_bucket_with_creation_disabled(configured, serve):
    configured('create_bucket', False)
    driver, service = serve(lambda sent: error(404))
    with pytest.raises(exception.StorageContainerNotFound) as err:
        driver.store.ensure_container('wanted-bkt')
    assert 'wanted-bkt' in str(err.value)
    assert '[backup_google] create_bucket' in str(err.value)
    assert [s.method for s in service.sent] == ['GET']


def test_unreadable_bucket_is_assumed_when_not_creating(configured, serve):
    configured('create_bucket', False)
    driver, service = serve(lambda sent: error(403, 'no buckets.get'))
    driver.put_container('bkt')
    assert len(service.sent) == 1


def test_unreadable_bucket_with_creation_enabled(configured, serve):
    driver, _ = serve(lambda sent: error(403, 'no buckets.get'))
    with pytest.raises(exception.StorageAuthError):
        driver.store.ensure_container('bkt')


def test_creating_a_bucket_needs_a_project(configured, overrides, serve):
    overrides('project_id', None)
    driver, service = serve(lambda sent: error(404))
    with pytest.raises(exception.InvalidConfiguration) as err:
        driver.put_container('bkt')
    assert '[backup_google] project_id' in str(err.value)
    assert len(service.sent) == 1


def test_a_piece_kept_in_part_sends_the_stream_again(configured, serve):
    configured('upload_chunk_size', 1 * MiB)
    body = bytes(9 * MiB + 5)
    session_url = ENDPOINT + '/upload/storage/v1/b/bkt/o?uploadType=' \
                             'resumable&upload_id=u1'

    def handler(sent):
        if sent.method == 'POST':
            return Reply(200, b'', {'Location': session_url})
        # The service kept only part of the first piece.
        return Reply(308, b'', {'Range': 'bytes=0-%d' % 1000})

    driver, service = serve(handler)
    with pytest.raises(exception.TransientStorageError) as info:
        storage.DriverStore(driver).put_stream('bkt', 'big',
                                               lambda: [body])
    assert 'sent again' in str(info.value)
