"""The service's decisions: retention, schedules, clean-up, shutdown.

Retention selection is a pure function and is tested on hand-made and
generated chains; the rest runs on a real SQLite catalog and posix store in
tmp_path, with stand-in operations where a real backup is not the point.
"""
import datetime
import os
import socket
import subprocess
import sys
import threading
import types

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from oslo_config import cfg
from oslo_service import opts as service_opts
import pytest
import sqlalchemy as sa

from chunkbackup.catalog import api
from chunkbackup.catalog import models
from chunkbackup.catalog import states
from chunkbackup.catalog import workers
from chunkbackup import exception
from chunkbackup import operations
from chunkbackup import service
from chunkbackup.service import retention
from chunkbackup.service import runner
from chunkbackup.service import schedules

CONF = cfg.CONF
T0 = datetime.datetime(2030, 1, 1)


def B(backup_id, parent=None, status='available', t=None):
    """A backup as retention sees it."""
    return types.SimpleNamespace(
        id=backup_id, parent_id=parent, status=status,
        created_at=T0 + datetime.timedelta(minutes=t))


def ids(chains):
    return [[b.id for b in chain] for chain in chains]


# Retention selection ------------------------------------------------------

def test_nothing_expires_until_there_are_more_fulls_than_kept():
    backups = [B('f1', t=1), B('i1', 'f1', t=2), B('f2', t=3),
               B('i2', 'f2', t=4)]
    assert retention.expired_chains(backups, 2) == []
    assert ids(retention.expired_chains(backups, 1)) == [['i1', 'f1']]


def test_whole_old_chains_go_oldest_first_children_first():
    backups = [B('f1', t=1), B('i1a', 'f1', t=2), B('i1b', 'i1a', t=3),
               B('f2', t=4), B('i2', 'f2', t=5), B('f3', t=6),
               B('i3', 'f3', t=7), B('f4', t=8)]
    assert ids(retention.expired_chains(backups, 2)) == [
        ['i1b', 'i1a', 'f1'], ['i2', 'f2']]
    assert ids(retention.expired_chains(backups, 3)) == [['i1b', 'i1a', 'f1']]


def test_branches_go_before_their_common_parent():
    backups = [B('f1', t=1), B('a', 'f1', t=2), B('b', 'f1', t=3),
               B('a2', 'a', t=4), B('f2', t=5)]
    (chain,) = retention.expired_chains(backups, 1)
    assert [b.id for b in chain] == ['a2', 'b', 'a', 'f1']


def test_input_order_does_not_matter():
    backups = [B('f1', t=1), B('i1', 'f1', t=2), B('f2', t=3),
               B('f3', t=4)]
    assert ids(retention.expired_chains(list(reversed(backups)), 2)) == [
        ['i1', 'f1']]


def test_only_available_fulls_count_and_error_chains_expire():
    backups = [B('e0', status='error', t=0), B('f1', t=1),
               B('i1', 'f1', status='error', t=2), B('f2', t=3),
               B('e3', status='error', t=4)]
    # Two available fulls, one kept: the chain of f1 (with its error
    # incremental) and the older error full go; the newer error full stays.
    assert ids(retention.expired_chains(backups, 1)) == [['e0'], ['i1', 'f1']]
    assert retention.expired_chains(backups, 2) == []


def test_a_busy_member_keeps_its_chain():
    backups = [B('f1', t=1), B('i1', 'f1', status='restoring', t=2),
               B('f2', t=3), B('i2', 'f2', t=4), B('f3', t=5)]
    assert ids(retention.expired_chains(backups, 1)) == [['i2', 'f2']]


def test_the_newest_full_is_kept_even_with_retain_zero():
    backups = [B('f1', t=1), B('f2', t=2)]
    assert ids(retention.expired_chains(backups, 0)) == [['f1']]


def test_a_parent_outside_the_list_roots_the_chain_where_it_stops():
    backups = [B('i0', 'gone', t=1), B('i1', 'i0', t=2), B('f2', t=3),
               B('f3', t=4)]
    assert ids(retention.expired_chains(backups, 1)) == [['i1', 'i0'],
                                                         ['f2']]


STATUSES = ['available'] * 6 + ['error', 'creating', 'restoring',
                                'deleting']


@st.composite
def forests(draw):
    n = draw(st.integers(1, 14))
    backups = []
    for i in range(n):
        parent = draw(st.one_of(st.none(), st.integers(0, i - 1))) \
            if i else None
        backups.append(B('b%d' % i, None if parent is None
                         else 'b%d' % parent, draw(st.sampled_from(STATUSES)),
                         t=draw(st.integers(0, 3)) + i * 4))
    return backups, draw(st.integers(1, 4))


@settings(max_examples=300, deadline=None)
@given(forests())
def test_retention_properties(case):
    backups, retain = case
    by_id = {b.id: b for b in backups}
    chains = retention.expired_chains(backups, retain)
    doomed = [b for chain in chains for b in chain]
    assert len(doomed) == len({b.id for b in doomed})

    def root(b):
        while b.parent_id in by_id:
            b = by_id[b.parent_id]
        return b
    fulls = sorted((b for b in backups
                    if b.parent_id is None and b.status == 'available'),
                   key=lambda b: (b.created_at, b.id))
    kept = fulls[-retain:]
    if len(fulls) <= retain:
        assert doomed == []
        return
    cutoff = (kept[0].created_at, kept[0].id)
    for b in doomed:
        assert b.status not in states.BUSY_STATUSES
        assert (root(b).created_at, root(b).id) < cutoff
        assert b.id not in {k.id for k in kept}
    # Every old chain without a busy member goes, whole.
    for b in backups:
        r = root(b)
        chain = [x for x in backups if root(x) is r]
        if (r.created_at, r.id) < cutoff and not any(
                x.status in states.BUSY_STATUSES for x in chain):
            assert b in doomed
    # Deleting in the given order never removes a parent before its child.
    alive = {b.id for b in backups}
    for b in doomed:
        assert not [x for x in backups
                    if x.parent_id == b.id and x.id in alive], b.id
        alive.discard(b.id)


# A real catalog and store -------------------------------------------------

@pytest.fixture
def session(catalog):
    s = catalog.session()
    yield s
    s.close()


def _volume(tmp_path, name='disk.img', seed=b'x', size=256 * 1024):
    path = tmp_path / name
    path.write_bytes((seed * size)[:size])
    return str(path)


def _objects(tmp_path, record):
    directory = tmp_path / 'store' / record.container
    if not directory.is_dir():
        return []
    return [n for n in os.listdir(directory)
            if n.startswith(record.service_metadata)]


def test_apply_retention_deletes_records_and_objects(tmp_path, session):
    volume = _volume(tmp_path)
    made = []
    for incremental in (False, True, False, True, False):
        with open(volume, 'r+b') as f:
            f.write(os.urandom(4096))
        made.append(operations.create_backup(session, volume,
                                             incremental=incremental))
    f1, i1, f2, i2, f3 = made
    gone = [(r.id, r.container, r.service_metadata) for r in (i1, f1)]
    deleted = retention.apply_retention(session, f1.volume_id, 2)
    assert deleted == [i1.id, f1.id]
    assert [b.id for b in api.list_backups(session)] == [f2.id, i2.id, f3.id]
    for backup_id, container, prefix in gone:
        record = types.SimpleNamespace(container=container,
                                       service_metadata=prefix)
        assert _objects(tmp_path, record) == []
    assert _objects(tmp_path, f2)


def test_retention_folds_around_a_child_that_cannot_go(tmp_path, session,
                                                       monkeypatch, caplog):
    # The child that cannot be deleted stays, whole: its parent is folded
    # into it (it becomes a full backup with the same image).
    volume = _volume(tmp_path)
    f1 = operations.create_backup(session, volume)
    i1 = operations.create_backup(session, volume, incremental=True)
    f2 = operations.create_backup(session, volume)
    real = operations.delete_backup

    def failing(s, backup_id):
        if backup_id == i1.id:
            raise operations.OperationError(reason='injected')
        return real(s, backup_id)
    monkeypatch.setattr(operations, 'delete_backup', failing)
    assert retention.apply_retention(session, f1.volume_id, 1) == [f1.id]
    assert {b.id for b in api.list_backups(session)} == {i1.id, f2.id}
    assert 'could not remove backup %s' % i1.id in caplog.text
    session.refresh(i1)
    assert i1.parent_id is None and i1.status == 'available'
    operations.verify_backup(session, i1.id)


def test_owner_alive():
    host = socket.gethostname()
    assert states.owner_alive('%s:%d' % (host, os.getpid()))
    assert not states.owner_alive('%s:%d' % (host, os.getpid()),
                                  current_pid=os.getpid())
    child = subprocess.Popen([sys.executable, '-c', 'pass'])
    child.wait()
    assert not states.owner_alive('%s:%d' % (host, child.pid))
    # Another host cannot be checked; nonsense is not a dead process.
    assert states.owner_alive('elsewhere.example:%d' % child.pid)
    assert states.owner_alive('garbage')


def test_cleanup_interrupted(tmp_path, session):
    host = socket.gethostname()
    child = subprocess.Popen([sys.executable, '-c', 'pass'])
    child.wait()
    dead = '%s:%d' % (host, child.pid)
    live = '%s:%d' % (host, os.getppid())
    volume = _volume(tmp_path)
    crashed = operations.create_backup(session, volume)
    restoring = operations.create_backup(session, volume)
    busy = operations.create_backup(session, volume)
    assert _objects(tmp_path, crashed)
    crashed.status, crashed.owner = states.CREATING, dead
    restoring.status, restoring.owner = states.RESTORING, dead
    busy.status, busy.owner = states.CREATING, live
    session.commit()
    job = states.enqueue_job(session, 'backup', {'volume': volume})
    assert states.claim_job(session, dead).id == job.id

    assert operations.cleanup_interrupted(session) == [crashed.id]
    session.expire_all()
    assert (crashed.status, crashed.owner) == (states.ERROR, None)
    assert 'interrupted' in crashed.fail_reason
    assert _objects(tmp_path, crashed) == []
    assert (restoring.status, restoring.owner) == (states.AVAILABLE, None)
    assert (busy.status, busy.owner) == (states.CREATING, live)
    assert _objects(tmp_path, busy)
    assert session.get(models.Job, job.id).status == states.FAILED


# Schedules ------------------------------------------------------------------

def _conf(tmp_path, text):
    path = tmp_path / 'service.conf'
    path.write_text(text)
    conf = cfg.ConfigOpts()
    conf.register_opts(service.OPTS, group=service.GROUP)
    conf([], default_config_files=[str(path)], default_config_dirs=[])
    return conf, path


def test_config_schedules(tmp_path):
    conf, _ = _conf(tmp_path, '[schedule:daily]\nvolume = /v/a.img\n'
                              'interval = 86400\nfull_every = 3\n'
                              'retain_full = 4\ncontainer = c1\n'
                              '[schedule:paused]\nvolume = /v/b.img\n'
                              'interval = 60\nenabled = false\n'
                              '[schedule:broken]\nvolume = /v/c.img\n'
                              '[schedule:bad]\nvolume = /v/d.img\n'
                              'interval = soon\n'
                              '[other]\nvolume = /v/e.img\ninterval = 1\n')
    (spec,) = schedules.config_schedules(conf)
    assert (spec.name, spec.volume, spec.interval, spec.full_every,
            spec.retain_full, spec.container) == (
        'daily', '/v/a.img', 86400, 3, 4, 'c1')
    assert spec.effective_volume_id == operations.volume_id_for('/v/a.img')


def test_config_schedules_follow_a_reload(tmp_path):
    conf, path = _conf(tmp_path, '[schedule:a]\nvolume = /v/a.img\n'
                                 'interval = 10\n')
    assert [s.name for s in schedules.config_schedules(conf)] == ['a']
    path.write_text('[schedule:a]\nvolume = /v/a2.img\ninterval = 20\n'
                    '[schedule:b]\nvolume = /v/b.img\ninterval = 5\n')
    conf.mutate_config_files()
    assert [(s.name, s.volume, s.interval)
            for s in schedules.config_schedules(conf)] == [
        ('a', '/v/a2.img', 20), ('b', '/v/b.img', 5)]
    path.write_text('[schedule:b]\nvolume = /v/b.img\ninterval = 5\n')
    conf.mutate_config_files()
    assert [s.name for s in schedules.config_schedules(conf)] == ['b']


def test_shutdown_timeout_leaves_room_for_the_grace_period(tmp_path,
                                                           caplog):
    needed = 100 + service.CANCEL_WAIT + service.SHUTDOWN_MARGIN
    conf, _ = _conf(tmp_path, '[backup_service]\n'
                              'shutdown_grace_period = 100\n')
    service_opts.register_service_opts(conf)
    service.ensure_shutdown_timeout(conf)
    assert conf.graceful_shutdown_timeout == needed
    assert 'graceful_shutdown_timeout' not in caplog.text
    # A value the operator chose is raised, with a warning.
    conf, _ = _conf(tmp_path, '[DEFAULT]\ngraceful_shutdown_timeout = 20\n'
                              '[backup_service]\n'
                              'shutdown_grace_period = 100\n')
    service_opts.register_service_opts(conf)
    service.ensure_shutdown_timeout(conf)
    assert conf.graceful_shutdown_timeout == needed
    assert 'graceful_shutdown_timeout = 20 is shorter' in caplog.text
    conf, _ = _conf(tmp_path, '[DEFAULT]\ngraceful_shutdown_timeout = 0\n')
    service_opts.register_service_opts(conf)
    service.ensure_shutdown_timeout(conf)
    assert conf.graceful_shutdown_timeout == 0  # endless stays endless


def test_schedule_chooses_full_every_nth(tmp_path, session):
    volume = _volume(tmp_path)
    spec = schedules.ScheduleSpec('s', volume, 1, full_every=3, retain_full=9)
    svc = runner.BackupService()
    svc.catalog = types.SimpleNamespace(session=lambda: session)
    kinds = []
    for _ in range(7):
        with open(volume, 'r+b') as f:
            f.write(os.urandom(64))
        op = runner.Operation('test', None)
        svc._scheduled_backup_runner(spec)(session, op)
        record = api.get_backup(session, op.backup_id)
        assert record.display_name == 'schedule:s'
        kinds.append('I' if record.parent_id else 'F')
    assert ''.join(kinds) == 'FIIFIIF'


def test_config_schedules_take_changed_block_maps(tmp_path):
    conf, _ = _conf(tmp_path, '[schedule:vm]\n'
                              'volume = nbd+unix:///vda?socket=/run/s\n'
                              'interval = 60\ndirty_bitmap = b1\n'
                              '[schedule:img]\nvolume = /v/a.img\n'
                              'interval = 60\n'
                              'changed_extents = /v/a.map\n')
    specs = {s.name: s for s in schedules.config_schedules(conf)}
    # An NBD URL is kept as it is, not made into a path.
    assert (specs['vm'].volume, specs['vm'].dirty_bitmap) == (
        'nbd+unix:///vda?socket=/run/s', 'b1')
    assert specs['img'].changed_extents == '/v/a.map'


def test_scheduled_incrementals_use_the_changed_extents_file(tmp_path,
                                                             session):
    volume = _volume(tmp_path)
    map_path = tmp_path / 'changes.json'
    spec = schedules.ScheduleSpec('s', volume, 1, full_every=9,
                                  retain_full=9,
                                  changed_extents=str(map_path))
    svc = runner.BackupService()
    svc.catalog = types.SimpleNamespace(session=lambda: session)
    made = []
    for offset in (None, 4096, 8192):
        if offset is not None:
            with open(volume, 'r+b') as f:
                f.seek(offset)
                f.write(os.urandom(100))
            # The first incremental runs before any map exists: it reads
            # everything; the next one reads what the map names.
            if offset == 8192:
                map_path.write_text('[[8192, 100]]')
        op = runner.Operation('test', None)
        svc._scheduled_backup_runner(spec)(session, op)
        made.append(api.get_backup(session, op.backup_id))
    full, first, second = made
    assert full.parent_id is None and full.stats['changed_map'] is None
    assert first.parent_id == full.id and first.stats['changed_map'] is None
    assert second.parent_id == first.id
    assert second.stats['changed_map'] == 'used'
    assert second.stats['bytes_read'] < first.stats['bytes_read']


def test_catalog_schedules_are_claimed_once(tmp_path, catalog):
    s1 = catalog.session()
    s1.add(models.Schedule(name='nightly', volume_path='/v/a.img',
                           interval_seconds=3600, full_every=7,
                           retain_full=2, enabled=True,
                           created_at=models.utcnow()))
    s1.commit()
    first, second = runner.BackupService(), runner.BackupService()
    for svc in (first, second):
        svc.catalog = catalog
    due = list(first._due_schedules(s1))
    assert [s.name for s, _ in due] == ['nightly']
    s2 = catalog.session()
    # Its volume is taken while the run lasts: nobody else runs it.
    assert list(second._due_schedules(s2)) == []
    workers.unlock_volume(s1, due[0][1], first._me)
    # Another service sharing the catalog finds it taken; so does the next
    # look of the first one, until the interval has passed.
    assert list(second._due_schedules(s2)) == []
    assert list(first._due_schedules(s1)) == []
    s1.execute(sa.update(models.Schedule).values(
        last_run_at=models.utcnow() - datetime.timedelta(hours=2)))
    s1.commit()
    assert [s.name for s, _ in second._due_schedules(s2)] == ['nightly']
    s1.close()
    s2.close()


# Operations and shutdown ----------------------------------------------------

class _Stand:
    """Stand-in runners: each waits for its event or a cancel."""

    def __init__(self, catalog):
        self.catalog = catalog
        self.release = {}
        self.started = []

    def runner(self, job_id, honour_cancel=True):
        release = self.release.setdefault(job_id, threading.Event())

        def run(session, op):
            record = states.begin_backup(session, volume_id='v',
                                         driver='posix',
                                         owner=states.owner_id())
            op.backup_id = record.id
            self.started.append(job_id)
            while not release.wait(0.02):
                if honour_cancel:
                    record.refresh()
                    if record.status == states.DELETING:
                        record.status = states.ERROR
                        record.fail_reason = 'cancelled'
                        session.commit()
                        raise exception.BackupOperationCancelled(
                            operation='backup', backup_id=record.id)
            record.status = states.AVAILABLE
            record.owner = None
            session.commit()
        return run


@pytest.fixture
def running_service(catalog, monkeypatch, conf):
    conf('poll_interval', 0.05, service.GROUP)
    conf('max_concurrent_operations', 2, service.GROUP)
    conf('shutdown_grace_period', 0, service.GROUP)
    svc = runner.BackupService()
    stand = _Stand(catalog)
    monkeypatch.setattr(svc, '_job_runner', stand.runner)
    svc.stand = stand
    svc.start()
    yield svc
    for event in stand.release.values():
        event.set()
    svc.stop()
    for name in ('poll_interval', 'max_concurrent_operations',
                 'shutdown_grace_period'):
        CONF.clear_override(name, service.GROUP)


def _wait(condition, timeout=20):
    done = threading.Event()
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout)
    while datetime.datetime.now() < deadline:
        if condition():
            return
        done.wait(0.02)
    raise AssertionError('timed out')


def test_at_most_max_concurrent_operations(running_service, catalog):
    session = catalog.session()
    # Five volumes: two backups of one volume never run at once.
    queued = [states.enqueue_job(session, 'backup',
                                 {'volume': '/v%d' % i}).id
              for i in range(5)]
    stand = running_service.stand
    _wait(lambda: len(stand.started) == 2)

    def statuses():
        session.expire_all()
        return [session.get(models.Job, j).status for j in queued]
    # The loop keeps looking; nothing more starts while both slots are
    # taken.
    threading.Event().wait(0.3)
    assert statuses().count(states.RUNNING) == 2
    assert len(stand.started) == 2
    stand.release[stand.started[0]].set()
    _wait(lambda: len(stand.started) == 3)
    assert statuses().count(states.RUNNING) == 2
    assert statuses().count(states.DONE) == 1
    session.close()


def test_stop_cancels_after_the_grace_period(running_service, catalog,
                                             monkeypatch):
    session = catalog.session()
    stand = running_service.stand
    cancellable = states.enqueue_job(session, 'backup', {}).id
    stuck = states.enqueue_job(session, 'backup', {}).id
    real = stand.runner
    monkeypatch.setattr(running_service, '_job_runner',
                        lambda job_id: real(job_id, job_id != stuck))
    _wait(lambda: len(stand.started) == 2)
    monkeypatch.setattr(service, 'CANCEL_WAIT', 0.5)
    running_service.stop()
    session.expire_all()
    ok = session.get(models.Job, cancellable)
    assert ok.status == states.CANCELLED
    assert 'shutdown_grace_period' in ok.error
    record = api.get_backup(session, ok.backup_id)
    assert record.status == states.ERROR
    assert 'shutdown_grace_period' in record.fail_reason
    # The one that never stopped: error, job cancelled, and its owner kept
    # so that the next start removes its objects.
    job = session.get(models.Job, stuck)
    assert job.status == states.CANCELLED
    stuck_record = api.get_backup(session, running_service.stragglers[0]
                                  .backup_id)
    assert stuck_record.status == states.ERROR
    assert stuck_record.owner == states.owner_id()
    # If it ends after all, it does not rewrite what the shutdown recorded.
    straggler = running_service.stragglers[0]
    stand.release[stuck].set()
    straggler.done.wait(10)
    session.expire_all()
    assert session.get(models.Job, stuck).status == states.CANCELLED
    session.close()


def test_job_cancel_stops_a_running_job(running_service, catalog,
                                        monkeypatch):
    """job-cancel of a running job: its backup ends error, the job too."""
    session = catalog.session()
    stand = running_service.stand
    real = stand.runner

    def linking(job_id):
        run = real(job_id)

        def linked(s, op):
            # What the on_created hook does for a real backup.
            original = states.begin_backup

            def begin(*args, **kwargs):
                record = original(*args, **kwargs)
                states.link_job_backup(s, job_id, record.id)
                return record
            monkeypatch.setattr(states, 'begin_backup', begin)
            run(s, op)
        return linked
    monkeypatch.setattr(running_service, '_job_runner', linking)
    job_id = states.enqueue_job(session, 'backup', {'volume': '/v'}).id
    _wait(lambda: len(stand.started) == 1)
    outcome = states.cancel_job(session, job_id)
    assert outcome.startswith('stopping: backup ')

    def ended():
        session.expire_all()
        return session.get(models.Job, job_id).status == states.CANCELLED
    _wait(ended)
    job = session.get(models.Job, job_id)
    assert 'job-cancel' in job.error and job.cancel_requested
    assert api.get_backup(session, job.backup_id).status == states.ERROR
    assert states.cancel_job(session, job_id).startswith('already cancelled')
    session.close()


def test_job_cancel_of_a_queued_job_and_schedule_results(catalog):
    session = catalog.session()
    job = states.enqueue_job(session, 'backup', {'volume': '/v'})
    assert states.cancel_job(session, job.id) == 'cancelled before it ran'
    session.refresh(job)
    assert job.status == states.CANCELLED and job.finished_at is not None
    # Nothing claims a cancelled job.
    assert states.claim_job(session, 'me') is None
    row = models.Schedule(name='s', volume_path='/v', interval_seconds=60,
                          created_at=models.utcnow(),
                          last_run_at=datetime.datetime(2030, 1, 1))
    session.add(row)
    session.commit()
    assert schedules.next_run(row) == datetime.datetime(2030, 1, 1, 0, 1)
    schedules.record_result(session, 's', states.FAILED, 'disk gone', None)
    session.refresh(row)
    assert schedules.last_result(row) == 'failed'
    assert row.last_error == 'disk gone'
    schedules.record_result(session, 's', states.DONE, None, 'b1')
    session.refresh(row)
    assert (row.last_status, row.last_backup_id) == ('available', 'b1')
    row.enabled = False
    assert schedules.next_run(row) is None
    session.close()


def _made(session, volume, incremental=False, schedule=None):
    with open(volume, 'r+b') as f:
        f.write(os.urandom(4096))
    record = operations.create_backup(session, volume,
                                      incremental=incremental)
    if schedule:
        record.schedule_name = schedule
        session.commit()
    return record


def test_schedule_retention_never_removes_manual_backups(tmp_path, session):
    # The bug: retain_full = 1 deleted every older backup of the volume,
    # the user's own among them.
    volume = _volume(tmp_path)
    m1 = _made(session, volume)
    m2 = _made(session, volume, incremental=True)
    s1 = _made(session, volume, schedule='nightly')
    s2 = _made(session, volume, incremental=True, schedule='nightly')
    m3 = _made(session, volume, incremental=True)
    s3 = _made(session, volume, schedule='nightly')
    s4 = _made(session, volume, schedule='nightly')
    removed = retention.apply_retention(session, m1.volume_id, 1,
                                        schedule_name='nightly')
    assert set(removed) == {s1.id, s2.id, s3.id}
    left = {b.id for b in api.list_backups(session)}
    assert left == {m1.id, m2.id, m3.id, s4.id}
    # m3 was an incremental of s2: s2 and s1 were folded into it.
    for record in (m1, m2, m3, s4):
        operations.verify_backup(session, record.id)
    # A policy, scoped the same way; pinned backups stay.
    s5 = _made(session, volume, schedule='nightly')
    session.refresh(s4)
    s4.pinned = True
    session.commit()
    removed = retention.apply_retention(
        session, m1.volume_id, 1, schedule_name='nightly',
        keep_policy={'keep_last': 1})
    assert removed == []
    assert {b.id for b in api.list_backups(session)} == left | {s5.id}
    s4.pinned = False
    session.commit()
    assert retention.apply_retention(
        session, m1.volume_id, 1, schedule_name='nightly',
        keep_policy={'keep_last': 1}) == [s4.id]
    # scope 'volume' considers every backup (manual ones too).
    removed = retention.apply_retention(
        session, m1.volume_id, 1, schedule_name='nightly',
        keep_policy={'keep_last': 2}, scope='volume')
    assert set(removed) == {m1.id, m2.id}
    assert {b.id for b in api.list_backups(session)} == {m3.id, s5.id}
    for backup_id in (m3.id, s5.id):
        operations.verify_backup(session, backup_id)
