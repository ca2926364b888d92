"""Service workers sharing one catalog: heartbeats, claims and takeovers.

Each ``chunkbackup-backup`` process is a worker, named ``host:pid`` as in
the ``owner`` columns of what it holds. It registers in the ``workers``
table and, every third of ``[backup_service] lease_seconds``, renews in
one transaction its heartbeat and the leases of its backups, jobs and
volume locks (:mod:`chunkbackup.catalog.leases`). Only unexpired leases are
renewed: once one lapsed, the work is another worker's to take over
(:func:`take_over_expired`):

- a backup being created or deleted ends ``error`` with its objects
  removed (never a parent); one being restored is ``available`` again;
- a job goes back to the queue, up to ``job_attempts`` runs, then ends
  ``failed`` with the reason (``done`` if its backup had become
  available: the work is not made twice);
- the volume lock goes.

Jobs are claimed one conditional statement a claim (``FOR UPDATE SKIP
LOCKED`` on PostgreSQL and MariaDB, the conditional update on SQLite),
together with the lock of their volume, so a volume is never backed up
by two workers at once.
"""
import dataclasses
import datetime
import os
import socket
from typing import Callable, List, Optional

from oslo_log import log as logging
import sqlalchemy as sa
from sqlalchemy import orm

from chunkbackup.catalog import leases
from chunkbackup.catalog import models
from chunkbackup.catalog import states

LOG = logging.getLogger(__name__)

UP = 'up'
DOWN = 'down'
STOPPED = 'stopped'


# The holder's side. -------------------------------------------------------

def renew_backup_lease(session: orm.Session, record: models.Backup) -> None:
    """Renew this worker's lease on ``record``, or raise LeaseLost.

    Called by ``Backup.refresh()`` (the engine's look between objects and
    just before ``_metadata``): a worker whose lease lapsed stops there.
    """
    now = models.utcnow()
    me = states.owner_id()
    expires = leases.expiry(now)
    if record.owner != me or expires is None:
        raise leases.LeaseLost(what='backup %s' % record.id,
                               owner=record.owner or me)
    renewed = session.execute(
        sa.update(models.Backup)
        .where(models.Backup.id == record.id,
               models.Backup.owner == me,
               models.Backup.lease_expires_at > now)
        .values(lease_expires_at=expires)
        .execution_options(synchronize_session=False)).rowcount
    session.commit()
    if renewed != 1:
        raise leases.LeaseLost(what='backup %s' % record.id, owner=me)
    orm.attributes.set_committed_value(record, 'lease_expires_at', expires)


def register(session: orm.Session, name: str, seconds: float) -> None:
    """This worker is up (a row left by an earlier process is replaced)."""
    now = models.utcnow()
    session.execute(sa.delete(models.Worker)
                    .where(models.Worker.name == name))
    host, _, pid = name.rpartition(':')
    session.add(models.Worker(name=name, host=host or socket.gethostname(),
                              pid=int(pid or os.getpid()), started_at=now,
                              heartbeat_at=now, lease_seconds=seconds,
                              running_operations=0))
    session.commit()


def heartbeat(session: orm.Session, name: str, running: int) -> bool:
    """Renew the heartbeat and every unexpired lease this worker holds.

    Returns False when a lease this worker still counts as running was
    found expired (the caller's operations find LeaseLost themselves).
    """
    now = models.utcnow()
    expires = leases.expiry(now)
    updated = session.execute(
        sa.update(models.Worker).where(models.Worker.name == name)
        .values(heartbeat_at=now, running_operations=running,
                stopped_at=None)).rowcount
    if not updated:
        session.commit()
        register(session, name, leases.lease_seconds() or 0)
    for table in (models.Backup, models.Job, models.VolumeLock):
        session.execute(
            sa.update(table)
            .where(table.owner == name, table.lease_expires_at > now)
            .values(lease_expires_at=expires)
            .execution_options(synchronize_session=False))
    session.commit()
    return True


def stopped(session: orm.Session, name: str) -> None:
    session.execute(sa.update(models.Worker)
                    .where(models.Worker.name == name)
                    .values(stopped_at=models.utcnow(),
                            running_operations=0))
    session.commit()


@dataclasses.dataclass
class WorkerView:
    name: str
    host: str
    pid: int
    started_at: datetime.datetime
    heartbeat_at: datetime.datetime
    running_operations: int
    state: str


def list_workers(session: orm.Session) -> List[WorkerView]:
    """Every worker that registered, ``up``, ``down`` or ``stopped``.

    Down: its heartbeat is older than its lease (its work is taken over).
    """
    now = models.utcnow()
    views = []
    for w in session.scalars(sa.select(models.Worker)
                             .order_by(models.Worker.started_at)):
        if w.stopped_at is not None:
            state = STOPPED
        elif w.heartbeat_at + datetime.timedelta(
                seconds=w.lease_seconds) < now:
            state = DOWN
        else:
            state = UP
        views.append(WorkerView(w.name, w.host, w.pid, w.started_at,
                                w.heartbeat_at, w.running_operations, state))
    session.commit()
    return views


# Volumes and claims. ------------------------------------------------------

def _locks_rows(session: orm.Session) -> bool:
    return session.get_bind().dialect.name in ('postgresql', 'mysql',
                                               'mariadb')


def lock_volume(session: orm.Session, volume_id: str, owner: str) -> bool:
    """Take the volume for one backup (False: another worker has it)."""
    try:
        session.execute(sa.insert(models.VolumeLock).values(
            volume_id=volume_id, owner=owner,
            lease_expires_at=leases.expiry(), acquired_at=models.utcnow()))
        session.commit()
    except sa.exc.IntegrityError:
        session.rollback()
        return False
    return True


def unlock_volume(session: orm.Session, volume_id: str, owner: str, *,
                  lapsed_only: bool = False) -> None:
    """Release ``owner``'s lock on the volume.

    ``lapsed_only``: for a run that lost its lease. Its job may have been
    re-queued and claimed again by this same worker, whose new run holds a
    fresh lock under the same owner name; only a lock that lapsed is the
    old run's to release.
    """
    query = sa.delete(models.VolumeLock).where(
        models.VolumeLock.volume_id == volume_id,
        models.VolumeLock.owner == owner)
    if lapsed_only:
        query = query.where(models.VolumeLock.lease_expires_at.isnot(None),
                            models.VolumeLock.lease_expires_at <=
                            models.utcnow())
    session.execute(query)
    session.commit()


def claim_job(session: orm.Session, owner: str,
              volume_of: Callable[[models.Job], Optional[str]]
              ) -> Optional[models.Job]:
    """Take the oldest queued job whose volume is free, with its volume.

    On PostgreSQL and MariaDB the candidate row is locked ``FOR UPDATE
    SKIP LOCKED`` (workers claiming at once take different jobs, nobody
    waits); on SQLite the claim is the conditional UPDATE. The job and
    the volume lock are taken in one transaction.
    """
    skipped: List[int] = []
    for _ in range(50):
        query = (sa.select(models.Job).where(models.Job.status ==
                                             states.QUEUED)
                 .order_by(models.Job.id).limit(1))
        if skipped:
            query = query.where(models.Job.id.notin_(skipped))
        if _locks_rows(session):
            query = query.with_for_update(skip_locked=True)
        job = session.scalars(query).first()
        if job is None:
            session.commit()
            return None
        volume_id = volume_of(job)
        now = models.utcnow()
        try:
            if volume_id:
                session.execute(sa.insert(models.VolumeLock).values(
                    volume_id=volume_id, owner=owner,
                    lease_expires_at=leases.expiry(now), acquired_at=now))
            taken = session.execute(
                sa.update(models.Job)
                .where(models.Job.id == job.id,
                       models.Job.status == states.QUEUED)
                .values(status=states.RUNNING, owner=owner,
                        started_at=now, attempts=models.Job.attempts + 1,
                        lease_expires_at=leases.expiry(now))
                .execution_options(synchronize_session=False)).rowcount
        except sa.exc.IntegrityError:
            # Its volume is being backed up: leave the job queued.
            session.rollback()
            skipped.append(job.id)
            continue
        except sa.exc.OperationalError as e:
            # A deadlock or lock timeout: the next poll tries again.
            session.rollback()
            LOG.info('Claiming a job lost a race (%s); trying again later.',
                     getattr(e, 'orig', e))
            return None
        if not taken:
            session.rollback()
            continue
        session.commit()
        session.refresh(job)
        job.volume_lock = volume_id
        return job
    session.commit()
    return None


def still_held(session: orm.Session, owner: str, backup_id: str,
               job_id: Optional[int], attempts: int,
               volume_id: Optional[str]) -> bool:
    """Whether this run still holds its job and volume; link the backup.

    Checked as a backup begins: a worker paused past its lease before
    that finds its job re-queued (or run by another) and its volume gone.
    """
    now = models.utcnow()
    held = True
    if job_id is not None:
        held = session.execute(
            sa.update(models.Job)
            .where(models.Job.id == job_id,
                   models.Job.status == states.RUNNING,
                   models.Job.owner == owner,
                   models.Job.attempts == attempts,
                   leases.unexpired(models.Job.lease_expires_at, now))
            .values(backup_id=backup_id)
            .execution_options(synchronize_session=False)).rowcount == 1
    if held and volume_id:
        held = session.scalar(
            sa.select(sa.func.count()).select_from(models.VolumeLock)
            .where(models.VolumeLock.volume_id == volume_id,
                   models.VolumeLock.owner == owner,
                   leases.unexpired(models.VolumeLock.lease_expires_at,
                                    now))) == 1
    session.commit()
    return held


def give_up_job(session: orm.Session, job_id: int, owner: str,
                attempts: int) -> bool:
    """Let the lease of a job go whose run stopped on LeaseLost.

    The heartbeat renews every unexpired lease of a live worker, so a job
    whose run ended while its row still named this run would stay
    ``running`` for ever. Expired now, the next takeover treats it as any
    lapsed job (re-queued up to ``job_attempts``). A job that was
    re-queued or claimed again since is not this run's: it is left alone.
    """
    changed = session.execute(
        sa.update(models.Job)
        .where(models.Job.id == job_id,
               models.Job.status == states.RUNNING,
               models.Job.owner == owner,
               models.Job.attempts == attempts,
               models.Job.lease_expires_at.isnot(None))
        .values(lease_expires_at=models.utcnow())
        .execution_options(synchronize_session=False)).rowcount
    session.commit()
    return changed == 1


def queue_depth(session: orm.Session) -> int:
    depth = session.scalar(sa.select(sa.func.count())
                           .select_from(models.Job)
                           .where(models.Job.status == states.QUEUED))
    session.commit()
    return int(depth or 0)


# Taking over. -------------------------------------------------------------

@dataclasses.dataclass
class Takeover:
    """What one pass of :func:`take_over_expired` took over."""

    backups: List[str] = dataclasses.field(default_factory=list)
    restores: List[str] = dataclasses.field(default_factory=list)
    requeued: List[int] = dataclasses.field(default_factory=list)
    failed: List[int] = dataclasses.field(default_factory=list)
    done: List[int] = dataclasses.field(default_factory=list)
    volume_locks: int = 0

    @property
    def count(self) -> int:
        return (len(self.backups) + len(self.restores) + len(self.requeued)
                + len(self.failed) + len(self.done) + self.volume_locks)


def take_over_expired(session: orm.Session,
                      remove_objects: Callable[[models.Backup], int],
                      job_attempts: int) -> Takeover:
    """Clean up the work of workers whose leases expired (see module)."""
    result = Takeover()
    now = models.utcnow()
    # Leases are renewed by UPDATEs: read the stored values, not a copy
    # this session may hold (lapsed() is judged from them).
    fresh = {'populate_existing': True}

    def lapsed(row) -> bool:
        # A worker of this host that is gone needs no wait for its lease.
        return row.lease_expires_at < now or not states.owner_alive(
            row.owner)
    expired_backups = [r for r in session.scalars(
        sa.select(models.Backup)
        .where(models.Backup.owner.isnot(None),
               models.Backup.lease_expires_at.isnot(None))
        .execution_options(**fresh)) if lapsed(r)]
    session.commit()
    for record in expired_backups:
        if record.lease_expires_at < now:
            gone = 'whose lease expired at %s' % record.lease_expires_at
        else:
            gone = 'which is gone'
        was = record.status
        ended = states.clean_up_backup(session, record, remove_objects,
                                       gone=gone)
        if was not in states.BUSY_STATUSES:
            # An error whose objects an earlier takeover (here or in
            # another worker) was still removing: not a takeover again.
            continue
        if ended == states.ERROR:
            result.backups.append(record.id)
        elif ended == states.AVAILABLE:
            result.restores.append(record.id)
    expired_jobs = [j for j in session.scalars(
        sa.select(models.Job)
        .where(models.Job.status == states.RUNNING,
               models.Job.lease_expires_at.isnot(None))
        .execution_options(**fresh)) if lapsed(j)]
    session.commit()
    for job in expired_jobs:
        _take_over_job(session, job, job_attempts, result, now)
    locks = [lock for lock in session.scalars(
        sa.select(models.VolumeLock)
        .where(models.VolumeLock.lease_expires_at.isnot(None))
        .execution_options(**fresh))
        if lapsed(lock)]
    session.commit()
    for lock in locks:
        result.volume_locks += session.execute(
            sa.delete(models.VolumeLock)
            .where(models.VolumeLock.volume_id == lock.volume_id,
                   models.VolumeLock.owner == lock.owner,
                   models.VolumeLock.lease_expires_at ==
                   lock.lease_expires_at)).rowcount
    session.commit()
    return result


def _take_over_job(session, job, job_attempts, result, now) -> None:
    made = None
    if job.backup_id:
        row = session.execute(
            sa.select(models.Backup.status, models.Backup.owner,
                      models.Backup.lease_expires_at)
            .where(models.Backup.id == job.backup_id)).first()
        if row is not None and row.status == states.CREATING and \
                row.owner == job.owner and row.lease_expires_at is not None \
                and row.lease_expires_at > now:
            # Only the job's heartbeat lapsed: its worker still renews the
            # backup's lease, so the backup may yet become available. The
            # job waits until it does (then it is done) or that lease
            # lapses too (then it can no longer finish, and is re-queued):
            # re-queued now, its volume could be backed up twice.
            session.rollback()
            return
        made = row.status if row is not None else None
    attempts = job.attempts or 0
    lapse = ('%s %s during run %d of %d'
             % (job.owner, 'stopped' if job.lease_expires_at >= now
                else 'let its lease expire', attempts, job_attempts))
    if made == states.AVAILABLE:
        values = dict(status=states.DONE, finished_at=models.utcnow(),
                      error='done: its backup became available before %s'
                            % lapse)
        outcome = result.done
    elif attempts < job_attempts:
        values = dict(status=states.QUEUED, owner=None, started_at=None,
                      backup_id=None, error='re-queued: %s' % lapse)
        outcome = result.requeued
    else:
        values = dict(status=states.FAILED, finished_at=models.utcnow(),
                      error='failed: %s ([backup_service] job_attempts = '
                            '%d); the last backup, %s, ended error'
                            % (lapse, job_attempts, job.backup_id or
                               'not begun'))
        outcome = result.failed
    changed = session.execute(
        sa.update(models.Job)
        .where(models.Job.id == job.id,
               models.Job.status == states.RUNNING,
               models.Job.owner == job.owner,
               models.Job.attempts == attempts,
               models.Job.lease_expires_at == job.lease_expires_at)
        .values(lease_expires_at=None, **values)
        .execution_options(synchronize_session=False)).rowcount
    session.commit()
    if changed == 1:
        LOG.warning('Job %(id)d: %(lapse)s; it is %(st)s now.',
                    {'id': job.id, 'lapse': lapse, 'st': values['status']})
        outcome.append(job.id)
