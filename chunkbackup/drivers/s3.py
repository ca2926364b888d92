"""Backups in an S3 bucket (AWS, Swift's s3api, Ceph RGW, MinIO, ...).

Objects are named as Cinder's S3 driver names them
(``volume_<volume id>/<UTC time>/az_<zone>_backup_<backup id>``), so stock
Cinder and chunkbackup restore each other's backups. One boto3 client serves
the driver (clients are thread-safe; sessions are not, so it is built once).

botocore's own retries are switched off: the engine's storage seam retries
transient failures, and retrying in both places would multiply the
attempts. The driver only says which failures are transient. Every put
sends Content-MD5 unless told not to, so the server refuses a body damaged
on the way; bodies above ``multipart_threshold`` go up as a multipart
upload, which is aborted when any part fails so nothing partial remains.
"""
import base64
import binascii
import contextlib
import hashlib
import logging as logging_std
import re
import time
from typing import List, Optional

import boto3
from botocore import config as boto_config
from botocore import exceptions as boto_exc
from oslo_config import cfg
from oslo_log import log as logging

from chunkbackup import backupformat as fmt
from chunkbackup import chunked
from chunkbackup import exception
from chunkbackup import names
from chunkbackup import objectio
from chunkbackup import storage

CONF = cfg.CONF
LOG = logging.getLogger(__name__)

GROUP = 'backup_s3'
MiB = 2 ** 20
GiB = 2 ** 30
# S3's limits: parts are at least 5 MiB (but the last), at most 5 GiB, at
# most 10000 of them; a single PUT is at most 5 GiB.
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * GiB
MAX_PARTS = 10000
# What botocore itself accepts as a bucket name (path-style and legacy
# buckets included); stricter DNS rules are the server's to enforce.
_BUCKET_RE = re.compile(r'^[A-Za-z0-9.\-_]{1,255}$')

OPTS = [
    cfg.StrOpt('endpoint_url',
               help='URL of the S3 endpoint, e.g. https://s3.example.com or '
                    'http://127.0.0.1:8080 (a Swift proxy with s3api). '
                    'Unset means AWS S3 in [backup_s3] region.'),
    cfg.StrOpt('access_key',
               help='S3 access key id (for Swift s3api with tempauth: '
                    '"account:user"). Unset, with secret_key unset too, '
                    'means boto3\'s own credential chain (environment, '
                    '~/.aws, instance profile).'),
    cfg.StrOpt('secret_key',
               secret=True,
               help='S3 secret access key that goes with access_key.'),
    cfg.StrOpt('region',
               default='us-east-1',
               help='Region used to sign requests and to create buckets.'),
    cfg.StrOpt('bucket',
               default='volumebackups',
               help='Bucket for backups that do not name one (Cinder\'s '
                    'default, so both find the same backups).'),
    cfg.IntOpt('object_size',
               default=52428800,
               min=1,
               help='Largest data object in bytes; a multiple of '
                    '[chunkbackup] sha_block_size. 50 MiB, as Cinder\'s S3 '
                    'driver. Memory use grows with it (see '
                    'objects_in_flight).'),
    cfg.StrOpt('availability_zone',
               default='nova',
               help='Availability zone named in object prefixes '
                    '(az_<zone>_backup_<id>), as Cinder\'s '
                    'storage_availability_zone.'),
    cfg.BoolOpt('create_bucket',
                default=True,
                help='Create the bucket when it does not exist. With False '
                     'a missing bucket is an error, which protects against '
                     'a mistyped bucket name.'),
    cfg.StrOpt('addressing_style',
               default='auto',
               choices=[('auto', 'Virtual-hosted where the name allows, '
                                 'as boto3 decides.'),
                        ('path', 'http://endpoint/bucket/key: for servers '
                                 'without wildcard DNS (Swift s3api, '
                                 'MinIO, Ceph RGW by IP).'),
                        ('virtual', 'http://bucket.endpoint/key.')],
               help='How the bucket is put in request URLs.'),
    cfg.FloatOpt('connect_timeout',
                 default=60.0,
                 min=0.0,
                 help='Seconds to wait for a connection to the endpoint.'),
    cfg.FloatOpt('read_timeout',
                 default=60.0,
                 min=0.0,
                 help='Seconds to wait for data on an open connection.'),
    cfg.IntOpt('max_pool_connections',
               default=10,
               min=1,
               help='Connections kept open to the endpoint; at least '
                    '[chunkbackup] objects_in_flight, or transfers wait '
                    'for one another.'),
    cfg.StrOpt('retry_mode',
               default='standard',
               choices=[('legacy', 'botocore\'s legacy mode.'),
                        ('standard', 'botocore\'s standard mode.'),
                        ('adaptive', 'standard, plus client-side rate '
                                     'limiting when the server throttles.')],
               help='botocore retry mode. botocore makes one attempt per '
                    'request whatever the mode ([chunkbackup] '
                    'storage_retries retries, once, for every driver); '
                    '"adaptive" still slows requests down when the server '
                    'throttles.'),
    cfg.BoolOpt('verify',
                default=True,
                help='Verify the endpoint\'s TLS certificate.'),
    cfg.StrOpt('ca_bundle',
               help='CA bundle (PEM file) to verify the endpoint\'s '
                    'certificate with, instead of the system\'s.'),
    cfg.StrOpt('http_proxy',
               secret=True,
               help='Proxy URL for http:// endpoints (it may carry '
                    'credentials, so it is never logged).'),
    cfg.StrOpt('https_proxy',
               secret=True,
               help='Proxy URL for https:// endpoints (it may carry '
                    'credentials, so it is never logged).'),
    cfg.BoolOpt('send_content_md5',
                default=True,
                help='Send the MD5 of every uploaded body (and part) as '
                     'Content-MD5, so the server refuses data damaged in '
                     'transit. Turn off only for a server that rejects it.'),
    cfg.IntOpt('multipart_threshold',
               default=64 * MiB,
               min=MIN_PART_SIZE,
               max=MAX_PART_SIZE,
               help='Bodies larger than this many bytes are uploaded as '
                    'multipart uploads; smaller ones with one PUT. The '
                    'default keeps the default 50 MiB objects as single '
                    'PUTs, as Cinder does.'),
    cfg.IntOpt('multipart_chunksize',
               default=16 * MiB,
               min=MIN_PART_SIZE,
               max=MAX_PART_SIZE,
               help='Size in bytes of the parts of a multipart upload (S3 '
                    'requires at least 5 MiB; raised when a body would '
                    'need more than 10000 parts).'),
    cfg.StrOpt('sse_customer_key',
               secret=True,
               help='Encrypt objects with this customer-provided key '
                    '(SSE-C): 32 bytes, given raw (as Cinder\'s '
                    'backup_s3_sse_customer_key) or base64-encoded. Every '
                    'backup written with it can only be read with it. '
                    'Needs an https endpoint on AWS.'),
    cfg.StrOpt('sse_customer_algorithm',
               default='AES256',
               choices=[('AES256', 'AES-256, the only SSE-C algorithm.')],
               help='SSE-C algorithm, used when sse_customer_key is set.'),
    cfg.StrOpt('server_side_encryption',
               choices=[('AES256', 'Keys managed by the S3 service.'),
                        ('aws:kms', 'Keys in AWS KMS (see sse_kms_key_id).')],
               help='Ask the server to encrypt objects with its own keys '
                    '(SSE-S3 or SSE-KMS). Unset means the bucket\'s '
                    'default. Not together with sse_customer_key.'),
    cfg.StrOpt('sse_kms_key_id',
               help='KMS key id or ARN for server_side_encryption = '
                    'aws:kms; unset means the account\'s default key.'),
]

CONF.register_opts(OPTS, group=GROUP)

# Error codes that say the credentials (or the user's rights) are wrong.
_AUTH_CODES = frozenset((
    'InvalidAccessKeyId', 'SignatureDoesNotMatch', 'AccessDenied',
    'InvalidToken', 'ExpiredToken', 'TokenRefreshRequired',
    'AuthorizationHeaderMalformed', 'InvalidSecurity', 'AllAccessDisabled',
    'AccountProblem', '401', '403'))
# Error codes worth another attempt later, whatever the HTTP status.
_TRANSIENT_CODES = frozenset((
    'SlowDown', 'RequestTimeout', 'Throttling', 'ThrottlingException',
    'ThrottledException', 'RequestThrottled', 'TooManyRequests',
    'RequestLimitExceeded', 'ServiceUnavailable', 'InternalError',
    'OperationAborted', 'BandwidthLimitExceeded', 'PriorRequestNotComplete',
    'RequestTimeoutException', 'BadDigest'))
_TRANSIENT_STATUSES = frozenset((408, 429))
# botocore failures of the connection or transfer (refused, reset, timed
# out, cut short); its SSLError is one too but is handled apart.
_TRANSIENT_BOTO_ERRORS = (
    boto_exc.ConnectionError, boto_exc.HTTPClientError,
    boto_exc.IncompleteReadError)


class _SecretFilter(logging_std.Filter):
    """Blanks the driver's secrets out of botocore's debug logs.

    At DEBUG botocore logs every request's parameters, headers and
    canonical request: the SSE-C key is a header, so it would be written to
    the log in clear. This filter sits on botocore's own loggers (a filter
    sees only the records of its logger) and costs nothing unless they
    log at DEBUG.
    """

    def __init__(self):
        super().__init__()
        # A tuple, replaced whole: other threads may be logging through
        # the filter while a new driver adds its secrets.
        self.secrets = ()

    def filter(self, record) -> bool:
        if self.secrets:
            message = record.getMessage()
            cleaned = message
            for secret in self.secrets:
                cleaned = cleaned.replace(secret, '***')
            if cleaned != message:
                record.msg, record.args = cleaned, None
        return True


_SECRET_FILTER = _SecretFilter()


def _hide_in_botocore_logs(*secrets) -> None:
    _SECRET_FILTER.secrets = tuple(
        set(_SECRET_FILTER.secrets) | {s for s in secrets if s})
    known = [name for name in list(logging_std.root.manager.loggerDict)
             if name == 'botocore' or name.startswith('botocore.')]
    for name in set(known) | {'botocore.endpoint', 'botocore.auth',
                              'botocore.parsers', 'botocore.hooks'}:
        logging_std.getLogger(name).addFilter(_SECRET_FILTER)


def _content_md5(data) -> str:
    # Not for security: S3's transfer integrity check.
    return base64.b64encode(
        hashlib.md5(data, usedforsecurity=False).digest()).decode('ascii')


def _error_code(exc: boto_exc.ClientError) -> str:
    return str(exc.response.get('Error', {}).get('Code', ''))


def _http_status(exc: boto_exc.ClientError) -> Optional[int]:
    return exc.response.get('ResponseMetadata', {}).get('HTTPStatusCode')


def _client_error_is_transient(exc: boto_exc.ClientError) -> bool:
    status = _http_status(exc) or 0
    return (_error_code(exc) in _TRANSIENT_CODES or status >= 500 or
            status in _TRANSIENT_STATUSES)


def is_transient(exc: BaseException) -> bool:
    """Whether an S3 failure (botocore's or ours) is worth retrying."""
    if isinstance(exc, boto_exc.ClientError):
        return _client_error_is_transient(exc)
    if isinstance(exc, boto_exc.SSLError):
        # A certificate that fails verification fails the same way again.
        return False
    if isinstance(exc, _TRANSIENT_BOTO_ERRORS):
        return True
    return storage.default_is_transient(exc)


def decode_sse_customer_key(value: str) -> bytes:
    """The 32-byte SSE-C key from its raw or base64 form."""
    raw = value.encode('utf-8')
    if len(raw) == 32:
        return raw
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        decoded = b''
    if len(decoded) == 32:
        return decoded
    # Never echo the value: it is a secret.
    raise exception.InvalidConfiguration(
        reason='[%s] sse_customer_key must be a 256-bit key: 32 bytes, '
               'raw or base64-encoded (44 characters); the value set is '
               'neither' % GROUP)


class S3BackupDriver(chunked.ChunkedBackupDriver):
    """Cinder-compatible S3 driver: one object per chunk, in one bucket."""

    # Keys per listing request (S3's maximum is 1000); tests lower it.
    listing_page_size = 1000

    def __init__(self, context, db=None):
        conf = CONF[GROUP]
        super().__init__(context, object_size=conf.object_size,
                         object_size_option='[%s] object_size' % GROUP,
                         db=db)
        self._validate_options(conf)
        self.bucket = conf.bucket
        self.region = conf.region
        self.endpoint_url = conf.endpoint_url
        self.access_key = conf.access_key
        self.availability_zone = conf.availability_zone
        self.create_bucket = conf.create_bucket
        self.send_content_md5 = conf.send_content_md5
        self.multipart_threshold = conf.multipart_threshold
        self.multipart_chunksize = conf.multipart_chunksize
        # Encryption arguments: SSE-C goes with every put, part and get
        # (a get without the key fails); SSE-S3/KMS only with writes.
        self._sse_c_args = {}
        if conf.sse_customer_key:
            key = decode_sse_customer_key(conf.sse_customer_key)
            self._sse_c_args = {
                'SSECustomerAlgorithm': conf.sse_customer_algorithm,
                'SSECustomerKey': key}
            _hide_in_botocore_logs(conf.sse_customer_key,
                                   base64.b64encode(key).decode('ascii'))
        self._write_args = dict(self._sse_c_args)
        if conf.server_side_encryption:
            self._write_args['ServerSideEncryption'] = \
                conf.server_side_encryption
            if conf.sse_kms_key_id:
                self._write_args['SSEKMSKeyId'] = conf.sse_kms_key_id
        self.client = self._make_client(conf)
        _hide_in_botocore_logs(conf.secret_key, conf.http_proxy,
                               conf.https_proxy)
        LOG.debug('S3 backup driver: endpoint %(url)s, region %(region)s, '
                  'default bucket %(bucket)s, addressing %(style)s',
                  {'url': self.endpoint_url or '(AWS)',
                   'region': self.region, 'bucket': self.bucket,
                   'style': conf.addressing_style})

    @staticmethod
    def _validate_options(conf) -> None:
        def invalid(reason):
            return exception.InvalidConfiguration(
                reason='[%s] %s' % (GROUP, reason))

        if bool(conf.access_key) != bool(conf.secret_key):
            raise invalid('access_key and secret_key must be set together '
                          '(or both left unset to use boto3\'s credential '
                          'chain)')
        if conf.sse_customer_key and conf.server_side_encryption:
            raise invalid('sse_customer_key and server_side_encryption '
                          'exclude each other: choose one')
        if conf.sse_kms_key_id and conf.server_side_encryption != 'aws:kms':
            raise invalid('sse_kms_key_id needs server_side_encryption = '
                          'aws:kms')
        if not _BUCKET_RE.match(conf.bucket or ''):
            raise invalid('bucket = %r is not a valid bucket name: use '
                          '3-63 lower-case letters, digits, "-" and "."'
                          % conf.bucket)
        try:
            names.check_safe_id('availability zone', conf.availability_zone)
        except exception.InvalidName as e:
            raise invalid('availability_zone: %s' % e)

    def _make_client(self, conf):
        options = {
            'signature_version': 's3v4',
            's3': {'addressing_style': conf.addressing_style},
            'connect_timeout': conf.connect_timeout,
            'read_timeout': conf.read_timeout,
            'max_pool_connections': conf.max_pool_connections,
            # One attempt: the storage seam does the retrying.
            'retries': {'mode': conf.retry_mode, 'total_max_attempts': 1},
            'user_agent_extra': 'chunkbackup',
        }
        if 'request_checksum_calculation' in \
                boto_config.Config.OPTION_DEFAULTS:
            # boto3 >= 1.36 would otherwise add CRC32 trailers in
            # aws-chunked bodies, which many S3 servers (older Ceph, Swift
            # s3api) refuse; Content-MD5 protects the upload instead and
            # the engine checks MD5 and SHA-256 of what it reads.
            options['request_checksum_calculation'] = 'when_required'
            options['response_checksum_validation'] = 'when_required'
        proxies = {}
        if conf.http_proxy:
            proxies['http'] = conf.http_proxy
        if conf.https_proxy:
            proxies['https'] = conf.https_proxy
        if proxies:
            options['proxies'] = proxies
        verify = conf.verify
        if verify and conf.ca_bundle:
            verify = conf.ca_bundle
        # A session is not thread-safe, the client it makes is: make both
        # once, here.
        session = boto3.session.Session()
        return session.client(
            's3', endpoint_url=conf.endpoint_url, region_name=conf.region,
            aws_access_key_id=conf.access_key or None,
            aws_secret_access_key=conf.secret_key or None,
            verify=verify, config=boto_config.Config(**options))

    # Errors -------------------------------------------------------------

    def is_transient_error(self, exc: BaseException) -> bool:
        return is_transient(exc)

    @contextlib.contextmanager
    def _errors(self, operation: str, bucket: str, key: str = None):
        """Turn botocore's failures into chunkbackup's, with advice."""
        target = bucket if key is None else '%s/%s' % (bucket, key)
        try:
            yield
        except boto_exc.ClientError as e:
            raise self._client_error(operation, bucket, target, e) from e
        except boto_exc.BotoCoreError as e:
            raise self._botocore_error(operation, target, e) from e

    def _auth_advice(self) -> str:
        advice = ('check [%s] access_key/secret_key (access key %s at %s) '
                  'and that this user may use the bucket'
                  % (GROUP, self.access_key or '(from boto3\'s chain)',
                     self.endpoint_url or 'AWS'))
        if self._sse_c_args:
            advice += (', and that [%s] sse_customer_key is the key the '
                       'objects were written with' % GROUP)
        return advice

    def _client_error(self, operation, bucket, target, e):
        code = _error_code(e)
        status = _http_status(e)
        message = e.response.get('Error', {}).get('Message') or ''
        reason = '%s (HTTP %s)%s' % (code or 'error', status,
                                     ': ' + message if message else '')
        kwargs = {'operation': operation, 'target': target}
        if code == 'RequestTimeTooSkewed':
            return exception.StorageError(
                reason='%s; the clock of this host differs too much from '
                       'the server\'s: synchronise it (NTP)' % reason,
                **kwargs)
        if code in _AUTH_CODES or status in (401, 403):
            return exception.StorageAuthError(
                reason='%s; %s' % (reason, self._auth_advice()), **kwargs)
        if code == 'NoSuchBucket':
            return exception.StorageContainerNotFound(
                operation=operation, target=bucket,
                reason='%s at %s; check [%s] endpoint_url and the bucket '
                       'the backup names' % (reason,
                                             self.endpoint_url or 'AWS',
                                             GROUP))
        if code == 'NoSuchKey' or status == 404:
            return exception.StorageObjectNotFound(reason=reason, **kwargs)
        if code == 'BadDigest':
            return exception.TransientStorageError(
                reason='%s; the body reached the server damaged (its MD5 '
                       'differs from the Content-MD5 we sent)' % reason,
                **kwargs)
        if code == 'InvalidDigest':
            return exception.StorageError(
                reason='%s; the server does not accept our Content-MD5 '
                       'header: set [%s] send_content_md5 = False for it'
                       % (reason, GROUP), **kwargs)
        if code == 'InvalidBucketName':
            return exception.StorageError(
                reason='%s; %r is not a bucket name this server accepts: '
                       'use 3-63 lower-case letters, digits, "-" and "."'
                       % (reason, bucket), **kwargs)
        if _client_error_is_transient(e):
            return exception.TransientStorageError(reason=reason, **kwargs)
        return exception.StorageError(reason=reason, **kwargs)

    def _botocore_error(self, operation, target, e):
        kwargs = {'operation': operation, 'target': target}
        reason = '%s: %s' % (type(e).__name__, e)
        if isinstance(e, boto_exc.SSLError):
            return exception.StorageError(
                reason='%s; check [%s] ca_bundle (or verify)'
                       % (reason, GROUP), **kwargs)
        if isinstance(e, (boto_exc.NoCredentialsError,
                          boto_exc.PartialCredentialsError,
                          boto_exc.CredentialRetrievalError)):
            return exception.StorageAuthError(
                reason='%s; set [%s] access_key/secret_key'
                       % (reason, GROUP), **kwargs)
        if is_transient(e):
            return exception.TransientStorageError(reason=reason, **kwargs)
        return exception.StorageError(reason=reason, **kwargs)

    # Object I/O ---------------------------------------------------------

    def _upload(self, bucket: str, key: str, body: bytes) -> None:
        if len(body) > self.multipart_threshold:
            self._upload_multipart(bucket, key, body)
            return
        args = dict(self._write_args, Bucket=bucket, Key=key, Body=body)
        if self.send_content_md5:
            args['ContentMD5'] = _content_md5(body)
        with self._errors('put', bucket, key):
            self.client.put_object(**args)

    def _upload_multipart(self, bucket: str, key: str, body: bytes) -> None:
        part_size = max(self.multipart_chunksize, -(-len(body) // MAX_PARTS))
        with self._errors('put', bucket, key):
            upload_id = self.client.create_multipart_upload(
                Bucket=bucket, Key=key, **self._write_args)['UploadId']
        LOG.debug('Multipart upload %(id)s of %(b)s/%(k)s: %(n)d bytes in '
                  '%(p)d-byte parts', {'id': upload_id, 'b': bucket,
                                       'k': key, 'n': len(body),
                                       'p': part_size})
        try:
            parts = []
            for number, start in enumerate(range(0, len(body), part_size),
                                           start=1):
                chunk = body[start:start + part_size]
                args = dict(self._sse_c_args, Bucket=bucket, Key=key,
                            UploadId=upload_id, PartNumber=number,
                            Body=chunk)
                if self.send_content_md5:
                    args['ContentMD5'] = _content_md5(chunk)
                with self._errors('put', bucket, key):
                    etag = self.client.upload_part(**args)['ETag']
                parts.append({'PartNumber': number, 'ETag': etag})
            with self._errors('put', bucket, key):
                self.client.complete_multipart_upload(
                    Bucket=bucket, Key=key, UploadId=upload_id,
                    MultipartUpload={'Parts': parts})
        except BaseException:
            self._abort_multipart(bucket, key, upload_id)
            raise

    def _abort_multipart(self, bucket, key, upload_id) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=bucket, Key=key,
                                               UploadId=upload_id)
        except Exception as e:
            LOG.warning('Could not abort multipart upload %(id)s of '
                        '%(b)s/%(k)s (%(err)s): its parts take space until '
                        'it is aborted; a bucket lifecycle rule for '
                        'incomplete multipart uploads removes them.',
                        {'id': upload_id, 'b': bucket, 'k': key, 'err': e})

    def _download(self, bucket: str, key: str) -> bytes:
        with self._errors('get', bucket, key):
            response = self.client.get_object(Bucket=bucket, Key=key,
                                              **self._sse_c_args)
            body = response['Body']
            try:
                # StreamingBody checks the length against Content-Length:
                # a transfer cut short raises instead of returning less.
                return body.read()
            finally:
                body.close()

    # Hooks ----------------------------------------------------------------

    def check_for_setup_error(self) -> None:
        """Check the options, then that the endpoint accepts us.

        A wrong endpoint, wrong credentials or a missing bucket that may
        not be created then stop the service at start-up, with the reason,
        rather than the first backup.
        """
        self._validate_options(CONF[GROUP])
        if not self._bucket_exists('check_for_setup_error', self.bucket) \
                and not self.create_bucket:
            raise self._missing_bucket('check_for_setup_error', self.bucket)

    def _bucket_exists(self, operation: str, bucket: str) -> bool:
        with self._errors(operation, bucket):
            try:
                self.client.head_bucket(Bucket=bucket)
                return True
            except boto_exc.ClientError as e:
                if _http_status(e) != 404 and _error_code(e) not in (
                        '404', 'NoSuchBucket'):
                    raise
        return False

    def _missing_bucket(self, operation: str, bucket: str):
        return exception.StorageContainerNotFound(
            operation=operation, target=bucket,
            reason='bucket %s does not exist at %s and [%s] create_bucket '
                   'is False: create the bucket, fix [%s] bucket, or set '
                   'create_bucket = True' % (
                       bucket, self.endpoint_url or 'AWS', GROUP, GROUP))

    def update_container_name(self, backup, container):
        bucket = container or self.bucket
        if not isinstance(bucket, str) or not _BUCKET_RE.match(bucket):
            raise exception.InvalidName(
                kind='bucket', name=bucket,
                reason='S3 bucket names are 3-63 lower-case letters, '
                       'digits, "-" and "."')
        return bucket

    def put_container(self, container: str) -> None:
        if self._bucket_exists('put_container', container):
            return
        if not self.create_bucket:
            raise self._missing_bucket('put_container', container)
        with self._errors('put_container', container):
            args = {'Bucket': container}
            if self.region and self.region != 'us-east-1':
                # us-east-1 is the one region S3 refuses to be named in.
                args['CreateBucketConfiguration'] = {
                    'LocationConstraint': self.region}
            LOG.info('Creating bucket %s.', container)
            try:
                self.client.create_bucket(**args)
            except boto_exc.ClientError as e:
                if _error_code(e) == 'BucketAlreadyOwnedByYou':
                    return  # another worker created it first
                if _error_code(e) == 'BucketAlreadyExists':
                    raise exception.StorageError(
                        operation='put_container', target=container,
                        reason='bucket name %s is taken by another account:'
                               ' set [%s] bucket to another name'
                               % (container, GROUP)) from e
                raise

    def get_container_entries(self, container: str,
                              prefix: str) -> List[str]:
        paginator = self.client.get_paginator('list_objects_v2')
        keys = []
        with self._errors('list', container):
            for page in paginator.paginate(
                    Bucket=container, Prefix=prefix,
                    PaginationConfig={'PageSize': self.listing_page_size}):
                keys.extend(obj['Key'] for obj in page.get('Contents', ()))
        return keys

    def get_object_writer(self, container, object_name, extra_metadata=None):
        return objectio.BufferedWriter(
            lambda body: self._upload(container, object_name, body))

    def get_object_reader(self, container, object_name, extra_metadata=None):
        return objectio.Reader(
            lambda: self._download(container, object_name))

    def delete_object(self, container: str, object_name: str) -> None:
        # S3 answers 204 for a missing key too: deleting is idempotent.
        with self._errors('delete', container, object_name):
            self.client.delete_object(Bucket=container, Key=object_name)

    def _generate_object_name_prefix(self, backup) -> str:
        return fmt.object_store_prefix(backup.volume_id, backup.id,
                                       self.availability_zone, time.gmtime())

    def get_extra_metadata(self, backup, volume):
        return None
