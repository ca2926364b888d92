"""Backups in a local (or mounted) directory, in Cinder's posix layout.

Each backup's container is a directory below ``[backup_posix] path``
(``<id[0:2]>/<id[2:4]>/<id>`` unless the backup names one) and each object a
file in it. An object is written under a temporary name that does not start
with the backup's prefix, fsync'd, and renamed into place, so a listing
never shows a partial object. Modes follow Cinder's: 0770 directories,
0660 files. No path resolves outside the backup root.
"""
import dataclasses
import errno
import os
import tempfile
from typing import Any, IO, Iterator, List, Optional, Tuple

from oslo_config import cfg
from oslo_log import log as logging

from chunkbackup import backupformat as fmt
from chunkbackup import chunked
from chunkbackup.drivers import options
from chunkbackup import exception
from chunkbackup import names
from chunkbackup.records import BackupLike

CONF = cfg.CONF
LOG = logging.getLogger(__name__)

GROUP = 'backup_posix'
DIR_MODE = 0o770
FILE_MODE = 0o660
TMP_PREFIX = '.tmp-'

OPTS = [
    cfg.StrOpt('path',
               help='Directory that holds the backups (the backup root). '
                    'Unset means $XDG_DATA_HOME/chunkbackup/backups, i.e. '
                    '~/.local/share/chunkbackup/backups.'),
    options.object_size_opt(32 * options.MiB),
    cfg.BoolOpt('create_container',
                default=True,
                help='Create a missing container directory (below path). '
                     'When false a missing one is an error, for trees whose '
                     'directories an administrator makes.'),
]

CONF.register_opts(OPTS, group=GROUP)


@dataclasses.dataclass(frozen=True)
class PosixOptions(options.DriverOptions):
    GROUP = GROUP

    path: Optional[str]
    create_container: bool


def default_backup_root() -> str:
    data_home = os.environ.get('XDG_DATA_HOME') or os.path.join(
        os.path.expanduser('~'), '.local', 'share')
    return os.path.join(data_home, 'chunkbackup', 'backups')


class _ObjectWriter:
    """Writes to a temporary file; fsync and rename on a clean exit.

    Each ``write`` goes to the file at once: a streamed object is never
    held in memory, and the seam needs no ``put_object_stream`` here.
    """

    def __init__(self, path: str):
        self.path = path
        directory, name = os.path.split(path)
        self.fd, self.tmp = tempfile.mkstemp(
            prefix=TMP_PREFIX + name[:64] + '.', dir=directory)

    def __enter__(self):
        return self

    def write(self, data) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                os.fchmod(self.fd, FILE_MODE)
                os.fsync(self.fd)
        finally:
            os.close(self.fd)
            if exc_type is None:
                os.replace(self.tmp, self.path)
            else:
                os.unlink(self.tmp)


def _open_object(path: str) -> int:
    """A descriptor of the object's file, never through a symbolic link.

    An object replaced by a symbolic link could point anywhere: never
    follow one (the container was resolved below the root).
    """
    try:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise exception.StorageError(
                operation='get', target=path,
                reason='it is a symbolic link; objects are read only '
                       'from files below the backup root (remove the '
                       'link and restore the object)')
        raise


class _ObjectReader:
    """Reads the object's file: whole, or ``size`` bytes at a time."""

    def __init__(self, path: str):
        self.path = path
        self._file: Optional[IO[bytes]] = None

    def __enter__(self):
        self._file = os.fdopen(_open_object(self.path), 'rb')
        return self

    def read(self, size: int = -1) -> bytes:
        assert self._file is not None  # opened by __enter__
        return self._file.read(size)

    def __exit__(self, exc_type, exc, tb):
        self._file.close()
        return False


class PosixBackupDriver(chunked.ChunkedBackupDriver):
    """Cinder-compatible posix driver: a directory tree of object files."""

    def __init__(self, context: Any, db: Any = None,
                 backup_path: Optional[str] = None) -> None:
        self.options = PosixOptions.from_conf(CONF[GROUP])
        super().__init__(context, object_size=self.options.object_size,
                         object_size_option=self.options.object_size_option,
                         db=db)
        path = backup_path or self.options.path or default_backup_root()
        self.backup_root = os.path.realpath(os.path.expanduser(path))

    # Paths --------------------------------------------------------------

    def _container_path(self, container: str) -> str:
        names.check_relative('container', container)
        path = os.path.realpath(os.path.join(self.backup_root, container))
        if os.path.commonpath([path, self.backup_root]) != self.backup_root \
                or path == self.backup_root:
            raise exception.InvalidName(
                kind='container', name=container,
                reason='it resolves outside the backup root %s'
                       % self.backup_root)
        return path

    def _object_path(self, container: str, object_name: str) -> str:
        names.check_relative('object name', object_name)
        if '/' in object_name or '\\' in object_name:
            raise exception.InvalidName(kind='object name', name=object_name,
                                        reason='it contains a slash')
        return os.path.join(self._container_path(container), object_name)

    # Hooks --------------------------------------------------------------

    def check_for_setup_error(self) -> None:
        try:
            os.makedirs(self.backup_root, mode=DIR_MODE, exist_ok=True)
        except OSError as e:
            raise exception.InvalidConfiguration(
                reason='[backup_posix] path %s cannot be created: %s'
                       % (self.backup_root, e.strerror))
        if not os.access(self.backup_root, os.W_OK | os.X_OK):
            raise exception.InvalidConfiguration(
                reason='[backup_posix] path %s is not writable by this user'
                       % self.backup_root)

    def update_container_name(self, backup: BackupLike,
                              container: Optional[str]) -> Optional[str]:
        if container:
            self._container_path(container)
            return container
        return self.default_container(backup)

    def default_container(self, backup: BackupLike) -> str:
        backup_id = chunked.check_safe_id('backup id', backup.id)
        return os.path.join(backup_id[0:2], backup_id[2:4], backup_id)

    def put_container(self, container: str) -> None:
        path = self._container_path(container)
        if not self.options.create_container and not os.path.isdir(path):
            raise exception.StorageContainerNotFound(
                operation='put_container', target=container,
                reason='directory %s does not exist and [%s] '
                       'create_container is false: create it first or set '
                       'create_container = true' % (path, GROUP))
        # Create level by level so every new directory gets DIR_MODE
        # whatever the umask.
        missing = []
        while not os.path.isdir(path):
            missing.append(path)
            path = os.path.dirname(path)
        for directory in reversed(missing):
            try:
                os.mkdir(directory, DIR_MODE)
            except FileExistsError:
                continue
            os.chmod(directory, DIR_MODE)

    def get_container_entries(self, container: str,
                              prefix: str) -> List[str]:
        try:
            names = os.listdir(self._container_path(container))
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n.startswith(prefix))

    def get_object_writer(self, container: str, object_name: str,
                          extra_metadata: Optional[dict] = None
                          ) -> _ObjectWriter:
        return _ObjectWriter(self._object_path(container, object_name))

    def get_object_reader(self, container: str, object_name: str,
                          extra_metadata: Optional[dict] = None
                          ) -> _ObjectReader:
        return _ObjectReader(self._object_path(container, object_name))

    def get_object_range(self, container: str, object_name: str,
                         offset: int, length: int,
                         extra_metadata: Optional[dict] = None) -> bytes:
        fd = _open_object(self._object_path(container, object_name))
        try:
            pieces = []
            while length > 0:
                piece = os.pread(fd, length, offset)
                if not piece:
                    break  # the end of the file
                pieces.append(piece)
                offset += len(piece)
                length -= len(piece)
            return b''.join(pieces)
        finally:
            os.close(fd)

    def get_object_size(self, container: str, object_name: str,
                        extra_metadata: Optional[dict] = None) -> int:
        fd = _open_object(self._object_path(container, object_name))
        try:
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def delete_object(self, container: str, object_name: str) -> None:
        os.unlink(self._object_path(container, object_name))

    def copy_object(self, container: str, object_name: str,
                    dest_container: str, dest_name: str) -> bool:
        """A hard link (objects never change), else ``copy_file_range``.

        Made under a temporary name and renamed into place, as writes are.
        """
        source = self._object_path(container, object_name)
        target = self._object_path(dest_container, dest_name)
        directory = os.path.dirname(target)
        tmp = os.path.join(directory, '%s%s.%s' % (
            TMP_PREFIX, dest_name[:64], os.urandom(4).hex()))
        try:
            os.link(source, tmp, follow_symlinks=False)
        except FileNotFoundError:
            raise
        except OSError as e:
            # Another file system, or one without hard links: copy the
            # bytes in the kernel.
            LOG.debug('Cannot link %(s)s (%(err)s); copying it.',
                      {'s': source, 'err': e})
            self._copy_file(source, tmp)
        try:
            os.replace(tmp, target)
        except BaseException:
            os.unlink(tmp)
            raise
        return True

    @staticmethod
    def _copy_file(source: str, tmp: str) -> None:
        src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                          FILE_MODE)
            try:
                size = os.fstat(src).st_size
                copied = 0
                while copied < size:
                    try:
                        n = os.copy_file_range(src, dst, size - copied)
                    except OSError:
                        n = os.sendfile(dst, src, copied, size - copied)
                    if n == 0:
                        break
                    copied += n
                os.fchmod(dst, FILE_MODE)
                os.fsync(dst)
            except BaseException:
                os.close(dst)
                os.unlink(tmp)
                raise
            os.close(dst)
        finally:
            os.close(src)

    def remove_empty_container(self, container: str) -> None:
        # A deleted or failed backup leaves no empty directories behind:
        # its own and the empty levels above it, up to the root. A tree
        # an administrator made (create_container = false) stays.
        if not getattr(self.options, 'create_container', True):
            return
        path = self._container_path(container)
        while path != self.backup_root and \
                path.startswith(self.backup_root + os.sep):
            try:
                os.rmdir(path)
            except FileNotFoundError:
                pass
            except OSError:
                return  # not empty (or not ours to remove): stop here
            path = os.path.dirname(path)

    def flush_container(self, container: str) -> None:
        # The renames of this backup's objects become durable here, once,
        # instead of once per object.
        fd = os.open(self._container_path(container), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def find_metadata_objects(self, container: Optional[str] = None
                              ) -> Iterator[Tuple[str, str]]:
        top = (self._container_path(container) if container
               else self.backup_root)
        for directory, subdirs, files in os.walk(top):
            subdirs.sort()
            for name in sorted(files):
                if name.endswith('_metadata') and \
                        not name.startswith(TMP_PREFIX):
                    yield os.path.relpath(directory, self.backup_root), name

    def _generate_object_name_prefix(self, backup: BackupLike) -> str:
        return fmt.posix_prefix(backup.volume_id, backup.id)

    def get_extra_metadata(self, backup: BackupLike,
                           volume: Any) -> Optional[dict]:
        return None
