"""Backups in Google Cloud Storage, in Cinder's gcs layout.

Each backup's container is a bucket (``[backup_google] bucket`` unless the
backup names one) and its objects are named
``volume_<volume_id>/<UTC timestamp>/az_<zone>_backup_<backup_id>...`` as
Cinder's gcs driver names them. Bytes move through google-cloud-storage;
every upload carries the body's MD5, so the service refuses a body that was
damaged on the way, and no object exists until an upload is complete. A
stream of up to 8 MiB goes in one request, as a whole body does; a larger
one as a resumable upload in ``upload_chunk_size`` pieces, one piece in
memory, its MD5 computed as it goes and checked against the stored
object's (the library deletes a mismatch). Reads are ranged requests.

The library's own retries are off: the storage seam retries what
``classify_error`` calls transient. Options: ``google_options``.

With ``object_retention_mode`` every object of a backup (uploads and
rewrites) carries a GCS object retention (mode and ``retainUntilTime``)
``object_retention_days`` ahead; the bucket must have object retention
enabled (checked at first use). See doc/object-lock.md.
"""
import http.client
import io
import threading
import time
from typing import Any, Iterable, List, Optional

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
from chunkbackup.engine import documents
from chunkbackup import exception
from chunkbackup import objectio
from chunkbackup import objectlock
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
# The library sends bodies up to this size in one (multipart) request.
SINGLE_REQUEST_LIMIT = 8 * 1024 * 1024
# Bytes per ranged request of a streamed download.
READ_PIECE = 8 * 1024 * 1024

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
    object_lock_mechanism = 'GCS object retention'

    # Names per listing page; None means the service's (1000).
    listing_page_size: Optional[int] = None

    def __init__(self, context: Any, db: Any = None) -> None:
        self.options = opts = GoogleOptions.from_conf(CONF[GROUP])
        super().__init__(context, object_size=opts.object_size,
                         object_size_option=opts.object_size_option, db=db)
        self._client = None
        self._client_lock = threading.Lock()
        # Buckets whose object retention was checked.
        self._retention_checked: set = set()
        self._retention_clock = objectlock.RetentionClock(
            opts.object_retention_days)

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
            pool_maxsize=max(10, storage.connections_needed()),
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

    # Object retention ------------------------------------------------------

    def _retain(self, bucket: str, blob: gcs.Blob) -> None:
        """Give ``blob`` (before its upload or rewrite) its retention."""
        mode = self.options.object_retention_mode
        if not mode:
            return
        self._check_retention_bucket(bucket)
        blob.retention.mode = mode.capitalize()  # Locked, Unlocked
        blob.retention.retain_until_time = self._retention_clock.next()

    def _check_retention_bucket(self, bucket: str) -> None:
        """The bucket has object retention enabled: checked once."""
        if bucket in self._retention_checked:
            return
        found = self._object_call(bucket, self.client.get_bucket, bucket,
                                  timeout=self.options.timeout, retry=None)
        if found.object_retention_mode != 'Enabled':
            raise objectlock.LockUnavailable(
                reason='bucket %s has no object retention; create it with '
                       'object retention enabled (gcloud storage buckets '
                       'create --enable-per-object-retention), or unset '
                       '[%s] object_retention_mode' % (bucket, GROUP))
        with self._client_lock:
            self._retention_checked.add(bucket)

    def object_lock_hint(self) -> Optional[str]:
        if self.options.object_retention_mode:
            return None
        return '[%s] object_retention_mode is unset: set it to unlocked ' \
               'or locked' % GROUP

    def object_lock_of(self, backup: BackupLike
                       ) -> Optional[objectlock.ObjectLock]:
        """The retention of the backup's ``_metadata`` (written last)."""
        location = documents.Location.of(backup)
        blob = self.client.bucket(location.container).blob(location.metadata)
        with storage.translated(self, 'head', location.container,
                                location.metadata):
            try:
                self._object_call(location.container, blob.reload,
                                  timeout=self.options.timeout, retry=None)
            except api_exceptions.NotFound:
                return None
        until = blob.retention.retain_until_time
        mode = blob.retention.mode
        if until is None or not mode:
            return None
        return objectlock.ObjectLock(self.object_lock_mechanism,
                                     str(mode).lower(),
                                     objectlock.as_utc(until))

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
            if self.options.object_retention_mode:
                self._check_retention_bucket(container)
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
        # Object retention can only be enabled when a bucket is created.
        retention = {'enable_object_retention': True} \
            if self.options.object_retention_mode else {}
        LOG.info('Creating bucket %(b)s in project %(p)s (%(loc)s, '
                 '%(cls)s).', {'b': container, 'p': project,
                               'loc': self.options.bucket_location,
                               'cls': self.options.storage_class})
        try:
            self.client.create_bucket(
                bucket, project=project, location=self.options.bucket_location,
                timeout=self.options.timeout, retry=None, **retention)
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

    def put_object_stream(self, container: str, object_name: str,
                          chunks: Iterable[bytes],
                          extra_metadata: Optional[dict] = None) -> None:
        """One request up to 8 MiB, a resumable upload beyond it."""
        body, rest = objectio.peek(chunks, SINGLE_REQUEST_LIMIT)
        if body is not None:
            self._upload(container, object_name, body)
            return
        blob = self.client.bucket(container).blob(
            object_name, chunk_size=self.options.upload_chunk_size)
        self._retain(container, blob)
        # size=None: the library reads upload_chunk_size bytes a request
        # and learns the size from the last, short, read. checksum='md5':
        # it hashes what it sends and compares with the stored object's
        # MD5, deleting the object if they differ.
        try:
            self._object_call(container, blob.upload_from_file,
                              objectio.ChunkFile(rest), size=None,
                              content_type=CONTENT_TYPE, checksum='md5',
                              timeout=self.options.timeout, retry=None)
        except ValueError as e:
            if 'unexpected state' not in str(e):
                raise
            # The service kept fewer bytes of a piece than were sent (it
            # may): a stream cannot go back, the seam sends it all again.
            raise exception.TransientStorageError(
                operation='put', target='%s/%s' % (container, object_name),
                reason='Google Cloud Storage kept part of a piece of the '
                       'resumable upload (%s); the object is sent again'
                       % e) from e

    def get_object_reader(self, container: str, object_name: str,
                          extra_metadata: Optional[dict] = None
                          ) -> objectio.RangedReader:
        return objectio.RangedReader(
            lambda offset, length: self.get_object_range(
                container, object_name, offset, length),
            READ_PIECE, read_all=lambda: self._download(container,
                                                        object_name))

    def get_object_range(self, container: str, object_name: str,
                         offset: int, length: int,
                         extra_metadata: Optional[dict] = None) -> bytes:
        blob = self.client.bucket(container).blob(object_name)
        try:
            return self._object_call(
                container, blob.download_as_bytes, start=offset,
                end=offset + length - 1, checksum=None,
                timeout=self.options.timeout, retry=None)
        except api_exceptions.RequestRangeNotSatisfiable:
            return b''  # at or past the end

    def get_object_size(self, container: str, object_name: str,
                        extra_metadata: Optional[dict] = None) -> int:
        blob = self.client.bucket(container).blob(object_name)
        self._object_call(container, blob.reload,
                          timeout=self.options.timeout, retry=None)
        return int(blob.size or 0)

    def delete_object(self, container: str, object_name: str) -> None:
        try:
            self._object_call(
                container, self.client.bucket(container).delete_blob,
                object_name, timeout=self.options.timeout, retry=None)
        except api_exceptions.Forbidden as e:
            if 'retention' not in _reason(e).lower():
                raise
            # Not a credentials problem, whatever the 403 says.
            raise exception.StorageError(
                operation='delete', target='%s/%s' % (container,
                                                      object_name),
                reason='the object is protected by GCS object retention '
                       'until its retention date; it can be deleted after '
                       'that (%s)' % _reason(e)) from e

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
        self._retain(bucket, blob)
        # Bodies up to 8 MiB go in one request; larger ones as a resumable
        # upload in upload_chunk_size pieces. Either way the object appears
        # only once complete.
        self._object_call(bucket, blob.upload_from_file, io.BytesIO(body),
                          size=len(body), content_type=CONTENT_TYPE,
                          checksum=None, timeout=self.options.timeout,
                          retry=None)

    def copy_object(self, container: str, object_name: str,
                    dest_container: str, dest_name: str) -> bool:
        """GCS rewrite: copied by the service, in as many calls as it
        takes (large objects across locations or storage classes).
        """
        source = self.client.bucket(container).blob(object_name)
        dest = self.client.bucket(dest_container).blob(dest_name)
        self._retain(dest_container, dest)
        token = None
        while True:
            token, _done, _total = self._object_call(
                container, dest.rewrite, source, token=token,
                timeout=self.options.timeout, retry=None)
            if token is None:
                return True

    def _download(self, bucket: str, name: str) -> bytes:
        blob = self.client.bucket(bucket).blob(name)
        return self._object_call(bucket, blob.download_as_bytes,
                                 checksum='md5', timeout=self.options.timeout,
                                 retry=None)
