"""Forgetting any backup, synthetic fulls, retention policies and pins:
the standalone operations (CLI and service) on the catalog and a driver.

- ``delete_or_fold``: a backup without children is deleted; one with a
  child is folded into it (``chunked.fold_into_child``, catalog side in
  ``catalog.folds``), so any backup can be forgotten.
- ``create_synthetic_full``: a full backup of the newest image of a
  volume's chain, made in the store without reading the volume.
- ``forget``: a retention policy (``chunkbackup.policy``) applied to the
  catalog: every backup with keep or remove and the rules that keep it;
  removals (unless a dry run) newest first, so a removed backup's removed
  children are gone before it and it is folded only into a kept child.
- ``pin`` / ``unpin``: a pinned backup is never removed by a policy (nor
  by hand until it is unpinned).
- ``recover_fold``: what ``chunkbackup cleanup`` does with a fold whose
  process is gone: finish it if the child's new ``_metadata`` is stored,
  else roll it back.
"""
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from oslo_log import log as logging
import sqlalchemy as sa
from sqlalchemy import orm

from chunkbackup.catalog import api
from chunkbackup.catalog import folds
from chunkbackup.catalog import models
from chunkbackup.catalog import states
from chunkbackup.engine import documents
from chunkbackup import exception
from chunkbackup import objectlock
from chunkbackup import operations
from chunkbackup import policy as retention_policy

LOG = logging.getLogger(__name__)


class FoldRefused(operations.OperationError):
    pass


def _pinned_error(record: models.Backup) -> operations.OperationError:
    return operations.OperationError(
        reason='backup %s is pinned; run chunkbackup backup-unpin %s first '
               'if it really should go' % (record.id, record.id))


def delete_or_fold(session: orm.Session, backup_id: str, fold: bool = True,
                   allow_pinned: bool = False
                   ) -> Tuple[models.Backup, Optional[str]]:
    """Delete a backup, folding it into its child if it has one.

    Returns the record and the id of the child it was folded into (None:
    plainly deleted). ``fold=False`` keeps the plain refusal of a backup
    with children.
    """
    record = api.get_backup(session, backup_id)
    if record.pinned and not allow_pinned:
        raise _pinned_error(record)
    children = record.live_children
    if not children or not fold:
        return operations.delete_backup(session, backup_id), None
    if len(children) > 1:
        raise FoldRefused(
            reason='backup %s has %d incremental backups (%s); a fold goes '
                   'into one child: delete or forget all but one of them '
                   'first' % (record.id, len(children),
                              record.dependent_backup_ids))
    child = children[0]
    fold_backup(session, record, child)
    return record, child.id


def fold_backup(session: orm.Session, parent: models.Backup,
                child: models.Backup) -> None:
    """Fold ``parent`` into ``child`` (see the module doc), crash-safe:
    copies, then the child's ``_metadata``, then the records, then the
    parent's objects and record.
    """
    if child.driver != parent.driver:
        raise FoldRefused(reason='backup %s and its child %s are in '
                                 'different stores (%s, %s)'
                                 % (parent.id, child.id, parent.driver,
                                    child.driver))
    driver = operations.load_driver(parent.driver)
    # A fold deletes the parent's objects at its end: not of a locked one.
    operations.refuse_if_locked(parent, driver)
    folds.begin_fold(session, parent, child)
    try:
        rehoming = driver.fold_into_child(parent, child)
        count = len(rehoming.metadata.objects)
    except BaseException as e:
        count = _after_failed_fold(session, driver, parent, child, e)
    folds.finish_fold(session, parent, child, count)
    LOG.info('Backup %(p)s was folded into %(c)s.',
             {'p': parent.id, 'c': child.id})
    _record_child_lock(session, driver, child)
    _delete_folded(session, driver, parent)


def _record_child_lock(session, driver, child) -> None:
    """The child's lock after a fold: its copies and new _metadata were
    written locked just now, later than its own objects.
    """
    if not driver.object_lock_mechanism:
        return
    stats = operations.with_object_lock(driver, child, child.stats or {})
    if stats != (child.stats or {}):
        session.execute(sa.update(models.Backup)
                        .where(models.Backup.id == child.id)
                        .values(stats=stats))
        session.commit()
        session.refresh(child)


def _after_failed_fold(session, driver, parent, child, error) -> int:
    """Roll back (and re-raise) unless the new ``_metadata`` is stored."""
    try:
        state = driver.fold_state(parent, child)
    except Exception as e:
        # Both stay folding, owned by this process: the clean-up after
        # it finishes or rolls back.
        LOG.error('The fold of backup %(p)s into %(c)s stopped (%(err)s) '
                  'and its state cannot be read (%(err2)s); run chunkbackup '
                  'cleanup once the store works.',
                  {'p': parent.id, 'c': child.id, 'err': error,
                   'err2': getattr(e, 'msg', e)})
        raise error
    if state == 'undone':
        folds.undo_fold(session, parent, child)
        raise error
    # The new _metadata is stored (the failure came after): finish.
    return _object_count(driver, child)


def _object_count(driver, child) -> int:
    metadata = documents.read_metadata(driver.store, child,
                                       documents.Location.of(child))
    return len(metadata.objects)


def _delete_folded(session, driver, parent) -> None:
    try:
        driver.delete_objects(parent.container, parent.service_metadata)
    except BaseException as e:
        states.fail_delete(session, parent, e)
        raise
    states.finish_delete(session, parent)


def recover_fold(session: orm.Session,
                 record: models.Backup) -> Optional[str]:
    """Finish or roll back the interrupted fold ``record`` is part of.

    Returns the id of the backup folded (or of the fold rolled back), or
    None when there was nothing to do here.
    """
    if record.status == states.DELETING:
        # The records were switched: only the parent's objects remain.
        taken = session.execute(
            sa.update(models.Backup)
            .where(models.Backup.id == record.id,
                   models.Backup.status == states.DELETING,
                   models.Backup.owner == record.owner)
            .values(owner=states.owner_id())
            .execution_options(synchronize_session=False)).rowcount
        session.commit()
        if not taken:
            return None
        session.refresh(record)
        driver = operations.load_driver(record.driver)
        _delete_folded(session, driver, record)
        LOG.warning('Finished the interrupted fold of backup %s: its '
                    'objects and record are removed.', record.id)
        return record.id
    if record.fold_target is None:
        # A child; the fold is recovered through its parent, unless the
        # parent is no longer folding.
        if record in folds.orphaned_fold_targets(session):
            folds.release(session, record)
            return record.id
        return None
    old_owner = record.owner
    child = folds.take_over(session, record)
    if child is None:
        return None
    driver = operations.load_driver(record.driver)
    state = driver.fold_state(record, child)
    if state == 'undone':
        folds.undo_fold(session, record, child)
        LOG.warning('Rolled back the interrupted fold of backup %(p)s into '
                    '%(c)s (by %(o)s): both are as they were.',
                    {'p': record.id, 'c': child.id, 'o': old_owner})
        return record.id
    folds.finish_fold(session, record, child, _object_count(driver, child))
    _delete_folded(session, driver, record)
    LOG.warning('Finished the interrupted fold of backup %(p)s into %(c)s '
                '(by %(o)s).', {'p': record.id, 'c': child.id,
                                'o': old_owner})
    return record.id


def check_chain_free(session: orm.Session, record: models.Backup,
                     release: Callable[[], None]) -> None:
    """After holding ``record`` (a restore, verify, incremental): refuse,
    with one line, if a backup of its chain is being folded.
    """
    folding = folds.folding_ancestor(session, record)
    if folding is None:
        return
    release()
    raise states.BackupBusy(backup_id=folding.id, status=folding.status,
                            owner=folding.owner or 'another process')


# Synthetic fulls. -----------------------------------------------------------

def create_synthetic_full(session: orm.Session, volume: str, *,
                          name: Optional[str] = None,
                          description: Optional[str] = None,
                          volume_id: Optional[str] = None,
                          container: Optional[str] = None,
                          schedule_name: Optional[str] = None,
                          on_created: Optional[
                              Callable[[models.Backup], None]] = None
                          ) -> models.Backup:
    """A full backup of the newest backup's image, without the volume."""
    path = operations.volume_name(volume)
    volume_id = volume_id or operations.volume_id_of(path)
    dname = operations.driver_name()
    newest = api.latest_available(session, volume_id, dname)
    if newest is None:
        raise operations.OperationError(
            reason='no available backup of volume %s (%s) to make a '
                   'synthetic full from; make a backup first'
                   % (volume_id, path))
    driver = operations.load_driver()
    driver.check_for_setup_error()
    driver.check_lock_required()  # before a record is made
    # Held as a restore holds it: its chain is read, never changed.
    states.begin_restore(session, newest)
    try:
        check_chain_free(session, newest,
                         lambda: states.end_restore(session, newest))
        record = states.begin_backup(
            session, volume_id=volume_id, driver=dname,
            volume_path=newest.volume_path or path, parent=None, name=name,
            description=description, container=container)
        record.schedule_name = schedule_name
        session.commit()
        if on_created:
            on_created(record)
        try:
            rehoming = driver.synthetic_full(record, newest)
            states.finish_backup(
                session, record, newest.size_bytes,
                operations.with_object_lock(driver, record, {
                    'synthetic_full_of': newest.id,
                    'objects_copied': len(rehoming.copies)}))
            # Its data is the newest backup's, from that moment.
            session.execute(sa.update(models.Backup)
                            .where(models.Backup.id == record.id)
                            .values(data_timestamp=newest.data_timestamp
                                    or newest.created_at))
            session.commit()
            session.refresh(record)
        except BaseException as e:
            operations._record_failure(session, record, e)
            raise
    finally:
        if newest.status == states.RESTORING:
            states.end_restore(session, newest)
    return record


# Pins. ---------------------------------------------------------------------

def set_pinned(session: orm.Session, backup_id: str,
               pinned: bool) -> models.Backup:
    record = api.get_backup(session, backup_id)
    session.execute(sa.update(models.Backup)
                    .where(models.Backup.id == record.id)
                    .values(pinned=pinned))
    session.commit()
    session.refresh(record)
    return record


# Policies. -----------------------------------------------------------------

def _when(backup: models.Backup):
    # A synthetic full holds older data than its creation time says.
    return backup.data_timestamp or backup.created_at


def decide(backups: Sequence[models.Backup],
           rules: retention_policy.Policy
           ) -> List[retention_policy.Decision]:
    """The policy's decisions for the available backups of one volume;
    other backups are kept (reason: their status), never considered.
    """
    available = [b for b in backups if b.status == states.AVAILABLE]
    proxies = [_Timed(b) for b in available]
    decisions = retention_policy.apply(rules, proxies,
                                       pinned=lambda p: bool(p.b.pinned))
    for d in decisions:
        d.backup = d.backup.b
        _keep_if_locked(d)
    others = [retention_policy.Decision(b, retention_policy.KEEP,
                                        ['status %s' % b.status])
              for b in backups if b.status != states.AVAILABLE]
    return decisions + others


def _keep_if_locked(decision: retention_policy.Decision) -> None:
    """A backup an object lock still holds is kept, as a pin keeps it;
    the rules choose the others as if it were not there.
    """
    lock = objectlock.recorded_lock(decision.backup)
    if lock is not None and lock.active():
        decision.action = retention_policy.KEEP
        decision.reasons.append('locked until %s'
                                % objectlock.format_until(lock.until))


class _Timed:
    """A backup as the policy sees it: id and the time of its data."""

    def __init__(self, backup: models.Backup):
        self.b = backup
        self.id = backup.id
        self.created_at = _when(backup)


def forget(session: orm.Session, rules: retention_policy.Policy, *,
           volume_id: Optional[str] = None, dry_run: bool = False,
           schedule_name: Optional[str] = None,
           driver: Optional[str] = None,
           should_stop: Callable[[], bool] = lambda: False
           ) -> List[Dict[str, Any]]:
    """Apply a policy to each volume's backups (or one volume's, or one
    schedule's); one row per backup: keep or remove, why, what happened.
    """
    if rules.empty:
        raise operations.OperationError(
            reason='no policy given: add at least one of --keep-last, '
                   '--keep-hourly, --keep-daily, --keep-weekly, '
                   '--keep-monthly, --keep-yearly, --keep-within (nothing '
                   'was removed)')
    query = sa.select(models.Backup)
    if volume_id:
        query = query.where(models.Backup.volume_id == volume_id)
    if driver:
        query = query.where(models.Backup.driver == driver)
    if schedule_name:
        query = query.where(models.Backup.schedule_name == schedule_name)
    backups = list(session.scalars(query))
    # One group a volume and store, as restic groups by host and paths.
    by_volume: Dict[Tuple[str, str], List[models.Backup]] = {}
    for b in backups:
        by_volume.setdefault((b.volume_id, b.driver), []).append(b)
    rows = []
    for vol in sorted(by_volume):
        for d in decide(by_volume[vol], rules):
            b = d.backup
            rows.append({'id': b.id, 'volume_id': b.volume_id,
                         'created_at': b.created_at,
                         'incremental': b.parent_id is not None,
                         'pinned': bool(b.pinned), 'action': d.action,
                         'reason': d.reason, 'result': None,
                         '_key': (b.created_at, b.id)})
    if not dry_run:
        removals = sorted((r for r in rows
                           if r['action'] == retention_policy.REMOVE),
                          key=lambda r: r['_key'], reverse=True)
        for row in removals:
            if should_stop():
                row['result'] = 'not done: stopping'
                continue
            row['result'] = _remove(session, row['id'])
    else:
        for row in rows:
            if row['action'] == retention_policy.REMOVE:
                row['result'] = 'dry run'
    for row in rows:
        del row['_key']
    rows.sort(key=lambda r: (r['volume_id'], r['created_at'], r['id']),
              reverse=True)
    return rows


def _remove(session: orm.Session, backup_id: str) -> str:
    try:
        _record, child = delete_or_fold(session, backup_id)
    except objectlock.BackupLocked as e:
        # Locked in the store though its record says nothing (imported,
        # rebuilt): kept, not a failure.
        session.rollback()
        return 'not done: %s' % e.msg
    except (exception.ChunkBackupError, operations.OperationError) as e:
        session.rollback()
        message = getattr(e, 'msg', None) or str(e)
        LOG.error('Could not remove backup %(id)s: %(err)s',
                  {'id': backup_id, 'err': message})
        return 'failed: %s' % message
    return 'folded into %s' % child if child else 'deleted'
