"""Unit tests of the S3 driver, with no server.

The real boto3 client runs: signing, serialisation, parsing and botocore's
retry handler included. Only the HTTP exchange is replaced, through
botocore's ``before-send`` event, by ``FakeS3``: an in-memory bucket store
that records every request as a server would receive it (headers and
body) and can be told to answer some requests with errors. Listing across
pages is also checked with botocore's Stubber.
"""
import base64
import filecmp
import hashlib
import io
import logging
import os
import re
import urllib.parse
import uuid
from xml.etree import ElementTree
from xml.sax import saxutils

from botocore import awsrequest
from botocore import exceptions as boto_exc
from botocore import stub
from oslo_config import cfg
import pytest
import urllib3

from chunkbackup.drivers import s3
from chunkbackup import exception
from chunkbackup import storage
from chunkbackup.testing.record import BackupRecord
from chunkbackup.testing import volumes

CONF = cfg.CONF
ENDPOINT = 'http://s3.test:8080'
ACCESS_KEY = 'AKIAUNITTEST'
SECRET_KEY = 'unit-secret-' + 'x' * 20
MiB = 1024 * 1024


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def etag(data: bytes) -> str:
    return '"%s"' % hashlib.md5(data).hexdigest()


class Sent:
    """One request as the server sees it."""

    def __init__(self, request):
        parsed = urllib.parse.urlsplit(request.url)
        self.method = request.method
        path = urllib.parse.unquote(parsed.path).lstrip('/')
        self.bucket, _, self.key = path.partition('/')
        self.query = dict(urllib.parse.parse_qsl(parsed.query,
                                                 keep_blank_values=True))
        self.headers = {k.lower(): (v.decode() if isinstance(v, bytes)
                                    else v)
                        for k, v in request.headers.items()}
        body = request.body
        if hasattr(body, 'read'):
            here = body.tell()
            body = body.read()
            request.body.seek(here)
        self.body = body or b''

    @property
    def operation(self) -> str:
        q, m = self.query, self.method
        if not self.key:
            if m == 'GET' and q.get('list-type') == '2':
                return 'ListObjectsV2'
            if m == 'GET' and 'uploads' in q:
                return 'ListMultipartUploads'
            return {'HEAD': 'HeadBucket', 'PUT': 'CreateBucket',
                    'DELETE': 'DeleteBucket'}.get(m, m)
        if m == 'POST' and 'uploads' in q:
            return 'CreateMultipartUpload'
        if m == 'PUT' and 'partNumber' in q:
            return 'UploadPart'
        if m == 'POST' and 'uploadId' in q:
            return 'CompleteMultipartUpload'
        if m == 'DELETE' and 'uploadId' in q:
            return 'AbortMultipartUpload'
        return {'PUT': 'PutObject', 'GET': 'GetObject', 'HEAD': 'HeadObject',
                'DELETE': 'DeleteObject'}[m]

    def __repr__(self):
        return '<%s %s/%s>' % (self.operation, self.bucket, self.key)


NS = 'http://s3.amazonaws.com/doc/2006-03-01/'


def xml(tag, children, namespace=NS) -> bytes:
    def render(value):
        if isinstance(value, list):
            return ''.join('<%s>%s</%s>' % (k, render(v), k)
                           for k, v in value)
        return saxutils.escape(str(value))
    xmlns = ' xmlns="%s"' % namespace if namespace else ''
    return ('<?xml version="1.0" encoding="UTF-8"?><%s%s>%s</%s>'
            % (tag, xmlns, render(children), tag)).encode()


def s3_error(status, code, message='injected'):
    # S3's error documents carry no namespace.
    return (status, {}, xml('Error', [('Code', code), ('Message', message)],
                            namespace=None))


class FakeS3:
    """An in-memory S3 answering a boto3 client's requests."""

    def __init__(self, client):
        self.buckets = {}
        self.uploads = {}
        self.created = []  # multipart upload ids, in order
        self.sent = []
        # (operation, predicate or None, reply or exception), used once.
        self.faults = []
        client.meta.events.register('before-send.s3', self._send)

    def fail(self, operation, reply, when=None, times=1):
        for _ in range(times):
            self.faults.append((operation, when, reply))

    def ops(self, *names):
        return [s for s in self.sent if not names or s.operation in names]

    def _send(self, request, **kwargs):
        sent = Sent(request)
        self.sent.append(sent)
        for i, (operation, when, reply) in enumerate(self.faults):
            if operation == sent.operation and (when is None or when(sent)):
                del self.faults[i]
                if isinstance(reply, BaseException):
                    raise reply
                return self._reply(request, *reply)
        return self._reply(request, *self._handle(sent))

    @staticmethod
    def _reply(request, status, headers, body):
        headers = dict(headers, **{'Content-Length': str(len(body))})
        raw = urllib3.HTTPResponse(body=io.BytesIO(body), headers=headers,
                                   status=status, preload_content=False)
        return awsrequest.AWSResponse(request.url, status, headers, raw)

    def _handle(self, s):
        op = s.operation
        objects = self.buckets.get(s.bucket)
        if op == 'CreateBucket':
            self.buckets.setdefault(s.bucket, {})
            return 200, {}, b''
        if objects is None:
            if op == 'HeadBucket':
                return 404, {}, b''
            return s3_error(404, 'NoSuchBucket')
        if op == 'HeadBucket':
            return 200, {}, b''
        if op == 'PutObject':
            objects[s.key] = s.body
            return 200, {'ETag': etag(s.body)}, b''
        if op == 'GetObject':
            if s.key not in objects:
                return s3_error(404, 'NoSuchKey')
            return 200, {'ETag': etag(objects[s.key])}, objects[s.key]
        if op == 'DeleteObject':
            objects.pop(s.key, None)
            return 204, {}, b''
        if op == 'ListObjectsV2':
            return self._list(s, objects)
        if op == 'CreateMultipartUpload':
            upload_id = uuid.uuid4().hex
            self.created.append(upload_id)
            self.uploads[upload_id] = (s.bucket, s.key, {})
            return 200, {}, xml('InitiateMultipartUploadResult', [
                ('Bucket', s.bucket), ('Key', s.key),
                ('UploadId', upload_id)])
        if op == 'UploadPart':
            self.uploads[s.query['uploadId']][2][
                int(s.query['partNumber'])] = s.body
            return 200, {'ETag': etag(s.body)}, b''
        if op == 'CompleteMultipartUpload':
            _, _, parts = self.uploads.pop(s.query['uploadId'])
            objects[s.key] = b''.join(parts[n] for n in sorted(parts))
            return 200, {}, xml('CompleteMultipartUploadResult', [
                ('Bucket', s.bucket), ('Key', s.key),
                ('ETag', '"x-%d"' % len(parts))])
        if op == 'AbortMultipartUpload':
            self.uploads.pop(s.query['uploadId'], None)
            return 204, {}, b''
        raise AssertionError('FakeS3 does not do %r' % s)

    @staticmethod
    def _list(s, objects):
        keys = sorted(k for k in objects if k.startswith(s.query['prefix']))
        start = int(s.query.get('continuation-token') or 0)
        size = int(s.query.get('max-keys') or 1000)
        page = keys[start:start + size]
        more = start + size < len(keys)
        children = [('Name', s.bucket), ('Prefix', s.query['prefix']),
                    ('KeyCount', len(page)), ('MaxKeys', size),
                    ('IsTruncated', 'true' if more else 'false')]
        children += [('Contents', [('Key', k), ('Size', len(objects[k]))])
                     for k in page]
        if more:
            children.append(('NextContinuationToken', start + size))
        return 200, {}, xml('ListBucketResult', children)


@pytest.fixture
def s3_conf(conf):
    """Options for a driver at ENDPOINT; every override is cleared."""
    names = set()

    def set_(name, value, group=s3.GROUP):
        if group == s3.GROUP:
            names.add(name)
        conf(name, value, group)

    set_('endpoint_url', ENDPOINT)
    set_('access_key', ACCESS_KEY)
    set_('secret_key', SECRET_KEY)
    set_('addressing_style', 'path')
    set_('object_size', 64 * 1024)
    conf('sha_block_size', 4096)
    conf('storage_retry_backoff', 0.0)
    yield set_
    for name in names:
        CONF.clear_override(name, s3.GROUP)


@pytest.fixture
def make(s3_conf):
    """A driver and the FakeS3 behind its client."""
    def make_(**options):
        for name, value in options.items():
            s3_conf(name, value)
        driver = s3.S3BackupDriver(None)
        return driver, FakeS3(driver.client)
    return make_


def put(driver, bucket, key, body):
    """One put through the seam's adapter (errors classified, no retry)."""
    storage.DriverStore(driver).put(bucket, key, body)


def get(driver, bucket, key):
    return storage.DriverStore(driver).get(bucket, key)


# Options and client ------------------------------------------------------

def test_botocore_makes_one_attempt(make):
    driver, _ = make(retry_mode='adaptive')
    retries = driver.client.meta.config.retries
    assert retries['total_max_attempts'] == 1
    assert retries['mode'] == 'adaptive'


@pytest.mark.parametrize('failure', [
    s3_error(500, 'InternalError'), s3_error(503, 'SlowDown'),
    boto_exc.EndpointConnectionError(endpoint_url=ENDPOINT),
    boto_exc.ReadTimeoutError(endpoint_url=ENDPOINT),
])
def test_transient_failures_retried_once_each_by_the_seam(make, conf,
                                                          failure):
    """Each seam attempt is exactly one HTTP request: no double retries."""
    conf('storage_retries', 3)
    driver, fake = make()
    fake.buckets['b'] = {'k': b'payload'}
    fake.fail('GetObject', failure, times=3)
    assert driver.store.get('b', 'k') == b'payload'
    assert len(fake.ops('GetObject')) == 4
    fake.fail('GetObject', failure, times=4)
    with pytest.raises(exception.TransientStorageError):
        driver.store.get('b', 'k')
    assert len(fake.ops('GetObject')) == 8


def test_client_options(make, tmp_path):
    bundle = tmp_path / 'ca.pem'
    bundle.write_text('not used until a TLS connection')
    driver, _ = make(connect_timeout=3.5, read_timeout=7.0,
                     max_pool_connections=17, ca_bundle=str(bundle),
                     http_proxy='http://proxy.test:3128',
                     https_proxy='http://user:pw@proxy.test:3129',
                     region='eu-west-3', addressing_style='virtual')
    config = driver.client.meta.config
    assert config.connect_timeout == 3.5
    assert config.read_timeout == 7.0
    assert config.max_pool_connections == 17
    assert config.proxies == {'http': 'http://proxy.test:3128',
                              'https': 'http://user:pw@proxy.test:3129'}
    assert config.s3['addressing_style'] == 'virtual'
    assert driver.client.meta.region_name == 'eu-west-3'
    assert driver.client._endpoint.http_session._verify == str(bundle)


def test_verify_off(make):
    driver, _ = make(verify=False, ca_bundle='/ignored.pem')
    assert driver.client._endpoint.http_session._verify is False


@pytest.mark.parametrize('options, words', [
    ({'secret_key': None}, 'access_key and secret_key'),
    ({'sse_customer_key': 'k' * 32, 'server_side_encryption': 'AES256'},
     'exclude each other'),
    ({'sse_kms_key_id': 'alias/x'}, 'aws:kms'),
    ({'bucket': 'no/slash'}, 'bucket'),
    ({'availability_zone': '../az'}, 'availability_zone'),
    ({'sse_customer_key': 'short'}, 'sse_customer_key'),
])
def test_bad_options_are_refused_clearly(make, options, words):
    with pytest.raises(exception.InvalidConfiguration) as info:
        make(**options)
    assert words in str(info.value)


def test_credentials_chain_when_no_keys(make):
    driver, _ = make(access_key=None, secret_key=None)
    assert driver.access_key is None


# Naming --------------------------------------------------------------------

def test_prefix_is_cinders_s3_layout(make):
    driver, _ = make(availability_zone='zone-b')
    record = BackupRecord('vol-7')
    prefix = driver._generate_object_name_prefix(record)
    match = re.match(r'^volume_vol-7/(\d{14})/az_zone-b_backup_%s$'
                     % record.id, prefix)
    assert match, prefix


def test_container_from_backup_or_default(make):
    driver, _ = make(bucket='my-backups')
    record = BackupRecord('v')
    assert driver.update_container_name(record, None) == 'my-backups'
    assert driver.update_container_name(record, 'other-1') == 'other-1'
    with pytest.raises(exception.InvalidName):
        driver.update_container_name(record, 'bad/name')


def test_default_options():
    opts = CONF[s3.GROUP]
    assert opts.bucket == 'volumebackups'
    assert opts.object_size == 52428800
    assert opts.region == 'us-east-1'
    assert opts.create_bucket is True
    assert opts.send_content_md5 is True
    secret = {o.name for o in s3.OPTS if o.secret}
    assert {'secret_key', 'sse_customer_key'} <= secret


# Listing ---------------------------------------------------------------------

def test_listing_follows_every_page_stubber(make):
    driver, _ = make()
    driver.listing_page_size = 2
    stubber = stub.Stubber(driver.client)
    pages = [(['p-1', 'p-2'], 't1'), (['p-3', 'p-4'], 't2'), (['p-5'], None)]
    token = None
    for keys, next_token in pages:
        response = {'Contents': [{'Key': k, 'Size': 1} for k in keys],
                    'IsTruncated': next_token is not None,
                    'KeyCount': len(keys)}
        if next_token:
            response['NextContinuationToken'] = next_token
        expected = {'Bucket': 'bkt', 'Prefix': 'p-', 'MaxKeys': 2}
        if token:
            expected['ContinuationToken'] = token
        stubber.add_response('list_objects_v2', response, expected)
        token = next_token
    with stubber:
        assert driver.get_container_entries('bkt', 'p-') == [
            'p-1', 'p-2', 'p-3', 'p-4', 'p-5']
    stubber.assert_no_pending_responses()


def test_listing_over_http_pages(make):
    driver, fake = make()
    driver.listing_page_size = 3
    fake.buckets['bkt'] = {('pfx-%02d' % i): b'x' for i in range(8)}
    fake.buckets['bkt'].update({'other': b'y', 'pf': b'z'})
    assert driver.get_container_entries('bkt', 'pfx-') == [
        'pfx-%02d' % i for i in range(8)]
    lists = fake.ops('ListObjectsV2')
    assert len(lists) == 3
    assert [s.query.get('continuation-token') for s in lists] == [
        None, '3', '6']


def test_listing_missing_bucket(make):
    driver, _ = make()
    with pytest.raises(exception.StorageContainerNotFound) as info:
        storage.DriverStore(driver).list('gone-bucket', 'p')
    assert 'gone-bucket' in str(info.value)


# Content-MD5 and multipart --------------------------------------------------

def test_put_sends_content_md5(make):
    driver, fake = make()
    fake.buckets['b'] = {}
    body = b'some data' * 1000
    put(driver, 'b', 'k', body)
    (sent,) = fake.ops('PutObject')
    assert sent.headers['content-md5'] == md5_b64(body)
    assert sent.body == body
    # No aws-chunked CRC trailers, which many S3 servers refuse.
    assert 'aws-chunked' not in sent.headers.get('content-encoding', '')
    assert not any(h.startswith('x-amz-checksum') for h in sent.headers)
    assert fake.buckets['b']['k'] == body


def test_content_md5_can_be_turned_off(make):
    driver, fake = make(send_content_md5=False)
    fake.buckets['b'] = {}
    put(driver, 'b', 'k', b'abc')
    (sent,) = fake.ops('PutObject')
    assert 'content-md5' not in sent.headers


def test_several_writes_make_one_object(make):
    driver, fake = make()
    fake.buckets['b'] = {}
    with driver.get_object_writer('b', 'k') as writer:
        writer.write(b'abc')
        writer.write(memoryview(b'def'))
    assert fake.buckets['b']['k'] == b'abcdef'
    assert fake.ops('PutObject')[0].headers['content-md5'] == md5_b64(
        b'abcdef')


def test_failed_write_sends_nothing(make):
    driver, fake = make()
    with pytest.raises(RuntimeError):
        with driver.get_object_writer('b', 'k') as writer:
            writer.write(b'abc')
            raise RuntimeError('interrupted')
    assert fake.sent == []


@pytest.mark.parametrize('md5', [True, False])
def test_multipart_above_threshold(make, md5):
    driver, fake = make(multipart_threshold=5 * MiB,
                        multipart_chunksize=5 * MiB, send_content_md5=md5)
    fake.buckets['b'] = {}
    body = bytes(range(256)) * (11 * MiB // 256) + b'tail'
    put(driver, 'b', 'big', body)
    assert [s.operation for s in fake.sent] == [
        'CreateMultipartUpload', 'UploadPart', 'UploadPart', 'UploadPart',
        'CompleteMultipartUpload']
    parts = fake.ops('UploadPart')
    assert [len(p.body) for p in parts] == [5 * MiB, 5 * MiB, MiB + 4]
    assert [p.query['partNumber'] for p in parts] == ['1', '2', '3']
    for part in parts:
        if md5:
            assert part.headers['content-md5'] == md5_b64(part.body)
        else:
            assert 'content-md5' not in part.headers
    complete = ElementTree.fromstring(
        fake.ops('CompleteMultipartUpload')[0].body)
    listed = [(p.find('{%s}PartNumber' % NS).text,
               p.find('{%s}ETag' % NS).text) for p in complete]
    assert listed == [(str(n), etag(p.body)) for n, p in enumerate(parts, 1)]
    assert fake.buckets['b']['big'] == body
    assert fake.uploads == {}


def test_threshold_itself_is_one_put(make):
    driver, fake = make(multipart_threshold=5 * MiB)
    fake.buckets['b'] = {}
    put(driver, 'b', 'k', bytes(5 * MiB))
    assert [s.operation for s in fake.sent] == ['PutObject']


def test_many_parts_grow_the_part_size(make, monkeypatch):
    monkeypatch.setattr(s3, 'MAX_PARTS', 2)
    driver, fake = make(multipart_threshold=5 * MiB,
                        multipart_chunksize=5 * MiB)
    fake.buckets['b'] = {}
    # A whole body (Cinder's writer) knows its size: the parts grow.
    with driver.get_object_writer('b', 'k') as writer:
        writer.write(bytes(12 * MiB))
    assert [len(p.body) for p in fake.ops('UploadPart')] == [6 * MiB] * 2
    # A stream does not: too many parts is a clear error, and aborted.
    with pytest.raises(exception.StorageError) as info:
        put(driver, 'b', 'k2', bytes(12 * MiB))
    assert 'multipart_chunksize' in str(info.value)
    assert len(fake.ops('AbortMultipartUpload')) == 1


def _uneven(body):
    sizes = [1, 4095, 3 * MiB + 7, 2 * MiB - 1, 1000]
    pos, n = 0, 0
    while pos < len(body):
        step = sizes[n % len(sizes)]
        yield body[pos:pos + step]
        pos += step
        n += 1


def test_a_stream_goes_up_in_parts_of_multipart_chunksize(make):
    driver, fake = make(multipart_chunksize=5 * MiB)
    fake.buckets['b'] = {}
    body = os.urandom(12 * MiB + 5)
    storage.DriverStore(driver).put_stream('b', 'k',
                                           lambda: _uneven(body))
    parts = fake.ops('UploadPart')
    assert [len(p.body) for p in parts] == [5 * MiB, 5 * MiB, 2 * MiB + 5]
    assert all(p.headers.get('content-md5') == md5_b64(p.body)
               for p in parts)
    assert get(driver, 'b', 'k') == body


def test_a_stream_of_one_part_is_one_put(make):
    driver, fake = make(multipart_chunksize=5 * MiB)
    fake.buckets['b'] = {}
    body = os.urandom(5 * MiB)
    storage.DriverStore(driver).put_stream('b', 'k',
                                           lambda: _uneven(body))
    assert fake.ops('UploadPart') == [] and len(fake.ops('PutObject')) == 1
    assert get(driver, 'b', 'k') == body


def test_a_failing_producer_aborts_the_upload(make):
    driver, fake = make(multipart_chunksize=5 * MiB)
    fake.buckets['b'] = {}

    def produce():
        yield bytes(6 * MiB)
        yield bytes(5 * MiB)
        raise RuntimeError('the volume went away')

    with pytest.raises(RuntimeError):
        storage.DriverStore(driver).put_stream('b', 'k', produce)
    assert len(fake.ops('AbortMultipartUpload')) == 1
    assert fake.uploads == {} and fake.buckets['b'] == {}


@pytest.mark.parametrize('failing', ['UploadPart', 'CompleteMultipartUpload'])
def test_failed_multipart_is_aborted(make, failing):
    driver, fake = make(multipart_threshold=5 * MiB,
                        multipart_chunksize=5 * MiB)
    fake.buckets['b'] = {}
    fake.fail(failing, s3_error(400, 'InvalidPart'),
              when=lambda s: s.query.get('partNumber') in (None, '2'))
    with pytest.raises(exception.StorageError) as info:
        put(driver, 'b', 'big', bytes(11 * MiB))
    assert not isinstance(info.value, exception.TransientStorageError)
    (abort,) = fake.ops('AbortMultipartUpload')
    assert [abort.query['uploadId']] == fake.created
    assert fake.uploads == {} and fake.buckets['b'] == {}
    if failing == 'UploadPart':
        assert len(fake.ops('UploadPart')) == 2  # stopped at the failure
        assert fake.ops('CompleteMultipartUpload') == []


def test_abort_failure_is_logged_and_the_first_error_kept(make, caplog):
    driver, fake = make(multipart_threshold=5 * MiB,
                        multipart_chunksize=5 * MiB)
    fake.buckets['b'] = {}
    fake.fail('UploadPart', s3_error(503, 'SlowDown'))
    fake.fail('AbortMultipartUpload', s3_error(500, 'InternalError'))
    with caplog.at_level(logging.WARNING, logger=s3.__name__):
        with pytest.raises(exception.TransientStorageError) as info:
            put(driver, 'b', 'big', bytes(6 * MiB))
    assert 'SlowDown' in str(info.value)
    assert 'Could not abort multipart upload' in caplog.text


# Encryption ------------------------------------------------------------------

KEY = bytes(range(32))


@pytest.mark.parametrize('configured', ['k' * 32,
                                        base64.b64encode(KEY).decode()])
def test_sse_c_headers_on_every_transfer(make, configured):
    key = configured.encode() if len(configured) == 32 else KEY
    driver, fake = make(sse_customer_key=configured,
                        multipart_threshold=5 * MiB,
                        multipart_chunksize=5 * MiB)
    fake.buckets['b'] = {}
    put(driver, 'b', 'small', b'abc')
    put(driver, 'b', 'big', bytes(6 * MiB))
    assert get(driver, 'b', 'small') == b'abc'
    expected = {
        'x-amz-server-side-encryption-customer-algorithm': 'AES256',
        'x-amz-server-side-encryption-customer-key':
            base64.b64encode(key).decode(),
        'x-amz-server-side-encryption-customer-key-md5': md5_b64(key)}
    for sent in fake.ops('PutObject', 'CreateMultipartUpload', 'UploadPart',
                         'GetObject'):
        assert {k: sent.headers.get(k) for k in expected} == expected, sent
        assert 'x-amz-server-side-encryption' not in sent.headers


def test_sse_kms_headers_on_writes_only(make):
    driver, fake = make(server_side_encryption='aws:kms',
                        sse_kms_key_id='alias/backups',
                        multipart_threshold=5 * MiB,
                        multipart_chunksize=5 * MiB)
    fake.buckets['b'] = {}
    put(driver, 'b', 'small', b'abc')
    put(driver, 'b', 'big', bytes(6 * MiB))
    get(driver, 'b', 'small')
    for sent in fake.ops('PutObject', 'CreateMultipartUpload'):
        assert sent.headers['x-amz-server-side-encryption'] == 'aws:kms'
        assert sent.headers[
            'x-amz-server-side-encryption-aws-kms-key-id'] == 'alias/backups'
    for sent in fake.ops('UploadPart', 'GetObject'):
        assert 'x-amz-server-side-encryption' not in sent.headers


def test_sse_c_key_forms():
    assert s3.decode_sse_customer_key('a' * 32) == b'a' * 32
    assert s3.decode_sse_customer_key(base64.b64encode(KEY).decode()) == KEY
    for bad in ('a' * 31, base64.b64encode(b'x' * 16).decode(), 'é' * 32):
        with pytest.raises(exception.InvalidConfiguration) as info:
            s3.decode_sse_customer_key(bad)
        assert bad not in str(info.value)


# Buckets ---------------------------------------------------------------------

def test_missing_bucket_created(make):
    driver, fake = make()
    driver.put_container('new-bucket')
    assert [s.operation for s in fake.sent] == ['HeadBucket', 'CreateBucket']
    assert fake.ops('CreateBucket')[0].body == b''  # us-east-1: no location
    driver.put_container('new-bucket')
    assert [s.operation for s in fake.sent][2:] == ['HeadBucket']


def test_bucket_created_in_the_configured_region(make):
    driver, fake = make(region='eu-central-1')
    driver.put_container('eu-bucket')
    body = fake.ops('CreateBucket')[0].body.decode()
    assert '<LocationConstraint>eu-central-1</LocationConstraint>' in body


def test_missing_bucket_refused_without_create_bucket(make):
    driver, fake = make(create_bucket=False)
    with pytest.raises(exception.StorageContainerNotFound) as info:
        driver.put_container('typo-bucket')
    assert 'typo-bucket' in str(info.value)
    assert 'create_bucket' in str(info.value)
    assert fake.ops('CreateBucket') == []


def test_setup_check_finds_the_bucket(make):
    driver, fake = make(bucket='present')
    fake.buckets['present'] = {}
    driver.check_for_setup_error()
    assert [s.operation for s in fake.sent] == ['HeadBucket']


def test_setup_check_missing_bucket(make):
    driver, fake = make(bucket='absent')
    driver.check_for_setup_error()  # the first backup will create it
    assert fake.ops('CreateBucket') == []
    driver, fake = make(bucket='absent', create_bucket=False)
    with pytest.raises(exception.StorageContainerNotFound) as info:
        driver.check_for_setup_error()
    assert 'absent' in str(info.value) and 'create_bucket' in str(info.value)


def test_setup_check_refused_credentials(make):
    driver, fake = make()
    fake.fail('HeadBucket', (403, {}, b''))
    with pytest.raises(exception.StorageAuthError) as info:
        driver.check_for_setup_error()
    assert '[backup_s3] access_key/secret_key' in str(info.value)


def test_bucket_race_and_taken_name(make):
    driver, fake = make()
    fake.fail('CreateBucket', s3_error(409, 'BucketAlreadyOwnedByYou'))
    driver.put_container('raced')
    fake.fail('CreateBucket', s3_error(409, 'BucketAlreadyExists'))
    with pytest.raises(exception.StorageError) as info:
        storage.DriverStore(driver).ensure_container('taken')
    assert 'another account' in str(info.value)
    assert '[backup_s3] bucket' in str(info.value)


# Errors ----------------------------------------------------------------------

@pytest.mark.parametrize('reply, kind, words', [
    (s3_error(403, 'InvalidAccessKeyId'), exception.StorageAuthError,
     '[backup_s3] access_key/secret_key'),
    (s3_error(403, 'SignatureDoesNotMatch'), exception.StorageAuthError,
     '[backup_s3] access_key/secret_key'),
    (s3_error(403, 'AccessDenied'), exception.StorageAuthError,
     ACCESS_KEY),
    ((403, {}, b''), exception.StorageAuthError, 'access_key/secret_key'),
    (s3_error(403, 'RequestTimeTooSkewed'), exception.StorageError, 'clock'),
    (s3_error(404, 'NoSuchBucket'), exception.StorageContainerNotFound,
     'the-bucket'),
    (s3_error(404, 'NoSuchKey'), exception.StorageObjectNotFound, 'obj'),
    (s3_error(500, 'InternalError'), exception.TransientStorageError,
     'InternalError'),
    (s3_error(503, 'SlowDown'), exception.TransientStorageError, 'SlowDown'),
    (s3_error(400, 'RequestTimeout'), exception.TransientStorageError,
     'RequestTimeout'),
    (s3_error(429, 'TooManyRequests'), exception.TransientStorageError,
     '429'),
    (s3_error(400, 'BadDigest'), exception.TransientStorageError,
     'Content-MD5'),
    (s3_error(400, 'InvalidDigest'), exception.StorageError,
     'send_content_md5 = False'),
    (s3_error(400, 'InvalidArgument'), exception.StorageError,
     'InvalidArgument'),
])
def test_error_classification(make, reply, kind, words):
    driver, fake = make()
    fake.buckets['the-bucket'] = {}
    operation = 'PutObject' if reply[0] != 404 else 'GetObject'
    fake.fail(operation, reply)
    with pytest.raises(exception.StorageError) as info:
        if operation == 'PutObject':
            put(driver, 'the-bucket', 'obj', b'data')
        else:
            get(driver, 'the-bucket', 'obj')
    assert type(info.value) is kind
    assert words in str(info.value)
    assert (driver.classify_error(info.value)[0] == 'transient') == (
        kind is exception.TransientStorageError)


def test_missing_object_through_the_seam(make):
    driver, fake = make()
    fake.buckets['b'] = {}
    with pytest.raises(exception.StorageObjectNotFound):
        driver.store.get('b', 'nothing')
    driver.store.delete('b', 'nothing')  # deleting is idempotent


def test_auth_error_mentions_sse_c_key_when_used(make):
    driver, fake = make(sse_customer_key='k' * 32)
    fake.buckets['b'] = {'k': b'x'}
    fake.fail('GetObject', s3_error(403, 'AccessDenied'))
    with pytest.raises(exception.StorageAuthError) as info:
        get(driver, 'b', 'k')
    assert 'sse_customer_key' in str(info.value)
    assert 'k' * 32 not in str(info.value)


@pytest.mark.parametrize('exc, transient', [
    (boto_exc.EndpointConnectionError(endpoint_url=ENDPOINT), True),
    (boto_exc.ConnectTimeoutError(endpoint_url=ENDPOINT), True),
    (boto_exc.ReadTimeoutError(endpoint_url=ENDPOINT), True),
    (boto_exc.ConnectionClosedError(endpoint_url=ENDPOINT), True),
    (boto_exc.ResponseStreamingError(error='reset'), True),
    (boto_exc.IncompleteReadError(actual_bytes=1, expected_bytes=2), True),
    (boto_exc.SSLError(endpoint_url=ENDPOINT, error='bad cert'), False),
    (boto_exc.NoCredentialsError(), False),
    (boto_exc.ClientError({'Error': {'Code': 'SlowDown'},
                           'ResponseMetadata': {'HTTPStatusCode': 503}},
                          'PutObject'), True),
    (boto_exc.ClientError({'Error': {'Code': 'AccessDenied'},
                           'ResponseMetadata': {'HTTPStatusCode': 403}},
                          'PutObject'), False),
    (ConnectionResetError(), True),
    (ValueError(), False),
])
def test_transient_classification(make, exc, transient):
    driver, _ = make()
    assert (driver.classify_error(exc)[0] == 'transient') is transient


@pytest.mark.parametrize('exc, kind, words', [
    (boto_exc.SSLError(endpoint_url=ENDPOINT, error='bad cert'),
     exception.StorageError, 'ca_bundle'),
    (boto_exc.NoCredentialsError(), exception.StorageAuthError,
     'access_key/secret_key'),
    (boto_exc.EndpointConnectionError(endpoint_url=ENDPOINT),
     exception.TransientStorageError, ENDPOINT),
])
def test_connection_level_errors(make, exc, kind, words):
    driver, fake = make()
    fake.fail('GetObject', exc)
    with pytest.raises(exception.StorageError) as info:
        get(driver, 'b', 'k')
    assert type(info.value) is kind
    assert words in str(info.value)


def test_short_body_is_transient(make):
    driver, fake = make()
    fake.buckets['b'] = {}

    def short(request, **kwargs):
        raw = urllib3.HTTPResponse(body=io.BytesIO(b'abc'),
                                   headers={'Content-Length': '10'},
                                   status=200, preload_content=False)
        return awsrequest.AWSResponse(request.url, 200,
                                      {'Content-Length': '10'}, raw)

    driver.client.meta.events.register_first('before-send.s3', short)
    with pytest.raises(exception.TransientStorageError):
        get(driver, 'b', 'k')


# A whole backup ------------------------------------------------------------

def test_backup_restore_and_secrets_never_logged(make, tmp_path, caplog):
    sse_key = 'sse-' + 'q' * 28
    driver, fake = make(sse_customer_key=sse_key, bucket='logs-bucket')
    vol = str(tmp_path / 'vol')
    volumes.write_volume(vol, 64 * 1024 * 3 + 100, 'mixed', seed=3,
                         region_size=8192)
    secrets = [SECRET_KEY, sse_key, base64.b64encode(sse_key.encode())
               .decode()]
    # Everything at DEBUG, botocore's request dumps included.
    with caplog.at_level(logging.DEBUG):
        record = BackupRecord('vol-1')
        with open(vol, 'rb') as f:
            driver.backup(record, f)
        out = str(tmp_path / 'out')
        with open(out, 'wb') as f:
            driver.restore(record, 'vol-1', f, volume_is_new=True)
        assert filecmp.cmp(out, vol, shallow=False)
        fake.fail('GetObject', s3_error(403, 'SignatureDoesNotMatch'))
        with pytest.raises(exception.StorageAuthError):
            driver.verify(record)
    assert record.container == 'logs-bucket'
    assert len(fake.buckets['logs-bucket']) == 6
    text = caplog.text
    assert 'logs-bucket' in text and len(caplog.records) > 20
    for secret in secrets:
        assert secret not in text
