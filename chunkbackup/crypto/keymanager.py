"""Master keys in a key manager, through castellan (Barbican in production).

Inside cinder-backup the driver's request context (Cinder's
RequestContext, whose ``get_auth_plugin()`` carries the user's token and
service catalog) reaches the key manager, as Cinder's encrypted volumes
do. Standalone there is no request: castellan's ``[key_manager]
auth_type`` credentials (``keystone_password`` ...) are used when set;
unset, requests go without a token to ``[barbican] barbican_endpoint``
with ``X-Project-Id`` = ``[key_manager] project_id``, which is what
Barbican's default (unauthenticated-context) paste pipeline reads.

castellan is an optional extra (``pip install "chunkbackup[keymanager]"``):
it is imported when a key is first asked for, and its absence is one line.
Key material is never logged.
"""
from typing import Any, Dict, Optional

from oslo_config import cfg
from oslo_log import log as logging

from chunkbackup.crypto import keys

LOG = logging.getLogger(__name__)
CONF = cfg.CONF

KEY_NAME = 'chunkbackup master key'
KEY_BITS = 256
# Standalone, unauthenticated Barbican: the project the keys belong to
# when [key_manager] project_id is unset.
DEFAULT_PROJECT = 'chunkbackup'
_MISSING = ('the key manager needs castellan, which is not installed: '
            'pip install "chunkbackup[keymanager]"')


def _castellan() -> Any:
    try:
        from castellan.common import exception as castellan_exception
        from castellan import key_manager
        from castellan import options
    except ImportError:
        raise keys.KeyUnavailable(reason=_MISSING)
    return key_manager, options, castellan_exception


class _ProjectHeaderAuth:
    """A keystoneauth plugin sending only X-Project-Id (no token).

    For a Barbican without keystone (its unauthenticated-context pipeline):
    castellan's Barbican backend needs an auth plugin from the context,
    and the endpoint comes from [barbican] barbican_endpoint.
    """

    def __new__(cls, project_id: str) -> Any:
        from keystoneauth1 import plugin

        class ProjectHeader(plugin.BaseAuthPlugin):
            def get_headers(self, session: Any, **kwargs: Any) -> Dict:
                return {'X-Project-Id': project_id}

            def get_endpoint(self, session: Any, **kwargs: Any) -> Any:
                return CONF.barbican.barbican_endpoint

        return ProjectHeader()


def _standalone_context() -> Any:
    """The credentials of a process that has no request (see module doc)."""
    from castellan.common import utils as castellan_utils
    from oslo_context import context as oslo_context

    CONF.register_opts(castellan_utils.credential_opts,
                       group=castellan_utils.OPT_GROUP)
    if CONF.key_manager.auth_type:
        return castellan_utils.credential_factory(CONF)
    project = CONF.key_manager.project_id or DEFAULT_PROJECT

    class _Context(oslo_context.RequestContext):
        def get_auth_plugin(self) -> Any:
            return _ProjectHeaderAuth(project)

    return _Context(project_id=project)


class CastellanKeys(keys.KeySource):
    """Master keys kept in castellan's key manager ([key_manager] backend)."""

    def __init__(self, context: Any = None,
                 conf: Optional[cfg.ConfigOpts] = None) -> None:
        self._conf = conf or CONF
        key_manager, options, self._exc = _castellan()
        # castellan's defaults: backend barbican, unless configured.
        options.set_defaults(self._conf)
        self._api = key_manager.API(self._conf)
        self._context = context if context is not None else \
            _standalone_context()
        self._cache: Dict[str, keys.MasterKey] = {}
        self.description = 'the key manager (%s)' % self._where()

    def _where(self) -> str:
        backend = self._conf.key_manager.backend or 'barbican'
        if backend == 'barbican':
            return self._conf.barbican.barbican_endpoint or \
                'barbican from the service catalog'
        return backend

    def current(self) -> keys.MasterKey:
        key_id = getattr(self._conf.chunkbackup, 'master_key_id', None)
        if not key_id:
            raise keys.KeyUnavailable(
                reason='no master key is configured: set [chunkbackup] '
                       'master_key_id to a key in the key manager')
        return self.get(key_id)

    def get(self, key_id: str) -> keys.MasterKey:
        cached = self._cache.get(key_id)
        if cached is not None:
            return cached
        try:
            key = self._api.get(self._context, key_id)
        except Exception as e:
            raise self._error(e, key_id)
        algorithm = str(getattr(key, 'algorithm', '') or '').upper()
        bits = getattr(key, 'bit_length', None)
        material = key.get_encoded() if hasattr(key, 'get_encoded') else None
        if (algorithm != 'AES' or not material
                or len(material) != keys.DATA_KEY_SIZE
                or bits not in (None, KEY_BITS)):
            raise keys.KeyUnavailable(
                reason='key %s in the key manager at %s is not a 256-bit '
                       'symmetric (AES) key (it is %s, %s bits): give the id '
                       'of an AES-256 key, or make one with chunkbackup '
                       'key-rotate --create-master-key'
                       % (key_id, self._where(),
                          algorithm or type(key).__name__, bits))
        master = keys.MasterKey(key_id=key_id, material=material)
        self._cache[key_id] = master
        return master

    def create(self) -> keys.MasterKey:
        try:
            key_id = self._api.create_key(self._context, algorithm='AES',
                                          length=KEY_BITS, name=KEY_NAME)
        except Exception as e:
            raise self._error(e, None)
        LOG.info('Created master key %s in %s', key_id, self.description)
        return self.get(key_id)

    def _error(self, error: Exception, key_id: Optional[str]) -> Exception:
        """One line for what castellan raised (never the key)."""
        LOG.debug('Key manager request failed', exc_info=True)
        where = self._where()
        exc = self._exc
        if isinstance(error, exc.ManagedObjectNotFoundError):
            return keys.KeyUnavailable(
                reason='master key %s is not in the key manager at %s; check '
                       '[chunkbackup] master_key_id and that the key manager '
                       'credentials are those of the project that owns the '
                       'key' % (key_id, where))
        text = ' '.join(str(error).split())
        if _caused_by(error, 'ConnectFailure', 'ConnectTimeout',
                      'ConnectionError', 'DiscoveryFailure'):
            return keys.KeyUnavailable(
                reason='cannot reach the key manager at %s (%s): check '
                       '[barbican] barbican_endpoint (or the catalog\'s '
                       'key-manager endpoint) and that Barbican is running'
                       % (where, _short(error)))
        if isinstance(error, (exc.Forbidden,
                              getattr(exc, 'InsufficientCredentialDataError',
                                      exc.Forbidden),
                              getattr(exc, 'AuthTypeInvalidError',
                                      exc.Forbidden))) or \
                _caused_by(error, 'Unauthorized', 'Forbidden') or \
                ' 401' in text or ' 403' in text or 'Unauthorized' in text:
            return keys.KeyUnavailable(
                reason='the key manager at %s refused the credentials (%s): '
                       'check [key_manager] auth_type and its credentials '
                       '(inside cinder-backup, the user\'s token)'
                       % (where, _short(error)))
        if key_id is not None and (_caused_by(error, 'NotFound')
                                   or ' 404' in text):
            return keys.KeyUnavailable(
                reason='master key %s is not in the key manager at %s; check '
                       '[chunkbackup] master_key_id' % (key_id, where))
        return keys.KeyUnavailable(
            reason='the key manager at %s failed (%s): check its logs and '
                   '[key_manager]/[barbican]' % (where, _short(error)))


def _caused_by(error: BaseException, *names: str) -> bool:
    """Whether error or what it was raised from is of one of these classes.

    castellan wraps keystoneauth and barbicanclient errors in
    KeyManagerError, raised inside their except blocks.
    """
    seen = 0
    current: Optional[BaseException] = error
    while current is not None and seen < 10:
        for klass in type(current).__mro__:
            if klass.__name__ in names:
                return True
        reason = getattr(current, 'reason', None)
        if isinstance(reason, BaseException):
            current = reason
        else:
            current = current.__cause__ or current.__context__
        seen += 1
    return False


def _short(error: BaseException) -> str:
    text = ' '.join(str(error).split())
    return text[:200] or type(error).__name__
