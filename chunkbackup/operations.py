"""Standalone operations on the catalog and a driver, shared by the
``chunkbackup`` CLI and the ``chunkbackup-backup`` service.

Each operation keeps the catalog honest: a backup is ``available`` only
once its ``_metadata`` is stored, an interrupted one ends ``error`` (or
stays ``creating`` until the cleanup finds its process gone) and is never
chosen as a parent.
"""
import base64
import datetime
import json
import math
import os
import stat
import time
import uuid
from typing import (Any, Callable, List, Optional, Sequence, Tuple,
                    TYPE_CHECKING)

from oslo_config import cfg
from oslo_log import log as logging
from oslo_utils import importutils
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy import orm
from stevedore import driver as stevedore_driver
from stevedore import exception as stevedore_exception

from chunkbackup import backupformat as fmt
from chunkbackup.catalog import api
from chunkbackup.catalog import models
from chunkbackup.catalog import states
from chunkbackup.engine import backup as engine_backup
from chunkbackup.engine import restore as restore_sinks
from chunkbackup.engine import sources
from chunkbackup import exception
from chunkbackup import extents
from chunkbackup import objectlock
from chunkbackup import progress

if TYPE_CHECKING:
    from chunkbackup import chunked

CONF = cfg.CONF
LOG = logging.getLogger(__name__)

DRIVER_NAMESPACE = 'chunkbackup.drivers'
# Cinder's backup_service names (and ours) for the stores we can read.
_SERVICE_ALIASES = {
    'cinder.backup.drivers.posix.PosixBackupDriver': 'posix',
    'cinder.backup.drivers.posix': 'posix',
    'cinder.backup.drivers.nfs.NFSBackupDriver': 'posix',
    'cinder.backup.drivers.swift.SwiftBackupDriver': 'swift',
    'cinder.backup.drivers.swift': 'swift',
    'cinder.backup.drivers.gcs.GoogleBackupDriver': 'google',
    'cinder.backup.drivers.gcs': 'google',
    'cinder.backup.drivers.s3.S3BackupDriver': 's3',
    'cinder.backup.drivers.s3': 's3',
    'chunkbackup.drivers.posix.PosixBackupDriver': 'posix',
    'chunkbackup.drivers.swift.SwiftBackupDriver': 'swift',
    'chunkbackup.drivers.google.GoogleBackupDriver': 'google',
    'chunkbackup.drivers.gcs.GoogleBackupDriver': 'google',
    'chunkbackup.drivers.s3.S3BackupDriver': 's3',
}


# Called with every driver load_driver makes (the service's metrics).
DRIVER_OBSERVERS: List[Callable] = []


class OperationError(exception.ChunkBackupError):
    msg_fmt = "%(reason)s"


def _driver_class(name: str) -> type:
    """The driver class for an entry-point name or a class path."""
    try:
        if '.' in name:
            return importutils.import_class(name)
        return stevedore_driver.DriverManager(
            DRIVER_NAMESPACE, name, invoke_on_load=False).driver
    except (ImportError, ValueError, stevedore_exception.NoMatches,
            RuntimeError) as e:
        raise exception.InvalidConfiguration(
            reason='[chunkbackup] driver = %s cannot be loaded (%s); use '
                   'posix, swift, google, s3 or a driver class path'
                   % (name, e))


def load_driver(name: Optional[str] = None
                ) -> 'chunked.ChunkedBackupDriver':
    """A driver by entry-point name (posix, swift, google, s3) or class."""
    driver = _driver_class(name or CONF.chunkbackup.driver)(None)
    for observe in DRIVER_OBSERVERS:
        observe(driver)
    return driver


def driver_name(name: Optional[str] = None) -> str:
    name = name or CONF.chunkbackup.driver
    return _SERVICE_ALIASES.get(name, name)


def volume_id_for(path: str) -> str:
    """A stable id for a volume path, so incrementals find their parent."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL,
                          'file://' + os.path.realpath(path)))


def _open_volume(path: str):
    try:
        # Checked before opening: open() of a FIFO blocks until a writer
        # comes.
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(path)
        sources.check_volume_mode(mode, 'volume %s' % path)
        return open(path, 'rb')
    except FileNotFoundError:
        raise OperationError(reason='volume %s does not exist' % path)
    except IsADirectoryError:
        raise OperationError(reason='volume %s is a directory; give a file '
                                    'or a block device' % path)
    except PermissionError:
        raise OperationError(reason='volume %s is not readable by this '
                                    'user' % path)


def _open_source(volume: str, dirty_bitmap: Optional[str]):
    """(name, source) of a volume: a file, block device or NBD export."""
    skip_holes = CONF.chunkbackup.skip_holes
    if sources.is_nbd_url(volume):
        return volume, sources.NbdSource(volume, skip_holes, dirty_bitmap)
    if dirty_bitmap:
        raise OperationError(
            reason='--dirty-bitmap needs an NBD export as the volume '
                   '(nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?'
                   'socket=PATH); for a file give --changed-extents')
    path = os.path.abspath(volume)
    volume_file = _open_volume(path)
    try:
        return path, sources.open_source(volume_file, skip_holes,
                                         owns_file=True)
    except BaseException:
        volume_file.close()
        raise


def _changed_extents(source, changed_extents: Optional[str],
                     dirty_bitmap: Optional[str]):
    """The changed-block map the user gave, as (offset, length) ranges."""
    if changed_extents is not None and dirty_bitmap:
        raise OperationError(reason='give --changed-extents or '
                                    '--dirty-bitmap, not both')
    if changed_extents is not None:
        return list(extents.read_changed_extents(changed_extents,
                                                 source.size))
    if dirty_bitmap:
        return source.changed_extents()
    return None


def volume_name(volume: str) -> str:
    """How a volume is recorded: an absolute path, or the NBD URL."""
    return volume if sources.is_nbd_url(volume) else os.path.abspath(volume)


def volume_id_of(name: str) -> str:
    """The stable id of a volume path or NBD URL."""
    if sources.is_nbd_url(name):
        return str(uuid.uuid5(uuid.NAMESPACE_URL, name))
    return volume_id_for(name)


def create_backup(session: orm.Session, volume: str, *,
                  incremental: bool = False,
                  fallback_full: bool = False,
                  name: Optional[str] = None,
                  description: Optional[str] = None,
                  volume_id: Optional[str] = None,
                  container: Optional[str] = None,
                  changed_extents: Optional[str] = None,
                  dirty_bitmap: Optional[str] = None,
                  listeners: Sequence[progress.ProgressListener] = (),
                  on_created: Optional[Callable] = None,
                  warn: Optional[Callable[[str], None]] = None,
                  volume_name: Optional[str] = None
                  ) -> models.Backup:
    """Back up a file, block device or NBD export and record it.

    ``changed_extents`` is a changed-block map file (``-``: standard
    input) and ``dirty_bitmap`` the name of an NBD export's dirty bitmap:
    an incremental then reads only what they name (checked by sampling).

    An incremental of a volume with no available backup is refused,
    unless ``fallback_full``: then a full backup is made and ``warn``
    (default: the log) says so in one line, as it says that a volume is
    0 bytes long. The record's stats add the duration, the throughput
    (volume bytes a second) and, for an incremental, the fraction of the
    volume that changed.
    """
    if warn is None:
        warn = LOG.warning
    if (changed_extents is not None or dirty_bitmap) and not incremental:
        raise OperationError(
            reason='a changed-block map describes changes since a parent: '
                   'add --incremental (or leave out --changed-extents and '
                   '--dirty-bitmap for a full backup)')
    path, source = _open_source(volume, dirty_bitmap)
    # What the record and messages call the volume (a spool file is not
    # its name).
    path = volume_name or path
    try:
        return _create_backup(session, path, source, incremental, name,
                              description, volume_id, container,
                              changed_extents, dirty_bitmap, listeners,
                              on_created, fallback_full, warn)
    finally:
        source.close()


def _create_backup(session, path, source, incremental, name, description,
                   volume_id, container, changed_extents, dirty_bitmap,
                   listeners, on_created, fallback_full, warn):
    volume_id = volume_id or volume_id_of(path)
    driver = load_driver()
    driver.check_for_setup_error()
    driver.check_lock_required()  # before a record is made
    dname = driver_name()
    parent = None
    fallback = None
    if incremental:
        parent = api.latest_available(session, volume_id, dname)
        if parent is None and fallback_full:
            fallback = ('no available backup of this volume to be the '
                        'parent of an incremental')
            ignored = ''
            if changed_extents is not None or dirty_bitmap:
                # A map of changes since a parent that is not there: a
                # full backup reads everything anyway.
                changed_extents, dirty_bitmap = None, None
                ignored = ', the changed-block map unused'
            warn('no available backup of %s to be the parent of an '
                 'incremental: making a full backup%s '
                 '(--incremental=strict refuses instead)' % (path, ignored))
        elif parent is None:
            hint = ''
            if sources.is_nbd_url(path):
                # libvirt and qemu-nbd sockets change from run to run.
                hint = (', or give every backup of this disk the same '
                        '--volume-id (an NBD URL is a new volume when its '
                        'socket or port changes)')
            raise OperationError(
                reason='no available backup of volume %s (%s) to be the '
                       'parent of an incremental; make a full backup '
                       'first (leave out --incremental=strict)%s'
                       % (volume_id, path, hint))
    changed = _changed_extents(source, changed_extents, dirty_bitmap)
    if source.size == 0:
        warn('volume %s is 0 bytes long: the backup holds no data' % path)
    record = states.begin_backup(
        session, volume_id=volume_id, driver=dname, volume_path=path,
        parent=parent, name=name, description=description,
        container=container)
    if parent is not None:
        # The parent's chain is read: no fold may change it meanwhile.
        _refuse_if_folding(session, record,
                           lambda: _forget_unstarted(session, record))
    if on_created:
        on_created(record)
    driver.progress_listeners.extend(listeners)
    stats = engine_backup.BackupStats()
    try:
        started = time.monotonic()
        driver.backup(record, source, changed_extents=changed, stats=stats)
        recorded = backup_stats(stats.to_dict(), time.monotonic() - started,
                                parent is not None, fallback)
        recorded = with_object_lock(driver, record, recorded)
        try:
            states.finish_backup(session, record, source.size, recorded)
        except states.StatusConflict:
            # A cancel, or a worker's takeover, came after the engine's
            # last look: the backup fails and what it wrote goes now.
            _remove_objects_quietly(driver, record)
            raise
    except BaseException as e:
        if isinstance(e, sa_exc.SQLAlchemyError):
            # The store may hold a complete backup that the catalog cannot
            # record: remove it, so both agree it never finished.
            _remove_unrecorded(session, driver, record)
        _record_failure(session, record, e)
        raise
    return record


def backup_stats(stats: dict, seconds: float, incremental: bool,
                 fallback: Optional[str] = None) -> dict:
    """The engine's BackupStats with what only the caller knows.

    ``duration_seconds`` of the engine's work, ``throughput_bytes_per_
    second`` (volume bytes covered a second, holes included, as the
    benchmarks count), ``changed_fraction`` of an incremental (the bytes
    it stored, before compression, over the volume size) and, when an
    incremental fell back to a full backup, why.
    """
    result = dict(stats)
    size = int(result.get('volume_size') or 0)
    result['duration_seconds'] = round(seconds, 6)
    result['throughput_bytes_per_second'] = (
        round(size / seconds) if seconds > 0 else None)
    result['changed_fraction'] = (
        (int(result.get('stored_logical_bytes') or 0) / size if size else
         0.0) if incremental else None)
    if fallback:
        result['incremental_fallback'] = fallback
    return result


def with_object_lock(driver: 'chunked.ChunkedBackupDriver',
                     record: models.Backup, stats: dict) -> dict:
    """``stats`` with the lock the store holds on the backup, if any.

    A store that cannot say (it failed) leaves it unrecorded:
    backup-delete asks the store again.
    """
    if not driver.object_lock_mechanism:
        return stats
    try:
        return objectlock.with_lock(stats, driver.object_lock_of(record))
    except exception.ChunkBackupError as e:
        LOG.warning('Could not read the object lock of backup %(id)s '
                    '(%(err)s); backup-delete will ask the store.',
                    {'id': record.id, 'err': e.msg})
        return stats


def driver_class_can_lock(name: str) -> Optional[bool]:
    """Whether the driver ``name`` can lock objects (None: unknown), from
    its class, without making one.
    """
    try:
        cls = _driver_class(name)
    except exception.InvalidConfiguration:
        return None
    return bool(getattr(cls, 'object_lock_mechanism', None))


def refuse_if_locked(record: models.Backup,
                     driver: 'chunked.ChunkedBackupDriver') -> None:
    """Before anything changes: one line if an object lock holds it."""
    objectlock.refuse_if_locked(record, driver)


def _record_failure(session, record, error) -> None:
    """``error`` in the catalog, if the catalog can still be written.

    When it cannot (it is the failure), the record keeps its owner and
    ``chunkbackup cleanup`` ends it once the catalog works again.
    """
    try:
        states.fail_backup(session, record, error)
    except sa_exc.SQLAlchemyError as e:
        LOG.info('Could not record the failure of backup %(id)s (%(err)s); '
                 'chunkbackup cleanup will.', {'id': record.id, 'err': e})


def _remove_unrecorded(session, driver, record) -> None:
    try:
        # The failed flush left the session needing a rollback before
        # the record's columns can be read again.
        session.rollback()
        if record.container and record.service_metadata:
            driver.delete_objects(record.container, record.service_metadata)
    except Exception as e:
        LOG.error('Could not remove the objects of backup %(id)s, which the '
                  'catalog could not record (%(err)s); run chunkbackup '
                  'cleanup once the catalog works.',
                  {'id': record.id, 'err': getattr(e, 'msg', e)})


def _remove_objects_quietly(driver, record: models.Backup) -> None:
    try:
        driver.delete_objects(record.container, record.service_metadata)
    except Exception as e:
        LOG.error('Could not remove the objects of backup %(id)s (%(err)s); '
                  'chunkbackup cleanup removes them.',
                  {'id': record.id, 'err': getattr(e, 'msg', None) or e})


def _is_empty_target(path: str) -> Optional[bool]:
    """True: missing or empty file; False: has data; None: block device."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return True
    if stat.S_ISBLK(st.st_mode):
        return None
    if stat.S_ISDIR(st.st_mode):
        raise OperationError(reason='target %s is a directory' % path)
    return st.st_size == 0


def restore_backup(session: orm.Session, backup_id: str, target: str, *,
                   force: bool = False,
                   listeners: Sequence[progress.ProgressListener] = (),
                   byte_range: Optional[Tuple[int, int]] = None
                   ) -> models.Backup:
    """Restore a backup to a file, block device or NBD export.

    With ``byte_range`` (offset, length) only those bytes of the image are
    restored, to the start of the target (a part extracted).
    """
    record = api.get_backup(session, backup_id)
    if record.status != states.AVAILABLE:
        raise OperationError(
            reason='backup %s is %s; only available backups can be '
                   'restored' % (record.id, record.status))
    if sources.is_nbd_url(target):
        if byte_range is not None:
            raise OperationError(
                reason='--offset and --length extract to a file or standard '
                       'output, not to an NBD export')
        return _restore_to_nbd(session, record, target, force, listeners)
    empty = _is_empty_target(target)
    if empty is False and not force:
        raise OperationError(
            reason='target %s exists and is not empty; add --force to '
                   'overwrite it' % target)
    if empty is None and not force:
        raise OperationError(
            reason='target %s is a block device; add --force to overwrite '
                   'it' % target)
    driver = load_driver(record.driver)
    driver.progress_listeners.extend(listeners)
    states.begin_restore(session, record)
    _refuse_if_folding(session, record,
                       lambda: states.end_restore(session, record))
    try:
        if empty is None:
            mode, volume_is_new = 'r+b', False
        else:
            # A regular file is restored from empty: it then reads as
            # zeros, so zero blocks need not be written (and stay sparse).
            fd = os.open(target, os.O_CREAT | os.O_WRONLY | os.O_TRUNC,
                         0o600)
            os.close(fd)
            mode, volume_is_new = 'r+b', True
        with open(target, mode) as volume_file:
            driver.restore(record, record.volume_id, volume_file,
                           volume_is_new=volume_is_new,
                           **({'byte_range': byte_range} if byte_range
                              else {}))
    except (exception.ChunkBackupError, OSError) as e:
        raise _incomplete(record, target, e) from e
    finally:
        states.end_restore(session, record)
    return record


def restore_to_stream(session: orm.Session, backup_id: str, out: Any, *,
                      listeners: Sequence[progress.ProgressListener] = (),
                      byte_range: Optional[Tuple[int, int]] = None
                      ) -> Tuple[models.Backup, int]:
    """Restore to a stream (standard output), in order; (record, bytes).

    Restored first into a sparse temporary file (chunkbackup.streams).
    """
    from chunkbackup import streams
    streams.refuse_terminal(out)
    with streams.restore_file(CONF.chunkbackup.temp_dir) as path:
        record = restore_backup(session, backup_id, path, force=True,
                                listeners=listeners, byte_range=byte_range)
        try:
            written = streams.copy_out(path, out)
        except BrokenPipeError:
            raise OperationError(
                reason='the reader of standard output went away after part '
                       'of backup %s: the copy it got is incomplete'
                       % record.id)
    return record, written


def create_backup_from_stream(session: orm.Session, size: int, *,
                              volume_id: Optional[str],
                              stream: Any = None, **kwargs: Any
                              ) -> models.Backup:
    """Back up ``size`` bytes of standard input (chunkbackup.streams)."""
    from chunkbackup import streams
    if not volume_id:
        raise OperationError(
            reason='a backup of standard input needs --volume-id: it names '
                   'the volume, so that incrementals find their parent')
    if kwargs.get('changed_extents') == '-':
        raise OperationError(
            reason='standard input carries the volume: give the changed-'
                   'block map as a file')
    with streams.spooled_stdin(size, CONF.chunkbackup.temp_dir,
                               stream) as path:
        return create_backup(session, path, volume_id=volume_id,
                             volume_name='stdin', **kwargs)


def _incomplete(record, target: str, error: BaseException) -> OperationError:
    """The restore stopped: say so, with the target and what to do."""
    if isinstance(error, OSError) and not isinstance(
            error, exception.ChunkBackupError):
        what = error.strerror or str(error)
    else:
        what = getattr(error, 'msg', None) or str(error)
    return OperationError(
        reason='restore of backup %s to %s stopped: %s; the target is '
               'incomplete: rerun with --force after fixing the cause'
               % (record.id, target, what))


def _restore_to_nbd(session, record, url, force, listeners):
    if not force:
        raise OperationError(
            reason='target %s is an NBD export; add --force to overwrite '
                   'it' % url)
    driver = load_driver(record.driver)
    driver.progress_listeners.extend(listeners)
    sink = restore_sinks.NbdSink(url, volume_is_new=False)
    states.begin_restore(session, record)
    try:
        _refuse_if_folding(session, record,
                           lambda: states.end_restore(session, record))
    except BaseException:
        sink.close()
        raise
    try:
        driver.restore(record, record.volume_id, sink)
    except (exception.ChunkBackupError, OSError) as e:
        raise _incomplete(record, url, e) from e
    finally:
        sink.close()
        states.end_restore(session, record)
    return record


def verify_backup(session: orm.Session, backup_id: str,
                  listeners: Sequence[progress.ProgressListener] = ()
                  ) -> Tuple[models.Backup, 'chunked.RestorePlan']:
    """Check every object's MD5 and every block's SHA-256; no volume written.

    Returns the record and the engine's restore plan (its size, objects).
    """
    record = api.get_backup(session, backup_id)
    if record.status not in (states.AVAILABLE, states.ERROR):
        raise OperationError(reason='backup %s is %s; wait for it to finish'
                                    % (record.id, record.status))
    driver = load_driver(record.driver)
    driver.progress_listeners.extend(listeners)
    # An available backup is held while it is read, so that no fold
    # changes its chain meanwhile.
    held = record.status == states.AVAILABLE
    if held:
        states.begin_verify(session, record)
        _refuse_if_folding(session, record,
                           lambda: states.end_verify(session, record))
    try:
        try:
            plan = driver.verify(record)
        except (exception.InvalidBackup,
                exception.StorageObjectNotFound) as e:
            # The backup is bad (not the store unreachable): list and show
            # say so until a verify passes.
            states.record_verify(session, record, e)
            raise
        states.record_verify(session, record)
    finally:
        if held:
            states.end_verify(session, record)
    return record, plan


def delete_backup(session: orm.Session, backup_id: str) -> models.Backup:
    record = api.get_backup(session, backup_id)
    if record.has_dependent_backups:
        raise exception.BackupInUse(backup_id=record.id,
                                    children=record.dependent_backup_ids)
    driver = load_driver(record.driver)
    refuse_if_locked(record, driver)
    states.begin_delete(session, record)
    try:
        driver.delete_backup(record)
    except BaseException as e:
        states.fail_delete(session, record, e)
        raise
    states.finish_delete(session, record)
    return record


# Export and import, in Cinder's backup_url format. ------------------------

def _isotime(value) -> Optional[str]:
    if value is None:
        return None
    return value.strftime('%Y-%m-%dT%H:%M:%S.%f') + 'Z'


def export_backup(session: orm.Session, backup_id: str) -> dict:
    record = api.get_backup(session, backup_id)
    if record.status != states.AVAILABLE:
        raise OperationError(reason='backup %s is %s; only available backups '
                                    'can be exported' % (record.id,
                                                         record.status))
    driver = load_driver(record.driver)
    fields = {
        'id': record.id, 'volume_id': record.volume_id,
        'container': record.container, 'parent_id': record.parent_id,
        'status': record.status, 'fail_reason': None, 'size': record.size,
        'display_name': record.display_name,
        'display_description': record.display_description,
        'service_metadata': record.service_metadata,
        'service': 'chunkbackup.drivers.%s' % record.driver,
        'object_count': record.object_count,
        'created_at': _isotime(record.created_at),
        'updated_at': _isotime(record.updated_at),
        'data_timestamp': _isotime(record.data_timestamp),
        'num_dependent_backups': record.num_dependent_backups,
        'availability_zone': None, 'host': None, 'user_id': None,
        'project_id': None, 'temp_volume_id': None, 'temp_snapshot_id': None,
        'snapshot_id': None, 'restore_volume_id': None, 'metadata': {},
        'encryption_key_id': None, 'deleted': False, 'deleted_at': None,
        'driver_info': driver.export_record(record),
    }
    url = base64.b64encode(json.dumps(fields).encode('utf-8')).decode()
    return {'backup_service': '%s.%s' % (type(driver).__module__,
                                         type(driver).__name__),
            'backup_url': url}


def _parse_time(value):
    if not value:
        return None
    text = str(value).rstrip('Z').replace('T', ' ')
    text = text.split('+')[0]
    for pattern in ('%Y-%m-%d %H:%M:%S.%f', '%Y-%m-%d %H:%M:%S'):
        try:
            return datetime.datetime.strptime(text, pattern)
        except ValueError:
            continue
    return None


def import_backup(session: orm.Session, backup_service: str, backup_url: str
                  ) -> models.Backup:
    name = driver_name(backup_service)
    try:
        fields = json.loads(base64.b64decode(backup_url, validate=True))
        if not isinstance(fields, dict):
            raise ValueError('not a JSON object')
    except ValueError as e:
        raise OperationError(reason='the backup URL is not base64 of a JSON '
                                    'record (%s); pass what backup-export '
                                    'printed' % e)
    missing = [k for k in ('id', 'volume_id', 'container',
                           'service_metadata') if not fields.get(k)]
    if missing:
        raise OperationError(reason='the backup URL lacks %s'
                                    % ', '.join(missing))
    if session.get(models.Backup, fields['id']) is not None:
        raise OperationError(reason='backup %s is already in the catalog'
                                    % fields['id'])
    driver = load_driver(name)
    parent = None
    if fields.get('parent_id'):
        parent = session.get(models.Backup, fields['parent_id'])
        if parent is None:
            raise OperationError(
                reason='backup %s is an incremental of %s, which is not in '
                       'the catalog; import the parent first'
                       % (fields['id'], fields['parent_id']))
    record = models.Backup(
        id=fields['id'], volume_id=fields['volume_id'], driver=name,
        container=fields['container'],
        service_metadata=fields['service_metadata'], parent=parent,
        parent_id=parent.id if parent is not None else None,
        display_name=fields.get('display_name'),
        display_description=fields.get('display_description'),
        status=states.AVAILABLE, size=int(fields.get('size') or 0),
        size_bytes=0, object_count=int(fields.get('object_count') or 0),
        created_at=_parse_time(fields.get('created_at')) or models.utcnow(),
        data_timestamp=_parse_time(fields.get('data_timestamp')))
    # The store must hold the backup: check before recording it.
    plan = driver.plan_restore(record)
    record.size_bytes = plan.size
    driver.import_record(record, fields.get('driver_info') or {})
    session.add(record)
    session.commit()
    return record


# Rebuilding the catalog from the store. ----------------------------------

def rebuild_catalog(session: orm.Session,
                    container: Optional[str] = None) -> List[str]:
    """Record every complete backup the store holds that the catalog lacks.

    Returns the ids added. Parents are recorded before their children.
    """
    driver = load_driver()
    dname = driver_name()
    found = {}
    for cont, name in driver.find_metadata_objects(container):
        try:
            meta = fmt.parse_metadata(driver.store.get(cont, name), None,
                                      name)
        except exception.InvalidBackup as e:
            LOG.warning('Skipping %s/%s: %s', cont, name, e)
            continue
        found[meta.backup_id] = (cont, name[:-len('_metadata')], meta)
    added = []

    def add(backup_id):
        existing = session.get(models.Backup, backup_id)
        if existing is not None:
            return existing
        cont, prefix, meta = found[backup_id]
        parent = None
        if meta.parent_id:
            if meta.parent_id not in found and session.get(
                    models.Backup, meta.parent_id) is None:
                LOG.warning('Backup %s: its parent %s is not in the store; '
                            'not recorded.', backup_id, meta.parent_id)
                return None
            parent = add(meta.parent_id)
            if parent is None:
                return None
        end = max((o.end for o in meta.objects), default=0)
        size_bytes = max(end, parent.size_bytes if parent else 0)
        record = models.Backup(
            id=backup_id, volume_id=meta.volume_id, driver=dname,
            container=cont, service_metadata=prefix, parent=parent,
            display_name=meta.backup_name,
            display_description=meta.backup_description,
            status=states.AVAILABLE,
            size=max(1, math.ceil(size_bytes / 2**30)),
            size_bytes=size_bytes, object_count=len(meta.objects),
            created_at=_parse_time(meta.created_at) or models.utcnow())
        session.add(record)
        session.flush()
        added.append(backup_id)
        return record

    for backup_id in sorted(found):
        add(backup_id)
    session.commit()
    return added


# Records left behind by processes that are gone. ---------------------------

def _remove_objects(record: models.Backup) -> int:
    return load_driver(record.driver).delete_objects(record.container,
                                                     record.service_metadata)


def cleanup_interrupted(session: orm.Session,
                        current_pid: Optional[int] = None) -> List[str]:
    """Finish what processes that no longer exist left unfinished.

    See chunkbackup.catalog.states.cleanup_interrupted; the objects are
    removed through each backup's driver. Returns the backup ids cleaned.
    """
    from chunkbackup import folding
    return states.cleanup_interrupted(
        session, _remove_objects, current_pid,
        recover_fold=lambda record: folding.recover_fold(session, record))


def _refuse_if_folding(session: orm.Session, record: models.Backup,
                       release: Callable[[], None]) -> None:
    """Held ``record``: refuse (one line) if its chain is being folded."""
    from chunkbackup import folding
    folding.check_chain_free(session, record, release)


def _forget_unstarted(session: orm.Session, record: models.Backup) -> None:
    """A backup refused before it wrote anything: no record is left."""
    session.execute(sa.delete(models.Backup)
                    .where(models.Backup.id == record.id,
                           models.Backup.status == states.CREATING))
    session.commit()
    session.expunge(record)
