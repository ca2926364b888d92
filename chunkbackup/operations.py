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
import socket
import stat
import uuid
from typing import Callable, List, Optional

from oslo_config import cfg
from oslo_log import log as logging
from oslo_utils import importutils
import sqlalchemy as sa
from stevedore import driver as stevedore_driver
from stevedore import exception as stevedore_exception

from chunkbackup import backupformat as fmt
from chunkbackup.catalog import api
from chunkbackup.catalog import models
from chunkbackup import exception
from chunkbackup import jobs

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


class OperationError(exception.ChunkBackupError):
    msg_fmt = "%(reason)s"


def owner_id() -> str:
    """This process, as recorded on the records it is working on."""
    return '%s:%d' % (socket.gethostname(), os.getpid())


def load_driver(name: Optional[str] = None):
    """A driver by entry-point name (posix, swift, google, s3) or class."""
    name = name or CONF.chunkbackup.driver
    try:
        if '.' in name:
            cls = importutils.import_class(name)
        else:
            cls = stevedore_driver.DriverManager(
                DRIVER_NAMESPACE, name, invoke_on_load=False).driver
    except (ImportError, ValueError, stevedore_exception.NoMatches,
            RuntimeError) as e:
        raise exception.InvalidConfiguration(
            reason='[chunkbackup] driver = %s cannot be loaded (%s); use '
                   'posix, swift, google, s3 or a driver class path'
                   % (name, e))
    return cls(None)


def driver_name(name: Optional[str] = None) -> str:
    name = name or CONF.chunkbackup.driver
    return _SERVICE_ALIASES.get(name, name)


def volume_id_for(path: str) -> str:
    """A stable id for a volume path, so incrementals find their parent."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL,
                          'file://' + os.path.realpath(path)))


def _open_volume(path: str):
    try:
        return open(path, 'rb')
    except FileNotFoundError:
        raise OperationError(reason='volume %s does not exist' % path)
    except IsADirectoryError:
        raise OperationError(reason='volume %s is a directory; give a file '
                                    'or a block device' % path)
    except PermissionError:
        raise OperationError(reason='volume %s is not readable by this '
                                    'user' % path)


def create_backup(session, volume: str, *, incremental: bool = False,
                  name: Optional[str] = None,
                  description: Optional[str] = None,
                  volume_id: Optional[str] = None,
                  container: Optional[str] = None,
                  listeners: List = (),
                  on_created: Optional[Callable] = None) -> models.Backup:
    """Back up a file or block device and record it."""
    path = os.path.abspath(volume)
    volume_file = _open_volume(path)
    with volume_file:
        volume_id = volume_id or volume_id_for(path)
        driver = load_driver()
        driver.check_for_setup_error()
        dname = driver_name()
        parent = None
        if incremental:
            parent = api.latest_available(session, volume_id, dname)
            if parent is None:
                raise OperationError(
                    reason='no available backup of volume %s (%s) to be the '
                           'parent of an incremental; make a full backup '
                           'first (leave out --incremental)' % (volume_id,
                                                                path))
        record = api.new_backup(session, volume_id=volume_id, driver=dname,
                                volume_path=path, parent=parent, name=name,
                                description=description, container=container,
                                owner=owner_id())
        if on_created:
            on_created(record)
        driver.progress_listeners.extend(listeners)
        try:
            driver.backup(record, volume_file)
        except BaseException as e:
            session.rollback()
            record.status = api.ERROR
            record.fail_reason = str(e) or type(e).__name__
            record.owner = None
            session.commit()
            raise
        record.size_bytes = volume_file.seek(0, os.SEEK_END)
        record.status = api.AVAILABLE
        record.data_timestamp = record.created_at
        record.owner = None
        session.commit()
        return record


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


def restore_backup(session, backup_id: str, target: str, *,
                   force: bool = False, listeners: List = ()) -> models.Backup:
    record = api.get_backup(session, backup_id)
    if record.status != api.AVAILABLE:
        raise OperationError(
            reason='backup %s is %s; only available backups can be '
                   'restored' % (record.id, record.status))
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
    record.status = api.RESTORING
    record.owner = owner_id()
    session.commit()
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
                           volume_is_new=volume_is_new)
    finally:
        session.rollback()
        record.status = api.AVAILABLE
        record.owner = None
        session.commit()
    return record


def verify_backup(session, backup_id: str, listeners: List = ()):
    record = api.get_backup(session, backup_id)
    if record.status not in (api.AVAILABLE, api.ERROR):
        raise OperationError(reason='backup %s is %s; wait for it to finish'
                                    % (record.id, record.status))
    driver = load_driver(record.driver)
    driver.progress_listeners.extend(listeners)
    plan = driver.verify(record)
    return record, plan


def delete_backup(session, backup_id: str) -> models.Backup:
    record = api.get_backup(session, backup_id)
    if record.has_dependent_backups:
        raise exception.BackupInUse(backup_id=record.id,
                                    children=record.dependent_backup_ids)
    if record.status in api.BUSY_STATUSES and record.owner and \
            record.owner != owner_id():
        raise OperationError(
            reason='backup %s is %s by %s; wait, or run chunkbackup cleanup '
                   'if that process is gone' % (record.id, record.status,
                                                record.owner))
    driver = load_driver(record.driver)
    record.status = api.DELETING
    record.owner = owner_id()
    session.commit()
    try:
        driver.delete_backup(record)
    except BaseException as e:
        session.rollback()
        record.status = api.ERROR_DELETING
        record.fail_reason = str(e)
        record.owner = None
        session.commit()
        raise
    session.delete(record)
    session.commit()
    return record


# Export and import, in Cinder's backup_url format. ------------------------

def _isotime(value) -> Optional[str]:
    if value is None:
        return None
    return value.strftime('%Y-%m-%dT%H:%M:%S.%f') + 'Z'


def export_backup(session, backup_id: str) -> dict:
    record = api.get_backup(session, backup_id)
    if record.status != api.AVAILABLE:
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


def import_backup(session, backup_service: str, backup_url: str
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
        status=api.AVAILABLE, size=int(fields.get('size') or 0),
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

def rebuild_catalog(session, container: Optional[str] = None) -> List[str]:
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
            status=api.AVAILABLE, size=max(1, math.ceil(size_bytes / 2**30)),
            size_bytes=size_bytes, object_count=len(meta.objects) + 2,
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

def owner_alive(owner: str, current_pid: Optional[int] = None) -> bool:
    """Whether the process named by an ``owner`` column ('host:pid') runs.

    A process on another host cannot be checked: it counts as alive.
    ``current_pid`` (this process, at its start) counts as gone: it has no
    operations yet, so a record naming it is left from an earlier process
    with the same pid.
    """
    host, _, pid = (owner or '').rpartition(':')
    try:
        pid = int(pid)
    except ValueError:
        return True
    if host != socket.gethostname():
        return True
    if pid == current_pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_interrupted(session, current_pid: Optional[int] = None
                        ) -> List[str]:
    """Clean up what processes that no longer exist left unfinished.

    Backups they were creating or deleting (or that a shutdown had to give
    up on) end ``error`` with their objects deleted; backups they were
    restoring are ``available`` again; their running jobs end ``failed``.
    Returns the ids of the backups set to error.
    """
    cleaned = []
    records = list(session.scalars(
        sa.select(models.Backup).where(models.Backup.owner.isnot(None))))
    for record in records:
        if owner_alive(record.owner, current_pid):
            continue
        owner = record.owner
        if record.status == api.RESTORING:
            LOG.warning('Backup %(id)s was being restored by %(o)s, which '
                        'is gone; it is available again (check the restore '
                        'target).', {'id': record.id, 'o': owner})
            record.status = api.AVAILABLE
            record.owner = None
            session.commit()
            continue
        if record.status == api.AVAILABLE:
            record.owner = None
            session.commit()
            continue
        LOG.warning('Backup %(id)s was %(st)s by %(o)s, which is gone; '
                    'removing its objects and setting it to error.',
                    {'id': record.id, 'st': record.status, 'o': owner})
        if record.status != api.ERROR or not record.fail_reason:
            record.fail_reason = ('interrupted: %s stopped while the backup '
                                  'was %s' % (owner, record.status))
        record.status = api.ERROR
        session.commit()
        try:
            if record.container and record.service_metadata:
                driver = load_driver(record.driver)
                driver.delete_objects(record.container,
                                      record.service_metadata)
        except Exception as e:
            # The owner stays: the next start tries again.
            LOG.error('Could not remove the objects of backup %(id)s '
                      '(%(err)s); the next start tries again.',
                      {'id': record.id, 'err': getattr(e, 'msg', None) or e})
            session.rollback()
        else:
            record.owner = None
            session.commit()
        cleaned.append(record.id)
    stale_jobs = list(session.scalars(
        sa.select(models.Job).where(models.Job.status == jobs.RUNNING)))
    for job in stale_jobs:
        if job.owner and owner_alive(job.owner, current_pid):
            continue
        LOG.warning('Job %(id)s was run by %(o)s, which is gone; it failed.',
                    {'id': job.id, 'o': job.owner})
        jobs.finish(session, job, jobs.FAILED,
                    error='interrupted: %s stopped before the job finished'
                          % job.owner)
    cleaned.extend(_remove_leftovers_of_failed(session, set(cleaned)))
    return cleaned


def _remove_leftovers_of_failed(session, done) -> List[str]:
    """Objects of failed backups whose own clean-up could not finish.

    A failed backup removes what it wrote; when the store failed too, the
    objects stay (never complete, never a parent) until this finds them.
    """
    removed = []
    failed = session.scalars(sa.select(models.Backup).where(
        models.Backup.status == api.ERROR,
        models.Backup.container.isnot(None),
        models.Backup.service_metadata.isnot(None)))
    for record in list(failed):
        if record.id in done:
            continue
        try:
            driver = load_driver(record.driver)
            if driver.delete_objects(record.container,
                                     record.service_metadata):
                LOG.warning('Removed the leftover objects of failed backup '
                            '%s.', record.id)
                removed.append(record.id)
        except Exception as e:
            LOG.error('Could not remove the objects of failed backup '
                      '%(id)s: %(err)s', {'id': record.id,
                                          'err': getattr(e, 'msg', e)})
    return removed
