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
]


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
            dirty_bitmap=values['dirty_bitmap'], source='config'))
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
                         source='catalog') for r in rows]


def set_schedule(session: orm.Session, name: str, volume: str,
                 interval: int, *,
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
    row.volume_path = operations.volume_name(volume)
    row.interval_seconds = interval
    row.full_every = full_every
    row.retain_full = retain_full
    row.container = container
    row.volume_id = volume_id
    row.enabled = enabled
    session.commit()
    return row


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
               models.Backup.display_name == schedule_backup_name(
                   spec.name)))


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
