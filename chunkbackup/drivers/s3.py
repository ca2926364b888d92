"""Backups in an S3 bucket (AWS, Swift's s3api, Ceph RGW, MinIO, ...).

Objects are named as Cinder's S3 driver names them
(``volume_<volume id>/<UTC time>/az_<zone>_backup_<backup id>``), so stock
Cinder and chunkbackup restore each other's backups. One boto3 client serves
the driver (clients are thread-safe; sessions are not, so it is built once).

botocore's own retries are switched off: the storage seam retries what
``classify_error`` calls transient, and retrying in both places would
multiply the attempts. Every put sends Content-MD5 unless told not to, so
the server refuses a body damaged on the way; bodies above
``multipart_threshold`` go up as a multipart upload, which is aborted when
any part fails so nothing partial remains. Options: ``s3_options``.
"""
import base64
import time
from typing import Any, Dict, List, Optional, Union

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
from chunkbackup import exception
from chunkbackup import logsecrets
from chunkbackup import objectio
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

# botocore's loggers that dump requests at DEBUG.
_REQUEST_LOGGERS = ('botocore.endpoint', 'botocore.auth', 'botocore.parsers',
                    'botocore.hooks')


class S3BackupDriver(chunked.ChunkedBackupDriver):
    """Cinder-compatible S3 driver: one object per chunk, in one bucket."""

    cinder_progress_timer_option = 'backup_s3_enable_progress_timer'

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
            'max_pool_connections': opts.max_pool_connections,
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

    def _upload(self, bucket: str, key: str, body: bytes) -> None:
        if len(body) > self.options.multipart_threshold:
            self._upload_multipart(bucket, key, body)
            return
        self.client.put_object(**self._content_md5(
            dict(self._write_args, Bucket=bucket, Key=key, Body=body), body))

    def _upload_multipart(self, bucket: str, key: str, body: bytes) -> None:
        part_size = max(self.options.multipart_chunksize,
                        -(-len(body) // MAX_PARTS))
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
                etag = self.client.upload_part(**self._content_md5(dict(
                    self._sse_c_args, Bucket=bucket, Key=key,
                    UploadId=upload_id, PartNumber=number, Body=chunk),
                    chunk))['ETag']
                parts.append({'PartNumber': number, 'ETag': etag})
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
        body = self.client.get_object(Bucket=bucket, Key=key,
                                      **self._sse_c_args)['Body']
        try:
            # StreamingBody checks the length against Content-Length: a
            # transfer cut short raises instead of returning less.
            return body.read()
        finally:
            body.close()

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
            return
        if not self.options.create_bucket:
            raise self._missing_bucket('put_container', container)
        args: Dict[str, Any] = {'Bucket': container}
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

    def get_object_reader(self, container: str, object_name: str,
                          extra_metadata: Optional[dict] = None
                          ) -> objectio.Reader:
        return objectio.Reader(
            lambda: self._download(container, object_name))

    def delete_object(self, container: str, object_name: str) -> None:
        # S3 answers 204 for a missing key too: deleting is idempotent.
        self.client.delete_object(Bucket=container, Key=object_name)

    def _generate_object_name_prefix(self, backup: BackupLike) -> str:
        return fmt.object_store_prefix(backup.volume_id, backup.id,
                                       self.options.availability_zone,
                                       time.gmtime())

    def get_extra_metadata(self, backup: BackupLike,
                           volume: Any) -> Optional[dict]:
        return None
