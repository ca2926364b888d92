"""Every status and owner change of the catalog's backups and jobs.

The CLI (through :mod:`chunkbackup.operations`) and the service change the
status or owner of a record only through these functions, so the rules
live in one place:

- A backup is ``creating`` until its ``_metadata`` is stored, then
  ``available``. One that fails or is cancelled ends ``error`` and is never
  a parent. A restore holds it ``restoring``; a delete holds it
  ``deleting`` and removes the record (or leaves it ``error_deleting``).
- ``owner`` names the process (``host:pid``) working on a record, so that
  :func:`cleanup_interrupted` can tell what a process that is gone left
  behind. Every transition that ends the work clears it.
- A job goes ``queued``, then ``running`` (claimed by one owner), then
  ``done``, ``failed`` or ``cancelled``.

Each function commits what it changed.
"""
import os
import socket
import uuid
from typing import Callable, List, Optional

from oslo_log import log as logging
import sqlalchemy as sa
from sqlalchemy import orm

from chunkbackup.catalog import models
from chunkbackup import exception

LOG = logging.getLogger(__name__)

# Backup statuses, as Cinder names them.
CREATING = 'creating'
AVAILABLE = 'available'
DELETING = 'deleting'
RESTORING = 'restoring'
ERROR = 'error'
ERROR_DELETING = 'error_deleting'
BUSY_STATUSES = (CREATING, DELETING, RESTORING)

# Job statuses.
QUEUED = 'queued'
RUNNING = 'running'
DONE = 'done'
FAILED = 'failed'
CANCELLED = 'cancelled'


class BackupBusy(exception.ChunkBackupError):
    msg_fmt = ("backup %(backup_id)s is %(status)s by %(owner)s; wait, or "
               "run chunkbackup cleanup if that process is gone")


# Owners. --------------------------------------------------------------------

def owner_id() -> str:
    """This process, as recorded on the records it is working on."""
    return '%s:%d' % (socket.gethostname(), os.getpid())


def owner_alive(owner: Optional[str],
                current_pid: Optional[int] = None) -> bool:
    """Whether the process named by an ``owner`` column ('host:pid') runs.

    A process on another host cannot be checked: it counts as alive.
    ``current_pid`` (this process, at its start) counts as gone: it has no
    operations yet, so a record naming it is left from an earlier process
    with the same pid.
    """
    host, _, pid_text = (owner or '').rpartition(':')
    try:
        pid = int(pid_text)
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


def _reason(error: BaseException) -> str:
    return str(error) or type(error).__name__


# Backups. -------------------------------------------------------------------

def begin_backup(session: orm.Session, *, volume_id: str, driver: str,
                 volume_path: Optional[str] = None,
                 parent: Optional[models.Backup] = None,
                 name: Optional[str] = None,
                 description: Optional[str] = None,
                 container: Optional[str] = None,
                 owner: Optional[str] = None) -> models.Backup:
    """A new record, ``creating`` and owned by ``owner`` (this process)."""
    record = models.Backup(
        id=str(uuid.uuid4()), volume_id=volume_id, volume_path=volume_path,
        driver=driver, parent=parent, display_name=name,
        display_description=description, container=container,
        status=CREATING, size=0, size_bytes=0, object_count=0,
        created_at=models.utcnow(), owner=owner or owner_id())
    session.add(record)
    session.commit()
    return record


def finish_backup(session: orm.Session, record: models.Backup,
                  size_bytes: int, stats: Optional[dict] = None) -> None:
    """Its ``_metadata`` is stored: ``available``, a possible parent.

    ``stats`` says what the backup did (bytes read and stored, holes
    skipped, whether a changed-block map was used).
    """
    record.size_bytes = size_bytes
    record.stats = stats
    record.status = AVAILABLE
    record.data_timestamp = record.created_at
    record.owner = None
    session.commit()


def fail_backup(session: orm.Session, record: models.Backup,
                error: BaseException) -> None:
    """The backup failed or was cancelled: ``error``, never a parent.

    What the session held uncommitted is rolled back first.
    """
    session.rollback()
    record.status = ERROR
    record.fail_reason = _reason(error)
    record.owner = None
    session.commit()


def request_cancel(session: orm.Session, backup_id: str) -> bool:
    """Ask the engine to stop a backup being created.

    The engine reads its record between objects; on ``deleting`` it stops
    and removes what it wrote. A backup that already finished is left
    alone (False).
    """
    taken = session.execute(
        sa.update(models.Backup)
        .where(models.Backup.id == backup_id,
               models.Backup.status == CREATING)
        .values(status=DELETING)).rowcount
    session.commit()
    return bool(taken)


def explain_failure(session: orm.Session, backup_id: str,
                    reason: str) -> None:
    """Replace the reason of a backup that ended ``error`` (and only then).

    The engine records only that it was cancelled; the caller knows why.
    """
    session.execute(
        sa.update(models.Backup)
        .where(models.Backup.id == backup_id,
               models.Backup.status == ERROR)
        .values(fail_reason=reason))
    session.commit()


def abandon_backup(session: orm.Session, backup_id: str,
                   reason: str) -> None:
    """Record as ``error`` a backup whose operation did not stop in time.

    Its owner stays, so that the next :func:`cleanup_interrupted` after
    this process is gone removes the objects it may still be writing.
    """
    session.execute(
        sa.update(models.Backup)
        .where(models.Backup.id == backup_id,
               models.Backup.status.in_((CREATING, DELETING)))
        .values(status=ERROR, fail_reason=reason))
    session.commit()


def begin_restore(session: orm.Session, record: models.Backup) -> None:
    """``restoring``, owned by this process, until :func:`end_restore`."""
    record.status = RESTORING
    record.owner = owner_id()
    session.commit()


def end_restore(session: orm.Session, record: models.Backup) -> None:
    """A restore never changes its backup: ``available`` again.

    What the session held uncommitted is rolled back first.
    """
    session.rollback()
    record.status = AVAILABLE
    record.owner = None
    session.commit()


def begin_delete(session: orm.Session, record: models.Backup) -> None:
    """``deleting``, owned by this process.

    Raises BackupBusy if another process is working on the backup.
    """
    if record.status in BUSY_STATUSES and record.owner and \
            record.owner != owner_id():
        raise BackupBusy(backup_id=record.id, status=record.status,
                         owner=record.owner)
    record.status = DELETING
    record.owner = owner_id()
    session.commit()


def fail_delete(session: orm.Session, record: models.Backup,
                error: BaseException) -> None:
    """The delete failed: ``error_deleting``, with the reason.

    What the session held uncommitted is rolled back first.
    """
    session.rollback()
    record.status = ERROR_DELETING
    record.fail_reason = str(error)
    record.owner = None
    session.commit()


def finish_delete(session: orm.Session, record: models.Backup) -> None:
    """Its objects are gone: the record goes too."""
    session.delete(record)
    session.commit()


# Jobs. ----------------------------------------------------------------------

def enqueue_job(session: orm.Session, kind: str,
                params: dict) -> models.Job:
    """Queue work for the service (``chunkbackup ... --async``)."""
    job = models.Job(kind=kind, params=params, status=QUEUED,
                     created_at=models.utcnow())
    session.add(job)
    session.commit()
    return job


def claim_job(session: orm.Session, owner: str) -> Optional[models.Job]:
    """Take the oldest queued job, atomically (one worker gets it)."""
    while True:
        job = session.scalars(
            sa.select(models.Job).where(models.Job.status == QUEUED)
            .order_by(models.Job.id).limit(1)).first()
        if job is None:
            session.commit()
            return None
        taken = session.execute(
            sa.update(models.Job)
            .where(models.Job.id == job.id, models.Job.status == QUEUED)
            .values(status=RUNNING, owner=owner,
                    started_at=models.utcnow())).rowcount
        session.commit()
        if taken:
            session.refresh(job)
            return job


def link_job_backup(session: orm.Session, job_id: int,
                    backup_id: str) -> None:
    """Name the backup that a running job is making."""
    session.execute(sa.update(models.Job)
                    .where(models.Job.id == job_id)
                    .values(backup_id=backup_id))
    session.commit()


def finish_job(session: orm.Session, job: models.Job, status: str,
               error: Optional[str] = None,
               backup_id: Optional[str] = None) -> None:
    """End a job ``done``, ``failed`` or ``cancelled``."""
    job.status = status
    job.error = error
    job.finished_at = models.utcnow()
    if backup_id:
        job.backup_id = backup_id
    session.commit()


def abandon_job(session: orm.Session, job_id: int, error: str) -> None:
    """``cancelled``, if it is still running: its operation did not stop."""
    session.execute(
        sa.update(models.Job)
        .where(models.Job.id == job_id, models.Job.status == RUNNING)
        .values(status=CANCELLED, error=error,
                finished_at=models.utcnow()))
    session.commit()


# Records left behind by processes that are gone. ---------------------------

def cleanup_interrupted(session: orm.Session,
                        remove_objects: Callable[[models.Backup], int],
                        current_pid: Optional[int] = None) -> List[str]:
    """Clean up what processes that no longer exist left unfinished.

    Backups they were creating or deleting (or that a shutdown had to give
    up on) end ``error`` with their objects deleted; backups they were
    restoring are ``available`` again; their running jobs end ``failed``.
    Then the objects of failed backups whose own clean-up could not finish
    are removed. ``remove_objects(record)`` deletes a backup's objects from
    its store and returns how many it found. Returns the ids of the backups
    set to error and of those whose leftovers were removed.
    """
    cleaned = []
    records = list(session.scalars(
        sa.select(models.Backup).where(models.Backup.owner.isnot(None))))
    for record in records:
        if owner_alive(record.owner, current_pid):
            continue
        owner = record.owner
        if record.status == RESTORING:
            LOG.warning('Backup %(id)s was being restored by %(o)s, which '
                        'is gone; it is available again (check the restore '
                        'target).', {'id': record.id, 'o': owner})
            record.status = AVAILABLE
            record.owner = None
            session.commit()
            continue
        if record.status == AVAILABLE:
            record.owner = None
            session.commit()
            continue
        LOG.warning('Backup %(id)s was %(st)s by %(o)s, which is gone; '
                    'removing its objects and setting it to error.',
                    {'id': record.id, 'st': record.status, 'o': owner})
        if record.status != ERROR or not record.fail_reason:
            record.fail_reason = ('interrupted: %s stopped while the backup '
                                  'was %s' % (owner, record.status))
        record.status = ERROR
        session.commit()
        try:
            if record.container and record.service_metadata:
                remove_objects(record)
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
        sa.select(models.Job).where(models.Job.status == RUNNING)))
    for job in stale_jobs:
        if job.owner and owner_alive(job.owner, current_pid):
            continue
        LOG.warning('Job %(id)s was run by %(o)s, which is gone; it failed.',
                    {'id': job.id, 'o': job.owner})
        finish_job(session, job, FAILED,
                   error='interrupted: %s stopped before the job finished'
                         % job.owner)
    cleaned.extend(_remove_leftovers_of_failed(session, remove_objects,
                                               set(cleaned)))
    return cleaned


def _remove_leftovers_of_failed(session: orm.Session,
                                remove_objects: Callable[[models.Backup],
                                                         int],
                                done: set) -> List[str]:
    """Objects of failed backups whose own clean-up could not finish.

    A failed backup removes what it wrote; when the store failed too, the
    objects stay (never complete, never a parent) until this finds them.
    """
    removed = []
    failed = session.scalars(sa.select(models.Backup).where(
        models.Backup.status == ERROR,
        models.Backup.container.isnot(None),
        models.Backup.service_metadata.isnot(None)))
    for record in list(failed):
        if record.id in done:
            continue
        try:
            if remove_objects(record):
                LOG.warning('Removed the leftover objects of failed backup '
                            '%s.', record.id)
                removed.append(record.id)
        except Exception as e:
            LOG.error('Could not remove the objects of failed backup '
                      '%(id)s: %(err)s', {'id': record.id,
                                          'err': getattr(e, 'msg', e)})
    return removed
