"""Schedules: when the service backs up which volume, and how.

A schedule comes from a ``[schedule:<name>]`` section of the configuration
(re-read on SIGHUP) or from the catalog's ``schedules`` table (``chunkbackup
schedule-set``). A configuration schedule's last run is remembered by the
service; a catalog schedule's is a compare-and-set on its row, so that of
several services sharing the catalog one runs it. Every ``full_every``-th
backup of a chain is a full one.
"""
import dataclasses
import datetime
from typing import List, Optional, Tuple

from oslo_config import cfg
from oslo_log import log as logging
import sqlalchemy as sa
from sqlalchemy import orm

from chunkbackup.catalog import api
from chunkbackup.catalog import models
from chunkbackup import exception
from chunkbackup import operations

CONF = cfg.CONF
LOG = logging.getLogger(__name__)

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
    cfg.StrOpt('changed_extents',
               mutable=True,
               help='A changed-block map file (qemu-img map or nbdinfo '
                    'JSON of a dirty bitmap, rbd diff JSON, or a JSON list '
                    'of [offset, length]) that a tool of yours rewrites '
                    'before each run; incremental runs read only what it '
                    'names (checked by sampling). A missing file means '
                    'reading everything.'),
    cfg.StrOpt('dirty_bitmap',
               mutable=True,
               help='For a volume that is an NBD export: the dirty bitmap '
                    'whose changes incremental runs read.'),
    cfg.BoolOpt('enabled',
                default=True,
                mutable=True,
                help='Set to false to pause the schedule.'),
] + [
    cfg.IntOpt('keep_%s' % rule, min=0, mutable=True,
               help='Retention policy (replaces retain_full when any '
                    'keep_* is set), as restic\'s --keep-%s: %s' % (rule,
                                                                    what))
    for rule, what in (
        ('last', 'the N newest backups.'),
        ('hourly', 'the newest backup of each of the last N hours that '
                   'have one.'),
        ('daily', 'the same per day (local time).'),
        ('weekly', 'the same per ISO week.'),
        ('monthly', 'the same per month.'),
        ('yearly', 'the same per year.'))
] + [
    cfg.StrOpt('keep_within', mutable=True,
               help='Retention policy: keep every backup made within this '
                    'duration (e.g. 1y5m7d2h, 36h) before the newest one.'),
    cfg.StrOpt('retention_scope', default='schedule',
               choices=('schedule', 'volume'), mutable=True,
               help='Which backups the retention considers: those this '
                    'schedule made (default; backups made by hand or by '
                    'other schedules are never removed), or every backup '
                    'of the volume.'),
    cfg.BoolOpt('synthetic_full', default=False, mutable=True,
                help='When a full backup is due, make an incremental and '
                     'then a synthetic full from it (built in the store, '
                     'without reading the volume again) instead of reading '
                     'the whole volume.'),
]

POLICY_KEYS = ('keep_last', 'keep_hourly', 'keep_daily', 'keep_weekly',
               'keep_monthly', 'keep_yearly', 'keep_within')


def policy_of(values: dict) -> Optional[dict]:
    """The keep_* values as a policy dict, or None when none is set."""
    found = {k: values.get(k) for k in POLICY_KEYS if values.get(k)}
    if not found:
        return None
    from chunkbackup import policy
    try:
        return policy.Policy.from_dict(found).to_dict()
    except policy.PolicyError as e:
        raise ValueError(str(e))


def schedule_backup_name(name: str) -> str:
    """The display name of the backups a schedule makes."""
    return SCHEDULE_PREFIX + name


@dataclasses.dataclass
class ScheduleSpec:
    """One schedule, from the configuration or the catalog."""

    name: str
    volume: str
    interval: int
    full_every: int = 7
    retain_full: int = 2
    container: Optional[str] = None
    volume_id: Optional[str] = None
    source: str = 'config'
    changed_extents: Optional[str] = None
    dirty_bitmap: Optional[str] = None
    # A chunkbackup.policy.Policy as a dict (None: retain_full).
    keep_policy: Optional[dict] = None
    retention_scope: str = 'schedule'
    synthetic_full: bool = False

    @property
    def effective_volume_id(self) -> str:
        return self.volume_id or operations.volume_id_of(self.volume)

    @property
    def key(self) -> Tuple[str, str]:
        """A schedule pointed at another volume starts afresh."""
        return (self.name, self.effective_volume_id)


def config_schedules(conf: cfg.ConfigOpts = CONF) -> List[ScheduleSpec]:
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
            keep_policy = policy_of(values)
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
            name=name, volume=operations.volume_name(values['volume']),
            interval=values['interval'], full_every=values['full_every'],
            retain_full=values['retain_full'],
            container=values['container'], volume_id=values['volume_id'],
            changed_extents=values['changed_extents'],
            dirty_bitmap=values['dirty_bitmap'], source='config',
            keep_policy=keep_policy,
            retention_scope=values['retention_scope'],
            synthetic_full=values['synthetic_full']))
    return specs


def catalog_schedules(session: orm.Session) -> List[ScheduleSpec]:
    """The enabled schedules of the catalog, by name."""
    rows = session.scalars(sa.select(models.Schedule)
                           .where(models.Schedule.enabled.is_(True))
                           .order_by(models.Schedule.name))
    return [ScheduleSpec(name=r.name, volume=r.volume_path,
                         interval=r.interval_seconds,
                         full_every=r.full_every or 1,
                         retain_full=r.retain_full or 1,
                         container=r.container, volume_id=r.volume_id,
                         source='catalog', keep_policy=r.keep_policy,
                         retention_scope=r.retention_scope or 'schedule',
                         synthetic_full=bool(r.synthetic_full))
            for r in rows]


def check_volume(volume: str) -> str:
    """The recorded name of a schedule's volume, refused if it is missing.

    A path must name a regular file or block device now (a schedule of
    a typo would fail at every run); an NBD export is checked when it
    runs.
    """
    import os
    import stat

    from chunkbackup.engine import sources

    name = operations.volume_name(volume)
    if sources.is_nbd_url(name):
        return name
    try:
        mode = os.stat(name).st_mode
    except FileNotFoundError:
        raise operations.OperationError(
            reason='volume %s does not exist; a schedule needs a file or '
                   'block device that exists now' % name)
    if stat.S_ISDIR(mode):
        raise operations.OperationError(
            reason='volume %s is a directory; give a file or a block '
                   'device' % name)
    try:
        sources.check_volume_mode(mode, 'volume %s' % name)
    except exception.ChunkBackupError as e:
        raise operations.OperationError(reason=e.msg)
    return name


def _check_numbers(**values: Optional[int]) -> None:
    for option, value in values.items():
        if value is not None and value < 1:
            raise operations.OperationError(
                reason='%s must be at least 1, not %d' % (option, value))


class ScheduleNotFound(exception.ChunkBackupError):
    msg_fmt = ("No schedule %(name)s in the catalog; 'chunkbackup "
               "schedule-list' shows them.")


def set_schedule(session: orm.Session, name: str, volume: str,
                 interval: int, *,
                 full_every: int = 7, retain_full: int = 2,
                 container: Optional[str] = None,
                 volume_id: Optional[str] = None,
                 enabled: bool = True,
                 keep_policy: Optional[dict] = None,
                 retention_scope: str = 'schedule',
                 synthetic_full: bool = False) -> models.Schedule:
    """Create or replace a catalog schedule (its last run is kept)."""
    _check_numbers(interval=interval, full_every=full_every,
                   retain_full=retain_full)
    path = check_volume(volume)
    row = session.get(models.Schedule, name)
    if row is None:
        row = models.Schedule(name=name, created_at=models.utcnow())
        session.add(row)
    row.volume_path = path
    row.interval_seconds = interval
    row.full_every = full_every
    row.retain_full = retain_full
    row.container = container
    row.volume_id = volume_id
    row.enabled = enabled
    row.keep_policy = keep_policy
    row.retention_scope = retention_scope
    row.synthetic_full = synthetic_full
    session.commit()
    return row


def update_schedule(session: orm.Session, name: str, *,
                    volume: Optional[str] = None,
                    interval: Optional[int] = None,
                    full_every: Optional[int] = None,
                    retain_full: Optional[int] = None,
                    container: Optional[str] = None,
                    volume_id: Optional[str] = None,
                    enabled: Optional[bool] = None) -> models.Schedule:
    """Change only the given fields of a catalog schedule."""
    row = session.get(models.Schedule, name)
    if row is None:
        raise ScheduleNotFound(name=name)
    _check_numbers(interval=interval, full_every=full_every,
                   retain_full=retain_full)
    if volume is not None:
        row.volume_path = check_volume(volume)
    if interval is not None:
        row.interval_seconds = interval
    if full_every is not None:
        row.full_every = full_every
    if retain_full is not None:
        row.retain_full = retain_full
    if container is not None:
        row.container = container or None
    if volume_id is not None:
        row.volume_id = volume_id or None
    if enabled is not None:
        row.enabled = enabled
    session.commit()
    return row


def delete_schedule(session: orm.Session, name: str) -> None:
    """Remove a catalog schedule; the backups it made stay."""
    deleted = session.execute(
        sa.delete(models.Schedule).where(models.Schedule.name == name)
        .execution_options(synchronize_session=False)).rowcount
    session.commit()
    if not deleted:
        raise ScheduleNotFound(name=name)


def record_result(session: orm.Session, name: str, status: str,
                  error: Optional[str], backup_id: Optional[str]) -> None:
    """How a run of a catalog schedule ended (the service calls it).

    A configuration schedule has no row, and nothing is recorded.
    """
    session.execute(
        sa.update(models.Schedule).where(models.Schedule.name == name)
        .values(last_status='available' if status == 'done' else status,
                last_error=error, last_backup_id=backup_id)
        .execution_options(synchronize_session=False))
    session.commit()


def last_backup_of(session: orm.Session, row: models.Schedule
                   ) -> Optional[models.Backup]:
    """The newest backup the schedule made (by its name), if any."""
    return session.scalars(
        sa.select(models.Backup)
        .where(models.Backup.display_name == schedule_backup_name(row.name))
        .order_by(models.Backup.created_at.desc()).limit(1)).first()


def last_result(row: models.Schedule,
                last: Optional[models.Backup] = None) -> Optional[str]:
    """How the last run ended.

    As recorded, else its newest backup's status (for runs recorded
    before the service recorded results).
    """
    if row.last_status:
        return row.last_status
    if last is not None:
        return last.status
    return None


def next_run(row: models.Schedule) -> Optional[datetime.datetime]:
    """When the schedule is due next (naive UTC).

    None: at the service's next look (it never ran), or never (disabled).
    """
    if not row.enabled or row.last_run_at is None:
        return None
    return row.last_run_at + datetime.timedelta(seconds=row.interval_seconds)


def list_schedules(session: orm.Session) -> List[models.Schedule]:
    """Every schedule of the catalog, enabled or not, by name."""
    return list(session.scalars(sa.select(models.Schedule)
                                .order_by(models.Schedule.name)))


def last_scheduled_backup(session: orm.Session, spec: ScheduleSpec
                          ) -> Optional[datetime.datetime]:
    """When the newest backup this schedule made was started."""
    return session.scalar(
        sa.select(sa.func.max(models.Backup.created_at))
        .where(models.Backup.volume_id == spec.effective_volume_id,
               sa.or_(models.Backup.schedule_name == spec.name,
                      models.Backup.display_name == schedule_backup_name(
                          spec.name))))


def claim_catalog_schedule(session: orm.Session, spec: ScheduleSpec,
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


def wants_incremental(session: orm.Session, spec: ScheduleSpec) -> bool:
    """Whether the schedule's next backup is an incremental.

    It is unless the volume has no available backup yet or the chain of
    the newest one already has ``full_every`` backups.
    """
    parent = api.latest_available(session, spec.effective_volume_id,
                                  operations.driver_name())
    return parent is not None and chain_length(parent) < spec.full_every
