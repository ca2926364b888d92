"""Object lock: backups that the store refuses to delete before a date.

Ransomware deletes backups first; a bucket with object lock (S3) or object
retention (GCS) refuses, until a retention date, to delete or overwrite an
object version, whoever asks. A driver that can write its objects so says
which mechanism in ``object_lock_mechanism`` (``ChunkedBackupDriver``),
None when its store has none (posix, swift); ``object_lock_of(backup)``
reads the lock of a backup from the store (the retention of its
``_metadata``, written last, so its date is the latest of the backup's).

The lock a backup was written with is recorded in its catalog record
(``stats['object_lock']``) when the backup completes, so that
``backup-show``, ``backup-delete`` and retention policies know it without
asking the store; ``backup-delete`` also asks the store, which covers
records that were imported or rebuilt. A locked backup is refused before
anything changes, in one line that says until when.
"""
import dataclasses
import datetime
import threading
from typing import Any, Dict, Optional

from oslo_log import log as logging

from chunkbackup import exception

LOG = logging.getLogger(__name__)
STATS_KEY = 'object_lock'


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def as_utc(value: datetime.datetime) -> datetime.datetime:
    """An aware UTC time (naive values are UTC, as the catalog's)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=datetime.timezone.utc)
    return value.astimezone(datetime.timezone.utc)


def format_until(value: datetime.datetime) -> str:
    """``2027-01-02 10:00:00 UTC``: to the second, in UTC."""
    return as_utc(value).strftime('%Y-%m-%d %H:%M:%S UTC')


@dataclasses.dataclass(frozen=True)
class ObjectLock:
    """A backup's lock: by what, in which mode, until when (UTC)."""

    mechanism: str  # 'S3 object lock', 'GCS object retention'
    mode: str       # compliance, governance (S3); locked, unlocked (GCS)
    until: datetime.datetime

    def active(self, now: Optional[datetime.datetime] = None) -> bool:
        return as_utc(self.until) > as_utc(now or utcnow())

    def describe(self) -> str:
        """``compliance until 2027-01-02 10:00:00 UTC (S3 object lock)``."""
        return '%s until %s (%s)' % (self.mode, format_until(self.until),
                                     self.mechanism)

    def to_dict(self) -> Dict[str, str]:
        return {'mechanism': self.mechanism, 'mode': self.mode,
                'until': as_utc(self.until).strftime('%Y-%m-%dT%H:%M:%SZ')}

    @classmethod
    def from_dict(cls, values: Any) -> Optional['ObjectLock']:
        """The lock recorded in stats; None when absent or unreadable."""
        if not isinstance(values, dict):
            return None
        try:
            until = datetime.datetime.strptime(str(values['until']),
                                               '%Y-%m-%dT%H:%M:%SZ')
            return cls(str(values['mechanism']), str(values['mode']),
                       as_utc(until))
        except (KeyError, ValueError):
            return None


class RetentionClock:
    """Retention dates ``days`` from now, to the second, never earlier
    than the last one given: a clock stepped back must not let the
    ``_metadata`` written last expire before the objects it names.
    """

    def __init__(self, days: int) -> None:
        self.days = days
        self._guard = threading.Lock()
        self._last: Optional[datetime.datetime] = None

    def next(self) -> datetime.datetime:
        until = (utcnow().replace(microsecond=0)
                 + datetime.timedelta(days=self.days))
        with self._guard:
            if self._last is not None and until < self._last:
                until = self._last
            self._last = until
        return until


class BackupLocked(exception.ChunkBackupError):
    msg_fmt = ('backup %(backup_id)s is locked (%(mechanism)s, %(mode)s) '
               'until %(until)s; it can be deleted after that')


def locked_error(backup_id: str, lock: ObjectLock) -> BackupLocked:
    return BackupLocked(backup_id=backup_id, mechanism=lock.mechanism,
                        mode=lock.mode, until=format_until(lock.until))


def recorded_lock(record: Any) -> Optional[ObjectLock]:
    """The lock recorded with a backup (its stats), or None."""
    stats = getattr(record, 'stats', None)
    if not isinstance(stats, dict):
        return None
    return ObjectLock.from_dict(stats.get(STATS_KEY))


def held_by_record(record: Any) -> bool:
    """Whether the lock recorded with a backup still holds it."""
    lock = recorded_lock(record)
    return lock is not None and lock.active()


def with_lock(stats: Optional[dict], lock: Optional[ObjectLock]) -> dict:
    """``stats`` with the lock recorded (or removed when None)."""
    result = dict(stats or {})
    if lock is None:
        result.pop(STATS_KEY, None)
    else:
        result[STATS_KEY] = lock.to_dict()
    return result


def active_lock(record: Any, driver: Any = None,
                now: Optional[datetime.datetime] = None
                ) -> Optional[ObjectLock]:
    """The lock that still holds a backup, recorded or (with ``driver``)
    in the store; None when nothing holds it.
    """
    lock = recorded_lock(record)
    if lock is not None and lock.active(now):
        return lock
    if driver is not None and getattr(driver, 'object_lock_mechanism', None) \
            and getattr(record, 'container', None) \
            and getattr(record, 'service_metadata', None):
        try:
            lock = driver.object_lock_of(record)
        except exception.ChunkBackupError as e:
            # The store stays the judge: it refuses to delete a locked
            # version whatever was read here.
            LOG.warning('Could not read the object lock of backup %(id)s '
                        '(%(err)s); going on.', {'id': record.id,
                                                 'err': e.msg})
            return None
        if lock is not None and lock.active(now):
            return lock
    return None


def refuse_if_locked(record: Any, driver: Any = None,
                     now: Optional[datetime.datetime] = None) -> None:
    """Raise BackupLocked (one line, until when) if a lock holds it."""
    lock = active_lock(record, driver, now)
    if lock is not None:
        raise locked_error(record.id, lock)


class LockUnavailable(exception.InvalidConfiguration):
    """A lock was asked of a driver that cannot (or is not set to) lock."""


def cannot_lock(driver_name: str) -> str:
    return ('the %s driver cannot lock objects (its store has no object '
            'lock): use the s3 driver with [backup_s3] object_lock_mode or '
            'the google driver with [backup_google] object_retention_mode'
            % driver_name)


def check_required(driver: Any, driver_name: str, required: bool) -> None:
    """``[chunkbackup] require_object_lock``: refuse, before anything is
    written, a backup that would not be locked.
    """
    if not required:
        return
    mechanism = getattr(driver, 'object_lock_mechanism', None)
    if not mechanism:
        raise LockUnavailable(
            reason='[chunkbackup] require_object_lock is set but %s; or '
                   'unset require_object_lock' % cannot_lock(driver_name))
    hint = driver.object_lock_hint()
    if hint:
        raise LockUnavailable(
            reason='[chunkbackup] require_object_lock is set but %s; or '
                   'unset require_object_lock' % hint)
