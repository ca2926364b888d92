"""What a driver does differently when cinder-backup runs it.

Nothing here imports Cinder when this module loads: chunkbackup runs
without Cinder installed. ``for_driver(context, db)`` is asked once, when a
driver is constructed. It answers None (standalone) unless the driver was
constructed by Cinder: a ``db`` was given, or the context is a Cinder
``RequestContext`` (cinder-backup's manager constructs drivers as
``Driver(context)``). Only then are Cinder's modules imported, and they are
loaded already in that process.

Inside cinder-backup (Cinder 29):

- Volume metadata is Cinder's backup metadata JSON (``version`` from
  ``backup_metadata_version``, 2 by default: volume base, volume and Glance
  metadata), produced and applied by Cinder's own ``BackupMetadataAPI``, so
  a restored volume gets back its name, description and metadata as with
  Cinder's drivers.
- Backup progress goes out as ``backup.createprogress`` notifications with
  Cinder's payload, every ``backup_object_number_per_notification``
  objects, from a timer every ``backup_timer_interval`` seconds when the
  driver's ``backup_*enable_progress_timer`` is true (Cinder's options),
  and a last one at 100%.
- A cancelled restore raises ``cinder.exception.BackupRestoreCancel``, the
  class the manager catches. A backup whose status turned to deleting stops,
  removes what it wrote and returns: the manager reports it aborted.
- Backups are refreshed with deleted rows visible, so a backup deleted
  while it was being written reads as deleted instead of failing.
"""
import sys
import threading
from typing import Any, Optional

from oslo_config import cfg
from oslo_log import log as logging

from chunkbackup import progress
from chunkbackup.records import BackupLike

CONF = cfg.CONF
LOG = logging.getLogger(__name__)


def _is_cinder_context(context: Any) -> bool:
    # Look the class up without importing Cinder: a process where Cinder
    # made the context has cinder.context loaded already.
    module = sys.modules.get('cinder.context')
    return (module is not None and context is not None and
            isinstance(context, module.RequestContext))


def for_driver(context: Any, db: Any = None) -> 'Optional[CinderSupport]':
    """Cinder support for a driver constructed with these, or None."""
    if db is None and not _is_cinder_context(context):
        return None
    return CinderSupport(context, db)


class CinderSupport:
    """Cinder's behaviour for one driver instance (one request context)."""

    def __init__(self, context: Any, db: Any = None):
        from cinder import exception as cinder_exception

        self.context = context
        self.db = db
        self.exception = cinder_exception
        # cinder.backup.driver.BackupMetadataAPI, made on first use.
        self._metadata_api: Any = None

    # Volume metadata ----------------------------------------------------

    @property
    def metadata_api(self) -> Any:  # cinder.backup.driver.BackupMetadataAPI
        if self._metadata_api is None:
            from cinder.backup import driver as cinder_driver

            self._metadata_api = cinder_driver.BackupMetadataAPI(self.context)
            if self.db is not None:
                self._metadata_api.db = self.db
        return self._metadata_api

    def get_metadata(self, volume_id: str) -> Optional[str]:
        return self.metadata_api.get(volume_id)

    def put_metadata(self, volume_id: str, json_metadata: str) -> None:
        try:
            self.metadata_api.put(volume_id, json_metadata)
        except self.exception.BackupMetadataUnsupportedVersion as e:
            # What Cinder's chunked drivers raise here, with the reason.
            raise self.exception.BackupOperationError(
                'The volume metadata in the backup cannot be applied to '
                'volume %s: %s. Restore it with the Cinder release that '
                'wrote it.' % (volume_id, e))

    # Status ---------------------------------------------------------------

    @staticmethod
    def refresh(backup: BackupLike) -> None:
        read_deleted = getattr(backup, 'as_read_deleted', None)
        if read_deleted is None:  # not a Cinder object
            backup.refresh()
            return
        with read_deleted():
            backup.refresh()

    @staticmethod
    def service_token() -> Optional[str]:
        """A token of cinder-backup's [service_user], or None when
        send_service_user_token is off (Cinder's service_auth).
        """
        from cinder import service_auth

        plugin = service_auth.get_service_auth_plugin()
        if plugin is None:
            return None
        return plugin.get_token(session=service_auth.get_service_session())

    def restore_cancelled(self, backup: BackupLike,
                          volume_id: str) -> Exception:
        return self.exception.BackupRestoreCancel(back_id=backup.id,
                                                  vol_id=volume_id)

    # Progress -------------------------------------------------------------

    def progress_listener(self, timer_option: str =
                          'backup_enable_progress_timer'
                          ) -> progress.ProgressListener:
        return CreateProgressNotifier(self.context, timer_option)


class CreateProgressNotifier(progress.ProgressListener):
    """Cinder's ``backup.createprogress`` notifications, for backups only.

    As Cinder's chunked drivers send them: one every
    ``backup_object_number_per_notification`` objects (one progress step
    of the engine is one object-size piece of the volume); when the
    driver's progress timer option (``backup_enable_progress_timer`` for
    posix, ``backup_<store>_enable_progress_timer`` for the others) is
    true, one at the start and one every ``backup_timer_interval``
    seconds from a timer; and one at 100% when the data is stored. The
    payload's ``extra_usage_info`` is Cinder's: ``id`` (the next object
    number), ``list`` (the objects so far, as in ``_metadata``),
    ``prefix``, ``volume_meta`` (None, as in Cinder's), ``extra_metadata``
    when the driver has any, and ``backup_percent``.
    """

    def __init__(self, context: Any,
                 timer_option: str = 'backup_enable_progress_timer'):
        from cinder.backup import driver as cinder_driver  # noqa: F401
        from cinder.volume import volume_utils

        self.context = context
        self._notify = volume_utils.notify_about_backup_usage
        self.every_objects = max(1, CONF.backup_object_number_per_notification)
        self.interval = CONF.backup_timer_interval
        # A driver option of Cinder's; a store Cinder lacks has none.
        self.timer_enabled = bool(getattr(CONF, timer_option, True))
        self._steps = 0
        self._warned = False
        self._progress: Optional[progress.Progress] = None
        self._stop: Optional[threading.Event] = None
        self._timer: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    def bind(self, progress_: progress.Progress) -> None:
        self._progress = progress_

    def _usage_info(self, percent: float) -> dict:
        details = self._progress.details if self._progress else {}
        objects = list(details.get('objects') or ())
        info = {'id': len(objects) + 1,
                'list': [entry.to_json() for entry in objects],
                'prefix': details.get('prefix'),
                'volume_meta': None,
                'backup_percent': percent}
        if details.get('extra_metadata') is not None:
            info['extra_metadata'] = details['extra_metadata']
        return info

    def _send(self, backup, percent: float) -> None:
        try:
            with self._lock:  # the timer and the engine both send
                self._notify(self.context, backup, 'createprogress',
                             extra_usage_info=self._usage_info(percent))
        except Exception as e:
            # A notification bus problem must not fail the backup.
            if not self._warned:
                self._warned = True
                LOG.warning('Could not send the progress notification of '
                            'backup %(id)s: %(err)s',
                            {'id': backup.id, 'err': e})

    def _percent(self) -> float:
        p = self._progress
        return 100.0 * p.done / max(p.total, 1) if p else 0.0

    def _tick(self, backup, stop: threading.Event) -> None:
        # Cinder's FixedIntervalLoopingCall: at once, then every interval.
        while True:
            self._send(backup, self._percent())
            if stop.wait(max(self.interval, 0.01)):
                return

    def started(self, operation: str, backup: BackupLike,
                total_bytes: int) -> None:
        self._steps = 0
        if operation != 'backup' or not self.timer_enabled:
            return
        self._stop = threading.Event()
        self._timer = threading.Thread(
            target=self._tick, args=(backup, self._stop),
            name='createprogress-%s' % backup.id, daemon=True)
        self._timer.start()

    def advanced(self, operation: str, backup: BackupLike, done_bytes: int,
                 total_bytes: int) -> None:
        if operation != 'backup':
            return
        self._steps += 1
        if self._steps < self.every_objects:
            return
        self._steps = 0
        self._send(backup, 100.0 * done_bytes / max(total_bytes, 1))

    def finished(self, operation: str, backup: BackupLike, done_bytes: int,
                 ok: bool) -> None:
        if self._timer is not None:
            assert self._stop is not None  # started() sets both
            self._stop.set()
            self._timer.join()
            self._timer = self._stop = None
        if operation == 'backup' and ok:
            self._send(backup, 100)
