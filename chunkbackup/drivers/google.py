"""Backups in Google Cloud Storage, in Cinder's gcs layout.

Each backup's container is a bucket (``[backup_google] bucket`` unless the
backup names one) and its objects are named
``volume_<volume_id>/<UTC timestamp>/az_<zone>_backup_<backup_id>...`` as
Cinder's gcs driver names them. Bytes move through google-cloud-storage;
every upload carries the body's MD5, so the service refuses a body that was
damaged on the way, and no object exists until an upload is complete.

The library's own retries are off: the storage seam retries what
``classify_error`` calls transient. Options: ``google_options``.
"""
import http.client
import io
import threading
import time
from typing import Any, List, Optional

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
from chunkbackup import checksums
from chunkbackup import chunked
from chunkbackup.drivers import google_options
from chunkbackup import exception
from chunkbackup import objectio
from chunkbackup.records import BackupLike
from chunkbackup import storage
from chunkbackup.storage import errors

CONF = cfg.CONF
LOG = logging.getLogger(__name__)

GROUP = google_options.GROUP
OPTS = google_options.OPTS
GoogleOptions = google_options.GoogleOptions
SCOPES = ('https://www.googleapis.com/auth/devstorage.read_write',)
CONTENT_TYPE = 'application/octet-stream'

# A download whose bytes do not match the service's hash (DataCorruption)
# was damaged on the way: the object was checked when it was uploaded.
_TRANSIENT_TYPES = (
    requests.ConnectionError, requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.ProtocolError, urllib3.exceptions.TimeoutError,
    http.client.HTTPException, auth_exceptions.TransportError,
    gcs_exceptions.DataCorruption)


def _status_of(exc: BaseException) -> Optional[int]:
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        return exc.code
    if isinstance(exc, gcs_exceptions.InvalidResponse):
        return getattr(getattr(exc, 'response', None), 'status_code', None)
    return None


def _reason(exc: Optional[BaseException]) -> str:
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        return '%s %s' % (exc.code, exc.message)
    return '%s: %s' % (type(exc).__name__, exc)


class _NoSuchBucket(Exception):
    """A 404 on an object whose bucket is missing too."""


class GoogleBackupDriver(chunked.ChunkedBackupDriver):
    """Cinder-compatible Google Cloud Storage driver."""

    cinder_progress_timer_option = 'backup_gcs_enable_progress_timer'

    # Names per listing page; None means the service's (1000).
    listing_page_size: Optional[int] = None

    def __init__(self, context: Any, db: Any = None) -> None:
        self.options = opts = GoogleOptions.from_conf(CONF[GROUP])
        super().__init__(context, object_size=opts.object_size,
                         object_size_option=opts.object_size_option, db=db)
        self._client = None
        self._client_lock = threading.Lock()

    # The client ------------------------------------------------------------

    def _credentials(self):
        """The credentials and the project they belong to."""
        if self.options.anonymous:
            return auth_credentials.AnonymousCredentials(), None
        if self.options.credentials_file:
            from google.oauth2 import service_account
            try:
                creds = service_account.Credentials.from_service_account_file(
                    self.options.credentials_file, scopes=SCOPES)
            except (OSError, ValueError) as e:
                raise exception.InvalidConfiguration(
                    reason='[%s] credentials_file %s is not a readable '
                           'service-account JSON key: %s'
                           % (GROUP, self.options.credentials_file, e))
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
        refresh_on = (() if self.options.anonymous
                      else (http.client.UNAUTHORIZED,))
        session = auth_requests.AuthorizedSession(
            creds, refresh_status_codes=refresh_on)
        # One connection per object in flight; the adapter never retries.
        adapter = requests.adapters.HTTPAdapter(
            pool_maxsize=max(10, self.engine_options.objects_in_flight),
            max_retries=0)
        session.mount('https://', adapter)
        session.mount('http://', adapter)
        if self.options.proxy_url:
            session.proxies.update({'http': self.options.proxy_url,
                                    'https': self.options.proxy_url})
        return session

    @property
    def client(self) -> gcs.Client:
        # Built on first use: constructing the driver (cinder-backup does it
        # at start) must not look for credentials or touch the network.
        with self._client_lock:
            if self._client is None:
                creds, creds_project = self._credentials()
                options = ({'api_endpoint': self.options.endpoint}
                           if self.options.endpoint else None)
                client = gcs.Client(
                    project=self.options.project_id or creds_project,
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

    def classify_error(self, exc: BaseException) -> errors.Classification:
        if isinstance(exc, _NoSuchBucket):
            return errors.CONTAINER_NOT_FOUND, (
                'no such Google Cloud Storage bucket (%s)'
                % _reason(exc.__cause__))
        kind, reason = storage.classify_default(exc)
        if kind != errors.FATAL or isinstance(exc,
                                              exception.ChunkBackupError):
            return kind, reason
        status = _status_of(exc)
        # A token refresh that met a 5xx or a timeout says it is retryable.
        refresh_retryable = isinstance(
            exc, auth_exceptions.GoogleAuthError) and getattr(
                exc, 'retryable', False)
        if isinstance(exc, _TRANSIENT_TYPES) or refresh_retryable or (
                status in (408, 429) or (status or 0) >= 500):
            return errors.TRANSIENT, _reason(exc)
        if status in (401, 403) or isinstance(exc,
                                              auth_exceptions.RefreshError):
            return errors.AUTH, (
                'Google Cloud Storage refused it: %s. Check [%s] '
                'credentials_file (a service-account key with access to the '
                'bucket) and project_id.' % (_reason(exc), GROUP))
        if status == 404:
            return errors.NOT_FOUND, _reason(exc)
        return errors.FATAL, _reason(exc)

    def _bucket_exists(self, bucket: str) -> bool:
        try:
            return self.client.bucket(bucket).exists(
                timeout=self.options.timeout, retry=None)
        except Exception:
            return True  # unknown: say what we know, the object is missing

    def _object_call(self, bucket: str, fn, *args, **kwargs):
        """``fn(...)``; a 404 of a missing bucket says so."""
        try:
            return fn(*args, **kwargs)
        except api_exceptions.NotFound as e:
            if not self._bucket_exists(bucket):
                raise _NoSuchBucket(bucket) from e
            raise

    # Hooks -----------------------------------------------------------------

    def check_for_setup_error(self) -> None:
        # Loads the credentials (a clear error for a bad key file); sends
        # no request.
        LOG.debug('Google Cloud Storage client ready (project %s).',
                  self.client.project)

    def default_container(self, backup: BackupLike) -> str:
        return self.options.bucket

    def update_container_name(self, backup: BackupLike,
                              container: Optional[str]) -> Optional[str]:
        return container or self.default_container(backup)

    def put_container(self, container: str) -> None:
        try:
            self.client.get_bucket(container, timeout=self.options.timeout,
                                   retry=None)
            return
        except api_exceptions.NotFound:
            if not self.options.create_bucket:
                raise exception.StorageContainerNotFound(
                    operation='put_container', target=container,
                    reason='the bucket does not exist and [%s] '
                           'create_bucket is False; create it or set '
                           'create_bucket = True' % GROUP)
        except api_exceptions.Forbidden as e:
            if self.options.create_bucket:
                raise
            # Object permissions alone suffice once the bucket exists.
            LOG.warning('Cannot read bucket %(b)s (%(err)s); assuming it '
                        'exists.', {'b': container, 'err': _reason(e)})
            return
        project = self.options.project_id or self.client.project
        if not project:
            raise exception.InvalidConfiguration(
                reason='bucket %s does not exist and creating it needs '
                       'a project: set [%s] project_id'
                       % (container, GROUP))
        bucket = self.client.bucket(container)
        if self.options.storage_class:
            bucket.storage_class = self.options.storage_class
        LOG.info('Creating bucket %(b)s in project %(p)s (%(loc)s, '
                 '%(cls)s).', {'b': container, 'p': project,
                               'loc': self.options.bucket_location,
                               'cls': self.options.storage_class})
        try:
            self.client.create_bucket(
                bucket, project=project, location=self.options.bucket_location,
                timeout=self.options.timeout, retry=None)
        except api_exceptions.Conflict:
            # Created meanwhile (or the name belongs to someone else,
            # which the next request will say).
            pass

    def get_container_entries(self, container: str,
                              prefix: str) -> List[str]:
        # The iterator follows nextPageToken through every page.
        blobs = self.client.list_blobs(
            container, prefix=prefix, fields='items(name),nextPageToken',
            page_size=self.listing_page_size, timeout=self.options.timeout,
            retry=None)
        return [blob.name for blob in blobs]

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
        self._object_call(container, self.client.bucket(container).delete_blob,
                          object_name, timeout=self.options.timeout,
                          retry=None)

    def _generate_object_name_prefix(self, backup: BackupLike) -> str:
        return fmt.object_store_prefix(
            backup.volume_id, backup.id, self.options.availability_zone,
            time.gmtime())

    def get_extra_metadata(self, backup: BackupLike,
                           volume: Any) -> Optional[dict]:
        return None

    # Object I/O ------------------------------------------------------------

    def _upload(self, bucket: str, name: str, body) -> None:
        blob = self.client.bucket(bucket).blob(
            name, chunk_size=self.options.upload_chunk_size)
        # The service computes the MD5 of what it received and refuses the
        # upload when it differs: no damaged object is stored.
        blob.md5_hash = checksums.md5_base64(body)
        # Bodies up to 8 MiB go in one request; larger ones as a resumable
        # upload in upload_chunk_size pieces. Either way the object appears
        # only once complete.
        self._object_call(bucket, blob.upload_from_file, io.BytesIO(body),
                          size=len(body), content_type=CONTENT_TYPE,
                          checksum=None, timeout=self.options.timeout,
                          retry=None)

    def _download(self, bucket: str, name: str) -> bytes:
        blob = self.client.bucket(bucket).blob(name)
        return self._object_call(bucket, blob.download_as_bytes,
                                 checksum='md5', timeout=self.options.timeout,
                                 retry=None)
