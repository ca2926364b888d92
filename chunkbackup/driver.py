"""The backup-driver contract of OpenStack Cinder, as chunkbackup serves it.

cinder-backup constructs a driver as ``Driver(context, db=None)`` and calls
the methods below with Cinder ``Backup`` objects. Standalone, chunkbackup
passes its own catalog records, which have the same attributes:
``id``, ``volume_id``, ``container``, ``parent_id``, ``parent``,
``service_metadata``, ``display_name``, ``display_description``,
``created_at``, ``size``, ``status``, ``object_count``, ``save()`` and
``refresh()``.
"""
import abc
from typing import Any, Optional

from oslo_log import log as logging

LOG = logging.getLogger(__name__)


class BackupDriver(metaclass=abc.ABCMeta):
    """What cinder-backup (and the chunkbackup CLI) calls on a driver."""

    def __init__(self, context: Any, db: Any = None):
        self.context = context
        self.db = db

    @abc.abstractmethod
    def backup(self, backup, volume_file, backup_metadata: bool = False):
        """Back up ``volume_file`` (a readable, seekable file) as ``backup``.

        An incremental backup is made when ``backup.parent_id`` is set. The
        driver fills in ``container``, ``service_metadata``, ``size`` and
        ``object_count`` and calls ``backup.save()``.
        """

    @abc.abstractmethod
    def restore(self, backup, volume_id: str, volume_file,
                volume_is_new: bool = False):
        """Write the image of ``backup`` (and its chain) to ``volume_file``.

        ``volume_is_new`` promises that the volume reads as zeros, so zero
        blocks need not be written.
        """

    @abc.abstractmethod
    def delete_backup(self, backup):
        """Delete the objects of ``backup`` from the store."""

    def export_record(self, backup) -> dict:
        """Driver-specific information for a record export (driver_info)."""
        return {}

    def import_record(self, backup, driver_info: dict) -> None:
        """Accept a record exported by ``export_record``; nothing to do."""

    def check_for_setup_error(self) -> None:
        """Raise a clear error when the driver cannot work as configured."""

    def get_metadata(self, volume_id: str) -> Optional[str]:
        """JSON metadata of the volume to store with a backup, or None.

        Standalone volumes (files and block devices) carry no metadata of
        their own; inside cinder-backup this returns Cinder's backup
        metadata document.
        """
        return None

    def put_metadata(self, volume_id: str, json_metadata: str) -> None:
        """Apply volume metadata saved by ``get_metadata`` on restore."""
        LOG.debug('Volume metadata of %s is not applied standalone.',
                  volume_id)
