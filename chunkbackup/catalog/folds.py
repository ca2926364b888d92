"""The catalog side of a fold: backup B forgotten into its child C.

Both are ``folding``, owned by this process, from :func:`begin_fold`
(one transaction of two compare-and-set UPDATEs: both were available, C
still B's child) until :func:`finish_fold` (C names B's parent and is
available, B is ``deleting``: its objects go, then its record) or
:func:`undo_fold` (both available, unchanged). B records the child in
``fold_target``, so a clean-up after a crash knows the fold.

A fold must not race a reader or writer of the chain below B: restores
and verifies hold their backup (``restoring``, ``verifying``) and then
look up their chain (:func:`folding_ancestor`); a fold holds B and C and
then looks down C's subtree (:func:`busy_descendant`). Each side writes
first and reads second, so of two that overlap, one sees the other and
backs off with one line.
"""
from typing import List, Optional, Tuple

from oslo_log import log as logging
import sqlalchemy as sa
from sqlalchemy import orm

from chunkbackup.catalog import models
from chunkbackup.catalog import states

LOG = logging.getLogger(__name__)

B = models.Backup
# What must not run below a fold: it reads (or extends) the chain.
_READERS = (states.RESTORING, states.VERIFYING, states.CREATING)


def begin_fold(session: orm.Session, parent: models.Backup,
               child: models.Backup) -> None:
    """Hold B and C ``folding``; StatusConflict (one line) if either is
    not available, or C is no longer B's child, or C's subtree is busy.
    """
    me = states.owner_id()
    session.rollback()
    taken = session.execute(
        sa.update(B).where(B.id == parent.id, B.status == states.AVAILABLE,
                           B.owner.is_(None))
        .values(status=states.FOLDING, owner=me, fold_target=child.id)
        .execution_options(synchronize_session=False)).rowcount
    if taken == 1:
        taken += session.execute(
            sa.update(B).where(B.id == child.id,
                               B.status == states.AVAILABLE,
                               B.owner.is_(None), B.parent_id == parent.id)
            .values(status=states.FOLDING, owner=me)
            .execution_options(synchronize_session=False)).rowcount
    if taken != 2:
        session.rollback()
        loser = parent.id if taken == 0 else child.id
        raise states._conflict(session, loser, 'fold')
    session.commit()
    for record in (parent, child):
        session.refresh(record)
    busy = busy_descendant(session, child.id)
    if busy is not None:
        undo_fold(session, parent, child)
        raise states.BackupBusy(backup_id=busy[0], status=busy[1],
                                owner=busy[2] or 'another process')


def busy_descendant(session: orm.Session, backup_id: str
                    ) -> Optional[Tuple[str, str, Optional[str]]]:
    """(id, status, owner) of a backup below ``backup_id`` that is being
    restored, verified or created, or None.
    """
    frontier = [backup_id]
    seen = set(frontier)
    while frontier:
        rows = session.execute(
            sa.select(B.id, B.status, B.owner)
            .where(B.parent_id.in_(frontier))).all()
        frontier = []
        for row in rows:
            if row[1] in _READERS:
                session.commit()
                return (row[0], row[1], row[2])
            if row[0] not in seen:
                seen.add(row[0])
                frontier.append(row[0])
    session.commit()
    return None


def folding_ancestor(session: orm.Session,
                     record: models.Backup) -> Optional[models.Backup]:
    """The backup of ``record``'s chain (itself excluded) being folded,
    read afresh from the catalog, or None.
    """
    parent_id = session.scalar(sa.select(B.parent_id)
                               .where(B.id == record.id))
    seen = {record.id}
    while parent_id and parent_id not in seen:
        seen.add(parent_id)
        row = session.execute(sa.select(B.status, B.parent_id)
                              .where(B.id == parent_id)).first()
        if row is None:
            break
        if row[0] == states.FOLDING:
            found = session.get(B, parent_id)
            session.commit()
            return found
        parent_id = row[1]
    session.commit()
    return None


def finish_fold(session: orm.Session, parent: models.Backup,
                child: models.Backup, object_count: int,
                owner: Optional[str] = None) -> None:
    """The child's new ``_metadata`` is stored: the child names B's parent
    and is available; B is ``deleting`` (its objects go next).
    """
    owner = owner or states.owner_id()
    session.rollback()
    done = session.execute(
        sa.update(B).where(B.id == child.id, B.status == states.FOLDING,
                           B.owner == owner)
        .values(parent_id=parent.parent_id, status=states.AVAILABLE,
                owner=None, lease_expires_at=None,
                object_count=object_count)
        .execution_options(synchronize_session=False)).rowcount
    done += session.execute(
        sa.update(B).where(B.id == parent.id, B.status == states.FOLDING,
                           B.owner == owner)
        .values(status=states.DELETING, owner=states.owner_id())
        .execution_options(synchronize_session=False)).rowcount
    if done != 2:
        session.rollback()
        raise states._conflict(session, parent.id, 'finish the fold of')
    session.commit()
    session.expire(child)
    session.expire(parent)


def undo_fold(session: orm.Session, parent: models.Backup,
              child: models.Backup, owner: Optional[str] = None) -> None:
    """Both available again, as they were (the store was not changed, or
    its copies were removed).
    """
    owner = owner or states.owner_id()
    session.rollback()
    session.execute(
        sa.update(B).where(B.id.in_((parent.id, child.id)),
                           B.status == states.FOLDING, B.owner == owner)
        .values(status=states.AVAILABLE, owner=None, fold_target=None,
                lease_expires_at=None)
        .execution_options(synchronize_session=False))
    session.commit()
    session.expire(child)
    session.expire(parent)


def take_over(session: orm.Session, parent: models.Backup) -> \
        Optional[models.Backup]:
    """Take an interrupted fold from its gone owner; return its child.

    None when another clean-up took it first (or the child is gone).
    """
    old = parent.owner
    me = states.owner_id()
    taken = session.execute(
        sa.update(B).where(B.id.in_((parent.id, parent.fold_target)),
                           B.status == states.FOLDING, B.owner == old)
        .values(owner=me)
        .execution_options(synchronize_session=False)).rowcount
    if taken == 0:
        session.rollback()
        return None
    session.commit()
    session.expire(parent)
    child = session.get(B, parent.fold_target) if parent.fold_target \
        else None
    if child is not None:
        session.refresh(child)
    return child


def orphaned_fold_targets(session: orm.Session) -> List[models.Backup]:
    """Children left ``folding`` with no backup folding into them."""
    sources = sa.select(B.fold_target).where(B.status == states.FOLDING,
                                             B.fold_target.isnot(None))
    rows = list(session.scalars(sa.select(B).where(
        B.status == states.FOLDING, B.fold_target.is_(None),
        B.id.notin_(sources))))
    session.commit()
    return rows


def release(session: orm.Session, record: models.Backup) -> None:
    """An orphaned fold target: available again."""
    session.execute(sa.update(B).where(B.id == record.id,
                                       B.status == states.FOLDING)
                    .values(status=states.AVAILABLE, owner=None,
                            lease_expires_at=None)
                    .execution_options(synchronize_session=False))
    session.commit()
    session.expire(record)
