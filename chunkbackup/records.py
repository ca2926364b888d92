"""What the engine needs of a backup record: Cinder's Backup, or ours.

Drivers work on any object with the attributes of Cinder's ``Backup``
versioned object (cinder-backup passes its own; the standalone catalog's
``models.Backup`` and ``testing.record.BackupRecord`` offer the same).
``BackupLike`` names that contract for type checkers; nothing inherits it.
"""
import datetime
from typing import Any, Optional, Protocol


class BackupLike(Protocol):
    """The attributes and methods of Cinder's Backup that drivers use."""

    id: str
    volume_id: str
    container: Optional[str]
    service_metadata: Optional[str]
    display_name: Optional[str]
    display_description: Optional[str]
    status: str
    size: int
    object_count: int

    @property
    def created_at(self) -> Optional[datetime.datetime]:
        """When the backup was made; drivers only read it."""

    @property
    def parent_id(self) -> Optional[str]:
        """The parent backup's id; None for a full backup."""

    @property
    def parent(self) -> Optional[Any]:
        """The parent's record (a BackupLike), loaded lazily."""

    def save(self) -> None:
        """Persist the attributes the driver set."""

    def refresh(self) -> None:
        """Reload the record (its status says whether to cancel)."""
