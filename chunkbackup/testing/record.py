"""An in-memory backup record with the attributes of Cinder's Backup.

Drivers work on any object with these attributes; this one serves tests,
the conformance suite and programs that keep their own records. The
standalone catalog's records offer the same interface.
"""
import datetime
import uuid
from typing import Callable, List, Optional


class BackupRecord:
    """A backup record; ``parent`` links a chain."""

    def __init__(self, volume_id: str, id: Optional[str] = None,
                 parent: 'Optional[BackupRecord]' = None,
                 container: Optional[str] = None,
                 display_name: Optional[str] = None,
                 display_description: Optional[str] = None,
                 status: str = 'creating',
                 created_at: Optional[datetime.datetime] = None,
                 service_metadata: Optional[str] = None,
                 on_refresh: Optional[Callable[['BackupRecord'],
                                               None]] = None):
        self.id = id or str(uuid.uuid4())
        self.volume_id = volume_id
        self.parent = parent
        self.container = container
        self.display_name = display_name
        self.display_description = display_description
        self.status = status
        self.created_at = created_at or datetime.datetime.now(
            datetime.timezone.utc).replace(microsecond=0)
        self.service_metadata = service_metadata
        self.size = 0
        self.object_count = 0
        self.children: List[BackupRecord] = []
        self.saves = 0
        self._on_refresh = on_refresh
        if parent is not None:
            parent.children.append(self)

    @property
    def parent_id(self) -> Optional[str]:
        return self.parent.id if self.parent is not None else None

    @property
    def has_dependent_backups(self) -> bool:
        return any(c.status != 'deleted' for c in self.children)

    @property
    def num_dependent_backups(self) -> int:
        return sum(1 for c in self.children if c.status != 'deleted')

    @property
    def dependent_backup_ids(self) -> str:
        return ', '.join(c.id for c in self.children if c.status != 'deleted')

    def save(self) -> None:
        self.saves += 1

    def refresh(self) -> None:
        if self._on_refresh is not None:
            self._on_refresh(self)

    def __repr__(self):
        return '<BackupRecord %s volume=%s parent=%s status=%s>' % (
            self.id, self.volume_id, self.parent_id, self.status)
