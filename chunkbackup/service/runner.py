"""The runner: ``BackupService``, the loop and the shutdown.

One loop looks at the catalog every ``poll_interval`` seconds, claims due
schedules and queued jobs (atomically, so two services never take the same
one) and runs each in its own thread, at most ``max_concurrent_operations``
at a time. Under eventlet (oslo.service's default backend, the process
monkey-patched) those threads are green threads and the engine moves its
CPU work to native threads itself; under the threading backend they are
native threads.

Shutdown (SIGTERM): no new work is taken; running operations get
``shutdown_grace_period`` seconds to finish; the rest are cancelled through
their backup record (status ``deleting``, which the engine checks between
objects: it stops and removes what it wrote) and end ``error``, never
``available``. An interrupted backup is therefore never a parent. Records
that a dead process left busy are found at the next start (their ``owner``
column names ``host:pid``) and cleaned up the same way.

Several workers (services, on one host or many) share a catalog: each
holds what it runs under a lease that its heartbeat thread renews, and
each pass of the loop takes over the work whose lease expired
(:mod:`chunkbackup.catalog.workers`). A job is claimed with the lock of its
volume; a due schedule takes the volume's lock before it runs.
"""
import datetime
import os
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from oslo_config import cfg
from oslo_log import log as logging
from sqlalchemy import orm

import sqlalchemy as sa

from chunkbackup.catalog import api
from chunkbackup.catalog import leases
from chunkbackup.catalog import models
from chunkbackup.catalog import states
from chunkbackup.catalog import workers
from chunkbackup import exception
from chunkbackup import operations
from chunkbackup import service
from chunkbackup.service import metrics as service_metrics
from chunkbackup.service import retention
from chunkbackup.service import schedules

try:
    # oslo.service >= 4: the abstract base shared by both backends. Importing
    # it does not choose a backend (oslo_service.service would).
    from oslo_service.backend.base import ServiceBase
except ImportError:  # pragma: no cover - oslo.service < 4 (eventlet only)
    from oslo_service.service import ServiceBase

CONF = cfg.CONF
LOG = logging.getLogger(__name__)


def _made_by(schedule_name: str, session: Any, created: Callable
             ) -> Callable:
    """on_created: record the schedule that made the backup, first."""
    def hook(record):
        record.schedule_name = schedule_name
        session.commit()
        created(record)
    return hook


def _synthetic_after(session: Any, spec: Any, record: Any,
                     kwargs: dict) -> Any:
    """A full was due and an incremental made: its synthetic full."""
    from chunkbackup import folding
    try:
        full = folding.create_synthetic_full(
            session, spec.volume, name=kwargs['name'],
            description=kwargs['description'],
            volume_id=kwargs['volume_id'], container=kwargs['container'],
            schedule_name=spec.name)
    except Exception as e:
        session.rollback()
        LOG.error('Schedule %(s)s: the synthetic full of backup %(id)s '
                  'failed (%(err)s); the next run tries again.',
                  {'s': spec.name, 'id': record.id,
                   'err': getattr(e, 'msg', None) or e})
        return record
    LOG.info('Schedule %(s)s: synthetic full %(id)s made from %(of)s.',
             {'s': spec.name, 'id': full.id, 'of': record.id})
    return full


class Operation:
    """One job or scheduled backup, running in its own thread."""

    def __init__(self, label: str,
                 run: Callable[[orm.Session, 'Operation'], None],
                 job_id: Optional[int] = None,
                 schedule: Optional[str] = None):
        self.label = label
        self.run = run
        self.job_id = job_id
        self.schedule = schedule
        self.backup_id: Optional[str] = None
        # The volume this operation holds (workers.lock_volume).
        self.volume_lock: Optional[str] = None
        self.kind = 'backup'
        # The run of the job (jobs.attempts when it was claimed).
        self.attempts = 0
        self.cancel_requested = False
        # Set when the shutdown gave up waiting and recorded its end.
        self.abandoned = False
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread: Optional[threading.Thread] = None


def _request_cancel(catalog: api.Catalog, backup_id: str) -> bool:
    """states.request_cancel in a session of its own."""
    session = catalog.session()
    try:
        return states.request_cancel(session, backup_id)
    finally:
        session.close()


class BackupService(ServiceBase):
    """Runs queued jobs and scheduled backups; see the module docstring."""

    def __init__(self, conf: cfg.ConfigOpts = CONF):
        super().__init__()
        # Nothing is opened here: under the threading backend this object
        # is built in the parent process and forked into the worker.
        self.conf = conf
        # Set by start(); the methods below run only once it has.
        self.catalog: Optional[api.Catalog] = None
        self.owner: Optional[str] = None
        self.schedules: List[schedules.ScheduleSpec] = []
        self._last_run: Dict[tuple, datetime.datetime] = {}
        self._ops: List[Operation] = []
        self._ops_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._stop_started = False
        self._reload_requested = False
        self._loop_thread: Optional[threading.Thread] = None
        self._heartbeat_thread: Optional[threading.Thread] = None
        self.stragglers: List[Operation] = []
        self.metrics: Optional[service_metrics.Metrics] = None

    @property
    def _catalog(self) -> api.Catalog:
        assert self.catalog is not None, 'start() opens the catalog'
        return self.catalog

    @property
    def _owner(self) -> str:
        assert self.owner is not None, 'start() names the owner'
        return self.owner

    @property
    def _metrics(self) -> service_metrics.Metrics:
        assert self.metrics is not None, 'start() makes the metrics'
        return self.metrics

    @property
    def _me(self) -> str:
        return self.owner or states.owner_id()

    @property
    def options(self) -> cfg.ConfigOpts.GroupAttr:
        return self.conf[service.GROUP]

    # ServiceBase -----------------------------------------------------------

    def start(self) -> None:
        self.owner = states.owner_id()
        LOG.info('chunkbackup-backup %s starting.', self.owner)
        leases.enable(self.options.lease_seconds)
        self.metrics = service_metrics.Metrics()
        operations.DRIVER_OBSERVERS.append(self.metrics.storage.observe)
        if self.options.metrics_port:
            self.metrics.serve(self.options.metrics_port,
                               self.options.metrics_host)
            LOG.info('Serving metrics at http://%s:%d/metrics.',
                     self.options.metrics_host, self.options.metrics_port)
        self.catalog = api.Catalog()
        session = self.catalog.session()
        try:
            workers.register(session, self.owner, self.options.lease_seconds)
        finally:
            session.close()
        self._heartbeat_thread = threading.Thread(
            target=self._heartbeat, name='chunkbackup-heartbeat', daemon=True)
        self._heartbeat_thread.start()
        session = self.catalog.session()
        try:
            cleaned = operations.cleanup_interrupted(
                session, current_pid=os.getpid())
            if cleaned:
                LOG.info('Cleaned up %d interrupted backup(s).', len(cleaned))
        except Exception:
            LOG.exception('The clean-up of interrupted backups failed; '
                          'going on.')
        finally:
            session.close()
        self._load_schedules()
        self._loop_thread = threading.Thread(
            target=self._loop, name='chunkbackup-scheduler', daemon=True)
        self._loop_thread.start()

    def wait(self) -> None:
        self._stopped.wait()

    def reset(self) -> None:
        """SIGHUP: oslo.service re-read the configuration files."""
        LOG.info('Configuration reloaded; re-reading the schedules.')
        service.ensure_shutdown_timeout(self.conf)
        self._reload_requested = True
        self._wake.set()

    def stop(self, graceful: bool = True) -> None:
        if self._stop_started:
            self._stopped.wait()
            return
        self._stop_started = True
        try:
            self._shutdown()
        finally:
            self._stopped.set()
            self._deregister()

    def _deregister(self) -> None:
        if self.catalog is None:
            return
        session = self.catalog.session()
        try:
            workers.stopped(session, self._owner)  # set before the catalog
        except Exception:
            LOG.exception('Could not record that this worker stopped.')
        finally:
            session.close()
        # This process takes no more leases (tests start services in it).
        leases.disable()
        if self.metrics is not None:
            if self.metrics.storage.observe in operations.DRIVER_OBSERVERS:
                operations.DRIVER_OBSERVERS.remove(
                    self.metrics.storage.observe)
            self.metrics.close()

    # The loop ----------------------------------------------------------------

    def _heartbeat(self) -> None:
        """Renew this worker's heartbeat and leases, a third of a lease."""
        interval = self.options.lease_seconds / 3.0
        while not self._stopped.wait(interval):
            session = self._catalog.session()
            try:
                workers.heartbeat(session, self._owner, len(self._running()))
            except Exception as e:
                LOG.warning('The heartbeat failed (%s); its leases lapse '
                            'after [backup_service] lease_seconds = %s.',
                            getattr(e, 'orig', None) or e,
                            self.options.lease_seconds)
            finally:
                session.close()

    def _observe(self) -> None:
        """Take over expired leases; refresh the catalog's gauges."""
        session = self._catalog.session()
        try:
            taken = workers.take_over_expired(
                session, operations._remove_objects,
                self.options.job_attempts)
            for kind, count in (('backup', len(taken.backups)),
                                ('restore', len(taken.restores)),
                                ('job', len(taken.requeued) +
                                 len(taken.failed) + len(taken.done)),
                                ('volume', taken.volume_locks)):
                if count:
                    self._metrics.taken_over.labels(kind).inc(count)
            self._metrics.queue_depth.set(workers.queue_depth(session))
            self._metrics.running.set(len(self._running()))
            rows = session.execute(
                sa.select(models.Backup.display_name,
                          sa.func.max(models.Backup.created_at))
                .where(models.Backup.status == states.AVAILABLE,
                       models.Backup.display_name.like(
                           schedules.SCHEDULE_PREFIX + '%'))
                .group_by(models.Backup.display_name)).all()
            session.commit()
            for name, when in rows:
                self._metrics.schedule_last_success.labels(
                    name[len(schedules.SCHEDULE_PREFIX):]).set(
                    when.replace(tzinfo=datetime.timezone.utc).timestamp())
        finally:
            session.close()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                if self._reload_requested:
                    self._reload_requested = False
                    self._load_schedules()
                self._reap()
                self._observe()
                self._fill()
            except Exception:
                # A locked or unreachable catalog must not end the service.
                LOG.exception('Looking for work failed; trying again in '
                              '%s s.', self.options.poll_interval)
            self._wake.wait(self.options.poll_interval)
            self._wake.clear()

    def _load_schedules(self) -> None:
        specs = schedules.config_schedules(self.conf)
        session = self._catalog.session()
        try:
            for spec in specs:
                if spec.key not in self._last_run:
                    last = schedules.last_scheduled_backup(session, spec)
                    if last is not None:
                        self._last_run[spec.key] = last
        finally:
            session.close()
        self.schedules = specs
        LOG.info('Schedules from the configuration: %s',
                 ', '.join('%s (%s every %d s)' % (s.name, s.volume,
                                                   s.interval)
                           for s in specs) or 'none')

    def _reap(self) -> None:
        with self._ops_lock:
            self._ops = [op for op in self._ops if not op.done.is_set()]

    def _running(self) -> List[Operation]:
        with self._ops_lock:
            return [op for op in self._ops if not op.done.is_set()]

    def _fill(self) -> None:
        free = self.options.max_concurrent_operations - len(self._running())
        if free <= 0:
            return
        session = self._catalog.session()
        try:
            for spec, volume_lock in self._due_schedules(session):
                if free <= 0 or self._stopping.is_set():
                    workers.unlock_volume(session, volume_lock, self._me)
                    return
                op = Operation(
                    'scheduled backup %s of %s' % (spec.name, spec.volume),
                    self._scheduled_backup_runner(spec),
                    schedule=spec.name)
                op.volume_lock = volume_lock
                self._start(op)
                free -= 1
            while free > 0 and not self._stopping.is_set():
                job = workers.claim_job(session, self._owner,
                                        self._volume_of_job)
                if job is None:
                    return
                op = Operation('job %d (%s, run %d)' % (job.id, job.kind,
                                                        job.attempts),
                               self._job_runner(job.id), job_id=job.id)
                op.volume_lock = job.volume_lock
                op.attempts = job.attempts
                self._start(op)
                free -= 1
        finally:
            session.close()

    @staticmethod
    def _volume_of_job(job: models.Job) -> Optional[str]:
        params = job.params or {}
        if not params.get('volume'):
            return None
        return params.get('volume_id') or operations.volume_id_of(
            operations.volume_name(params['volume']))

    def _due_schedules(self, session: orm.Session
                       ) -> Iterable[Tuple[schedules.ScheduleSpec, str]]:
        """Due schedules, each with its volume locked for this worker."""
        running = {op.schedule for op in self._running() if op.schedule}
        names = {s.name for s in self.schedules}
        specs = list(self.schedules)
        for spec in schedules.catalog_schedules(session):
            if spec.name in names:
                LOG.warning('Schedule %s is both in the configuration and '
                            'in the catalog; the configuration wins.',
                            spec.name)
                continue
            specs.append(spec)
        for spec in specs:
            if spec.name in running:
                continue
            now = models.utcnow()
            last = self._last_run.get(spec.key)
            if spec.source == 'config' and last is not None and \
                    last + datetime.timedelta(seconds=spec.interval) > now:
                continue
            volume_id = spec.effective_volume_id
            if not workers.lock_volume(session, volume_id, self._me):
                continue  # another worker backs the volume up now
            if spec.source == 'catalog':
                if schedules.claim_catalog_schedule(session, spec, now):
                    yield spec, volume_id
                else:
                    workers.unlock_volume(session, volume_id, self._me)
                continue
            # Workers sharing the configuration: the newest backup of the
            # schedule, read under the volume's lock, says if it is due.
            made = schedules.last_scheduled_backup(session, spec)
            session.commit()
            if made is not None and (last is None or made > last):
                self._last_run[spec.key] = last = made
            if last is None or last + datetime.timedelta(
                    seconds=spec.interval) <= now:
                self._last_run[spec.key] = now
                yield spec, volume_id
            else:
                workers.unlock_volume(session, volume_id, self._me)

    def _start(self, op: Operation) -> None:
        LOG.info('Starting %s.', op.label)
        op.thread = threading.Thread(target=self._execute, args=(op,),
                                     name='chunkbackup-op', daemon=True)
        with self._ops_lock:
            self._ops.append(op)
        op.thread.start()

    # Operations -----------------------------------------------------------

    def _execute(self, op: Operation) -> None:
        session = self._catalog.session()
        status, error = states.DONE, None
        started = time.monotonic()
        try:
            op.run(session, op)
        except leases.LeaseLost as e:
            session.rollback()
            status, error = 'lease_lost', e.msg
        except exception.ChunkBackupError as e:
            session.rollback()
            status, error = states.FAILED, e.msg
        except Exception as e:
            session.rollback()
            status, error = states.FAILED, '%s: %s' % (type(e).__name__, e)
            # Not one of our errors (a bug?): keep the traceback.
            LOG.exception('%s failed unexpectedly.', op.label)
        if op.cancel_requested and status != states.DONE:
            status = states.CANCELLED
            error = ('cancelled: the service was stopped and its '
                     'shutdown_grace_period ran out (%s)' % error)
        elif status == states.FAILED and self._job_cancelled(session, op):
            status = states.CANCELLED
            error = 'cancelled by chunkbackup job-cancel (%s)' % error
        if status == states.DONE:
            LOG.info('%s finished.', op.label)
        elif status in (states.CANCELLED, 'lease_lost'):
            LOG.warning('%s: %s', op.label, error)
        else:
            LOG.error('%s failed: %s', op.label, error)
        self._count(session, op, status, time.monotonic() - started)
        try:
            if op.volume_lock:
                workers.unlock_volume(session, op.volume_lock, self._owner,
                                      lapsed_only=status == 'lease_lost')
            if status == 'lease_lost' and op.job_id is not None and \
                    workers.give_up_job(session, op.job_id, self._owner,
                                        op.attempts):
                LOG.warning('%s: its job is handed to the next takeover.',
                            op.label)
            if op.abandoned or status == 'lease_lost':
                # The shutdown has recorded how this ended, or the worker
                # that took the lease over does; keep it.
                return
            if status == states.CANCELLED and op.backup_id:
                # Say why in the record, not only that it was cancelled.
                assert error is not None  # set with the cancelled status
                states.explain_failure(session, op.backup_id, error)
            if op.job_id is not None:
                job = session.get(models.Job, op.job_id)
                if job is not None:
                    states.finish_job(session, job, status, error=error,
                                      backup_id=op.backup_id)
            if op.schedule is not None:
                schedules.record_result(session, op.schedule, status, error,
                                        op.backup_id)
        except Exception:
            LOG.exception('Could not record the end of %s.', op.label)
        finally:
            session.close()
            op.done.set()
            self._wake.set()

    @staticmethod
    def _job_cancelled(session, op: Operation) -> bool:
        try:
            return states.job_cancel_requested(session, op.job_id)
        except Exception:
            LOG.exception('Could not read whether job %s was cancelled.',
                          op.job_id)
            session.rollback()
            return False

    def _count(self, session, op: Operation, status: str,
               seconds: float) -> None:
        """The metrics of an operation that ended."""
        try:
            self._metrics.operations.labels(op.kind, status).inc()
            self._metrics.durations.labels(op.kind).observe(seconds)
            if status == states.DONE and op.backup_id:
                stats = session.scalar(
                    sa.select(models.Backup.stats)
                    .where(models.Backup.id == op.backup_id))
                session.commit()
                read, stored = service_metrics.stats_bytes(stats)
                self._metrics.bytes_read.inc(read)
                self._metrics.bytes_stored.inc(stored)
        except Exception:
            LOG.exception('Could not count the end of %s.', op.label)
            session.rollback()

    def _created(self, session, op: Operation):
        """on_created hook: remember the record, honour an early cancel."""
        def created(record):
            with op.lock:
                op.backup_id = record.id
                cancelled = op.cancel_requested
            if not workers.still_held(session, self._me, record.id,
                                      op.job_id, op.attempts,
                                      op.volume_lock):
                # Paused past the lease before the backup began: the
                # job or volume went to another worker.
                lost = leases.LeaseLost(what='backup %s' % record.id,
                                        owner=self._me)
                states.fail_backup(session, record, lost)
                raise lost
            if op.job_id is not None:
                # Named before the cancel request is read: job-cancel
                # sets the request, then reads the backup id.
                states.link_job_backup(session, op.job_id, record.id)
                if states.job_cancel_requested(session, op.job_id):
                    cancelled = True
            if cancelled:
                _request_cancel(self.catalog, record.id)
        return created

    def _job_runner(self, job_id: int) -> Callable:
        def run(session, op):
            job = session.get(models.Job, job_id)
            if job.kind != 'backup':
                raise operations.OperationError(
                    reason='job %d is of kind %r; this service runs backup '
                           'jobs' % (job.id, job.kind))
            params = dict(job.params or {})
            if not params.get('volume'):
                raise operations.OperationError(
                    reason='job %d names no volume' % job.id)
            operations.create_backup(
                session, params['volume'],
                incremental=bool(params.get('incremental')),
                fallback_full=bool(params.get('incremental_fallback')),
                name=params.get('name'),
                description=params.get('description'),
                volume_id=params.get('volume_id'),
                container=params.get('container'),
                changed_extents=params.get('changed_extents'),
                dirty_bitmap=params.get('dirty_bitmap'),
                on_created=self._created(session, op))
        return run

    def _scheduled_backup_runner(self, spec: schedules.ScheduleSpec
                                 ) -> Callable:
        def run(session, op):
            volume_id = spec.effective_volume_id
            incremental = schedules.wants_incremental(session, spec)
            # A full is due: with synthetic_full, an incremental (reading
            # only changes) and then a synthetic full of it.
            synthetic = (spec.synthetic_full and not incremental and
                         api.latest_available(
                             session, volume_id,
                             operations.driver_name()) is not None)
            incremental = incremental or synthetic
            kwargs = dict(name=schedules.schedule_backup_name(spec.name),
                          description='scheduled backup (%s schedule %s)'
                                      % (spec.source, spec.name),
                          volume_id=volume_id, container=spec.container,
                          on_created=_made_by(spec.name, session,
                                              self._created(session, op)))
            maps = {}
            if incremental:
                maps = dict(dirty_bitmap=spec.dirty_bitmap)
                if spec.changed_extents and \
                        os.path.exists(spec.changed_extents):
                    maps['changed_extents'] = spec.changed_extents
            try:
                record = operations.create_backup(
                    session, spec.volume, incremental=incremental,
                    **maps, **kwargs)
            except exception.ParentMismatch as e:
                if op.cancel_requested:
                    raise
                LOG.warning('Schedule %(s)s: %(err)s; making a full backup '
                            'instead.', {'s': spec.name, 'err': e.msg})
                record = operations.create_backup(
                    session, spec.volume, incremental=False, **kwargs)
            LOG.info('Schedule %(s)s: %(kind)s backup %(id)s of %(vol)s is '
                     'available.', {'s': spec.name, 'id': record.id,
                                    'vol': spec.volume,
                                    'kind': 'incremental'
                                    if record.parent_id else 'full'})
            if synthetic and record.parent_id:
                record = _synthetic_after(session, spec, record, kwargs)
            try:
                retention.apply_retention(
                    session, volume_id, spec.retain_full,
                    should_stop=lambda: op.cancel_requested,
                    schedule_name=spec.name, keep_policy=spec.keep_policy,
                    scope=spec.retention_scope)
            except Exception:
                LOG.exception('Retention of schedule %s failed; the next '
                              'run tries again.', spec.name)
                session.rollback()
        return run

    # Shutdown -------------------------------------------------------------

    def _shutdown(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._loop_thread is not None:
            self._loop_thread.join()
        running = self._running()
        if not running:
            LOG.info('Stopped; no operation was running.')
            return
        grace = self.options.shutdown_grace_period
        LOG.info('Stopping: waiting up to %(g)d s for %(n)d running '
                 'operation(s): %(ops)s.',
                 {'g': grace, 'n': len(running),
                  'ops': ', '.join(op.label for op in running)})
        self._wait_for(running, grace)
        left = [op for op in running if not op.done.is_set()]
        if not left:
            LOG.info('Stopped; every running operation finished.')
            return
        for op in left:
            LOG.warning('Cancelling %s: the grace period is over.', op.label)
            with op.lock:
                op.cancel_requested = True
                backup_id = op.backup_id
            if backup_id:
                try:
                    _request_cancel(self._catalog, backup_id)
                except Exception:
                    LOG.exception('Could not cancel backup %s.', backup_id)
        self._wait_for(left, service.CANCEL_WAIT)
        self.stragglers = [op for op in left if not op.done.is_set()]
        for op in self.stragglers:
            self._give_up(op)
        LOG.info('Stopped; %d operation(s) cancelled.', len(left))

    @staticmethod
    def _wait_for(ops: List[Operation], seconds: float) -> None:
        deadline = time.monotonic() + seconds
        for op in ops:
            op.done.wait(max(0.0, deadline - time.monotonic()))

    def _give_up(self, op: Operation) -> None:
        """An operation that did not stop in time: record the truth.

        Its backup ends error, with the owner left in place so that the
        next start removes its objects (this process may still be writing
        some until it exits).
        """
        LOG.error('%s did not stop in time; its backup is set to error and '
                  'its objects are removed at the next start.', op.label)
        op.abandoned = True
        session = self._catalog.session()
        try:
            if op.backup_id:
                states.abandon_backup(
                    session, op.backup_id,
                    'interrupted: the service stopped before the backup '
                    'finished')
            if op.job_id is not None:
                states.abandon_job(session, op.job_id,
                                   'cancelled: the service stopped')
        except Exception:
            LOG.exception('Could not record the end of %s.', op.label)
        finally:
            session.close()
