"""Backups in OpenStack Swift, in the layout of Cinder's Swift driver.

Objects go to one container (``[backup_swift] container`` unless the backup
names one) under the prefix
``volume_<volume_id>/<UTC %Y%m%d%H%M%S>/az_<availability_zone>_backup_<id>``.
Every object is written in one PUT that carries the MD5 of its body as
``ETag``, so Swift stores it whole and intact or not at all.

Auth: ``single_user`` logs in with the configured credentials (tempauth /
v1, or Keystone v3 through a keystoneauth session shared by all threads);
``per_user`` uses the token and service catalog of the request context, as
Cinder's driver does. Retries are the engine's (chunkbackup.storage): the
swiftclient connections never retry, and this module only says which
failures are transient.
"""
import contextlib
import hashlib
import http.client
import threading
import time
from typing import List, Optional

from keystoneauth1 import exceptions as ks_exc
from keystoneauth1.identity import v3 as ks_v3
from keystoneauth1 import session as ks_session
from oslo_config import cfg
from oslo_log import log as logging
import requests
from swiftclient import client as swift_client
from swiftclient import exceptions as swift_exc

from chunkbackup import backupformat as fmt
from chunkbackup import chunked
from chunkbackup import exception
from chunkbackup import objectio

CONF = cfg.CONF
LOG = logging.getLogger(__name__)

GROUP = 'backup_swift'
OBJECT_STORE = 'object-store'
# 422: the body Swift received does not match the ETag we sent, i.e. it was
# damaged on the way; sending the same bytes again is the cure.
TRANSIENT_STATUSES = frozenset((408, 422, 429, 498, 499))

OPTS = [
    cfg.StrOpt('auth_mode',
               default='single_user',
               choices=[('single_user', 'Log in with [backup_swift] user and '
                                        'key.'),
                        ('per_user', 'Use the token and the service catalog '
                                     'of the request (inside cinder-backup: '
                                     'backups go to the user\'s account).')],
               help='Whose credentials reach Swift. Cinder\'s default is '
                    'per_user; standalone use needs single_user.'),
    cfg.StrOpt('auth_url',
               help='Identity endpoint for single_user mode: the tempauth / '
                    'v1 URL (e.g. http://swift:8080/auth/v1.0) or the '
                    'Keystone v3 URL (e.g. https://keystone:5000/v3).'),
    cfg.StrOpt('auth_version',
               default='1',
               choices=[('1', 'Swift v1 auth (tempauth, swauth).'),
                        ('3', 'Keystone v3.')],
               help='Auth protocol of auth_url.'),
    cfg.StrOpt('user',
               help='User name for single_user mode (v1: account:user).'),
    cfg.StrOpt('key',
               secret=True,
               help='Key or password of user.'),
    cfg.StrOpt('project_name',
               help='Keystone v3 project to scope to.'),
    cfg.StrOpt('project_domain_name',
               help='Keystone v3 domain of project_name (e.g. Default).'),
    cfg.StrOpt('user_domain_name',
               help='Keystone v3 domain of user (e.g. Default).'),
    cfg.StrOpt('region_name',
               help='Region of the object-store endpoint to use, when the '
                    'service catalog has several.'),
    cfg.StrOpt('interface',
               default='public',
               choices=['public', 'internal', 'admin'],
               help='Which object-store endpoint of the Keystone catalog to '
                    'use (auth_version = 3).'),
    cfg.StrOpt('url',
               help='per_user mode: Swift URL to which the project id of '
                    'the request is appended (e.g. '
                    'http://swift:8080/v1/AUTH_). Unset means the endpoint '
                    'from the request\'s service catalog (catalog_info).'),
    cfg.StrOpt('catalog_info',
               default='object-store:swift:publicURL',
               help='per_user mode without url: the catalog entry to use, '
                    'as <service_type>:<service_name>:<endpoint_type>.'),
    cfg.StrOpt('container',
               default='volumebackups',
               help='Container for backups that do not name one.'),
    cfg.BoolOpt('create_container',
                default=True,
                help='Create a missing container. When false a missing '
                     'container is an error (for accounts where containers '
                     'are created by an administrator).'),
    cfg.StrOpt('storage_policy',
               help='Storage policy of the containers this driver creates. '
                    'An existing container keeps its own policy.'),
    cfg.IntOpt('object_size',
               default=52428800,
               min=1,
               help='Largest data object in bytes; a multiple of '
                    '[chunkbackup] sha_block_size. Memory use grows with it '
                    '(see objects_in_flight).'),
    cfg.StrOpt('availability_zone',
               default='nova',
               help='Availability zone written into object names '
                    '(az_<zone>), as Cinder does with '
                    'storage_availability_zone.'),
    cfg.StrOpt('ca_certificate_file',
               help='CA bundle to verify Swift and Keystone TLS '
                    'certificates. Unset means the system bundle.'),
    cfg.BoolOpt('insecure',
                default=False,
                help='Do not verify TLS certificates (tests only).'),
    cfg.FloatOpt('timeout',
                 default=60.0,
                 min=0.1,
                 help='Seconds to wait to connect to Swift or Keystone and '
                      'for each read of an answer.'),
]

CONF.register_opts(OPTS, group=GROUP)


def _md5_hex(data) -> str:
    # Not for security: Swift's ETag (FIPS hosts allow it).
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _status(exc: BaseException) -> Optional[int]:
    return getattr(exc, 'http_status', None)


class SwiftBackupDriver(chunked.ChunkedBackupDriver):
    """Cinder-compatible Swift driver."""

    # Entries per listing request; None is the server's limit (10000 by
    # default). Tests set it low to exercise paging.
    listing_page_size: Optional[int] = None

    def __init__(self, context, db=None):
        conf = CONF[GROUP]
        super().__init__(context, object_size=conf.object_size,
                         object_size_option='[%s] object_size' % GROUP,
                         db=db)
        self.conf = conf
        # swiftclient connections are not thread-safe: one per thread.
        # threading.local, not a native-thread local: under eventlet the
        # I/O workers are green threads sharing one native thread, and each
        # needs its own connection.
        self._local = threading.local()
        self._lock = threading.Lock()
        self._keystone = None
        self._storage_url = None

    # Connections --------------------------------------------------------

    def _connection(self) -> swift_client.Connection:
        conn = getattr(self._local, 'conn', None)
        if conn is None:
            conn = self._local.conn = self._new_connection()
        return conn

    def _new_connection(self) -> swift_client.Connection:
        conf = self.conf
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
        self._check_credentials()
        if conf.auth_version == '1':
            return swift_client.Connection(
                authurl=conf.auth_url, user=conf.user, key=conf.key,
                auth_version='1', **common)
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

    def _keystone_session(self):
        with self._lock:
            if self._keystone is None:
                conf = self.conf
                auth = ks_v3.Password(
                    auth_url=conf.auth_url, username=conf.user,
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

    def _per_user_url(self) -> str:
        if self._storage_url:
            return self._storage_url
        conf = self.conf
        if conf.url:
            project = getattr(self.context, 'project_id', None)
            if not project:
                raise exception.InvalidConfiguration(
                    reason='[%s] auth_mode = per_user needs a request '
                           'context with a project id' % GROUP)
            url = '%s%s' % (conf.url, project)
        else:
            url = self._catalog_url()
        self._storage_url = url
        return url

    def _catalog_url(self) -> str:
        conf = self.conf
        try:
            service_type, _name, endpoint_type = conf.catalog_info.split(':')
        except ValueError:
            raise exception.InvalidConfiguration(
                reason='[%s] catalog_info = %r must have the form '
                       '<service_type>:<service_name>:<endpoint_type>'
                       % (GROUP, conf.catalog_info))
        # Matched by type only, as Cinder does: service names vary.
        for entry in getattr(self.context, 'service_catalog', None) or []:
            if entry.get('type') != service_type:
                continue
            for endpoint in entry.get('endpoints') or []:
                if conf.region_name and conf.region_name not in (
                        endpoint.get('region'), endpoint.get('region_id')):
                    continue
                if endpoint.get(endpoint_type):
                    return endpoint[endpoint_type]
        raise exception.InvalidConfiguration(
            reason='the service catalog of the request has no %s endpoint '
                   'of type %s%s; set [%s] url or catalog_info' % (
                       endpoint_type, service_type,
                       ' in region %s' % conf.region_name
                       if conf.region_name else '', GROUP))

    def _check_credentials(self) -> None:
        conf = self.conf
        wanted = ['auth_url', 'user', 'key']
        if conf.auth_version == '3':
            wanted += ['project_name', 'project_domain_name',
                       'user_domain_name']
        missing = [name for name in wanted if not conf[name]]
        if missing:
            raise exception.InvalidConfiguration(
                reason='[%s] auth_mode = single_user with auth_version = %s '
                       'needs %s' % (GROUP, conf.auth_version,
                                     ', '.join(missing)))

    # Errors -------------------------------------------------------------

    def is_transient_error(self, exc: BaseException) -> bool:
        if isinstance(exc, (requests.exceptions.SSLError, ks_exc.SSLError)):
            return False  # a certificate problem does not go away
        if isinstance(exc, (swift_exc.ClientException, ks_exc.HttpError)):
            status = _status(exc)
            return (status is None or status >= 500 or
                    status in TRANSIENT_STATUSES)
        if isinstance(exc, (requests.exceptions.ConnectionError,
                            requests.exceptions.Timeout,
                            requests.exceptions.ChunkedEncodingError,
                            http.client.HTTPException,
                            ks_exc.ConnectionError)):
            return True
        return super().is_transient_error(exc)

    @contextlib.contextmanager
    def _swift(self, operation: str, container: str,
               name: Optional[str] = None):
        """This thread's connection; failures become chunkbackup errors."""
        target = container if name is None else '%s/%s' % (container, name)
        try:
            yield self._connection()
        except exception.ChunkBackupError:
            raise
        except (swift_exc.ClientException, ks_exc.ClientException,
                requests.exceptions.RequestException,
                http.client.HTTPException, OSError) as e:
            conn = getattr(self._local, 'conn', None)
            if conn is not None and not isinstance(
                    e, (swift_exc.ClientException, ks_exc.HttpError)):
                # The next attempt opens a new HTTP connection (the token
                # stays valid).
                conn.close()
            raise self._translate(e, operation, target,
                                  name is None) from e

    def _translate(self, e, operation, target, is_container):
        status = _status(e)
        kwargs = dict(operation=operation, target=target)
        if status in (401, 403):
            if self.conf.auth_mode == 'per_user':
                advice = ('the token of the request was refused (expired, '
                          'or no access to this account)')
            else:
                advice = ('check [%s] user/key (and auth_url, auth_version, '
                          'project options)' % GROUP)
            return exception.StorageAuthError(
                reason='Swift answered %s: %s' % (status, advice), **kwargs)
        if status == 404 and operation == 'login':
            return exception.StorageError(
                reason='%s answered 404; check [%s] auth_url and '
                       'auth_version' % (target, GROUP), **kwargs)
        if status == 404:
            if is_container:
                return exception.StorageContainerNotFound(
                    reason='no Swift container %s in this account' % target,
                    **kwargs)
            return exception.StorageObjectNotFound(
                reason='Swift answered 404', **kwargs)
        if isinstance(e, (requests.exceptions.SSLError, ks_exc.SSLError)):
            return exception.StorageError(
                reason='TLS failed (%s); check [%s] ca_certificate_file or '
                       'insecure' % (e, GROUP), **kwargs)
        transient = self.is_transient_error(e)
        if isinstance(e, swift_exc.ClientException):
            reason = str(e)
        elif isinstance(e, ks_exc.ConnectionError):
            reason = 'cannot reach Keystone at [%s] auth_url = %s (%s)' % (
                GROUP, self.conf.auth_url, e)
        elif transient:
            reason = 'cannot reach Swift (%s: %s)' % (type(e).__name__, e)
        else:
            reason = '%s: %s' % (type(e).__name__, e)
        cls = (exception.TransientStorageError if transient
               else exception.StorageError)
        return cls(reason=reason, **kwargs)

    # Hooks --------------------------------------------------------------

    def check_for_setup_error(self) -> None:
        if self.conf.auth_mode == 'per_user':
            # There is no user token before a request arrives; only the
            # endpoint configuration can be checked.
            if not self.conf.url:
                LOG.info('[%s] per_user mode takes the Swift endpoint from '
                         'each request\'s service catalog (%s).', GROUP,
                         self.conf.catalog_info)
            return
        self._check_credentials()
        target = self.conf.auth_url
        with self._swift('login', target) as conn:
            conn.head_account()
        LOG.info('Swift account %s reachable.', conn.url)

    def update_container_name(self, backup, container):
        container = container or self.conf.container
        if not container or '/' in container or len(container) > 256:
            raise exception.InvalidName(
                kind='container', name=container,
                reason='Swift container names are 1-256 bytes without "/"')
        return container

    def put_container(self, container: str) -> None:
        with self._swift('head_container', container) as conn:
            try:
                conn.head_container(container)
                return
            except swift_exc.ClientException as e:
                if e.http_status != 404:
                    raise
        if not self.conf.create_container:
            raise exception.StorageContainerNotFound(
                operation='put_container', target=container,
                reason='[%s] create_container is false: create container '
                       '%s first or allow the driver to create it'
                       % (GROUP, container))
        policy = self.conf.storage_policy
        headers = {'X-Storage-Policy': policy} if policy else None
        with self._swift('put_container', container) as conn:
            conn.put_container(container, headers=headers)
        LOG.info('Created Swift container %(c)s%(p)s.',
                 {'c': container,
                  'p': ' with storage policy %s' % policy if policy else ''})

    def get_container_entries(self, container: str,
                              prefix: str) -> List[str]:
        with self._swift('list', container) as conn:
            # full_listing: swiftclient follows the markers page by page.
            _headers, objects = conn.get_container(
                container, prefix=prefix, limit=self.listing_page_size,
                full_listing=True)
        return [obj['name'] for obj in objects]

    def _put_object(self, container: str, name: str, body) -> None:
        md5 = _md5_hex(body)
        with self._swift('put', container, name) as conn:
            # Swift checks the body against the ETag and refuses (422) a
            # damaged one, so no partial or altered object is ever stored.
            etag = conn.put_object(container, name, body,
                                   content_length=len(body), etag=md5)
        if etag and etag != md5:
            raise exception.StorageError(
                operation='put', target='%s/%s' % (container, name),
                reason='Swift stored MD5 %s but the body has %s'
                       % (etag, md5))

    def _get_object(self, container: str, name: str) -> bytes:
        with self._swift('get', container, name) as conn:
            _headers, body = conn.get_object(container, name)
        return body

    def get_object_writer(self, container, object_name, extra_metadata=None):
        return objectio.BufferedWriter(
            lambda body: self._put_object(container, object_name, body))

    def get_object_reader(self, container, object_name, extra_metadata=None):
        return objectio.Reader(
            lambda: self._get_object(container, object_name))

    def delete_object(self, container: str, object_name: str) -> None:
        with self._swift('delete', container, object_name) as conn:
            conn.delete_object(container, object_name)

    def _generate_object_name_prefix(self, backup) -> str:
        prefix = fmt.object_store_prefix(
            backup.volume_id, backup.id, self.conf.availability_zone,
            time.gmtime())
        LOG.debug('Object prefix of backup %(id)s: %(p)s',
                  {'id': backup.id, 'p': prefix})
        return prefix

    def get_extra_metadata(self, backup, volume):
        return None
