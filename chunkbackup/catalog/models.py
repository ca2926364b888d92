"""The catalog's tables: backups (Cinder's Backup fields), jobs, schedules.

The schema is owned by the alembic migrations next to this module; these
models describe the newest revision.
"""
import datetime
from typing import List

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy import orm


def utcnow() -> datetime.datetime:
    """Naive UTC with microseconds: "newest backup" must be well-defined."""
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


# MySQL keeps no fraction of a second unless asked to.
PreciseDateTime = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), 'mysql',
                                             'mariadb')


class Base(orm.DeclarativeBase):
    pass


class Backup(Base):
    """A backup record.

    It has the attributes the drivers expect of Cinder's Backup objects
    (``parent``, ``save()``, ``refresh()``...).
    """

    __tablename__ = 'backups'

    id = sa.Column(sa.String(36), primary_key=True)
    volume_id = sa.Column(sa.String(128), nullable=False, index=True)
    volume_path = sa.Column(sa.String(4096))
    container = sa.Column(sa.String(1024))
    service_metadata = sa.Column(sa.String(1024))
    parent_id = sa.Column(sa.String(36), sa.ForeignKey('backups.id'),
                          index=True)
    size = sa.Column(sa.Integer, nullable=False, default=0)
    size_bytes = sa.Column(sa.BigInteger, nullable=False, default=0)
    object_count = sa.Column(sa.Integer, nullable=False, default=0)
    status = sa.Column(sa.String(32), nullable=False, index=True)
    fail_reason = sa.Column(sa.Text)
    # What the backup did (chunkbackup.engine.backup.BackupStats).
    stats = sa.Column(sa.JSON)
    display_name = sa.Column(sa.String(255))
    display_description = sa.Column(sa.String(1024))
    created_at = sa.Column(PreciseDateTime, nullable=False, default=utcnow)
    updated_at = sa.Column(PreciseDateTime, default=utcnow, onupdate=utcnow)
    data_timestamp = sa.Column(sa.DateTime)
    driver = sa.Column(sa.String(255), nullable=False)
    # The last verify: 'passed' or 'failed' (None: never verified), when,
    # and every bad object it found.
    verify_status = sa.Column(sa.String(32))
    verify_reason = sa.Column(sa.Text)
    verified_at = sa.Column(PreciseDateTime)
    # The process that runs the operation now, so a crashed one is found.
    owner = sa.Column(sa.String(255))
    # A service worker's hold on the operation (chunkbackup.catalog.leases);
    # NULL for the CLI's.
    lease_expires_at = sa.Column(PreciseDateTime)
    # The schedule that made it (None: made by hand); its retention
    # considers only its own backups.
    schedule_name = sa.Column(sa.String(255), index=True)
    # Never removed by a retention policy (chunkbackup backup-pin).
    pinned = sa.Column(sa.Boolean, nullable=False, default=False,
                       server_default=sa.false())
    # While it is being folded (status folding): the child it goes into.
    fold_target = sa.Column(sa.String(36))

    parent = orm.relationship('Backup', remote_side=[id],
                              back_populates='children')
    children = orm.relationship('Backup', back_populates='parent')

    # Cinder's Backup interface -------------------------------------------

    def save(self) -> None:
        orm.object_session(self).commit()

    def refresh(self) -> None:
        session = orm.object_session(self)
        session.commit()  # end the transaction so we read what others wrote
        if self.lease_expires_at is not None:
            # A worker's operation: renew its lease, or raise LeaseLost.
            from chunkbackup.catalog import workers
            workers.renew_backup_lease(session, self)
        self._reload(session)

    def _reload(self, session: orm.Session) -> None:
        """Overwrite every column with the row's value, never expiring one.

        ``session.refresh`` expires the attributes before it loads them:
        an engine thread that reads one then (``backup.id`` in an error
        message) would load it through this session at the same time,
        which SQLAlchemy refuses ("concurrent operations are not
        permitted"). Here other threads see the old or the new value.
        """
        table = self.__table__
        row = session.execute(sa.select(table).where(
            table.c.id == self.id)).mappings().one_or_none()
        if row is None:  # deleted meanwhile: refresh says so as it did
            session.refresh(self)
            return
        for prop in orm.class_mapper(type(self)).column_attrs:
            orm.attributes.set_committed_value(
                self, prop.key, row[prop.columns[0].name])

    @property
    def live_children(self) -> List['Backup']:
        return [c for c in self.children if c.status != 'deleted']

    @property
    def has_dependent_backups(self) -> bool:
        return bool(self.live_children)

    @property
    def num_dependent_backups(self) -> int:
        return len(self.live_children)

    @property
    def dependent_backup_ids(self) -> str:
        return ', '.join(c.id for c in self.live_children)

    @property
    def is_incremental(self) -> bool:
        return self.parent_id is not None


class Job(Base):
    """Work queued for the service (``chunkbackup ... --async``)."""

    __tablename__ = 'jobs'

    id = sa.Column(sa.Integer, primary_key=True, autoincrement=True)
    kind = sa.Column(sa.String(32), nullable=False)
    params = sa.Column(sa.JSON, nullable=False, default=dict)
    status = sa.Column(sa.String(32), nullable=False, default='queued',
                       index=True)
    backup_id = sa.Column(sa.String(36))
    error = sa.Column(sa.Text)
    created_at = sa.Column(sa.DateTime, nullable=False, default=utcnow)
    started_at = sa.Column(sa.DateTime)
    finished_at = sa.Column(sa.DateTime)
    # The worker that runs (or ran) it.
    owner = sa.Column(sa.String(255))
    # Runs so far; a run whose worker's lease lapsed is re-queued up to
    # [backup_service] job_attempts runs.
    attempts = sa.Column(sa.Integer, nullable=False, default=0)
    lease_expires_at = sa.Column(PreciseDateTime)
    # chunkbackup job-cancel asked a running job to stop.
    cancel_requested = sa.Column(sa.Boolean, nullable=False, default=False)


class Schedule(Base):
    """A recurring backup of one volume, with its retention."""

    __tablename__ = 'schedules'

    name = sa.Column(sa.String(255), primary_key=True)
    volume_path = sa.Column(sa.String(4096), nullable=False)
    volume_id = sa.Column(sa.String(128))
    container = sa.Column(sa.String(1024))
    interval_seconds = sa.Column(sa.Integer, nullable=False)
    full_every = sa.Column(sa.Integer, nullable=False, default=7)
    retain_full = sa.Column(sa.Integer, nullable=False, default=2)
    enabled = sa.Column(sa.Boolean, nullable=False, default=True)
    # A retention policy (chunkbackup.policy.Policy.to_dict); None: the
    # retain_full rule.
    keep_policy = sa.Column(sa.JSON)
    # 'schedule': retention considers the backups this schedule made;
    # 'volume': every backup of the volume.
    retention_scope = sa.Column(sa.String(16), nullable=False,
                                default='schedule',
                                server_default='schedule')
    # A full backup due is made as an incremental plus a synthetic full.
    synthetic_full = sa.Column(sa.Boolean, nullable=False, default=False,
                               server_default=sa.false())
    last_run_at = sa.Column(sa.DateTime)
    created_at = sa.Column(sa.DateTime, nullable=False, default=utcnow)
    # How the last run ended ('available' or 'failed'), why, and its
    # backup (recorded by the service).
    last_status = sa.Column(sa.String(32))
    last_error = sa.Column(sa.Text)
    last_backup_id = sa.Column(sa.String(36))


class Worker(Base):
    """A ``chunkbackup-backup`` process sharing the catalog, by heartbeat."""

    __tablename__ = 'workers'

    # host:pid, as in the owner columns of what it holds.
    name = sa.Column(sa.String(255), primary_key=True)
    host = sa.Column(sa.String(255), nullable=False)
    pid = sa.Column(sa.Integer, nullable=False)
    started_at = sa.Column(PreciseDateTime, nullable=False, default=utcnow)
    heartbeat_at = sa.Column(PreciseDateTime, nullable=False, default=utcnow)
    # Its lease length: it is down once heartbeat_at is older.
    lease_seconds = sa.Column(sa.Float, nullable=False)
    running_operations = sa.Column(sa.Integer, nullable=False, default=0)
    stopped_at = sa.Column(PreciseDateTime)


class VolumeLock(Base):
    """A volume being backed up by one worker (never two at once)."""

    __tablename__ = 'volume_locks'

    volume_id = sa.Column(sa.String(128), primary_key=True)
    owner = sa.Column(sa.String(255), nullable=False)
    # NULL: held until released (a process that takes no leases).
    lease_expires_at = sa.Column(PreciseDateTime)
    acquired_at = sa.Column(PreciseDateTime, nullable=False, default=utcnow)
