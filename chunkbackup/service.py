"""The ``chunkbackup-backup`` service: queued jobs, schedules, retention.

One loop looks at the catalog every ``poll_interval`` seconds, claims due
schedules and queued jobs (atomically, so two services never take the same
one) and runs each in its own thread, at most ``max_concurrent_operations``
at a time. Under eventlet (oslo.service's default backend, the process
monkey-patched) those threads are green threads and the engine moves its
CPU work to native threads itself; under the threading backend they are
native threads.

Schedules come from ``[schedule:<name>]`` sections of the configuration
and from the catalog's ``schedules`` table. After each scheduled backup,
retention deletes whole expired chains.

Shutdown (SIGTERM): no new work is taken; running operations get
``shutdown_grace_period`` seconds to finish; the rest are cancelled through
their backup record (status ``deleting``, which the engine checks between
objects: it stops and removes what it wrote) and end ``error``, never
``available``. An interrupted backup is therefore never a parent. Records
that a dead process left busy are found at the next start (their ``owner``
column names ``host:pid``) and cleaned up the same way.
"""
import dataclasses
import datetime
import os
import threading
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence

from oslo_config import cfg
from oslo_log import log as logging
import sqlalchemy as sa

from chunkbackup.catalog import api
from chunkbackup.catalog import models
from chunkbackup import exception
from chunkbackup import jobs
from chunkbackup import operations

try:
    # oslo.service >= 4: the abstract base shared by both backends. Importing
    # it does not choose a backend (oslo_service.service would).
    from oslo_service.backend.base import ServiceBase
except ImportError:  # pragma: no cover - oslo.service < 4 (eventlet only)
    from oslo_service.service import ServiceBase

CONF = cfg.CONF
LOG = logging.getLogger(__name__)

GROUP = 'backup_service'
BACKENDS = ('eventlet', 'threading')

OPTS = [
    cfg.StrOpt('backend',
               default='eventlet',
               choices=[
                   ('eventlet', 'Green threads; the process is '
                                'monkey-patched (oslo.service\'s default).'),
                   ('threading', 'Native threads; oslo.service runs the '
                                 'service in a cotyledon worker process. '
                                 'Needs oslo.service[threading] (cotyledon, '
                                 'futurist). There SIGHUP restarts the '
                                 'worker gracefully instead of reloading '
                                 'in place.')],
               help='oslo.service backend of chunkbackup-backup. Read once '
                    'at start (a reload does not change it).'),
    cfg.IntOpt('max_concurrent_operations',
               default=2,
               min=1,
               mutable=True,
               help='How many backups (queued jobs and scheduled backups '
                    'together) run at once. Each one uses the engine\'s own '
                    'threads and about objects_in_flight x 2 x object size '
                    'of memory.'),
    cfg.FloatOpt('poll_interval',
                 default=5.0,
                 min=0.05,
                 mutable=True,
                 help='Seconds between looks at the job queue and the '
                      'schedules. A finished operation also starts the next '
                      'look at once. Schedules are [schedule:NAME] sections '
                      '(options volume, interval in seconds, full_every, '
                      'retain_full, and optionally container, volume_id, '
                      'enabled) and the catalog\'s schedules (chunkbackup '
                      'schedule-set).'),
    cfg.IntOpt('shutdown_grace_period',
               default=60,
               min=0,
               mutable=True,
               help='On SIGTERM, seconds that running operations get to '
                    'finish. Those still running are then cancelled: each '
                    'gets up to %d more seconds to stop and remove the '
                    'objects it wrote, and its backup ends in error. '
                    '[DEFAULT] graceful_shutdown_timeout is raised to fit '
                    'if it is shorter.' % 30),
]

CONF.register_opts(OPTS, group=GROUP)

# After the grace period, how long cancelled operations get to stop and
# remove what they wrote (the engine looks every cancel_check_interval).
CANCEL_WAIT = 30
# What oslo.service's own shutdown alarm must leave us on top of that.
SHUTDOWN_MARGIN = 10

SCHEDULE_PREFIX = 'schedule:'
SCHEDULE_OPTS = [
    cfg.StrOpt('volume',
               mutable=True,
               help='File or block device that this schedule backs up.'),
    cfg.IntOpt('interval',
               min=1,
               mutable=True,
               help='Seconds between backups. A schedule runs when its last '
                    'run is at least this old, and at the start of the '
                    'service if it never ran.'),
    cfg.IntOpt('full_every',
               default=7,
               min=1,
               mutable=True,
               help='Every Nth backup of a chain is a full one: with 7, a '
                    'full backup is followed by 6 incrementals. 1 makes '
                    'every backup full.'),
    cfg.IntOpt('retain_full',
               default=2,
               min=1,
               mutable=True,
               help='How many chains to keep, counted by their full '
                    'backups: after each scheduled backup, every backup '
                    'whose full is older than the newest retain_full '
                    'available fulls of the volume is deleted.'),
    cfg.StrOpt('container',
               mutable=True,
               help='Container (bucket, directory) for the backups; unset '
                    'means the driver\'s default.'),
    cfg.StrOpt('volume_id',
               mutable=True,
               help='Volume id recorded with the backups; unset means a '
                    'stable id derived from the volume path.'),
    cfg.BoolOpt('enabled',
                default=True,
                mutable=True,
                help='Set to false to pause the schedule.'),
]


def schedule_backup_name(name: str) -> str:
    """The display name of the backups a schedule makes."""
    return SCHEDULE_PREFIX + name


def ensure_shutdown_timeout(conf=CONF) -> None:
    """Make oslo.service's shutdown alarm leave time for our shutdown.

    oslo.service ends the process with status 1 when
    ``[DEFAULT] graceful_shutdown_timeout`` passes after SIGTERM; that must
    not cut the grace period and the cancellation short.
    """
    needed = (conf[GROUP].shutdown_grace_period + CANCEL_WAIT +
              SHUTDOWN_MARGIN)
    current = conf.graceful_shutdown_timeout
    if not current or current >= needed:
        return
    location = conf.get_location('graceful_shutdown_timeout')
    if location is None or not location.location.is_user_controlled:
        # oslo.service's default: ours follows from the grace period.
        conf.set_default('graceful_shutdown_timeout', needed)
        return
    LOG.warning('[DEFAULT] graceful_shutdown_timeout = %(cur)d is shorter '
                'than [%(g)s] shutdown_grace_period + %(c)d s of '
                'cancellation + %(m)d s; using %(new)d.',
                {'cur': current, 'g': GROUP, 'c': CANCEL_WAIT,
                 'm': SHUTDOWN_MARGIN, 'new': needed})
    conf.set_override('graceful_shutdown_timeout', needed)


# Schedules. ---------------------------------------------------------------

@dataclasses.dataclass
class ScheduleSpec:
    name: str
    volume: str
    interval: int
    full_every: int = 7
    retain_full: int = 2
    container: Optional[str] = None
    volume_id: Optional[str] = None
    source: str = 'config'

    @property
    def effective_volume_id(self) -> str:
        return self.volume_id or operations.volume_id_for(self.volume)

    @property
    def key(self):
        """A schedule pointed at another volume starts afresh."""
        return (self.name, self.effective_volume_id)


def config_schedules(conf=CONF) -> List[ScheduleSpec]:
    """Schedules of the ``[schedule:<name>]`` sections.

    Their options are registered here, as the sections are found (they can
    appear on a reload). A section that cannot be used is logged and left
    out; the service runs the others.
    """
    specs = []
    for section in conf.list_all_sections():
        if not section.startswith(SCHEDULE_PREFIX):
            continue
        name = section[len(SCHEDULE_PREFIX):].strip()
        conf.register_opts(SCHEDULE_OPTS, group=section)
        try:
            group = conf[section]
            values = {opt.dest: group[opt.dest] for opt in SCHEDULE_OPTS}
        except (cfg.Error, ValueError) as e:
            LOG.error('[%(s)s] is ignored: %(err)s', {'s': section, 'err': e})
            continue
        if not name:
            LOG.error('[%s] is ignored: a schedule needs a name after '
                      '"schedule:".', section)
            continue
        if not values['enabled']:
            LOG.info('Schedule %s is disabled.', name)
            continue
        if not values['volume'] and not values['interval']:
            # Also a section that a reload removed: oslo.config still lists
            # it, with no values.
            LOG.info('[%s] sets neither volume nor interval: no schedule.',
                     section)
            continue
        if not values['volume'] or not values['interval']:
            LOG.warning('[%s] is ignored: it needs both volume and '
                        'interval.', section)
            continue
        specs.append(ScheduleSpec(
            name=name, volume=os.path.abspath(values['volume']),
            interval=values['interval'], full_every=values['full_every'],
            retain_full=values['retain_full'],
            container=values['container'], volume_id=values['volume_id'],
            source='config'))
    return specs


def catalog_schedules(session) -> List[ScheduleSpec]:
    rows = session.scalars(sa.select(models.Schedule)
                           .where(models.Schedule.enabled.is_(True))
                           .order_by(models.Schedule.name))
    return [ScheduleSpec(name=r.name, volume=r.volume_path,
                         interval=r.interval_seconds,
                         full_every=r.full_every or 1,
                         retain_full=r.retain_full or 1,
                         container=r.container, volume_id=r.volume_id,
                         source='catalog') for r in rows]


def set_schedule(session, name: str, volume: str, interval: int, *,
                 full_every: int = 7, retain_full: int = 2,
                 container: Optional[str] = None,
                 volume_id: Optional[str] = None,
                 enabled: bool = True) -> models.Schedule:
    """Create or change a catalog schedule (its last run is kept)."""
    for option, value in (('interval', interval), ('full_every', full_every),
                          ('retain_full', retain_full)):
        if value < 1:
            raise operations.OperationError(
                reason='%s must be at least 1, not %d' % (option, value))
    row = session.get(models.Schedule, name)
    if row is None:
        row = models.Schedule(name=name, created_at=models.utcnow())
        session.add(row)
    row.volume_path = os.path.abspath(volume)
    row.interval_seconds = interval
    row.full_every = full_every
    row.retain_full = retain_full
    row.container = container
    row.volume_id = volume_id
    row.enabled = enabled
    session.commit()
    return row


def list_schedules(session) -> List[models.Schedule]:
    return list(session.scalars(sa.select(models.Schedule)
                                .order_by(models.Schedule.name)))


def last_scheduled_backup(session, spec: ScheduleSpec
                          ) -> Optional[datetime.datetime]:
    """When the newest backup this schedule made was started."""
    return session.scalar(
        sa.select(sa.func.max(models.Backup.created_at))
        .where(models.Backup.volume_id == spec.effective_volume_id,
               models.Backup.display_name == schedule_backup_name(
                   spec.name)))


def claim_catalog_schedule(session, spec: ScheduleSpec,
                           now: datetime.datetime) -> bool:
    """Record a run of a catalog schedule if it is still due.

    A compare-and-set on last_run_at: of several services sharing the
    catalog, one runs it.
    """
    cutoff = now - datetime.timedelta(seconds=spec.interval)
    taken = session.execute(
        sa.update(models.Schedule)
        .where(models.Schedule.name == spec.name,
               models.Schedule.enabled.is_(True),
               sa.or_(models.Schedule.last_run_at.is_(None),
                      models.Schedule.last_run_at <= cutoff))
        .values(last_run_at=now)).rowcount
    session.commit()
    return bool(taken)


def chain_length(record: Optional[models.Backup]) -> int:
    """Backups from the full at the root up to record, both included."""
    length = 0
    seen = set()
    while record is not None and record.id not in seen:
        seen.add(record.id)
        length += 1
        record = record.parent
    return length


# Retention. ---------------------------------------------------------------

def _key(backup):
    return (backup.created_at, backup.id)


def expired_chains(backups: Sequence, retain_full: int) -> List[List]:
    """The chains that retention deletes, in the order to delete them.

    ``backups`` are one volume's backups (objects with ``id``,
    ``parent_id``, ``status`` and ``created_at``). A chain is a full
    backup with every backup that descends from it. The newest
    ``retain_full`` available fulls are kept, with every chain whose full
    is not older than the oldest of them; the other chains are expired.
    Chains come oldest first, each one newest backup first, so children go
    before their parents. A chain with a busy member (being created,
    deleted or restored) is left alone: its parents could not go.
    """
    retain_full = max(1, retain_full)
    by_id = {b.id: b for b in backups}
    fulls = sorted((b for b in backups
                    if not b.parent_id and b.status == api.AVAILABLE),
                   key=_key)
    if len(fulls) <= retain_full:
        return []
    oldest_kept = fulls[-retain_full]

    def root_of(backup):
        seen = set()
        # A parent outside the list (another volume, or gone) ends the
        # walk: the furthest known ancestor stands for the root.
        while backup.parent_id in by_id and backup.id not in seen:
            seen.add(backup.id)
            backup = by_id[backup.parent_id]
        return backup

    chains: Dict[str, List] = {}
    for backup in backups:
        chains.setdefault(root_of(backup).id, []).append(backup)
    expired = []
    for root_id, members in chains.items():
        root = by_id[root_id]
        if _key(root) >= _key(oldest_kept):
            continue
        busy = [m for m in members if m.status in api.BUSY_STATUSES]
        if busy:
            LOG.info('Retention keeps the expired chain of %(root)s for now: '
                     'backup %(id)s is %(status)s.',
                     {'root': root_id, 'id': busy[0].id,
                      'status': busy[0].status})
            continue
        expired.append(sorted(members, key=_key, reverse=True))
    expired.sort(key=lambda chain: _key(chain[-1]))
    return expired


def apply_retention(session, volume_id: str, retain_full: int,
                    driver: Optional[str] = None,
                    should_stop: Callable[[], bool] = lambda: False
                    ) -> List[str]:
    """Delete the expired chains of a volume; return the deleted ids.

    A backup that cannot be deleted is logged and its chain's older members
    are kept (they may be its parents); retention goes on with the next
    chain.
    """
    driver = driver or operations.driver_name()
    backups = list(session.scalars(
        sa.select(models.Backup).where(models.Backup.volume_id == volume_id,
                                       models.Backup.driver == driver)))
    deleted = []
    for chain in expired_chains(backups, retain_full):
        for backup in chain:
            if should_stop():
                LOG.info('Retention of volume %s stopped: the service is '
                         'shutting down.', volume_id)
                return deleted
            backup_id = backup.id
            try:
                operations.delete_backup(session, backup_id)
            except Exception as e:
                session.rollback()
                LOG.error('Retention could not delete backup %(id)s of '
                          'volume %(vol)s (%(err)s); its chain is kept.',
                          {'id': backup_id, 'vol': volume_id,
                           'err': getattr(e, 'msg', None) or e})
                break
            LOG.info('Retention deleted backup %(id)s of volume %(vol)s.',
                     {'id': backup_id, 'vol': volume_id})
            deleted.append(backup_id)
    return deleted


# Kept importable from here for the service's callers.
owner_alive = operations.owner_alive
cleanup_interrupted = operations.cleanup_interrupted


# The service. ---------------------------------------------------------------

class _Operation:
    """One job or scheduled backup, running in its own thread."""

    def __init__(self, label: str, run: Callable,
                 job_id: Optional[int] = None,
                 schedule: Optional[str] = None):
        self.label = label
        self.run = run
        self.job_id = job_id
        self.schedule = schedule
        self.backup_id: Optional[str] = None
        self.cancel_requested = False
        # Set when the shutdown gave up waiting and recorded its end.
        self.abandoned = False
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread: Optional[threading.Thread] = None


def _mark_deleting(catalog, backup_id: str) -> bool:
    """Ask the engine to stop a backup (it reads its record between
    objects) unless it already finished.
    """
    session = catalog.session()
    try:
        taken = session.execute(
            sa.update(models.Backup)
            .where(models.Backup.id == backup_id,
                   models.Backup.status == api.CREATING)
            .values(status=api.DELETING)).rowcount
        session.commit()
        return bool(taken)
    finally:
        session.close()


class BackupService(ServiceBase):
    """Runs queued jobs and scheduled backups; see the module docstring."""

    def __init__(self, conf=CONF):
        super().__init__()
        # Nothing is opened here: under the threading backend this object
        # is built in the parent process and forked into the worker.
        self.conf = conf
        self.catalog = None
        self.owner = None
        self.schedules: List[ScheduleSpec] = []
        self._last_run: Dict[tuple, datetime.datetime] = {}
        self._ops: List[_Operation] = []
        self._ops_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._stop_started = False
        self._reload_requested = False
        self._loop_thread: Optional[threading.Thread] = None
        self.stragglers: List[_Operation] = []

    @property
    def options(self):
        return self.conf[GROUP]

    # ServiceBase -----------------------------------------------------------

    def start(self) -> None:
        self.owner = operations.owner_id()
        LOG.info('chunkbackup-backup %s starting.', self.owner)
        self.catalog = api.Catalog()
        session = self.catalog.session()
        try:
            cleaned = cleanup_interrupted(session, current_pid=os.getpid())
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
        ensure_shutdown_timeout(self.conf)
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

    # The loop ----------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                if self._reload_requested:
                    self._reload_requested = False
                    self._load_schedules()
                self._reap()
                self._fill()
            except Exception:
                # A locked or unreachable catalog must not end the service.
                LOG.exception('Looking for work failed; trying again in '
                              '%s s.', self.options.poll_interval)
            self._wake.wait(self.options.poll_interval)
            self._wake.clear()

    def _load_schedules(self) -> None:
        specs = config_schedules(self.conf)
        session = self.catalog.session()
        try:
            for spec in specs:
                if spec.key not in self._last_run:
                    last = last_scheduled_backup(session, spec)
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

    def _running(self) -> List[_Operation]:
        with self._ops_lock:
            return [op for op in self._ops if not op.done.is_set()]

    def _fill(self) -> None:
        free = self.options.max_concurrent_operations - len(self._running())
        if free <= 0:
            return
        session = self.catalog.session()
        try:
            for spec in self._due_schedules(session):
                if free <= 0 or self._stopping.is_set():
                    return
                self._start(_Operation(
                    'scheduled backup %s of %s' % (spec.name, spec.volume),
                    self._scheduled_backup_runner(spec),
                    schedule=spec.name))
                free -= 1
            while free > 0 and not self._stopping.is_set():
                job = jobs.claim(session, self.owner)
                if job is None:
                    return
                self._start(_Operation('job %d (%s)' % (job.id, job.kind),
                                       self._job_runner(job.id),
                                       job_id=job.id))
                free -= 1
        finally:
            session.close()

    def _due_schedules(self, session) -> Iterable[ScheduleSpec]:
        running = {op.schedule for op in self._running() if op.schedule}
        names = {s.name for s in self.schedules}
        specs = list(self.schedules)
        for spec in catalog_schedules(session):
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
            if spec.source == 'catalog':
                if claim_catalog_schedule(session, spec, now):
                    yield spec
                continue
            last = self._last_run.get(spec.key)
            if last is None or last + datetime.timedelta(
                    seconds=spec.interval) <= now:
                self._last_run[spec.key] = now
                yield spec

    def _start(self, op: _Operation) -> None:
        LOG.info('Starting %s.', op.label)
        op.thread = threading.Thread(target=self._execute, args=(op,),
                                     name='chunkbackup-op', daemon=True)
        with self._ops_lock:
            self._ops.append(op)
        op.thread.start()

    # Operations -----------------------------------------------------------

    def _execute(self, op: _Operation) -> None:
        session = self.catalog.session()
        status, error = jobs.DONE, None
        try:
            op.run(session, op)
        except exception.ChunkBackupError as e:
            session.rollback()
            status, error = jobs.FAILED, e.msg
        except Exception as e:
            session.rollback()
            status, error = jobs.FAILED, '%s: %s' % (type(e).__name__, e)
            # Not one of our errors (a bug?): keep the traceback.
            LOG.exception('%s failed unexpectedly.', op.label)
        if op.cancel_requested and status != jobs.DONE:
            status = jobs.CANCELLED
            error = ('cancelled: the service was stopped and its '
                     'shutdown_grace_period ran out (%s)' % error)
        if status == jobs.DONE:
            LOG.info('%s finished.', op.label)
        elif status == jobs.CANCELLED:
            LOG.warning('%s: %s', op.label, error)
        else:
            LOG.error('%s failed: %s', op.label, error)
        try:
            if op.abandoned:
                # The shutdown has recorded how this ended; keep it.
                return
            if status == jobs.CANCELLED and op.backup_id:
                # Say why in the record, not only that it was cancelled.
                session.execute(
                    sa.update(models.Backup)
                    .where(models.Backup.id == op.backup_id,
                           models.Backup.status == api.ERROR)
                    .values(fail_reason=error))
                session.commit()
            if op.job_id is not None:
                job = session.get(models.Job, op.job_id)
                if job is not None:
                    jobs.finish(session, job, status, error=error,
                                backup_id=op.backup_id)
        except Exception:
            LOG.exception('Could not record the end of %s.', op.label)
        finally:
            session.close()
            op.done.set()
            self._wake.set()

    def _created(self, session, op: _Operation):
        """on_created hook: remember the record, honour an early cancel."""
        def created(record):
            with op.lock:
                op.backup_id = record.id
                cancelled = op.cancel_requested
            if op.job_id is not None:
                session.execute(sa.update(models.Job)
                                .where(models.Job.id == op.job_id)
                                .values(backup_id=record.id))
                session.commit()
            if cancelled:
                _mark_deleting(self.catalog, record.id)
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
                name=params.get('name'),
                description=params.get('description'),
                volume_id=params.get('volume_id'),
                container=params.get('container'),
                on_created=self._created(session, op))
        return run

    def _scheduled_backup_runner(self, spec: ScheduleSpec) -> Callable:
        def run(session, op):
            volume_id = spec.effective_volume_id
            parent = api.latest_available(session, volume_id,
                                          operations.driver_name())
            incremental = (parent is not None and
                           chain_length(parent) < spec.full_every)
            kwargs = dict(name=schedule_backup_name(spec.name),
                          description='scheduled backup (%s schedule %s)'
                                      % (spec.source, spec.name),
                          volume_id=volume_id, container=spec.container,
                          on_created=self._created(session, op))
            try:
                record = operations.create_backup(
                    session, spec.volume, incremental=incremental, **kwargs)
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
            try:
                apply_retention(session, volume_id, spec.retain_full,
                                should_stop=lambda: op.cancel_requested)
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
                    _mark_deleting(self.catalog, backup_id)
                except Exception:
                    LOG.exception('Could not cancel backup %s.', backup_id)
        self._wait_for(left, CANCEL_WAIT)
        self.stragglers = [op for op in left if not op.done.is_set()]
        for op in self.stragglers:
            self._give_up(op)
        LOG.info('Stopped; %d operation(s) cancelled.', len(left))

    @staticmethod
    def _wait_for(ops: List[_Operation], seconds: float) -> None:
        deadline = time.monotonic() + seconds
        for op in ops:
            op.done.wait(max(0.0, deadline - time.monotonic()))

    def _give_up(self, op: _Operation) -> None:
        """An operation that did not stop in time: record the truth.

        Its backup ends error, with the owner left in place so that the
        next start removes its objects (this process may still be writing
        some until it exits).
        """
        LOG.error('%s did not stop in time; its backup is set to error and '
                  'its objects are removed at the next start.', op.label)
        op.abandoned = True
        session = self.catalog.session()
        try:
            if op.backup_id:
                session.execute(
                    sa.update(models.Backup)
                    .where(models.Backup.id == op.backup_id,
                           models.Backup.status.in_(
                               (api.CREATING, api.DELETING)))
                    .values(status=api.ERROR,
                            fail_reason='interrupted: the service stopped '
                                        'before the backup finished'))
            if op.job_id is not None:
                session.execute(
                    sa.update(models.Job)
                    .where(models.Job.id == op.job_id,
                           models.Job.status == jobs.RUNNING)
                    .values(status=jobs.CANCELLED,
                            error='cancelled: the service stopped',
                            finished_at=models.utcnow()))
            session.commit()
        except Exception:
            LOG.exception('Could not record the end of %s.', op.label)
        finally:
            session.close()
