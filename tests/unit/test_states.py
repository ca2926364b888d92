"""Record state transitions (chunkbackup.catalog.states) on a real SQLite
catalog: what each transition sets, what it refuses, and the clean-up of
records whose owner is gone.
"""
import os
import socket
import subprocess
import sys

import pytest
import sqlalchemy as sa

from chunkbackup.catalog import api
from chunkbackup.catalog import models
from chunkbackup.catalog import states


@pytest.fixture
def catalog(tmp_path):
    cat = api.Catalog('sqlite:///%s' % (tmp_path / 'catalog.sqlite'))
    yield cat
    cat.dispose()


@pytest.fixture
def session(catalog):
    s = catalog.session()
    yield s
    s.close()


@pytest.fixture
def dead_owner():
    """The owner string of a process that has exited."""
    child = subprocess.Popen([sys.executable, '-c', 'pass'])
    child.wait()
    return '%s:%d' % (socket.gethostname(), child.pid)


def _begin(session, **kw):
    return states.begin_backup(session, volume_id='vol', driver='posix',
                               container='c', **kw)


def _reread(catalog, backup_id):
    """The record as another process sees it (what was committed)."""
    other = catalog.session()
    try:
        return other.get(models.Backup, backup_id)
    finally:
        other.close()


def test_a_backup_is_creating_and_owned_until_it_finishes(catalog, session):
    record = _begin(session)
    seen = _reread(catalog, record.id)
    assert (seen.status, seen.owner) == (states.CREATING, states.owner_id())
    assert seen.data_timestamp is None
    states.finish_backup(session, record, 12345)
    seen = _reread(catalog, record.id)
    assert (seen.status, seen.owner, seen.size_bytes) == (
        states.AVAILABLE, None, 12345)
    assert seen.data_timestamp == seen.created_at


def test_a_failed_backup_ends_error_without_what_was_uncommitted(
        catalog, session):
    record = _begin(session, owner='elsewhere:1')
    record.object_count = 99  # the engine's half-done work, never committed
    states.fail_backup(session, record, KeyboardInterrupt())
    seen = _reread(catalog, record.id)
    assert (seen.status, seen.owner, seen.object_count) == (states.ERROR,
                                                            None, 0)
    # An error without a message is named by its type.
    assert seen.fail_reason == 'KeyboardInterrupt'
    states.fail_backup(session, record, RuntimeError('disk on fire'))
    assert _reread(catalog, record.id).fail_reason == 'disk on fire'


def test_cancel_is_asked_only_of_a_backup_being_created(catalog, session):
    creating = _begin(session)
    done = _begin(session)
    states.finish_backup(session, done, 1)
    assert states.request_cancel(session, creating.id)
    assert not states.request_cancel(session, done.id)
    assert not states.request_cancel(session, 'no-such-backup')
    assert _reread(catalog, creating.id).status == states.DELETING
    assert _reread(catalog, done.id).status == states.AVAILABLE


def test_a_failure_is_explained_only_once_it_is_an_error(catalog, session):
    record = _begin(session)
    states.explain_failure(session, record.id, 'why')
    assert _reread(catalog, record.id).fail_reason is None
    states.fail_backup(session, record, RuntimeError('cancelled'))
    states.explain_failure(session, record.id, 'the service stopped')
    assert _reread(catalog, record.id).fail_reason == 'the service stopped'


def test_an_abandoned_backup_is_an_error_that_keeps_its_owner(catalog,
                                                              session):
    creating, deleting, done = _begin(session), _begin(session), \
        _begin(session)
    states.request_cancel(session, deleting.id)
    states.finish_backup(session, done, 1)
    for record in (creating, deleting, done):
        states.abandon_backup(session, record.id, 'interrupted')
    for record in (creating, deleting):
        seen = _reread(catalog, record.id)
        assert (seen.status, seen.owner, seen.fail_reason) == (
            states.ERROR, states.owner_id(), 'interrupted')
    assert _reread(catalog, done.id).status == states.AVAILABLE


def test_a_restore_leaves_its_backup_available(catalog, session):
    record = _begin(session)
    states.finish_backup(session, record, 1)
    states.begin_restore(session, record)
    seen = _reread(catalog, record.id)
    assert (seen.status, seen.owner) == (states.RESTORING, states.owner_id())
    states.end_restore(session, record)
    seen = _reread(catalog, record.id)
    assert (seen.status, seen.owner) == (states.AVAILABLE, None)


def test_delete_refuses_a_backup_another_process_works_on(catalog, session):
    record = _begin(session, owner='elsewhere.example:7')
    with pytest.raises(states.BackupBusy) as raised:
        states.begin_delete(session, record)
    assert raised.value.msg == (
        'backup %s is creating by elsewhere.example:7; wait, or run '
        'chunkbackup cleanup if that process is gone' % record.id)
    assert _reread(catalog, record.id).status == states.CREATING
    # Ours, or finished: it can go.
    mine = _begin(session)
    states.begin_delete(session, mine)
    seen = _reread(catalog, mine.id)
    assert (seen.status, seen.owner) == (states.DELETING, states.owner_id())
    states.finish_delete(session, mine)
    assert _reread(catalog, mine.id) is None


def test_a_failed_delete_ends_error_deleting(catalog, session):
    record = _begin(session)
    states.finish_backup(session, record, 1)
    states.begin_delete(session, record)
    states.fail_delete(session, record, RuntimeError('store refused'))
    seen = _reread(catalog, record.id)
    assert (seen.status, seen.owner, seen.fail_reason) == (
        states.ERROR_DELETING, None, 'store refused')


def test_a_job_is_claimed_once_and_finished(catalog, session):
    first = states.enqueue_job(session, 'backup', {'volume': '/v/a'})
    second = states.enqueue_job(session, 'backup', {'volume': '/v/b'})
    assert first.status == states.QUEUED
    other = catalog.session()
    try:
        claimed = [states.claim_job(session, 'a:1'),
                   states.claim_job(other, 'b:2'),
                   states.claim_job(session, 'a:1')]
    finally:
        other.close()
    assert [j.id if j else None for j in claimed] == [first.id, second.id,
                                                      None]
    assert (claimed[0].status, claimed[0].owner) == (states.RUNNING, 'a:1')
    assert claimed[0].started_at is not None
    states.link_job_backup(session, first.id, 'backup-1')
    states.finish_job(session, claimed[0], states.DONE)
    session.expire_all()
    job = session.get(models.Job, first.id)
    assert (job.status, job.backup_id, job.error) == (states.DONE,
                                                      'backup-1', None)
    assert job.finished_at is not None


def test_a_job_two_workers_race_for_goes_to_one(catalog):
    job = states.enqueue_job(catalog.session(), 'backup', {})
    loser, winner = catalog.session(), catalog.session()
    won = []

    def race(conn, cursor, statement, *args):
        # The loser has found the job queued; the winner takes it first.
        if statement.lstrip().upper().startswith('UPDATE JOBS') and \
                not won:
            won.append(None)
            won[0] = states.claim_job(winner, 'winner:2')
    sa.event.listen(catalog.engine, 'before_cursor_execute', race)
    try:
        assert states.claim_job(loser, 'loser:1') is None
    finally:
        sa.event.remove(catalog.engine, 'before_cursor_execute', race)
    assert (won[0].id, won[0].owner) == (job.id, 'winner:2')
    loser.expire_all()
    assert loser.get(models.Job, job.id).owner == 'winner:2'
    loser.close()
    winner.close()


def test_only_a_running_job_is_abandoned(catalog, session):
    queued = states.enqueue_job(session, 'backup', {})
    running = states.enqueue_job(session, 'backup', {})
    states.claim_job(session, 'a:1')  # the oldest: queued
    states.finish_job(session, session.get(models.Job, queued.id),
                      states.FAILED, error='boom')
    states.claim_job(session, 'a:1')
    states.abandon_job(session, queued.id, 'cancelled')
    states.abandon_job(session, running.id, 'cancelled')
    session.expire_all()
    assert session.get(models.Job, queued.id).status == states.FAILED
    job = session.get(models.Job, running.id)
    assert (job.status, job.error) == (states.CANCELLED, 'cancelled')


def test_owner_id_names_this_process():
    assert states.owner_id() == '%s:%d' % (socket.gethostname(), os.getpid())
    assert states.owner_alive(states.owner_id())


def test_cleanup_keeps_the_owner_when_the_objects_cannot_go(
        catalog, session, dead_owner):
    record = _begin(session, owner=dead_owner)
    record.service_metadata = 'prefix'
    session.commit()
    attempts = []

    def failing(rec):
        attempts.append(rec.id)
        raise RuntimeError('store down')
    assert states.cleanup_interrupted(session, failing) == [record.id]
    seen = _reread(catalog, record.id)
    assert (seen.status, seen.owner) == (states.ERROR, dead_owner)
    assert 'interrupted: %s stopped while the backup was creating' \
        % dead_owner == seen.fail_reason
    # The next clean-up tries again and, when the store answers, releases
    # the record.
    assert states.cleanup_interrupted(session, lambda rec: 3) == [record.id]
    assert _reread(catalog, record.id).owner is None
    # The failure recorded first is the one kept.
    assert _reread(catalog, record.id).fail_reason == seen.fail_reason
    # One attempt a run: the look for leftovers skips what it just did.
    assert attempts == [record.id]


def test_cleanup_removes_leftovers_of_failed_backups(catalog, session):
    failed = _begin(session)
    failed.service_metadata = 'prefix'
    session.commit()
    states.fail_backup(session, failed, RuntimeError('store down'))
    without_objects = _begin(session)
    states.fail_backup(session, without_objects, RuntimeError('early'))
    found = {failed.id: 2}

    def remove(rec):
        return found.pop(rec.id, 0)
    assert states.cleanup_interrupted(session, remove) == [failed.id]
    # Nothing left to remove: not reported again.
    assert states.cleanup_interrupted(session, remove) == []


def test_cleanup_fails_the_jobs_of_gone_processes(catalog, session,
                                                  dead_owner):
    gone = states.enqueue_job(session, 'backup', {})
    alive = states.enqueue_job(session, 'backup', {})
    states.claim_job(session, dead_owner)
    states.claim_job(session, states.owner_id())
    assert states.cleanup_interrupted(session, lambda rec: 0) == []
    session.expire_all()
    job = session.get(models.Job, gone.id)
    assert (job.status, job.error) == (
        states.FAILED,
        'interrupted: %s stopped before the job finished' % dead_owner)
    assert session.get(models.Job, alive.id).status == states.RUNNING


def test_a_restore_and_a_delete_exclude_each_other(catalog, session):
    # One process (the service runs both at once): the owner alone cannot
    # tell them apart; the conditional update does.
    record = _begin(session)
    states.finish_backup(session, record, 1)
    other = catalog.session()
    try:
        stale = other.get(models.Backup, record.id)  # read as available
        states.begin_restore(session, record)
        with pytest.raises(states.BackupBusy) as raised:
            states.begin_delete(other, stale)
        assert raised.value.msg == (
            'backup %s is restoring by %s; wait, or run chunkbackup '
            'cleanup if that process is gone'
            % (record.id, states.owner_id()))
        states.end_restore(session, record)
        states.begin_delete(other, stale)
        with pytest.raises(states.StatusConflict) as raised:
            states.begin_restore(session, record)
        assert raised.value.msg.startswith('backup %s is deleting by '
                                           % record.id)
        states.finish_delete(other, stale)
        with pytest.raises(states.BackupGone) as raised:
            states.begin_restore(session, record)
        assert raised.value.msg == (
            'cannot restore backup %s: it was deleted (by another '
            'operation)' % record.id)
    finally:
        other.close()


def test_refresh_reads_what_others_wrote_without_expiring_the_record(
        catalog, session):
    """Engine threads read the record while the main thread refreshes it:
    no attribute may be unloaded then, or a thread's read would query the
    session concurrently (SQLAlchemy refuses).
    """
    record = _begin(session)
    record.refresh()  # every column loaded once
    columns = {c.key for c in sa.inspect(models.Backup).column_attrs}
    other = catalog.session()
    try:
        theirs = other.get(models.Backup, record.id)
        theirs.status = states.DELETING
        theirs.fail_reason = 'cancelled elsewhere'
        other.commit()
    finally:
        other.close()
    unloaded_during_queries = []

    def watch(*args):
        unloaded_during_queries.append(
            columns & set(sa.inspect(record).unloaded))

    sa.event.listen(catalog.engine, 'before_cursor_execute', watch)
    try:
        record.refresh()
    finally:
        sa.event.remove(catalog.engine, 'before_cursor_execute', watch)
    assert unloaded_during_queries
    assert all(not u for u in unloaded_during_queries), \
        unloaded_during_queries
    assert (record.status, record.fail_reason) == (
        states.DELETING, 'cancelled elsewhere')


def test_a_job_whose_backup_still_holds_its_lease_is_not_requeued(
        catalog, session):
    """Only the job's heartbeat lapsed: the worker still renews the backup's
    lease, and the backup may become available. Re-queued now, the job
    would back the volume up twice; it waits for the backup instead.
    """
    import datetime

    from chunkbackup.catalog import workers

    now = models.utcnow()
    owner = '%s:%d' % (socket.gethostname(), os.getpid())  # alive
    record = _begin(session)
    record.lease_expires_at = now + datetime.timedelta(seconds=60)
    record.owner = owner
    job = models.Job(kind='backup', params={}, status=states.RUNNING,
                     owner=owner, attempts=1, backup_id=record.id,
                     lease_expires_at=now - datetime.timedelta(seconds=5))
    session.add(job)
    session.commit()
    workers.take_over_expired(session, lambda r: 0, job_attempts=3)
    session.expire_all()
    assert session.get(models.Job, job.id).status == states.RUNNING
    # Once the backup's lease lapses too, the job is re-queued and the
    # backup can no longer finish.
    record = session.get(models.Backup, record.id)
    record.lease_expires_at = now - datetime.timedelta(seconds=1)
    session.commit()
    workers.take_over_expired(session, lambda r: 0, job_attempts=3)
    session.expire_all()
    assert session.get(models.Job, job.id).status == states.QUEUED
    assert session.get(models.Backup, record.id).status == states.ERROR


def test_a_run_that_lost_its_lease_keeps_a_newer_runs_volume_lock(
        catalog, session):
    """A worker paused past its lease gets its job back (re-queued, then
    claimed again by the same worker) while the old run is still ending.
    The old run's end must not release the new run's lock on the volume
    (it did: the new run then stopped, and its job stayed running
    forever, renewed by a live worker that no longer ran it).
    """
    import datetime

    from chunkbackup.catalog import leases
    from chunkbackup.catalog import workers

    owner = '%s:%d' % (socket.gethostname(), os.getpid())
    leases.enable(30)
    try:
        assert workers.lock_volume(session, 'vol-1', owner)
    finally:
        leases.disable()
    # The old run ends after losing its lease: the fresh lock stays.
    workers.unlock_volume(session, 'vol-1', owner, lapsed_only=True)
    assert session.get(models.VolumeLock, 'vol-1') is not None
    # A lock that lapsed with the old run is the old run's: it goes.
    lock = session.get(models.VolumeLock, 'vol-1')
    lock.lease_expires_at = models.utcnow() - datetime.timedelta(seconds=1)
    session.commit()
    workers.unlock_volume(session, 'vol-1', owner, lapsed_only=True)
    session.expire_all()
    assert session.get(models.VolumeLock, 'vol-1') is None
    # A run that ended normally releases its lock, lapsed or not.
    assert workers.lock_volume(session, 'vol-1', owner)
    workers.unlock_volume(session, 'vol-1', owner)
    session.expire_all()
    assert session.get(models.VolumeLock, 'vol-1') is None


def test_a_run_that_lost_its_lease_hands_back_a_job_still_its_own(
        catalog, session):
    """The heartbeat renews every unexpired lease of a live worker: a job
    whose run stopped on LeaseLost, still naming that run, would stay
    ``running`` for ever. Given up, it is re-queued by the next takeover;
    a job claimed again since (a newer run) is left alone.
    """
    import datetime

    from chunkbackup.catalog import leases
    from chunkbackup.catalog import workers

    owner = '%s:%d' % (socket.gethostname(), os.getpid())  # alive
    live = models.utcnow() + datetime.timedelta(seconds=60)
    old_run = models.Job(kind='backup', params={}, status=states.RUNNING,
                         owner=owner, attempts=1, lease_expires_at=live)
    newer_run = models.Job(kind='backup', params={}, status=states.RUNNING,
                           owner=owner, attempts=2, lease_expires_at=live)
    session.add_all([old_run, newer_run])
    session.commit()
    assert workers.give_up_job(session, old_run.id, owner, attempts=1)
    assert not workers.give_up_job(session, newer_run.id, owner, attempts=1)
    leases.enable(30)
    try:
        workers.heartbeat(session, owner, running=1)
    finally:
        leases.disable()
    workers.take_over_expired(session, lambda r: 0, job_attempts=3)
    session.expire_all()
    assert session.get(models.Job, old_run.id).status == states.QUEUED
    newer = session.get(models.Job, newer_run.id)
    assert newer.status == states.RUNNING
    assert newer.lease_expires_at > models.utcnow()  # renewed, not lapsed
