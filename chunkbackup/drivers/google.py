"""Backups in Google Cloud Storage, in Cinder's gcs layout.

Each backup's container is a bucket (``[backup_google] bucket`` unless the
backup names one) and its objects are named
``volume_<volume_id>/<UTC timestamp>/az_<zone>_backup_<backup_id>...`` as
Cinder's gcs driver names them. Bytes move through google-cloud-storage;
every upload carries the body's MD5, so the service refuses a body that was
damaged on the way, and no object exists until an upload is complete.

The library's own retries are off: the engine's storage seam retries what
``is_transient_error`` calls transient, and retrying in both places would
multiply the attempts.
"""
import base64
import contextlib
import hashlib
import http.client
import io
import threading
import time
from typing import List, Optional

from google.api_core import exceptions as api_exceptions
from google.auth import credentials as auth_credentials
from google.auth import exceptions as auth_exceptions
from google.auth.transport import requests as auth_requests
from google.cloud import storage as gcs
from google.cloud.storage import exceptions as gcs_exceptions
from oslo_config import cfg
from oslo_log import log as logging
import requests
import urllib3

from chunkbackup import backupformat as fmt
from chunkbackup import chunked
from chunkbackup import exception
from chunkbackup import objectio
from chunkbackup import storage

CONF = cfg.CONF
LOG = logging.getLogger(__name__)

GROUP = 'backup_google'
SCOPES = ('https://www.googleapis.com/auth/devstorage.read_write',)
UPLOAD_CHUNK_MULTIPLE = 256 * 1024
CONTENT_TYPE = 'application/octet-stream'

OPTS = [
    cfg.StrOpt('bucket',
               default='volumebackups',
               help='Bucket that holds the backups when a backup does not '
                    'name one.'),
    cfg.StrOpt('project_id',
               help='Google Cloud project that owns the buckets; needed to '
                    'create a bucket. Unset means the project of the '
                    'credentials.'),
    cfg.StrOpt('credentials_file',
               help='Path of a service-account JSON key file. Unset means '
                    'the application default credentials '
                    '(GOOGLE_APPLICATION_CREDENTIALS, the metadata server of '
                    'a Google Cloud VM, gcloud) unless anonymous is set.'),
    cfg.BoolOpt('anonymous',
                default=False,
                help='Send no credentials at all. Only for emulators and '
                     'tests, together with endpoint.'),
    cfg.URIOpt('endpoint',
               schemes=['http', 'https'],
               help='Root URL of the JSON API, e.g. http://127.0.0.1:9023 '
                    'for an emulator. Unset means Google\'s '
                    '(https://storage.googleapis.com).'),
    cfg.IntOpt('object_size',
               default=52428800,
               min=1,
               help='Largest data object in bytes; a multiple of '
                    '[chunkbackup] sha_block_size. Memory use grows with it '
                    '(see [chunkbackup] objects_in_flight).'),
    cfg.StrOpt('bucket_location',
               default='US',
               help='Location of a bucket the driver creates (a region such '
                    'as europe-west1, or a multi-region such as US).'),
    cfg.StrOpt('storage_class',
               default='NEARLINE',
               help='Default storage class of a bucket the driver creates '
                    '(STANDARD, NEARLINE, COLDLINE, ARCHIVE). NEARLINE, '
                    'Cinder\'s default, suits data read rarely; reading it '
                    'back costs a retrieval fee.'),
    cfg.BoolOpt('create_bucket',
                default=True,
                help='Create the bucket on the first backup when it does not '
                     'exist. When False a missing bucket is an error.'),
    cfg.URIOpt('proxy_url',
               schemes=['http', 'https'],
               help='HTTP(S) proxy for every request, e.g. '
                    'http://proxy.example.com:3128.'),
    cfg.IntOpt('upload_chunk_size',
               default=8 * 1024 * 1024,
               min=UPLOAD_CHUNK_MULTIPLE,
               help='Objects larger than 8 MiB are sent as resumable uploads '
                    'in pieces of this many bytes; a multiple of 262144 '
                    '(256 KiB).'),
    cfg.FloatOpt('timeout',
                 default=60.0,
                 min=1.0,
                 help='Seconds to wait for the service to connect or answer '
                      'one request before it counts as a (retried) '
                      'transient failure.'),
    cfg.StrOpt('availability_zone',
               default='nova',
               help='Availability zone written into object names '
                    '(az_<zone>_backup_<id>), as Cinder\'s '
                    'storage_availability_zone.'),
]

CONF.register_opts(OPTS, group=GROUP)

_TRANSIENT_TYPES = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.TimeoutError,
    http.client.HTTPException,
    auth_exceptions.TransportError,
    # A download whose bytes do not match the service's hash was damaged
    # on the way: the stored object was checked when it was uploaded.
    gcs_exceptions.DataCorruption,
)


def _status_of(exc: BaseException) -> Optional[int]:
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        return exc.code
    if isinstance(exc, gcs_exceptions.InvalidResponse):
        return getattr(getattr(exc, 'response', None), 'status_code', None)
    return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        return '%s %s' % (exc.code, exc.message)
    return '%s: %s' % (type(exc).__name__, exc)


def _md5_base64(body) -> str:
    # Not for security: GCS checks the body against it.
    return base64.b64encode(
        hashlib.md5(body, usedforsecurity=False).digest()).decode('ascii')


class GoogleBackupDriver(chunked.ChunkedBackupDriver):
    """Cinder-compatible Google Cloud Storage driver."""

    def __init__(self, context, db=None):
        conf = CONF[GROUP]
        super().__init__(context, object_size=conf.object_size,
                         object_size_option='[%s] object_size' % GROUP,
                         db=db)
        if conf.upload_chunk_size % UPLOAD_CHUNK_MULTIPLE:
            raise exception.InvalidConfiguration(
                reason='[%s] upload_chunk_size = %d must be a multiple of '
                       '%d (256 KiB)' % (GROUP, conf.upload_chunk_size,
                                         UPLOAD_CHUNK_MULTIPLE))
        if conf.anonymous and conf.credentials_file:
            raise exception.InvalidConfiguration(
                reason='[%s] anonymous and credentials_file are both set; '
                       'set one of them' % GROUP)
        self.bucket = conf.bucket
        self.project_id = conf.project_id
        self.credentials_file = conf.credentials_file
        self.anonymous = conf.anonymous
        self.endpoint = conf.endpoint
        self.bucket_location = conf.bucket_location
        self.storage_class = conf.storage_class
        self.create_bucket = conf.create_bucket
        self.proxy_url = conf.proxy_url
        self.upload_chunk_size = conf.upload_chunk_size
        self.timeout = conf.timeout
        self.availability_zone = conf.availability_zone
        # Names per listing page; None means the service's (1000).
        self.listing_page_size = None
        self._client = None
        self._client_lock = threading.Lock()

    # The client ------------------------------------------------------------

    def _credentials(self):
        """The credentials and the project they belong to."""
        if self.anonymous:
            return auth_credentials.AnonymousCredentials(), None
        if self.credentials_file:
            from google.oauth2 import service_account
            try:
                creds = service_account.Credentials.from_service_account_file(
                    self.credentials_file, scopes=SCOPES)
            except (OSError, ValueError) as e:
                raise exception.InvalidConfiguration(
                    reason='[%s] credentials_file %s is not a readable '
                           'service-account JSON key: %s'
                           % (GROUP, self.credentials_file, e))
            return creds, creds.project_id
        import google.auth
        try:
            return google.auth.default(scopes=SCOPES)
        except auth_exceptions.DefaultCredentialsError as e:
            raise exception.InvalidConfiguration(
                reason='no Google credentials found (%s); set [%s] '
                       'credentials_file to a service-account JSON key'
                       % (e, GROUP))

    def _session(self, creds) -> requests.Session:
        # Anonymous credentials cannot be refreshed: a 401 must stay a 401.
        refresh_on = () if self.anonymous else (http.client.UNAUTHORIZED,)
        session = auth_requests.AuthorizedSession(
            creds, refresh_status_codes=refresh_on)
        # One connection per object in flight; the adapter never retries.
        adapter = requests.adapters.HTTPAdapter(
            pool_maxsize=max(10, self.objects_in_flight), max_retries=0)
        session.mount('https://', adapter)
        session.mount('http://', adapter)
        if self.proxy_url:
            session.proxies.update({'http': self.proxy_url,
                                    'https': self.proxy_url})
        return session

    @property
    def client(self) -> gcs.Client:
        # Built on first use: constructing the driver (cinder-backup does it
        # at start) must not look for credentials or touch the network.
        with self._client_lock:
            if self._client is None:
                creds, creds_project = self._credentials()
                options = ({'api_endpoint': self.endpoint}
                           if self.endpoint else None)
                client = gcs.Client(
                    project=self.project_id or creds_project,
                    credentials=creds, client_options=options,
                    _http=self._session(creds))
                # Recent clients fetch each bucket's metadata in a
                # background thread, with the library's own retries, only to
                # label tracing spans: one more request per bucket (a 403
                # where object permissions suffice) for nothing we use.
                if getattr(client, '_bucket_metadata_cache', None):
                    client._bucket_metadata_cache = None
                self._client = client
            return self._client

    # Errors ----------------------------------------------------------------

    def is_transient_error(self, exc: BaseException) -> bool:
        if storage.default_is_transient(exc):
            return True
        if isinstance(exc, exception.ChunkBackupError):
            return False
        if isinstance(exc, _TRANSIENT_TYPES):
            return True
        if isinstance(exc, auth_exceptions.GoogleAuthError):
            # A token refresh that met a 5xx or a timeout says so.
            return bool(getattr(exc, 'retryable', False))
        status = _status_of(exc)
        return status is not None and (status in (408, 429) or status >= 500)

    @contextlib.contextmanager
    def _errors(self, operation: str, bucket: str, name: str = None):
        """Turn what the client raises into chunkbackup errors.

        Transient failures pass unchanged for the storage seam to retry.
        """
        try:
            yield
        except exception.ChunkBackupError:
            raise
        except Exception as e:
            if self.is_transient_error(e):
                raise
            target = bucket if name is None else '%s/%s' % (bucket, name)
            status = _status_of(e)
            refused = isinstance(e, auth_exceptions.RefreshError)
            if status in (401, 403) or refused:
                raise exception.StorageAuthError(
                    'Google Cloud Storage refused %s on %s: %s. Check '
                    '[%s] credentials_file (a service-account key with '
                    'access to the bucket) and project_id.'
                    % (operation, target, _reason(e), GROUP),
                    operation=operation, target=target,
                    reason=_reason(e)) from e
            if status == 404:
                raise self._not_found(operation, bucket, name, e) from e
            raise exception.StorageError(
                operation=operation, target=target, reason=_reason(e)) from e

    def _bucket_exists(self, bucket: str) -> bool:
        try:
            return self.client.bucket(bucket).exists(timeout=self.timeout,
                                                     retry=None)
        except Exception:
            return True  # unknown: say what we know, the object is missing

    def _not_found(self, operation, bucket, name, exc):
        if name is None or not self._bucket_exists(bucket):
            return exception.StorageContainerNotFound(
                operation=operation, target=bucket,
                reason='no such Google Cloud Storage bucket (%s)'
                       % _reason(exc))
        return exception.StorageObjectNotFound(
            operation=operation, target='%s/%s' % (bucket, name),
            reason=_reason(exc))

    # Hooks -----------------------------------------------------------------

    def check_for_setup_error(self) -> None:
        # Loads the credentials (a clear error for a bad key file); sends
        # no request.
        LOG.debug('Google Cloud Storage client ready (project %s).',
                  self.client.project)

    def update_container_name(self, backup, container):
        return container or self.bucket

    def put_container(self, container: str) -> None:
        with self._errors('put_container', container):
            try:
                self.client.get_bucket(container, timeout=self.timeout,
                                       retry=None)
                return
            except api_exceptions.NotFound:
                if not self.create_bucket:
                    raise exception.StorageContainerNotFound(
                        operation='put_container', target=container,
                        reason='the bucket does not exist and [%s] '
                               'create_bucket is False; create it or set '
                               'create_bucket = True' % GROUP)
            except api_exceptions.Forbidden as e:
                if self.create_bucket:
                    raise
                # Object permissions alone suffice once the bucket exists.
                LOG.warning('Cannot read bucket %(b)s (%(err)s); assuming it '
                            'exists.', {'b': container, 'err': _reason(e)})
                return
            project = self.project_id or self.client.project
            if not project:
                raise exception.InvalidConfiguration(
                    reason='bucket %s does not exist and creating it needs '
                           'a project: set [%s] project_id'
                           % (container, GROUP))
            bucket = self.client.bucket(container)
            if self.storage_class:
                bucket.storage_class = self.storage_class
            LOG.info('Creating bucket %(b)s in project %(p)s (%(loc)s, '
                     '%(cls)s).', {'b': container, 'p': project,
                                   'loc': self.bucket_location,
                                   'cls': self.storage_class})
            try:
                self.client.create_bucket(
                    bucket, project=project, location=self.bucket_location,
                    timeout=self.timeout, retry=None)
            except api_exceptions.Conflict:
                # Created meanwhile (or the name belongs to someone else,
                # which the next request will say).
                pass

    def get_container_entries(self, container: str,
                              prefix: str) -> List[str]:
        with self._errors('list', container):
            # The iterator follows nextPageToken through every page.
            blobs = self.client.list_blobs(
                container, prefix=prefix, fields='items(name),nextPageToken',
                page_size=self.listing_page_size, timeout=self.timeout,
                retry=None)
            return [blob.name for blob in blobs]

    def get_object_writer(self, container, object_name, extra_metadata=None):
        return objectio.BufferedWriter(
            lambda body: self._upload(container, object_name, body))

    def get_object_reader(self, container, object_name, extra_metadata=None):
        return objectio.Reader(
            lambda: self._download(container, object_name))

    def delete_object(self, container: str, object_name: str) -> None:
        with self._errors('delete', container, object_name):
            self.client.bucket(container).delete_blob(
                object_name, timeout=self.timeout, retry=None)

    def _generate_object_name_prefix(self, backup) -> str:
        return fmt.object_store_prefix(backup.volume_id, backup.id,
                                       self.availability_zone, time.gmtime())

    def get_extra_metadata(self, backup, volume):
        return None

    # Object I/O ------------------------------------------------------------

    def _upload(self, bucket: str, name: str, body) -> None:
        with self._errors('put', bucket, name):
            blob = self.client.bucket(bucket).blob(
                name, chunk_size=self.upload_chunk_size)
            # The service computes the MD5 of what it received and refuses
            # the upload when it differs: no damaged object is stored.
            blob.md5_hash = _md5_base64(body)
            # Bodies up to 8 MiB go in one request; larger ones as a
            # resumable upload in upload_chunk_size pieces. Either way the
            # object appears only once complete.
            blob.upload_from_file(io.BytesIO(body), size=len(body),
                                  content_type=CONTENT_TYPE,
                                  checksum=None, timeout=self.timeout,
                                  retry=None)

    def _download(self, bucket: str, name: str) -> bytes:
        with self._errors('get', bucket, name):
            return self.client.bucket(bucket).blob(name).download_as_bytes(
                checksum='md5', timeout=self.timeout, retry=None)
