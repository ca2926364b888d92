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

Each function commits what it changed. Every status change is one
conditional UPDATE (``... WHERE status IN (what the transition starts
from)``), so of two operations racing for a record exactly one wins; the
other gets a :class:`StatusConflict` (one line: what the record is now)
and has changed nothing.
"""
import os
import socket
import uuid
from typing import Callable, List, Optional

from oslo_log import log as logging
import sqlalchemy as sa
from sqlalchemy import orm

from chunkbackup.catalog import leases
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
# Being folded into its child, or the child a fold goes into
# (chunkbackup.catalog.folds); being verified (read like a restore).
FOLDING = 'folding'
VERIFYING = 'verifying'
BUSY_STATUSES = (CREATING, DELETING, RESTORING, FOLDING, VERIFYING)
# What the last verify of a backup found (Backup.verify_status).
VERIFY_PASSED = 'passed'
VERIFY_FAILED = 'failed'

# Job statuses.
QUEUED = 'queued'
RUNNING = 'running'
DONE = 'done'
FAILED = 'failed'
CANCELLED = 'cancelled'


class StatusConflict(exception.ChunkBackupError):
    """Another operation changed the record first; nothing was done."""

    msg_fmt = ("cannot %(action)s backup %(backup_id)s: it is %(status)s "
               "now (another operation changed it first)")


class BackupBusy(StatusConflict):
    msg_fmt = ("backup %(backup_id)s is %(status)s by %(owner)s; wait, or "
               "run chunkbackup cleanup if that process is gone")


class JobConflict(exception.ChunkBackupError):
    msg_fmt = ("cannot end job %(job_id)s %(wanted)s: it is %(status)s now "
               "(a shutdown or clean-up ended it first)")


class BackupGone(StatusConflict):
    msg_fmt = ("cannot %(action)s backup %(backup_id)s: it was deleted "
               "(by another operation)")


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


def _conflict(session: orm.Session, backup_id: str,
              action: str) -> StatusConflict:
    """The error for the loser of a race: what the record is now."""
    row = session.execute(
        sa.select(models.Backup.status, models.Backup.owner)
        .where(models.Backup.id == backup_id)).first()
    session.commit()
    if row is None:
        return BackupGone(backup_id=backup_id, action=action)
    status, owner = row
    if status in BUSY_STATUSES and owner:
        return BackupBusy(backup_id=backup_id, status=status, owner=owner)
    return StatusConflict(backup_id=backup_id, action=action, status=status)


def _transition(session: orm.Session, record: models.Backup, action: str,
                allowed, **values) -> None:
    """Set ``values`` on ``record`` in one UPDATE, only where ``allowed``.

    ``allowed`` is a condition on the row (its status, owner) that held
    when the transition was decided; when another operation changed the
    row first, nothing is written and StatusConflict says what it is now.
    """
    changed = session.execute(
        sa.update(models.Backup)
        .where(models.Backup.id == record.id, allowed)
        .values(**values)
        .execution_options(synchronize_session=False)).rowcount
    session.commit()
    if changed != 1:
        raise _conflict(session, record.id, action)
    for key, value in values.items():
        # What the row now holds, without reading it again.
        orm.attributes.set_committed_value(record, key, value)


def _status_in(*statuses: str):
    return models.Backup.status.in_(statuses)


def _held_by_me():
    """SQL: this process holds the record, its lease (if any) unexpired."""
    return sa.and_(models.Backup.owner == owner_id(),
                   leases.unexpired(models.Backup.lease_expires_at))


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
        created_at=models.utcnow(), owner=owner or owner_id(),
        lease_expires_at=leases.expiry())
    session.add(record)
    session.commit()
    return record


def finish_backup(session: orm.Session, record: models.Backup,
                  size_bytes: int, stats: Optional[dict] = None) -> None:
    """Its ``_metadata`` is stored: ``available``, a possible parent.

    ``stats`` says what the backup did (bytes read and stored, holes
    skipped, whether a changed-block map was used).
    """
    _transition(session, record, 'finish',
                sa.and_(_status_in(CREATING), _held_by_me()),
                size_bytes=size_bytes, stats=stats, status=AVAILABLE,
                data_timestamp=record.created_at, owner=None,
                lease_expires_at=None)


def fail_backup(session: orm.Session, record: models.Backup,
                error: BaseException) -> None:
    """The backup failed or was cancelled: ``error``, never a parent.

    What the session held uncommitted is rolled back first. Raises
    StatusConflict if the record is no longer being created, cancelled or
    failed (another operation took it).
    """
    session.rollback()
    # A worker's record is failed only by its holder while its lease
    # runs: once it lapsed, the worker taking it over ends it.
    allowed = sa.and_(_status_in(CREATING, DELETING, ERROR),
                      sa.or_(models.Backup.lease_expires_at.is_(None),
                             sa.and_(models.Backup.owner == owner_id(),
                                     models.Backup.lease_expires_at >
                                     models.utcnow())))
    try:
        _transition(session, record, 'fail', allowed, status=ERROR,
                    fail_reason=_reason(error), owner=None,
                    lease_expires_at=None)
    except StatusConflict:
        if not isinstance(error, leases.LeaseLost):
            raise
        LOG.info('Backup %s was taken over by another worker; it ends '
                 'the backup.', record.id)


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
    """``restoring``, owned by this process, until :func:`end_restore`.

    Raises StatusConflict (BackupBusy) unless the backup is available.
    """
    _transition(session, record, 'restore', _status_in(AVAILABLE),
                status=RESTORING, owner=owner_id(),
                lease_expires_at=leases.expiry())


def end_restore(session: orm.Session, record: models.Backup) -> None:
    """A restore never changes its backup: ``available`` again.

    What the session held uncommitted is rolled back first.
    """
    session.rollback()
    _transition(session, record, 'end the restore of',
                sa.and_(_status_in(RESTORING),
                        models.Backup.owner == owner_id()),
                status=AVAILABLE, owner=None, lease_expires_at=None)


def begin_verify(session: orm.Session, record: models.Backup) -> None:
    """``verifying``, owned by this process, until :func:`end_verify`.

    A verify reads the chain as a restore does: no fold may change it
    meanwhile. Raises StatusConflict (BackupBusy) unless available.
    """
    _transition(session, record, 'verify', _status_in(AVAILABLE),
                status=VERIFYING, owner=owner_id(),
                lease_expires_at=leases.expiry())


def end_verify(session: orm.Session, record: models.Backup) -> None:
    """``available`` again after a verify (what it found is recorded by
    :func:`record_verify`).
    """
    session.rollback()
    _transition(session, record, 'end the verify of',
                sa.and_(_status_in(VERIFYING),
                        models.Backup.owner == owner_id()),
                status=AVAILABLE, owner=None, lease_expires_at=None)


def record_verify(session: orm.Session, record: models.Backup,
                  error: Optional[BaseException] = None) -> None:
    """A verify ended: ``passed``, or ``failed`` with every bad object.

    Only the verify columns change, so a status set meanwhile (a delete,
    a restore) is kept; a later passing verify clears a failure.
    """
    session.rollback()
    values = {'verify_status': VERIFY_FAILED if error else VERIFY_PASSED,
              'verify_reason': _reason(error) if error else None,
              'verified_at': models.utcnow()}
    session.execute(sa.update(models.Backup)
                    .where(models.Backup.id == record.id).values(**values))
    session.commit()
    session.refresh(record)


def begin_delete(session: orm.Session, record: models.Backup) -> None:
    """``deleting``, owned by this process.

    Raises BackupBusy if another operation is working on the backup: one
    of another process, or a restore or delete of this one. A backup this
    process is creating may go.
    """
    me = owner_id()
    owner = models.Backup.owner
    _transition(session, record, 'delete',
                sa.or_(models.Backup.status.notin_(BUSY_STATUSES),
                       owner.is_(None),
                       sa.and_(_status_in(CREATING), owner == me)),
                status=DELETING, owner=me, lease_expires_at=leases.expiry())


def fail_delete(session: orm.Session, record: models.Backup,
                error: BaseException) -> None:
    """The delete failed: ``error_deleting``, with the reason.

    What the session held uncommitted is rolled back first.
    """
    session.rollback()
    _transition(session, record, 'fail the delete of',
                sa.and_(_status_in(DELETING),
                        models.Backup.owner == owner_id()),
                status=ERROR_DELETING, fail_reason=str(error), owner=None,
                lease_expires_at=None)


def finish_delete(session: orm.Session, record: models.Backup) -> None:
    """Its objects are gone: the record goes too (if still ours)."""
    gone = session.execute(
        sa.delete(models.Backup)
        .where(models.Backup.id == record.id, _status_in(DELETING),
               models.Backup.owner == owner_id())
        .execution_options(synchronize_session=False)).rowcount
    session.commit()
    if gone != 1:
        raise _conflict(session, record.id, 'finish the delete of')
    session.expunge(record)


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
    """End a running job ``done``, ``failed`` or ``cancelled``.

    Raises JobConflict if it is no longer running (a shutdown or a
    clean-up ended it first).
    """
    values = {'status': status, 'error': error,
              'finished_at': models.utcnow(), 'lease_expires_at': None}
    if backup_id:
        values['backup_id'] = backup_id
    changed = session.execute(
        sa.update(models.Job)
        .where(models.Job.id == job.id, models.Job.status == RUNNING,
               # The run that claimed it: not a re-queued later one.
               models.Job.attempts == (job.attempts or 0),
               sa.or_(models.Job.owner.is_(None),
                      models.Job.owner == job.owner),
               # A worker whose lease lapsed leaves it to the takeover.
               leases.unexpired(models.Job.lease_expires_at))
        .values(**values)
        .execution_options(synchronize_session=False)).rowcount
    session.commit()
    if changed != 1:
        now = session.scalar(sa.select(models.Job.status)
                             .where(models.Job.id == job.id))
        session.commit()
        raise JobConflict(job_id=job.id, status=now or 'deleted',
                          wanted=status)
    for key, value in values.items():
        orm.attributes.set_committed_value(job, key, value)


def abandon_job(session: orm.Session, job_id: int, error: str) -> None:
    """``cancelled``, if it is still running: its operation did not stop."""
    session.execute(
        sa.update(models.Job)
        .where(models.Job.id == job_id, models.Job.status == RUNNING)
        .values(status=CANCELLED, error=error,
                finished_at=models.utcnow()))
    session.commit()


def cancel_job(session: orm.Session, job_id: int) -> str:
    """``chunkbackup job-cancel``: what it did, in words.

    A queued job ends ``cancelled`` at once (no worker will take it). A
    running one is asked to stop: its backup, if it has begun, goes to
    ``deleting`` (the engine stops and removes what it wrote, as on a
    shutdown) and the job ends ``cancelled`` when its worker sees it. A
    finished job is left as it is.
    """
    taken = session.execute(
        sa.update(models.Job)
        .where(models.Job.id == job_id, models.Job.status == QUEUED)
        .values(status=CANCELLED, error='cancelled by chunkbackup '
                                        'job-cancel before it ran',
                finished_at=models.utcnow(), cancel_requested=True)
        .execution_options(synchronize_session=False)).rowcount
    session.commit()
    if taken:
        return 'cancelled before it ran'
    asked = session.execute(
        sa.update(models.Job)
        .where(models.Job.id == job_id, models.Job.status == RUNNING)
        .values(cancel_requested=True)
        .execution_options(synchronize_session=False)).rowcount
    session.commit()
    if not asked:
        status = session.scalar(sa.select(models.Job.status)
                                .where(models.Job.id == job_id))
        session.commit()
        return 'already %s: nothing to cancel' % (status or 'gone')
    backup_id = session.scalar(sa.select(models.Job.backup_id)
                               .where(models.Job.id == job_id))
    session.commit()
    if backup_id and request_cancel(session, backup_id):
        return ('stopping: backup %s ends error with its objects removed'
                % backup_id)
    return 'stopping: its worker stops it before the backup begins'


def job_cancel_requested(session: orm.Session,
                         job_id: Optional[int]) -> bool:
    """Whether job-cancel asked the job to stop (read fresh)."""
    if job_id is None:
        return False
    asked = session.scalar(sa.select(models.Job.cancel_requested)
                           .where(models.Job.id == job_id))
    session.commit()
    return bool(asked)


# Records left behind by processes that are gone. ---------------------------

def cleanup_interrupted(session: orm.Session,
                        remove_objects: Callable[[models.Backup], int],
                        current_pid: Optional[int] = None,
                        recover_fold: Optional[
                            Callable[[models.Backup], Optional[str]]] = None
                        ) -> List[str]:
    """Clean up what processes that no longer exist left unfinished.

    Backups they were creating or deleting (or that a shutdown had to give
    up on) end ``error`` with their objects deleted; backups they were
    restoring are ``available`` again; their running jobs end ``failed``.
    Then the objects of failed backups whose own clean-up could not finish
    are removed. ``remove_objects(record)`` deletes a backup's objects from
    its store and returns how many it found. Returns the ids of the backups
    set to error and of those whose leftovers were removed.

    An interrupted fold (``folding``) is never treated so: its backups are
    both needed until the fold is finished or rolled back, which
    ``recover_fold(record)`` does (for the backup being folded; see
    chunkbackup.catalog.folds). Without it, folds are left alone.
    """
    cleaned = []
    records = list(session.scalars(
        sa.select(models.Backup).where(models.Backup.owner.isnot(None))))
    now = models.utcnow()
    for record in records:
        if record.lease_expires_at is not None:
            # A worker's: gone only once its lease expired (it may run on
            # another host).
            if record.lease_expires_at > now:
                continue
        elif owner_alive(record.owner, current_pid):
            continue
        if record.status == FOLDING or (record.status == DELETING
                                        and record.fold_target):
            if recover_fold is not None:
                recovered = recover_fold(record)
                if recovered:
                    cleaned.append(recovered)
            continue
        if clean_up_backup(session, record, remove_objects) == ERROR:
            cleaned.append(record.id)
    stale_jobs = list(session.scalars(
        sa.select(models.Job).where(models.Job.status == RUNNING,
                                    models.Job.lease_expires_at.is_(None))))
    for job in stale_jobs:
        if job.owner and owner_alive(job.owner, current_pid):
            continue
        LOG.warning('Job %(id)s was run by %(o)s, which is gone; it failed.',
                    {'id': job.id, 'o': job.owner})
        try:
            finish_job(session, job, FAILED,
                       error='interrupted: %s stopped before the job '
                             'finished' % job.owner)
        except JobConflict as e:
            LOG.info('%s', e)
    cleaned.extend(_remove_leftovers_of_failed(session, remove_objects,
                                               set(cleaned)))
    return cleaned


def clean_up_backup(session: orm.Session, record: models.Backup,
                    remove_objects: Callable[[models.Backup], int],
                    gone: str = 'which is gone') -> Optional[str]:
    """End a backup whose owner is gone (or whose lease expired).

    Creating or deleting: ``error`` with its objects removed; restoring:
    ``available`` again. Taken over only as it was read (a clean-up
    running elsewhere at the same time wins, and this returns None).
    Returns the status it was set to. ``gone`` says why the owner is
    gone, in the logs and the reason.
    """
    owner, status = record.owner, record.status
    if status == FOLDING:
        # Both backups of a fold are needed until it is finished or rolled
        # back: chunkbackup.folding.recover_fold does that, never this.
        LOG.info('Left backup %s alone: it is being folded (chunkbackup '
                 'cleanup finishes or rolls back the fold).', record.id)
        return None
    # Taken over only as it was read: a clean-up running elsewhere at
    # the same time, or a new owner, wins and this one skips it.
    still = sa.and_(models.Backup.status == status,
                    models.Backup.owner == owner)
    try:
        if status in (RESTORING, VERIFYING):
            _transition(session, record, 'clean up', still,
                        status=AVAILABLE, owner=None,
                        lease_expires_at=None)
            LOG.warning('Backup %(id)s was being restored by %(o)s, '
                        '%(gone)s; it is available again (check the '
                        'restore target).',
                        {'id': record.id, 'o': owner, 'gone': gone})
            return AVAILABLE
        if status == AVAILABLE:
            _transition(session, record, 'clean up', still, owner=None,
                        lease_expires_at=None)
            return None
        reason = record.fail_reason
        if status != ERROR or not reason:
            reason = ('interrupted: %s stopped while the backup was %s'
                      % (owner, status))
            if gone != 'which is gone':
                reason = 'interrupted: %s, %s, while the backup was %s' % (
                    owner, gone, status)
        _transition(session, record, 'clean up', still, status=ERROR,
                    fail_reason=reason)
    except StatusConflict as e:
        LOG.info('Left backup %(id)s alone: %(err)s',
                 {'id': record.id, 'err': e})
        return None
    LOG.warning('Backup %(id)s was %(st)s by %(o)s, %(gone)s; removing its '
                'objects and setting it to error.',
                {'id': record.id, 'st': status, 'o': owner, 'gone': gone})
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
        session.execute(
            sa.update(models.Backup)
            .where(models.Backup.id == record.id,
                   models.Backup.status == ERROR,
                   models.Backup.owner == owner)
            # An expired lease stays: the lapsed holder must not end it.
            .values(owner=None)
            .execution_options(synchronize_session=False))
        session.commit()
        orm.attributes.set_committed_value(record, 'owner', None)
    return ERROR


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
