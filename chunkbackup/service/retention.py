"""Retention: after each scheduled backup, remove what it expires.

Only the backups the schedule made are considered (unless its
``retention_scope`` is 'volume'), pinned ones are kept, and a policy
(``keep_*``, restic's rules) may replace the ``retain_full`` rule below.

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
from chunkbackup import folding
from chunkbackup import objectlock
from chunkbackup import operations
from chunkbackup import policy

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
                    should_stop: Callable[[], bool] = lambda: False,
                    schedule_name: Optional[str] = None,
                    keep_policy: Optional[dict] = None,
                    scope: str = 'schedule') -> List[str]:
    """Remove what a schedule's retention expires; return the removed ids.

    With ``schedule_name`` and ``scope`` 'schedule' only the backups that
    schedule made are considered: backups made by hand (or by another
    schedule) are never removed. ``keep_policy`` (a
    ``chunkbackup.policy.Policy`` as a dict) replaces the ``retain_full``
    rule. Pinned backups stay. A backup with a child that stays is folded
    into it (the child keeps its image). One that cannot be removed is
    logged; retention goes on with the others.
    """
    driver = driver or operations.driver_name()
    own = schedule_name if scope == 'schedule' else None
    if keep_policy:
        rows = folding.forget(
            session, policy.Policy.from_dict(keep_policy),
            volume_id=volume_id, driver=driver, schedule_name=own,
            should_stop=should_stop)
        done = [r['id'] for r in rows if r['result'] == 'deleted'
                or (r['result'] or '').startswith('folded')]
        for row in rows:
            if row['action'] == policy.REMOVE:
                LOG.info('Retention of volume %(vol)s: backup %(id)s: '
                         '%(res)s.', {'vol': volume_id, 'id': row['id'],
                                      'res': row['result']})
        return done
    query = sa.select(models.Backup).where(
        models.Backup.volume_id == volume_id, models.Backup.driver == driver)
    if own:
        query = query.where(models.Backup.schedule_name == own)
    backups = list(session.scalars(query))
    # Pinned and locked (object lock) backups stay, as forget keeps them.
    removals = [b for chain in expired_chains(backups, retain_full)
                for b in chain
                if not b.pinned and not objectlock.held_by_record(b)]
    # Newest first: a removed backup's removed children go before it, and
    # it is folded only into a child that stays.
    removals.sort(key=_key, reverse=True)
    removed: List[str] = []
    for backup in removals:
        if should_stop():
            LOG.info('Retention of volume %s stopped: the service is '
                     'shutting down.', volume_id)
            return removed
        backup_id = backup.id
        try:
            _record, child = folding.delete_or_fold(session, backup_id)
        except Exception as e:
            session.rollback()
            LOG.error('Retention could not remove backup %(id)s of volume '
                      '%(vol)s (%(err)s); it is kept.',
                      {'id': backup_id, 'vol': volume_id,
                       'err': getattr(e, 'msg', None) or e})
            continue
        LOG.info('Retention %(how)s backup %(id)s of volume %(vol)s.',
                 {'how': 'folded into %s' % child if child else 'deleted',
                  'id': backup_id, 'vol': volume_id})
        removed.append(backup_id)
    return removed
