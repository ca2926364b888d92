"""Backups in OpenStack Swift, in the layout of Cinder's Swift driver.

Objects go to one container (``[backup_swift] container`` unless the backup
names one) under the prefix
``volume_<volume_id>/<UTC %Y%m%d%H%M%S>/az_<availability_zone>_backup_<id>``.
Every object is one plain Swift object, written in one PUT: a body of up
to ``WHOLE_PUT_LIMIT`` carries its MD5 as ``ETag``, so Swift stores it
whole and intact or not at all; a larger stream goes with chunked transfer
encoding (never held whole in memory), its MD5 computed while it is sent
and compared with the ETag Swift answers; a mismatch deletes the object.
A stream broken off before its last chunk stores nothing. Reads are
streamed (``resp_chunk_size``) and ranges are HTTP Range requests.

Auth: ``single_user`` logs in with the configured credentials (tempauth /
v1: one token per driver, shared by every thread's connection and renewed
once, under a lock, when Swift answers 401; or Keystone v3 through a
keystoneauth session shared by all threads); ``per_user`` uses the token
and service catalog of the request context, as Cinder's driver does.
swiftclient never retries: the storage seam retries what
``classify_error`` calls transient. Options: ``swift_options``.
"""
import contextlib
import http.client
import threading
import time
from typing import (Any, Callable, Iterable, Iterator, List, Optional,
                    Tuple, TypeVar)

from keystoneauth1 import exceptions as ks_exc
from keystoneauth1.identity import v3 as ks_v3
from keystoneauth1 import session as ks_session
from oslo_config import cfg
from oslo_log import log as logging
import requests
from swiftclient import client as swift_client
from swiftclient import exceptions as swift_exc

from chunkbackup import backupformat as fmt
from chunkbackup import checksums
from chunkbackup import chunked
from chunkbackup.drivers import swift_options
from chunkbackup import exception
from chunkbackup import logsecrets
from chunkbackup import objectio
from chunkbackup.records import BackupLike
from chunkbackup import storage
from chunkbackup.storage import errors

CONF = cfg.CONF
LOG = logging.getLogger(__name__)

GROUP = swift_options.GROUP
OPTS = swift_options.OPTS
SwiftOptions = swift_options.SwiftOptions
OBJECT_STORE = 'object-store'
# 422: the body Swift received does not match the ETag we sent, i.e. it was
# damaged on the way; sending the same bytes again is the cure.
TRANSIENT_STATUSES = frozenset((408, 422, 429, 498, 499))
_TLS_ERRORS = (requests.exceptions.SSLError, ks_exc.SSLError)
_HTTP_ERRORS = (swift_exc.ClientException, ks_exc.HttpError)
# Streams up to this size go in one PUT with Content-Length and ETag (as
# Cinder's driver sends them); larger ones with chunked transfer encoding.
WHOLE_PUT_LIMIT = 8 * 1024 * 1024
# Bytes per piece of a streamed download.
READ_PIECE = 1024 * 1024
T = TypeVar('T')
_TRANSPORT_ERRORS = (requests.exceptions.ConnectionError,
                     requests.exceptions.Timeout,
                     requests.exceptions.ChunkedEncodingError,
                     http.client.HTTPException)


class SwiftBackupDriver(chunked.ChunkedBackupDriver):
    """Cinder-compatible Swift driver."""

    # Entries per listing request; None is the server's limit (10000 by
    # default). Tests set it low to exercise paging.
    listing_page_size: Optional[int] = None
    cinder_progress_timer_option = 'backup_swift_enable_progress_timer'

    def __init__(self, context: Any, db: Any = None) -> None:
        self.options = SwiftOptions.from_conf(CONF[GROUP])
        super().__init__(context, object_size=self.options.object_size,
                         object_size_option=self.options.object_size_option,
                         db=db)
        for library in ('swiftclient', 'keystoneauth'):
            logsecrets.hide_in_logs(library, (), self.options.key)
        # swiftclient connections are not thread-safe: one per thread.
        # threading.local, not a native-thread local: under eventlet the
        # I/O workers are green threads sharing one native thread, and each
        # needs its own connection.
        self._local = threading.local()
        self._lock = threading.Lock()
        self._keystone = None
        self._storage_url: Optional[str] = None
        # v1 auth: (storage url, token), one login for every thread.
        self._token: Optional[Tuple[str, str]] = None
        self._token_lock = threading.Lock()
        self.logins = 0  # v1 logins made: one, unless a token expired

    # Connections --------------------------------------------------------

    def _connection(self) -> swift_client.Connection:
        conn = getattr(self._local, 'conn', None)
        if conn is None:
            conn = self._local.conn = self._new_connection()
        return conn

    def _new_connection(self) -> swift_client.Connection:
        conf = self.options
        common = dict(retries=0, starting_backoff=0,
                      cacert=conf.ca_certificate_file,
                      insecure=conf.insecure, timeout=conf.timeout)
        if conf.auth_mode == 'per_user':
            # No credentials: an expired token fails (401), it is not
            # renewed behind the user's back.
            return swift_client.Connection(
                preauthurl=self._per_user_url(),
                preauthtoken=getattr(self.context, 'auth_token', None),
                **common)
        self.options.check_credentials(not conf.auth_url)
        if conf.auth_version == '1':
            # No credentials here: the connection never logs in by itself;
            # it uses the driver's token (see _v1_token).
            url, token = self._v1_token()
            return swift_client.Connection(preauthurl=url,
                                           preauthtoken=token, **common)
        # Keystone v3 through keystoneauth (swiftclient's own v3 login needs
        # python-keystoneclient and loses the HTTP status of a refusal).
        # One session for all threads: one token, renewed when it expires.
        session, url = self._keystone_session()
        return swift_client.Connection(
            session=session, preauthurl=url, auth_version='3',
            os_options={'service_type': OBJECT_STORE,
                        'endpoint_type': conf.interface,
                        'region_name': conf.region_name},
            **common)

    @property
    def _shares_token(self) -> bool:
        """Whether this driver logs in itself with v1 (tempauth) auth."""
        return (self.options.auth_mode != 'per_user' and
                self.options.auth_version == '1')

    def _v1_token(self, refused: Optional[str] = None) -> Tuple[str, str]:
        """The driver's storage URL and token, logging in once for all.

        ``refused``: a token Swift answered 401 to. The first thread to
        report it logs in again; the others then find the new token.
        """
        with self._token_lock:
            if self._token is None or (refused is not None and
                                       self._token[1] == refused):
                conf = self.options
                LOG.debug('Logging in to %s as %s.', self._auth_url(),
                          conf.user)
                self.logins += 1
                url, token = swift_client.get_auth(
                    self._auth_url(), conf.user, conf.key,
                    auth_version='1', cacert=conf.ca_certificate_file,
                    insecure=conf.insecure, timeout=conf.timeout)
                self._token = url, token
            return self._token

    def _keystone_session(self):
        with self._lock:
            if self._keystone is None:
                conf = self.options
                auth = ks_v3.Password(
                    auth_url=self._auth_url(), username=conf.user,
                    password=conf.key, project_name=conf.project_name,
                    project_domain_name=conf.project_domain_name,
                    user_domain_name=conf.user_domain_name)
                verify = (False if conf.insecure
                          else conf.ca_certificate_file or True)
                session = ks_session.Session(auth=auth, verify=verify,
                                             timeout=conf.timeout)
                url = session.get_endpoint(service_type=OBJECT_STORE,
                                           interface=conf.interface,
                                           region_name=conf.region_name)
                if not url:
                    raise exception.InvalidConfiguration(
                        reason='the Keystone catalog at [%s] auth_url = %s '
                               'has no %s object-store endpoint%s' % (
                                   GROUP, conf.auth_url, conf.interface,
                                   ' in region %s' % conf.region_name
                                   if conf.region_name else ''))
                self._keystone = session, url
            return self._keystone

    def _auth_url(self) -> str:
        """auth_url, or the identity endpoint of the request's catalog."""
        return self.options.auth_url or self.options.catalog_auth_url(
            self.context)

    def _headers(self, headers: Optional[dict] = None) -> Optional[dict]:
        """``headers`` plus X-Service-Token when service_auth is on."""
        if not self.options.service_auth:
            return headers
        result = dict(headers or {})
        result['X-Service-Token'] = self._service_token()
        return result

    def _with_headers(self) -> dict:
        """Keyword arguments for a swiftclient call: the service token."""
        headers = self._headers()
        return {} if headers is None else {'headers': headers}

    def _service_token(self) -> str:
        if self.cinder is None:
            raise exception.InvalidConfiguration(
                reason='[%s] service_auth takes the service token from '
                       'cinder-backup\'s [service_user] options; set it to '
                       'false outside cinder-backup' % GROUP)
        token = self.cinder.service_token()
        if not token:
            raise exception.InvalidConfiguration(
                reason='[%s] service_auth is true but [service_user] '
                       'send_service_user_token is false or gives no '
                       'token; configure [service_user] or set '
                       'service_auth = false' % GROUP)
        return token

    def _per_user_url(self) -> str:
        if not self._storage_url:
            self._storage_url = self.options.per_user_url(self.context)
        return self._storage_url

    # Errors -------------------------------------------------------------

    def classify_error(self, exc: BaseException) -> errors.Classification:
        status = getattr(exc, 'http_status', None)
        if isinstance(exc, _TLS_ERRORS):
            # A certificate problem does not go away.
            return errors.FATAL, ('TLS failed (%s); check [%s] '
                                  'ca_certificate_file or insecure'
                                  % (exc, GROUP))
        if status in (401, 403):
            if self.options.auth_mode == 'per_user':
                advice = ('the token of the request was refused (expired, '
                          'or no access to this account)')
            else:
                advice = ('check [%s] user/key (and auth_url, auth_version, '
                          'project options)' % GROUP)
            return errors.AUTH, 'Swift answered %s: %s' % (status, advice)
        if status == 404:
            return errors.NOT_FOUND, 'Swift answered 404'
        if isinstance(exc, _HTTP_ERRORS):
            transient = (status is None or status >= 500 or
                         status in TRANSIENT_STATUSES)
            return (errors.TRANSIENT if transient else errors.FATAL,
                    str(exc) or errors.describe(exc))
        if isinstance(exc, ks_exc.ConnectionError):
            return errors.TRANSIENT, (
                'cannot reach Keystone at [%s] auth_url = %s (%s)'
                % (GROUP, self.options.auth_url, exc))
        kind, reason = storage.classify_default(exc)
        if kind == errors.TRANSIENT or isinstance(exc, _TRANSPORT_ERRORS):
            return errors.TRANSIENT, 'cannot reach Swift (%s)' % (
                errors.describe(exc))
        return kind, reason

    @contextlib.contextmanager
    def _swift(self):
        """This thread's connection, renewed after a broken transfer."""
        conn = self._connection()
        if self._shares_token:
            # The token another thread renewed, or the one swiftclient
            # forgot after a 401.
            conn.url, conn.token = self._v1_token()
        try:
            yield conn
        except _HTTP_ERRORS:
            raise  # the HTTP framing is intact: keep the connection
        except BaseException:
            # The next attempt opens a new HTTP connection (the token
            # stays valid); a stream cut off by its producer too.
            conn.close()
            raise

    def _request(self, call: Callable[[swift_client.Connection], T],
                 target: str = '', replayable: bool = True) -> T:
        """``call(conn)``; after a 401 the token is renewed, and tried once.

        A request whose body was a stream cannot be sent again here: it
        fails as transient, and the storage seam sends it again from the
        start.
        """
        with self._swift() as conn:
            token = conn.token
            try:
                return call(conn)
            except swift_exc.ClientException as e:
                if e.http_status != 401 or not self._shares_token:
                    raise
        self._v1_token(refused=token)
        if not replayable:
            raise exception.TransientStorageError(
                operation='put', target=target,
                reason='Swift refused the token (401); logged in again, '
                       'the object is sent again')
        with self._swift() as conn:
            return call(conn)

    # Hooks --------------------------------------------------------------

    def check_for_setup_error(self) -> None:
        """Everything that can be checked before a request arrives."""
        if self.options.service_auth:
            self._service_token()
        if self.options.auth_mode == 'per_user':
            # There is no user token before a request arrives; only the
            # endpoint can be checked (as Cinder does, by its /info).
            if not self.options.url:
                LOG.info('[%s] per_user mode takes the Swift endpoint from '
                         'each request\'s service catalog (%s).', GROUP,
                         self.options.catalog_info)
                return
            self._check_endpoint(self.options.url)
            return
        self.options.check_credentials(not self.options.auth_url)
        if not self.options.auth_url:
            LOG.info('[%s] single_user mode without auth_url takes the '
                     'identity endpoint from each request\'s service '
                     'catalog (%s).', GROUP,
                     self.options.keystone_catalog_info)
            return
        target = self.options.auth_url
        with storage.translated(self, 'login', target):
            try:
                self._request(lambda conn: conn.head_account(
                    **self._with_headers()))
            except swift_exc.ClientException as e:
                if e.http_status != 404:
                    raise
                raise exception.StorageError(
                    operation='login', target=target,
                    reason='%s answered 404; check [%s] auth_url and '
                           'auth_version' % (target, GROUP)) from e
        LOG.info('Swift account %s reachable.', self._connection().url)

    def default_container(self, backup: BackupLike) -> str:
        return self.options.container

    def _check_endpoint(self, url: str) -> None:
        """Swift answers its /info at the endpoint's host (per_user)."""
        with storage.translated(self, 'connect', url):
            conn = swift_client.Connection(
                preauthurl=url, retries=0,
                cacert=self.options.ca_certificate_file,
                insecure=self.options.insecure, timeout=self.options.timeout)
            try:
                conn.get_capabilities()
            finally:
                conn.close()
        LOG.info('Swift endpoint %s reachable.', url)

    def update_container_name(self, backup: BackupLike,
                              container: Optional[str]) -> Optional[str]:
        container = container or self.default_container(backup)
        if not container or '/' in container or len(container) > 256:
            raise exception.InvalidName(
                kind='container', name=container,
                reason='Swift container names are 1-256 bytes without "/"')
        return container

    def put_container(self, container: str) -> None:
        try:
            self._request(lambda conn: conn.head_container(
                container, **self._with_headers()))
            return
        except swift_exc.ClientException as e:
            if e.http_status != 404:
                raise
        if not self.options.create_container:
            raise exception.StorageContainerNotFound(
                operation='put_container', target=container,
                reason='[%s] create_container is false: create container '
                       '%s first or allow the driver to create it'
                       % (GROUP, container))
        policy = self.options.storage_policy
        headers = {'X-Storage-Policy': policy} if policy else None
        self._request(lambda conn: conn.put_container(
            container, headers=self._headers(headers)))
        LOG.info('Created Swift container %(c)s%(p)s.',
                 {'c': container,
                  'p': ' with storage policy %s' % policy if policy else ''})

    def get_container_entries(self, container: str,
                              prefix: str) -> List[str]:
        # full_listing: swiftclient follows the markers page by page.
        _headers, objects = self._request(lambda conn: conn.get_container(
            container, prefix=prefix, limit=self.listing_page_size,
            full_listing=True, **self._with_headers()))
        return [obj['name'] for obj in objects]

    def _put_object(self, container: str, name: str, body) -> None:
        md5 = checksums.md5_hex(body)
        # Swift checks the body against the ETag and refuses (422) a
        # damaged one, so no partial or altered object is ever stored.
        etag = self._request(lambda conn: conn.put_object(
            container, name, body, content_length=len(body), etag=md5,
            **self._with_headers()))
        if etag and etag != md5:
            raise exception.StorageError(
                operation='put', target='%s/%s' % (container, name),
                reason='Swift stored MD5 %s but the body has %s'
                       % (etag, md5))

    def _put_chunked(self, container: str, name: str,
                     chunks: Iterator[bytes]) -> None:
        """A stream of unknown length, with chunked transfer encoding.

        Swift stores it only once the last chunk came; its ETag (the MD5
        of what it stored) is checked against what was sent.
        """
        target = '%s/%s' % (container, name)
        tap = objectio.MD5Tap(chunks)
        etag = self._request(lambda conn: conn.put_object(
            container, name, iter(tap), **self._with_headers()),
            target=target, replayable=False)
        md5 = tap.hexdigest()
        if etag != md5:
            # Damaged on the way: the stored object must not stay.
            self._request(lambda conn: conn.delete_object(
                container, name, **self._with_headers()))
            raise exception.TransientStorageError(
                operation='put', target=target,
                reason='Swift stored MD5 %s but %d bytes with MD5 %s were '
                       'sent; the object was deleted and is sent again'
                       % (etag, tap.size, md5))

    def _body_chunks(self, container: str, name: str) -> Iterator[bytes]:
        headers, body = self._request(lambda conn: conn.get_object(
            container, name, resp_chunk_size=READ_PIECE,
            **self._with_headers()))
        expected = headers.get('content-length')
        received = 0
        try:
            for piece in body:
                received += len(piece)
                yield piece
        finally:
            close = getattr(body, 'close', None)
            if close is not None:
                close()
        if expected is not None and received != int(expected):
            raise http.client.IncompleteRead(b'', int(expected) - received)

    def get_object_writer(self, container: str, object_name: str,
                          extra_metadata: Optional[dict] = None
                          ) -> objectio.BufferedWriter:
        return objectio.BufferedWriter(
            lambda body: self._put_object(container, object_name, body))

    def put_object_stream(self, container: str, object_name: str,
                          chunks: Iterable[bytes],
                          extra_metadata: Optional[dict] = None) -> None:
        """One PUT with ETag up to WHOLE_PUT_LIMIT, chunked beyond it."""
        body, rest = objectio.peek(chunks, WHOLE_PUT_LIMIT)
        if body is not None:
            self._put_object(container, object_name, body)
        else:
            self._put_chunked(container, object_name, rest)

    def get_object_reader(self, container: str, object_name: str,
                          extra_metadata: Optional[dict] = None
                          ) -> objectio.ChunkReader:
        return objectio.ChunkReader(
            lambda: self._body_chunks(container, object_name))

    def get_object_range(self, container: str, object_name: str,
                         offset: int, length: int,
                         extra_metadata: Optional[dict] = None) -> bytes:
        headers = {'Range': 'bytes=%d-%d' % (offset, offset + length - 1)}
        try:
            _headers, body = self._request(lambda conn: conn.get_object(
                container, object_name, headers=self._headers(headers)))
        except swift_exc.ClientException as e:
            if e.http_status == 416:
                return b''  # at or past the end
            raise
        return body

    def get_object_size(self, container: str, object_name: str,
                        extra_metadata: Optional[dict] = None) -> int:
        headers = self._request(lambda conn: conn.head_object(
            container, object_name, **self._with_headers()))
        return int(headers['content-length'])

    def copy_object(self, container: str, object_name: str,
                    dest_container: str, dest_name: str) -> bool:
        """Swift's server-side COPY (the proxy copies the object)."""
        with self._swift() as conn:
            conn.copy_object(container, object_name,
                             destination='/%s/%s' % (dest_container,
                                                     dest_name),
                             **self._with_headers())
        return True

    def delete_object(self, container: str, object_name: str) -> None:
        self._request(lambda conn: conn.delete_object(
            container, object_name, **self._with_headers()))

    def _generate_object_name_prefix(self, backup: BackupLike) -> str:
        prefix = fmt.object_store_prefix(
            backup.volume_id, backup.id, self.options.availability_zone,
            time.gmtime())
        LOG.debug('Object prefix of backup %(id)s: %(p)s',
                  {'id': backup.id, 'p': prefix})
        return prefix

    def get_extra_metadata(self, backup: BackupLike,
                           volume: Any) -> Optional[dict]:
        return None
