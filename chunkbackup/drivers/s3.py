"""Backups in an S3 bucket (AWS, Swift's s3api, Ceph RGW, MinIO, ...).

Objects are named as Cinder's S3 driver names them
(``volume_<volume id>/<UTC time>/az_<zone>_backup_<backup id>``), so stock
Cinder and chunkbackup restore each other's backups. One boto3 client serves
the driver (clients are thread-safe; sessions are not, so it is built once).

botocore's own retries are switched off: the storage seam retries what
``classify_error`` calls transient, and retrying in both places would
multiply the attempts. Every put sends Content-MD5 unless told not to, so
the server refuses a body damaged on the way. A stream goes up as one
PutObject when it fits in one part (``multipart_chunksize``), otherwise as
a multipart upload holding one part in memory; a whole body from Cinder's
writer goes multipart above ``multipart_threshold``. A multipart upload is
aborted when anything fails, so nothing partial remains. Downloads are
read in pieces; ranges are HTTP Range requests. Options: ``s3_options``.

With ``object_lock_mode`` every object of a backup (data objects, single
PUT and multipart, ``_sha256file``, ``_metadata``, fold copies) is written
with an S3 Object Lock retention date ``object_lock_days`` ahead; the
bucket must have Object Lock enabled (checked at first use). A server that
ignores the date of a multipart upload, or refuses it on a copy, gets it
with PutObjectRetention after the upload or copy. Such a bucket
is versioned, and a DELETE without a version id only hides an object
behind a delete marker: with ``object_lock_mode`` set, deleting an object
deletes each of its versions, which the server refuses while a version is
locked. See doc/object-lock.md.
"""
import base64
import threading
import time
from typing import Any, Dict, Iterable, Iterator, List, Optional, Union

import boto3
from botocore import config as boto_config
from botocore import exceptions as boto_exc
from oslo_config import cfg
from oslo_log import log as logging

from chunkbackup import backupformat as fmt
from chunkbackup import checksums
from chunkbackup import chunked
from chunkbackup.drivers import s3_errors
from chunkbackup.drivers import s3_options
from chunkbackup.engine import documents
from chunkbackup import exception
from chunkbackup import logsecrets
from chunkbackup import objectio
from chunkbackup import objectlock
from chunkbackup.records import BackupLike
from chunkbackup import storage
from chunkbackup.storage import errors

CONF = cfg.CONF
LOG = logging.getLogger(__name__)

GROUP = s3_options.GROUP
OPTS = s3_options.OPTS
S3Options = s3_options.S3Options
decode_sse_customer_key = s3_options.decode_sse_customer_key
MAX_PARTS = 10000  # S3's limit of parts in one upload
# Bytes per read of a streamed download.
READ_PIECE = 1024 * 1024

# botocore's loggers that dump requests at DEBUG.
_REQUEST_LOGGERS = ('botocore.endpoint', 'botocore.auth', 'botocore.parsers',
                    'botocore.hooks')


def _wants_checksum_for_lock(e: boto_exc.ClientError) -> bool:
    """A refusal of a locked write for want of Content-MD5."""
    code = s3_errors.error_code(e)
    return code == 'MissingUploadObjectWithObjectLockHeaders' or (
        code == 'InvalidRequest' and 'Content-MD5' in str(e))


class S3BackupDriver(chunked.ChunkedBackupDriver):
    """Cinder-compatible S3 driver: one object per chunk, in one bucket."""

    cinder_progress_timer_option = 'backup_s3_enable_progress_timer'
    object_lock_mechanism = 'S3 object lock'

    # Keys per listing request (S3's maximum is 1000); tests lower it.
    listing_page_size = 1000

    def __init__(self, context: Any, db: Any = None) -> None:
        self.options = S3Options.from_conf(CONF[GROUP])
        super().__init__(context, object_size=self.options.object_size,
                         object_size_option=self.options.object_size_option,
                         db=db)
        opts = self.options
        # Encryption arguments: SSE-C goes with every put, part and get
        # (a get without the key fails); SSE-S3/KMS only with writes.
        self._sse_c_args = {}
        key = opts.sse_c_key
        if key:
            self._sse_c_args = {
                'SSECustomerAlgorithm': opts.sse_customer_algorithm,
                'SSECustomerKey': key}
        self._write_args = dict(self._sse_c_args)
        if opts.server_side_encryption:
            self._write_args['ServerSideEncryption'] = \
                opts.server_side_encryption
            if opts.sse_kms_key_id:
                self._write_args['SSEKMSKeyId'] = opts.sse_kms_key_id
        logsecrets.hide_in_logs(
            'botocore', _REQUEST_LOGGERS, opts.secret_key, opts.http_proxy,
            opts.https_proxy, opts.sse_customer_key,
            base64.b64encode(key).decode('ascii') if key else None)
        self.client = self._make_client(opts)
        # Buckets whose Object Lock was checked, and the latest retention
        # date given (so that _metadata, written last, has the latest).
        self._lock_guard = threading.Lock()
        self._lock_checked: set = set()
        self._retention_clock = objectlock.RetentionClock(
            opts.object_lock_days)
        # Set once a server refused a copy with a retention date.
        self._copy_retention_apart = False
        LOG.debug('S3 backup driver: endpoint %(url)s, region %(region)s, '
                  'default bucket %(bucket)s, addressing %(style)s',
                  {'url': opts.endpoint_url or '(AWS)',
                   'region': opts.region, 'bucket': opts.bucket,
                   'style': opts.addressing_style})

    @property
    def access_key(self) -> Optional[str]:
        return self.options.access_key

    @staticmethod
    def _make_client(opts: S3Options):
        config = {
            'signature_version': 's3v4',
            's3': {'addressing_style': opts.addressing_style},
            'connect_timeout': opts.connect_timeout,
            'read_timeout': opts.read_timeout,
            # A connection for every object in flight, up or down.
            'max_pool_connections': max(opts.max_pool_connections,
                                        storage.connections_needed()),
            # One attempt: the storage seam does the retrying.
            'retries': {'mode': opts.retry_mode, 'total_max_attempts': 1},
            'user_agent_extra': 'chunkbackup',
        }
        if 'request_checksum_calculation' in \
                boto_config.Config.OPTION_DEFAULTS:
            # boto3 >= 1.36 would otherwise add CRC32 trailers in
            # aws-chunked bodies, which many S3 servers (older Ceph, Swift
            # s3api) refuse; Content-MD5 protects the upload instead and
            # the engine checks MD5 and SHA-256 of what it reads.
            config['request_checksum_calculation'] = 'when_required'
            config['response_checksum_validation'] = 'when_required'
        proxies = {scheme: url for scheme, url in (
            ('http', opts.http_proxy), ('https', opts.https_proxy)) if url}
        if proxies:
            config['proxies'] = proxies
        verify: Union[bool, str] = opts.verify  # or the CA bundle's path
        if verify and opts.ca_bundle:
            verify = opts.ca_bundle
        # A session is not thread-safe, the client it makes is: make both
        # once, here.
        session = boto3.session.Session()
        return session.client(
            's3', endpoint_url=opts.endpoint_url, region_name=opts.region,
            aws_access_key_id=opts.access_key or None,
            aws_secret_access_key=opts.secret_key or None,
            verify=verify, config=boto_config.Config(**config))

    # Errors -------------------------------------------------------------

    def classify_error(self, exc: BaseException) -> errors.Classification:
        return s3_errors.classify(exc, self.options)

    # Object I/O ---------------------------------------------------------

    def _content_md5(self, args: dict, body) -> dict:
        if self.options.send_content_md5:
            args['ContentMD5'] = checksums.md5_base64(body)
        return args

    def _upload(self, bucket: str, key: str,
                body: Union[bytes, bytearray]) -> None:
        if len(body) > self.options.multipart_threshold:
            part_size = max(self.options.multipart_chunksize,
                            -(-len(body) // MAX_PARTS))
            self._upload_multipart(bucket, key, objectio.parts(
                (body,), part_size), part_size)
            return
        self.client.put_object(**self._content_md5(
            dict(self._write_args, Bucket=bucket, Key=key, Body=body,
                 **self._lock_args(bucket)), body))

    def _upload_multipart(self, bucket: str, key: str,
                          parts: Iterator[Union[bytes, bytearray]],
                          part_size: int) -> None:
        """Upload ``parts`` (one in memory at a time) as one object.

        Any failure, the caller's producer included, aborts the upload:
        no part is left behind.
        """
        lock_args = self._lock_args(bucket)
        upload_id = self.client.create_multipart_upload(
            Bucket=bucket, Key=key, **self._write_args,
            **lock_args)['UploadId']
        LOG.debug('Multipart upload %(id)s of %(b)s/%(k)s in %(p)d-byte '
                  'parts', {'id': upload_id, 'b': bucket, 'k': key,
                            'p': part_size})
        try:
            done = []
            for number, part in enumerate(parts, start=1):
                if number > MAX_PARTS:
                    raise exception.StorageError(
                        operation='put', target='%s/%s' % (bucket, key),
                        reason='the object needs more than %d parts of '
                               '[%s] multipart_chunksize = %d bytes; raise '
                               'it' % (MAX_PARTS, GROUP, part_size))
                etag = self.client.upload_part(**self._content_md5(dict(
                    self._sse_c_args, Bucket=bucket, Key=key,
                    UploadId=upload_id, PartNumber=number, Body=part),
                    part))['ETag']
                done.append({'PartNumber': number, 'ETag': etag})
                del part  # sent: not held while the next one fills
            completed = self.client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id,
                MultipartUpload={'Parts': done})
        except BaseException:
            self._abort_multipart(bucket, key, upload_id)
            raise
        if lock_args:
            self._ensure_retention(bucket, key, completed.get('VersionId'),
                                   lock_args)

    def _ensure_retention(self, bucket: str, key: str,
                          version_id: Optional[str], lock_args: dict) -> None:
        """The object carries at least the retention date of ``lock_args``.

        S3 applies the date given to CreateMultipartUpload; some servers
        (moto 5) ignore it there, and the object would be unlocked: then
        it is set with PutObjectRetention (which may extend a date, never
        shorten it).
        """
        version = {'VersionId': version_id} if version_id else {}
        head = self.client.head_object(Bucket=bucket, Key=key,
                                       **self._sse_c_args, **version)
        until = lock_args['ObjectLockRetainUntilDate']
        if head.get('ObjectLockRetainUntilDate') and \
                objectlock.as_utc(head['ObjectLockRetainUntilDate']) >= until:
            return
        LOG.debug('%(b)s/%(k)s: the server did not apply the retention '
                  'asked for; setting it.', {'b': bucket, 'k': key})
        self.client.put_object_retention(
            Bucket=bucket, Key=key, **version,
            Retention={'Mode': lock_args['ObjectLockMode'],
                       'RetainUntilDate':
                           lock_args['ObjectLockRetainUntilDate']})

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

    def _body_chunks(self, bucket: str, key: str) -> Iterator[bytes]:
        body = self.client.get_object(Bucket=bucket, Key=key,
                                      **self._sse_c_args)['Body']
        try:
            # StreamingBody checks the length against Content-Length when
            # it reaches the end: a transfer cut short raises instead of
            # ending early.
            while True:
                piece = body.read(READ_PIECE)
                if not piece:
                    return
                yield piece
        finally:
            body.close()

    # Object lock -----------------------------------------------------------

    def _lock_args(self, bucket: str) -> dict:
        """The retention arguments of a write ({} without object lock)."""
        mode = self.options.object_lock_mode
        if not mode:
            return {}
        self._check_lock_bucket(bucket)
        return {'ObjectLockMode': mode.upper(),
                'ObjectLockRetainUntilDate': self._retention_clock.next()}

    def _check_lock_bucket(self, bucket: str) -> None:
        """The bucket has Object Lock enabled: checked once per bucket."""
        if bucket in self._lock_checked:
            return
        with storage.translated(self, 'get_object_lock_configuration',
                                bucket):
            try:
                config = self.client.get_object_lock_configuration(
                    Bucket=bucket).get('ObjectLockConfiguration') or {}
            except boto_exc.ClientError as e:
                if s3_errors.error_code(e) != \
                        'ObjectLockConfigurationNotFoundError':
                    raise
                config = {}
        if config.get('ObjectLockEnabled') != 'Enabled':
            raise objectlock.LockUnavailable(
                reason='bucket %s has no Object Lock; create it with object '
                       'lock enabled, or unset [%s] object_lock_mode'
                       % (bucket, GROUP))
        with self._lock_guard:
            self._lock_checked.add(bucket)

    def object_lock_hint(self) -> Optional[str]:
        if self.options.object_lock_mode:
            return None
        return '[%s] object_lock_mode is unset: set it to governance or ' \
               'compliance' % GROUP

    def object_lock_of(self, backup: BackupLike
                       ) -> Optional[objectlock.ObjectLock]:
        """The retention of the backup's ``_metadata`` (written last, so
        the latest date of its objects), whatever this driver is set to.
        """
        location = documents.Location.of(backup)
        with storage.translated(self, 'head', location.container,
                                location.metadata):
            try:
                head = self.client.head_object(
                    Bucket=location.container, Key=location.metadata,
                    **self._sse_c_args)
            except boto_exc.ClientError as e:
                if s3_errors.http_status(e) == 404:
                    return None
                raise
        until = head.get('ObjectLockRetainUntilDate')
        mode = head.get('ObjectLockMode')
        if not until or not mode:
            return None
        return objectlock.ObjectLock(self.object_lock_mechanism,
                                     str(mode).lower(),
                                     objectlock.as_utc(until))

    # Hooks ----------------------------------------------------------------

    def check_for_setup_error(self) -> None:
        """Check that the endpoint accepts us and the bucket is usable.

        A wrong endpoint, wrong credentials or a missing bucket that may
        not be created then stop the service at start-up, with the reason,
        rather than the first backup.
        """
        bucket = self.options.bucket
        with storage.translated(self, 'check_for_setup_error', bucket):
            exists = self._bucket_exists(bucket)
        if not exists and not self.options.create_bucket:
            raise self._missing_bucket('check_for_setup_error', bucket)
        if exists and self.options.object_lock_mode:
            self._check_lock_bucket(bucket)

    def _bucket_exists(self, bucket: str) -> bool:
        try:
            self.client.head_bucket(Bucket=bucket)
            return True
        except boto_exc.ClientError as e:
            if s3_errors.http_status(e) != 404 and \
                    s3_errors.error_code(e) not in ('404', 'NoSuchBucket'):
                raise
        return False

    def _missing_bucket(self, operation: str, bucket: str):
        return exception.StorageContainerNotFound(
            operation=operation, target=bucket,
            reason='bucket %s does not exist at %s and [%s] create_bucket '
                   'is False: create the bucket, fix [%s] bucket, or set '
                   'create_bucket = True' % (
                       bucket, self.options.endpoint_url or 'AWS', GROUP,
                       GROUP))

    def default_container(self, backup: BackupLike) -> str:
        return self.options.bucket

    def update_container_name(self, backup: BackupLike,
                              container: Optional[str]) -> Optional[str]:
        bucket = container or self.default_container(backup)
        if not isinstance(bucket, str) or \
                not s3_options.BUCKET_RE.match(bucket):
            raise exception.InvalidName(
                kind='bucket', name=bucket,
                reason='S3 bucket names are 3-63 lower-case letters, '
                       'digits, "-" and "."')
        return bucket

    def put_container(self, container: str) -> None:
        if self._bucket_exists(container):
            if self.options.object_lock_mode:
                self._check_lock_bucket(container)
            return
        if not self.options.create_bucket:
            raise self._missing_bucket('put_container', container)
        args: Dict[str, Any] = {'Bucket': container}
        if self.options.object_lock_mode:
            # Object Lock can only be enabled when a bucket is created.
            args['ObjectLockEnabledForBucket'] = True
        region = self.options.region
        if region and region != 'us-east-1':
            # us-east-1 is the one region S3 refuses to be named in.
            args['CreateBucketConfiguration'] = {'LocationConstraint': region}
        LOG.info('Creating bucket %s.', container)
        try:
            self.client.create_bucket(**args)
        except boto_exc.ClientError as e:
            if s3_errors.error_code(e) != 'BucketAlreadyOwnedByYou':
                raise
            # another worker created it first

    def get_container_entries(self, container: str,
                              prefix: str) -> List[str]:
        paginator = self.client.get_paginator('list_objects_v2')
        keys: List[str] = []
        for page in paginator.paginate(
                Bucket=container, Prefix=prefix,
                PaginationConfig={'PageSize': self.listing_page_size}):
            keys.extend(obj['Key'] for obj in page.get('Contents', ()))
        return keys

    def get_object_writer(self, container: str, object_name: str,
                          extra_metadata: Optional[dict] = None
                          ) -> objectio.BufferedWriter:
        return objectio.BufferedWriter(
            lambda body: self._upload(container, object_name, body))

    def put_object_stream(self, container: str, object_name: str,
                          chunks: Iterable[bytes],
                          extra_metadata: Optional[dict] = None) -> None:
        """One PutObject if the stream fits in one part, else multipart.

        Holds one part (``multipart_chunksize`` bytes) at most; an object
        of one part is stored exactly as ``get_object_writer`` stores it.
        """
        part_size = self.options.multipart_chunksize
        parts = objectio.parts(chunks, part_size)
        head = [next(parts, bytearray())]
        second = next(parts, None)
        if second is None:
            self._upload(container, object_name, head[0])
            return
        head.append(second)
        del second  # the parts go as they are sent: none is kept here
        self._upload_multipart(container, object_name,
                               objectio.handed_over(head, parts), part_size)

    def get_object_reader(self, container: str, object_name: str,
                          extra_metadata: Optional[dict] = None
                          ) -> objectio.ChunkReader:
        return objectio.ChunkReader(
            lambda: self._body_chunks(container, object_name))

    def get_object_range(self, container: str, object_name: str,
                         offset: int, length: int,
                         extra_metadata: Optional[dict] = None) -> bytes:
        try:
            body = self.client.get_object(
                Bucket=container, Key=object_name,
                Range='bytes=%d-%d' % (offset, offset + length - 1),
                **self._sse_c_args)['Body']
        except boto_exc.ClientError as e:
            if s3_errors.http_status(e) == 416 or \
                    s3_errors.error_code(e) == 'InvalidRange':
                return b''  # at or past the end
            raise
        try:
            return body.read()
        finally:
            body.close()

    def get_object_size(self, container: str, object_name: str,
                        extra_metadata: Optional[dict] = None) -> int:
        return int(self.client.head_object(
            Bucket=container, Key=object_name,
            **self._sse_c_args)['ContentLength'])

    def copy_object(self, container: str, object_name: str,
                    dest_container: str, dest_name: str) -> bool:
        """CopyObject: the bytes stay on the server (objects < 5 GiB)."""
        args = dict(self._write_args, Bucket=dest_container, Key=dest_name,
                    CopySource={'Bucket': container, 'Key': object_name})
        if self._sse_c_args:
            # The source is read with the same customer key.
            args['CopySourceSSECustomerAlgorithm'] = \
                self._sse_c_args['SSECustomerAlgorithm']
            args['CopySourceSSECustomerKey'] = \
                self._sse_c_args['SSECustomerKey']
        lock_args = self._lock_args(dest_container)
        if lock_args and not self._copy_retention_apart:
            try:
                self.client.copy_object(**args, **lock_args)
                return True
            except boto_exc.ClientError as e:
                if not _wants_checksum_for_lock(e):
                    raise
                # A server (moto 5) that asks a copy for the checksum of
                # a body it has not got: copy, then set the retention.
                LOG.info('%(url)s refuses a copy with a retention date '
                         '(%(err)s); copies get theirs with '
                         'PutObjectRetention.', {
                             'url': self.options.endpoint_url or 'AWS',
                             'err': s3_errors.error_code(e)})
                self._copy_retention_apart = True
        copied = self.client.copy_object(**args)
        if lock_args:
            self._ensure_retention(dest_container, dest_name,
                                   copied.get('VersionId'), lock_args)
        return True

    def delete_object(self, container: str, object_name: str) -> None:
        # S3 answers 204 for a missing key too: deleting is idempotent.
        if not self.options.object_lock_mode:
            self.client.delete_object(Bucket=container, Key=object_name)
            return
        # A lock bucket is versioned: a DELETE without a version id would
        # only add a delete marker and free nothing. Each version goes,
        # or the server refuses (a version still locked).
        for version_id in self._version_ids(container, object_name):
            try:
                self.client.delete_object(Bucket=container, Key=object_name,
                                          VersionId=version_id)
            except boto_exc.ClientError as e:
                if s3_errors.error_code(e) == 'AccessDenied' and \
                        'lock' in str(e).lower():
                    raise exception.StorageError(
                        operation='delete', target='%s/%s' % (
                            container, object_name),
                        reason='version %s is protected by S3 object lock '
                               'until its retention date; it can be '
                               'deleted after that' % version_id) from e
                raise

    def _version_ids(self, container: str, key: str) -> List[str]:
        """Every version and delete marker of exactly ``key``."""
        ids: List[str] = []
        paginator = self.client.get_paginator('list_object_versions')
        for page in paginator.paginate(Bucket=container, Prefix=key):
            for entry in (page.get('Versions', []) +
                          page.get('DeleteMarkers', [])):
                if entry.get('Key') == key and entry.get('VersionId'):
                    ids.append(entry['VersionId'])
        return ids

    def _generate_object_name_prefix(self, backup: BackupLike) -> str:
        return fmt.object_store_prefix(backup.volume_id, backup.id,
                                       self.options.availability_zone,
                                       time.gmtime())

    def get_extra_metadata(self, backup: BackupLike,
                           volume: Any) -> Optional[dict]:
        return None
