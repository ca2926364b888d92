"""A complete chunkbackup driver that keeps objects in memory.

It is the smallest driver that passes the conformance suite, written only
against the public hooks of ChunkedBackupDriver: start a new driver from it.
See doc/writing-a-driver.md.
"""
import threading
import time

from oslo_config import cfg

from chunkbackup import chunked
from chunkbackup.drivers import options
from chunkbackup import storage
from chunkbackup.storage import errors

CONF = cfg.CONF

# Options: our own group, each with help (oslo-config-generator lists them).
GROUP = 'backup_memory'
OPTS = [
    options.object_size_opt(4 * options.MiB),
    cfg.StrOpt('container', default='volumebackups',
               help='Container used when a backup names none.'),
]
CONF.register_opts(OPTS, group=GROUP)

# One process-wide store: {container: {name: bytes}}.
_STORE = {}
_LOCK = threading.Lock()


class _Writer:
    """Collects the body; publishes it only on a clean exit."""

    def __init__(self, container, name):
        self.container, self.name, self.parts = container, name, []

    def __enter__(self):
        return self

    def write(self, data):
        self.parts.append(bytes(data))

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:  # a failed write leaves no object behind
            with _LOCK:
                _STORE[self.container][self.name] = b''.join(self.parts)


class _Reader:
    # read() without a size: the seam then streams the body as one chunk.
    def __init__(self, body):
        self.body = body

    def __enter__(self):
        return self

    def read(self):
        return self.body

    def __exit__(self, exc_type, exc, tb):
        return False


class MemoryBackupDriver(chunked.ChunkedBackupDriver):

    def __init__(self, context, db=None):
        super().__init__(context, object_size=CONF[GROUP].object_size,
                         object_size_option='[%s] object_size' % GROUP,
                         db=db)

    def put_container(self, container):
        with _LOCK:
            _STORE.setdefault(container, {})

    def get_container_entries(self, container, prefix):
        with _LOCK:
            names = list(_STORE.get(container, {}))
        return sorted(n for n in names if n.startswith(prefix))

    # The hooks raise what is natural (KeyError); classify_error says what
    # it means, and the storage seam builds chunkbackup's exception.

    def get_object_writer(self, container, object_name, extra_metadata=None):
        if container not in _STORE:
            raise KeyError(container)
        return _Writer(container, object_name)

    def get_object_reader(self, container, object_name, extra_metadata=None):
        return _Reader(_STORE[container][object_name])

    def delete_object(self, container, object_name):
        with _LOCK:
            del _STORE[container][object_name]

    def classify_error(self, exc):
        if isinstance(exc, KeyError):
            return errors.NOT_FOUND, 'no such object or container %s' % exc
        return storage.classify_default(exc)

    def _generate_object_name_prefix(self, backup):
        # Cinder's object-store naming (doc/format.md).
        return 'volume_%s/%s/az_%s_backup_%s' % (
            backup.volume_id, time.strftime('%Y%m%d%H%M%S', time.gmtime()),
            'nova', backup.id)

    def update_container_name(self, backup, container):
        return container or CONF[GROUP].container

    def get_extra_metadata(self, backup, volume):
        return None
