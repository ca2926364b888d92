"""Retention: after each scheduled backup, delete whole expired chains.

A chain is a full backup with every backup that descends from it. The
newest ``retain_full`` available fulls of a volume are kept, with every
chain that is not older than the oldest of them; the other chains go,
oldest first and children before parents. The newest full is always kept.
"""
import datetime
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from oslo_log import log as logging
import sqlalchemy as sa
from sqlalchemy import orm

from chunkbackup.catalog import models
from chunkbackup.catalog import states
from chunkbackup import operations

LOG = logging.getLogger(__name__)


def _key(backup) -> Tuple[datetime.datetime, str]:
    return (backup.created_at, backup.id)


def expired_chains(backups: Sequence, retain_full: int) -> List[List]:
    """The chains that retention deletes, in the order to delete them.

    ``backups`` are one volume's backups (objects with ``id``,
    ``parent_id``, ``status`` and ``created_at``). A chain is a full
    backup with every backup that descends from it. The newest
    ``retain_full`` available fulls are kept, with every chain whose full
    is not older than the oldest of them; the other chains are expired.
    Chains come oldest first, each one newest backup first, so children go
    before their parents. A chain with a busy member (being created,
    deleted or restored) is left alone: its parents could not go.
    """
    retain_full = max(1, retain_full)
    by_id = {b.id: b for b in backups}
    fulls = sorted((b for b in backups
                    if not b.parent_id and b.status == states.AVAILABLE),
                   key=_key)
    if len(fulls) <= retain_full:
        return []
    oldest_kept = fulls[-retain_full]

    def root_of(backup):
        seen = set()
        # A parent outside the list (another volume, or gone) ends the
        # walk: the furthest known ancestor stands for the root.
        while backup.parent_id in by_id and backup.id not in seen:
            seen.add(backup.id)
            backup = by_id[backup.parent_id]
        return backup

    chains: Dict[str, List] = {}
    for backup in backups:
        chains.setdefault(root_of(backup).id, []).append(backup)
    expired = []
    for root_id, members in chains.items():
        root = by_id[root_id]
        if _key(root) >= _key(oldest_kept):
            continue
        busy = [m for m in members if m.status in states.BUSY_STATUSES]
        if busy:
            LOG.info('Retention keeps the expired chain of %(root)s for now: '
                     'backup %(id)s is %(status)s.',
                     {'root': root_id, 'id': busy[0].id,
                      'status': busy[0].status})
            continue
        expired.append(sorted(members, key=_key, reverse=True))
    expired.sort(key=lambda chain: _key(chain[-1]))
    return expired


def apply_retention(session: orm.Session, volume_id: str, retain_full: int,
                    driver: Optional[str] = None,
                    should_stop: Callable[[], bool] = lambda: False
                    ) -> List[str]:
    """Delete the expired chains of a volume; return the deleted ids.

    A backup that cannot be deleted is logged and its chain's older members
    are kept (they may be its parents); retention goes on with the next
    chain.
    """
    driver = driver or operations.driver_name()
    backups = list(session.scalars(
        sa.select(models.Backup).where(models.Backup.volume_id == volume_id,
                                       models.Backup.driver == driver)))
    deleted: List[str] = []
    for chain in expired_chains(backups, retain_full):
        for backup in chain:
            if should_stop():
                LOG.info('Retention of volume %s stopped: the service is '
                         'shutting down.', volume_id)
                return deleted
            backup_id = backup.id
            try:
                operations.delete_backup(session, backup_id)
            except Exception as e:
                session.rollback()
                LOG.error('Retention could not delete backup %(id)s of '
                          'volume %(vol)s (%(err)s); its chain is kept.',
                          {'id': backup_id, 'vol': volume_id,
                           'err': getattr(e, 'msg', None) or e})
                break
            LOG.info('Retention deleted backup %(id)s of volume %(vol)s.',
                     {'id': backup_id, 'vol': volume_id})
            deleted.append(backup_id)
    return deleted
