"""One exception hierarchy for chunkbackup.

Every error carries a message that says what is wrong and, where it can, what
to do about it. Messages are built from ``msg_fmt`` and keyword arguments, as
in other OpenStack projects, so callers pass facts rather than prose.
"""
from typing import Any, Optional


class ChunkBackupError(Exception):
    """Base class: ``msg_fmt`` formatted with the keyword arguments."""

    msg_fmt = "An unknown error occurred."

    def __init__(self, message: Optional[str] = None,
                 **kwargs: Any) -> None:
        self.kwargs = kwargs
        if message is None:
            try:
                message = self.msg_fmt % kwargs
            except (KeyError, TypeError, ValueError):
                # A wrong format must never hide the original failure.
                message = "%s (%s)" % (self.msg_fmt, kwargs)
        self.msg = message
        super().__init__(message)


class InvalidConfiguration(ChunkBackupError):
    msg_fmt = "Invalid configuration: %(reason)s"


class InvalidBackup(ChunkBackupError):
    msg_fmt = "Invalid backup: %(reason)s"


class InvalidBackupMetadata(InvalidBackup):
    msg_fmt = ("Backup %(backup_id)s has unusable metadata in %(object)s: "
               "%(reason)s")


class UnsupportedBackupVersion(InvalidBackup):
    msg_fmt = ("Backup %(backup_id)s was written in format version "
               "%(version)r, which this version of chunkbackup cannot read "
               "(it reads %(supported)s). Restore it with the software that "
               "wrote it.")


class BackupCorrupted(InvalidBackup):
    msg_fmt = ("Backup %(backup_id)s is corrupt: object %(object)s "
               "(volume offset %(offset)d): %(reason)s")


class BackupVerifyFailed(BackupCorrupted):
    """Verify found bad objects: every one of them, not only the first."""

    msg_fmt = ("Backup %(backup_id)s failed verification: %(count)d bad "
               "object(s): %(problems)s")


class BackupIncomplete(InvalidBackup):
    msg_fmt = ("Backup %(backup_id)s is incomplete in container "
               "%(container)s: %(reason)s")


class ParentMismatch(InvalidBackup):
    msg_fmt = "Cannot make an incremental backup of %(backup_id)s: %(reason)s"


class BackupInUse(ChunkBackupError):
    msg_fmt = ("Backup %(backup_id)s is the parent of %(children)s; delete "
               "the incremental backups that depend on it first.")


class BackupOperationCancelled(ChunkBackupError):
    msg_fmt = "The %(operation)s of backup %(backup_id)s was cancelled."


class BackupRestoreCancel(BackupOperationCancelled):
    msg_fmt = ("The restore of backup %(backup_id)s to volume %(volume_id)s "
               "was cancelled.")


class NotAVolume(ChunkBackupError):
    msg_fmt = ("%(name)s is %(kind)s, not a volume; give a regular file, a "
               "block device or an NBD export (nbd://HOST:PORT/EXPORT, "
               "nbd+unix:///EXPORT?socket=PATH)")


class InvalidName(ChunkBackupError):
    msg_fmt = ("Refusing %(kind)s %(name)r: %(reason)s. Names may not be "
               "absolute, contain '..' components or control characters.")


class InvalidChangedExtents(ChunkBackupError):
    # The accepted formats are named in every message: the user chose the
    # tool that made the map and may simply have run it the wrong way.
    msg_fmt = ("Cannot use the changed-extents map %(source)s: %(reason)s. "
               "Give JSON from 'qemu-img map --output=json' of an "
               "x-dirty-bitmap export, 'nbdinfo --map=qemu:dirty-bitmap:NAME "
               "--json', 'rbd diff --format json', or a list of "
               "[offset, length] pairs.")


class NbdError(ChunkBackupError):
    """An NBD export refused, failed or broke a request (chunkbackup.nbd)."""

    msg_fmt = "NBD %(url)s: %(reason)s"


class StorageError(ChunkBackupError):
    """A storage operation failed; drivers raise subclasses of it."""

    msg_fmt = ("Storage operation %(operation)s on %(target)s failed: "
               "%(reason)s")


class TransientStorageError(StorageError):
    """A failure worth retrying: a timeout, a reset, a 5xx, a 429."""


class StorageObjectNotFound(StorageError):
    msg_fmt = "Object %(target)s does not exist: %(reason)s"


class StorageContainerNotFound(StorageError):
    msg_fmt = "Container %(target)s does not exist: %(reason)s"


class StorageAuthError(StorageError):
    # The reason names the driver's own credential options.
    msg_fmt = ("The storage refused our credentials for %(operation)s on "
               "%(target)s: %(reason)s")
