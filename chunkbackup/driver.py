"""The backup-driver contract of OpenStack Cinder, as chunkbackup serves it.

cinder-backup loads a driver class from its ``backup_driver`` option,
constructs it as ``Driver(context)`` with the request context, and calls the
methods below with Cinder ``Backup`` objects; a driver constructed that way
behaves as Cinder's own drivers do (``chunkbackup.cinder_compat``).
Standalone, chunkbackup constructs ``Driver(None)`` and passes its own
catalog records, which have the same attributes: ``id``, ``volume_id``,
``container``, ``parent_id``, ``parent``, ``service_metadata``,
``display_name``, ``display_description``, ``created_at``, ``size``,
``status``, ``object_count``, ``save()`` and ``refresh()``.
"""
import abc
from typing import Any, List, Optional

from oslo_log import log as logging

from chunkbackup import cinder_compat
from chunkbackup import progress
from chunkbackup.records import BackupLike

LOG = logging.getLogger(__name__)


class BackupDriver(metaclass=abc.ABCMeta):
    """What cinder-backup (and the chunkbackup CLI) calls on a driver."""

    # Cinder's manager asks this before a forced delete of a backup that
    # is still being written: a driver that stops such a backup says True.
    support_force_delete = False
    # Cinder's option that turns the timed createprogress notifications
    # on or off for this kind of store (its name differs per driver).
    cinder_progress_timer_option = 'backup_enable_progress_timer'

    def __init__(self, context: Any, db: Any = None):
        self.context = context
        self.db = db
        # Cinder's behaviour when cinder-backup constructed us, else None.
        self.cinder = cinder_compat.for_driver(context, db)

    @abc.abstractmethod
    def backup(self, backup: BackupLike, volume_file: Any,
               backup_metadata: bool = True) -> dict:
        """Back up ``volume_file`` (a readable, seekable file) as ``backup``.

        An incremental backup is made when ``backup.parent_id`` is set. The
        driver fills in ``container``, ``service_metadata``, ``size`` and
        ``object_count`` and calls ``backup.save()``. With
        ``backup_metadata`` (Cinder's manager leaves it at its default,
        True) the volume's metadata from ``get_metadata`` is stored with
        the backup. Returns the fields the manager should update.
        """

    @abc.abstractmethod
    def restore(self, backup: BackupLike, volume_id: str, volume_file: Any,
                volume_is_new: bool = False) -> None:
        """Write the image of ``backup`` (and its chain) to ``volume_file``.

        ``volume_is_new`` promises that the volume reads as zeros, so zero
        blocks need not be written.
        """

    @abc.abstractmethod
    def delete_backup(self, backup: BackupLike) -> None:
        """Delete the objects of ``backup`` from the store."""

    def export_record(self, backup: BackupLike) -> dict:
        """Driver-specific information for a record export (driver_info)."""
        return {}

    def import_record(self, backup: BackupLike, driver_info: dict) -> None:
        """Accept a record exported by ``export_record``; nothing to do."""

    def check_for_setup_error(self) -> None:
        """Raise a clear error when the driver cannot work as configured."""

    def get_metadata(self, volume_id: str) -> Optional[str]:
        """JSON metadata of the volume to store with a backup, or None.

        Inside cinder-backup: Cinder's backup metadata document (version 2:
        the volume's base fields, its metadata and its Glance metadata).
        Standalone volumes (files and block devices) carry no metadata, so
        the backup's ``volume_meta`` is null, which every reader accepts.
        """
        if self.cinder is not None:
            return self.cinder.get_metadata(volume_id)
        return None

    def put_metadata(self, volume_id: str, json_metadata: str) -> None:
        """Apply volume metadata saved by ``get_metadata`` on restore.

        Inside cinder-backup the restored volume gets back its name,
        description and metadata, as Cinder's drivers do it. Standalone a
        file has none, so metadata a Cinder backup carries is left in the
        store and not applied.
        """
        if self.cinder is not None:
            self.cinder.put_metadata(volume_id, json_metadata)
            return
        LOG.info('The backup carries metadata of volume %s (written by '
                 'cinder-backup); a standalone restore does not apply it.',
                 volume_id)

    # Hooks of the engine, where cinder-backup expects Cinder's ways. -----

    def default_progress_listeners(self) -> List[progress.ProgressListener]:
        """The log, and inside cinder-backup createprogress notifications."""
        listeners: List[progress.ProgressListener] = [progress.LogListener()]
        if self.cinder is not None:
            listeners.append(self.cinder.progress_listener(
                self.cinder_progress_timer_option))
        return listeners

    def refresh_backup(self, backup: BackupLike) -> None:
        """Reload the backup record to see whether it was cancelled."""
        if self.cinder is not None:
            self.cinder.refresh(backup)
        else:
            backup.refresh()

    def backup_cancelled(self, backup: BackupLike, error: Exception) -> dict:
        """A backup stopped because its status turned to deleting.

        Called after its objects are removed. cinder-backup expects the
        driver to return (its manager then reports the backup aborted and
        lets the delete finish); standalone the cancellation is an error.
        """
        if self.cinder is not None:
            LOG.info('Backup %s was cancelled (status %s); its objects are '
                     'removed.', backup.id, getattr(backup, 'status', None))
            return {}
        raise error

    def restore_cancelled(self, backup: BackupLike, volume_id: str,
                          error: Exception) -> Exception:
        """The exception to raise when a restore was cancelled.

        Inside cinder-backup, Cinder's BackupRestoreCancel: the manager
        catches that class and leaves the volume in error.
        """
        if self.cinder is not None:
            return self.cinder.restore_cancelled(backup, volume_id)
        return error
