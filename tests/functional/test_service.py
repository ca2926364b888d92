"""The real ``chunkbackup-backup`` process, on real files and a real catalog.

Each test writes a configuration in tmp_path, starts the console script in
its own session (so its signals reach only it), and watches the SQLite
catalog until what it expects has happened (polling with a generous
timeout; nothing here measures speed). Both oslo.service backends run the
same scenarios.
"""
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from chunkbackup.testing import slow

BIN = os.path.dirname(sys.executable)
SERVICE = os.path.join(BIN, 'chunkbackup-backup')
CLI = os.path.join(BIN, 'chunkbackup')
SLOW_DRIVER = 'chunkbackup.testing.slow.SlowPosixBackupDriver'
OBJECT_SIZE = 64 * 1024
GRACE = 1
# What the service may take to stop after SIGTERM: the grace period, then
# chunkbackup.service.CANCEL_WAIT for cancelled backups, plus start-up.
STOP_TIMEOUT = GRACE + 30 + 15
WAIT = 60
BACKENDS = ['eventlet', 'threading']


def write_config(tmp_path, backend, schedules='', driver='posix',
                 max_ops=2):
    path = tmp_path / 'chunkbackup.conf'
    path.write_text(
        '[DEFAULT]\n'
        '[chunkbackup]\n'
        'driver = %(driver)s\n'
        'cancel_check_interval = 0.2\n'
        '[backup_posix]\n'
        'path = %(store)s\n'
        'object_size = %(object_size)d\n'
        '[database]\n'
        'connection = sqlite:///%(db)s\n'
        '[backup_service]\n'
        'backend = %(backend)s\n'
        'poll_interval = 0.2\n'
        'shutdown_grace_period = %(grace)d\n'
        'max_concurrent_operations = %(max_ops)d\n'
        '%(schedules)s' % {
            'driver': driver, 'store': tmp_path / 'store',
            'object_size': OBJECT_SIZE, 'db': tmp_path / 'catalog.sqlite',
            'backend': backend, 'grace': GRACE, 'max_ops': max_ops,
            'schedules': schedules})
    return str(path)


def schedule_section(name, volume, interval=1, full_every=2, retain_full=2):
    return ('[schedule:%s]\nvolume = %s\ninterval = %d\nfull_every = %d\n'
            'retain_full = %d\n' % (name, volume, interval, full_every,
                                    retain_full))


class Service:
    """One chunkbackup-backup process (and, under threading, its worker)."""

    def __init__(self, config, log_path, put_delay=0.0):
        assert os.path.exists(SERVICE), (
            '%s is missing: pip install -e the project' % SERVICE)
        env = dict(os.environ)
        env[slow.DELAY_ENV] = str(put_delay)
        self.log_path = log_path
        self.log = open(log_path, 'ab')
        self.proc = subprocess.Popen(
            [SERVICE, '--config-file', config], stdout=self.log,
            stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def output(self) -> str:
        self.log.flush()
        with open(self.log_path, 'rb') as f:
            return f.read().decode('utf-8', 'replace')[-8000:]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, signo) -> None:
        assert self.alive(), 'the service died:\n' + self.output()
        self.proc.send_signal(signo)

    def terminate(self) -> int:
        """SIGTERM, and the exit status once it is gone."""
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail('the service did not stop %d s after SIGTERM:\n%s'
                        % (STOP_TIMEOUT, self.output()))

    def kill(self) -> None:
        """SIGKILL the whole session this test started (a crash)."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def close(self) -> None:
        if self.alive():
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        self.log.close()


@pytest.fixture
def services():
    started = []

    def start(config, log_path, put_delay=0.0):
        service = Service(config, log_path, put_delay)
        started.append(service)
        return service
    yield start
    for service in started:
        service.close()


class Catalog:
    """Read-only looks at the service's SQLite catalog."""

    def __init__(self, path):
        self.path = str(path)

    def query(self, sql, *args):
        if not os.path.exists(self.path):
            return []
        connection = sqlite3.connect(self.path, timeout=30)
        connection.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in connection.execute(sql, args)]
        except sqlite3.OperationalError as e:
            if 'no such table' in str(e):  # not migrated yet
                return []
            raise
        finally:
            connection.close()

    def backups(self):
        return self.query('SELECT * FROM backups ORDER BY created_at, id')

    def backup(self, backup_id):
        rows = self.query('SELECT * FROM backups WHERE id = ?', backup_id)
        return rows[0] if rows else None

    def job(self, job_id):
        rows = self.query('SELECT * FROM jobs WHERE id = ?', job_id)
        return rows[0] if rows else None


def wait_for(condition, what, service, timeout=WAIT, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        if not service.alive():
            break
        time.sleep(interval)
    pytest.fail('timed out waiting for %s; service %s:\n%s' % (
        what, 'alive' if service.alive() else 'exited with %s'
        % service.proc.returncode, service.output()))


def cli(config, *args):
    result = subprocess.run([CLI, '--config-file', config] + list(args) +
                            ['--format', 'json'], capture_output=True,
                            env=dict(os.environ, **{slow.DELAY_ENV: '0'}),
                            timeout=120)
    assert result.returncode == 0, (args, result.stderr.decode())
    return json.loads(result.stdout)


def restore(config, tmp_path, backup_id) -> bytes:
    target = tmp_path / ('restored-%s' % backup_id)
    cli(config, 'backup-restore', backup_id, str(target))
    return target.read_bytes()


def objects_of(store, record):
    """The names in the store that carry the backup's prefix."""
    if not record['container'] or not record['service_metadata']:
        return []
    directory = os.path.join(store, record['container'])
    if not os.path.isdir(directory):
        return []
    return [n for n in os.listdir(directory)
            if n.startswith(record['service_metadata'])]


def write_volume(path, data):
    """Replace the volume atomically: a backup reads one version whole."""
    tmp = str(path) + '.new'
    with open(tmp, 'wb') as f:
        f.write(data)
    os.replace(tmp, str(path))


class Churn(threading.Thread):
    """Writes new versions of a volume; each starts with its number."""

    def __init__(self, path, size, seed):
        super().__init__(daemon=True)
        self.path = path
        self.rng = random.Random(seed)
        self.data = bytearray(self.rng.getrandbits(size * 8).to_bytes(
            size, 'little'))
        self.versions = {}
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.step()

    def step(self):
        with self.lock:
            number = len(self.versions)
            # Change a few random 32 KiB blocks and stamp the version.
            for _ in range(3):
                offset = self.rng.randrange(0, len(self.data) // 32768) * 32768
                self.data[offset:offset + 4096] = self.rng.randbytes(4096)
            self.data[0:8] = number.to_bytes(8, 'little')
            self.versions[number] = bytes(self.data)
            write_volume(self.path, self.data)

    def run(self):
        while not self.stopping.wait(0.15):
            self.step()

    def version_of(self, image: bytes) -> int:
        number = int.from_bytes(image[0:8], 'little')
        assert number in self.versions, 'restored an unknown version'
        return number


@pytest.mark.parametrize('backend', BACKENDS)
def test_schedules_retention_and_reload(tmp_path, services, backend):
    """A schedule makes fulls and incrementals, retention deletes whole old
    chains (their objects too), and SIGHUP picks up a changed schedule.
    """
    store = str(tmp_path / 'store')
    volume = tmp_path / 'disk1.img'
    other = tmp_path / 'disk2.img'
    other_data = random.Random(7).randbytes(512 * 1024)
    write_volume(other, other_data)
    churn = Churn(volume, 1024 * 1024, seed=1)
    config = write_config(tmp_path, backend,
                          schedule_section('test', volume))
    catalog = Catalog(tmp_path / 'catalog.sqlite')
    churn.start()
    service = services(config, tmp_path / 'service.log')
    seen = {}

    def observe():
        rows = catalog.backups()
        for row in rows:
            seen.setdefault(row['id'], row).update(row)
        return rows

    def retention_happened():
        rows = observe()
        current = {r['id'] for r in rows}
        fulls = [b for b in seen.values()
                 if b['parent_id'] is None and b['volume_path'] ==
                 str(volume) and b['status'] == 'available']
        deleted = [i for i in seen if i not in current]
        return len(fulls) >= 3 and deleted
    wait_for(retention_happened, 'three full backups and a retention',
             service)

    # Change the schedule to another volume and reload.
    write_config(tmp_path, backend, schedule_section('test', other))
    service.signal(signal.SIGHUP)
    wait_for(lambda: [b for b in observe()
                      if b['volume_path'] == str(other) and
                      b['status'] == 'available'],
             'a backup of the re-configured volume', service)
    churn.stopping.set()
    churn.join()
    assert service.terminate() == 0, service.output()

    rows = observe()
    current = {r['id']: r for r in rows}
    mine = [r for r in rows if r['volume_path'] == str(volume)]
    assert all(r['status'] == 'available' for r in rows), rows
    assert all(r['display_name'] == 'schedule:test' for r in rows)

    # full_every = 2: every incremental sits right on a full.
    for record in seen.values():
        if record['parent_id']:
            assert seen[record['parent_id']]['parent_id'] is None, record

    # retain_full = 2: what is left of the first volume is exactly the
    # chains of its two newest fulls; every older backup is gone, with its
    # objects.
    fulls = sorted((r for r in mine if r['parent_id'] is None),
                   key=lambda r: r['created_at'])
    assert len(fulls) == 2, mine
    ever_fulls = sorted((r for r in seen.values()
                         if r['parent_id'] is None and
                         r['volume_path'] == str(volume)),
                        key=lambda r: r['created_at'])
    assert [r['id'] for r in ever_fulls[-2:]] == [r['id'] for r in fulls]
    for record in mine:
        root = record
        while root['parent_id']:
            root = current[root['parent_id']]
        assert root['id'] in {f['id'] for f in fulls}
    deleted = [r for i, r in seen.items() if i not in current]
    assert deleted
    for record in deleted:
        assert record['created_at'] < fulls[0]['created_at']
        assert objects_of(store, record) == [], record['id']
    for record in rows:
        assert objects_of(store, record), record['id']

    # The newest incremental and its full restore exactly to the version
    # each one read, and the incremental carries a change.
    incrementals = [r for r in mine if r['parent_id']]
    assert incrementals, mine
    newest = incrementals[-1]
    parent_image = restore(config, tmp_path, newest['parent_id'])
    image = restore(config, tmp_path, newest['id'])
    assert image == churn.versions[churn.version_of(image)]
    assert parent_image == churn.versions[churn.version_of(parent_image)]
    assert churn.version_of(image) > churn.version_of(parent_image)
    # And the backup of the volume the reload brought in.
    other_backup = [r for r in rows if r['volume_path'] == str(other)][0]
    assert restore(config, tmp_path, other_backup['id']) == other_data


def _make_volume(path, seed, size=8 * 1024 * 1024):
    data = random.Random(seed).randbytes(size)
    write_volume(path, data)
    return data


def _enqueue(config, volume, incremental):
    args = ['backup-create', str(volume), '--async']
    if incremental:
        args.append('--incremental')
    return cli(config, *args)['job_id']


@pytest.mark.parametrize('backend', BACKENDS)
def test_sigterm_cancels_a_long_backup(tmp_path, services, backend):
    """A queued job runs; SIGTERM in the middle of a slow backup leaves it
    in error with its objects removed, the service exits 0, and the next
    incremental takes the last good backup as its parent.
    """
    store = str(tmp_path / 'store')
    volume = tmp_path / 'disk.img'
    config = write_config(tmp_path, backend, driver=SLOW_DRIVER)
    catalog = Catalog(tmp_path / 'catalog.sqlite')
    _make_volume(volume, seed=1)

    # A queued full backup runs and ends available.
    job = _enqueue(config, volume, incremental=False)
    service = services(config, tmp_path / 'service1.log')
    done = wait_for(lambda: (catalog.job(job) or {}).get('status') in
                    ('done', 'failed', 'cancelled') and catalog.job(job),
                    'the queued full backup', service)
    assert done['status'] == 'done', done
    good = catalog.backup(done['backup_id'])
    assert good['status'] == 'available' and good['parent_id'] is None
    assert service.terminate() == 0, service.output()

    # A slow incremental is interrupted half-way.
    data = _make_volume(volume, seed=2)
    job = _enqueue(config, volume, incremental=True)
    service = services(config, tmp_path / 'service2.log', put_delay=0.25)

    def writing():
        row = catalog.job(job)
        record = row and row['backup_id'] and catalog.backup(row['backup_id'])
        if record and record['status'] == 'creating' and \
                len(objects_of(store, record)) >= 2:
            return record
    interrupted = wait_for(writing, 'the slow backup to store objects',
                           service)
    assert service.terminate() == 0, service.output()
    record = catalog.backup(interrupted['id'])
    assert record['status'] == 'error', record
    assert 'cancelled' in record['fail_reason']
    assert record['owner'] is None
    assert objects_of(store, record) == []
    assert catalog.job(job)['status'] == 'cancelled'

    # The next incremental chooses the last good parent and restores.
    job = _enqueue(config, volume, incremental=True)
    service = services(config, tmp_path / 'service3.log')
    done = wait_for(lambda: (catalog.job(job) or {}).get('status') in
                    ('done', 'failed', 'cancelled') and catalog.job(job),
                    'the next incremental', service)
    assert done['status'] == 'done', (done, service.output())
    assert service.terminate() == 0, service.output()
    latest = catalog.backup(done['backup_id'])
    assert latest['status'] == 'available'
    assert latest['parent_id'] == good['id']
    assert restore(config, tmp_path, latest['id']) == data


def test_startup_cleans_up_after_a_crash(tmp_path, services):
    """A service killed mid-backup leaves a 'creating' record; the next
    start sets it to error, removes its objects and runs its job again.
    """
    store = str(tmp_path / 'store')
    volume = tmp_path / 'disk.img'
    config = write_config(tmp_path, 'eventlet', driver=SLOW_DRIVER)
    catalog = Catalog(tmp_path / 'catalog.sqlite')
    _make_volume(volume, seed=3)
    good = cli(config, 'backup-create', str(volume))
    data = _make_volume(volume, seed=4)
    crashed_job = _enqueue(config, volume, incremental=True)
    service = services(config, tmp_path / 'service1.log', put_delay=0.25)

    def writing():
        row = catalog.job(crashed_job)
        record = row and row['backup_id'] and catalog.backup(row['backup_id'])
        if record and len(objects_of(store, record)) >= 2:
            return record
    crashed = wait_for(writing, 'the slow backup to store objects', service)
    service.kill()
    record = catalog.backup(crashed['id'])
    assert record['status'] == 'creating' and record['owner']
    assert objects_of(store, record)

    job = _enqueue(config, volume, incremental=True)
    service = services(config, tmp_path / 'service2.log')
    done = wait_for(lambda: (catalog.job(job) or {}).get('status') in
                    ('done', 'failed', 'cancelled') and catalog.job(job),
                    'the incremental after the crash', service)
    assert service.terminate() == 0, service.output()
    record = catalog.backup(crashed['id'])
    assert record['status'] == 'error' and record['owner'] is None, record
    assert objects_of(store, record) == []
    # The interrupted job ran again (before the later one: it is older).
    rerun = catalog.job(crashed_job)
    assert (rerun['status'], rerun['attempts']) == ('done', 2), rerun
    assert rerun['backup_id'] != crashed['id']
    assert catalog.backup(rerun['backup_id'])['parent_id'] == good['id']
    assert done['status'] == 'done', done
    latest = catalog.backup(done['backup_id'])
    assert latest['parent_id'] == rerun['backup_id']
    assert restore(config, tmp_path, latest['id']) == data


def test_catalog_schedule_from_the_cli(tmp_path, services):
    """A schedule kept in the catalog (chunkbackup schedule-set) runs too."""
    store = str(tmp_path / 'store')
    volume = tmp_path / 'disk.img'
    data = _make_volume(volume, seed=5, size=256 * 1024)
    config = write_config(tmp_path, 'eventlet')
    catalog = Catalog(tmp_path / 'catalog.sqlite')
    cli(config, 'schedule-set', 'nightly', str(volume), '--interval', '1',
        '--full-every', '1', '--retain-full', '1')
    service = services(config, tmp_path / 'service.log')
    seen = {}

    def two_runs_and_a_retention():
        rows = catalog.backups()
        for row in rows:
            seen[row['id']] = row
        return len(seen) >= 2 and len(rows) < len(seen)
    wait_for(two_runs_and_a_retention, 'two scheduled runs', service)
    assert service.terminate() == 0, service.output()
    rows = catalog.backups()
    assert len(rows) == 1, rows
    (kept,) = rows
    assert kept['display_name'] == 'schedule:nightly'
    assert kept['parent_id'] is None and kept['status'] == 'available'
    for backup_id, record in seen.items():
        if backup_id != kept['id']:
            assert objects_of(store, record) == []
    (schedule,) = cli(config, 'schedule-list')
    assert schedule['name'] == 'nightly' and schedule['last_run_at']
    assert restore(config, tmp_path, kept['id']) == data


def test_schedule_retention_leaves_manual_backups_alone(tmp_path, services):
    """The new user's surprise: retain_full = 1 deleted, within seconds,
    the hand-made full and incremental of the same volume. Now a
    schedule's retention considers only the backups it made (and a keep_*
    policy does the same).
    """
    volume = tmp_path / 'disk.img'
    data = _make_volume(volume, seed=9, size=256 * 1024)
    config = write_config(tmp_path, 'eventlet')
    catalog = Catalog(tmp_path / 'catalog.sqlite')
    manual_full = cli(config, 'backup-create', str(volume))
    write_volume(volume, data[:128 * 1024] + bytes(128 * 1024))
    manual_inc = cli(config, 'backup-create', str(volume), '--incremental')
    mine = {manual_full['id'], manual_inc['id']}
    cli(config, 'schedule-set', 'nightly', str(volume), '--interval', '1',
        '--full-every', '1', '--retain-full', '1')
    service = services(config, tmp_path / 'service.log')
    seen = {}

    def three_runs_and_a_retention():
        rows = catalog.backups()
        for row in rows:
            seen[row['id']] = row
        scheduled = [i for i in seen if i not in mine]
        gone = [i for i in scheduled if i not in {r['id'] for r in rows}]
        return len(scheduled) >= 3 and len(gone) >= 2
    wait_for(three_runs_and_a_retention, 'three scheduled runs', service)
    assert service.terminate() == 0, service.output()
    rows = {r['id']: r for r in catalog.backups()}
    assert mine <= set(rows), 'a hand-made backup was removed'
    assert [r for r in rows.values() if r['id'] not in mine and
            r['status'] == 'available']
    for backup_id in mine:
        cli(config, 'backup-verify', backup_id)
    assert restore(config, tmp_path, manual_full['id']) == data
    shown = cli(config, 'backup-show', [i for i in rows if i not in mine][0])
    assert shown['schedule'] == 'nightly'


def test_schedule_with_synthetic_fulls(tmp_path, services):
    """synthetic_full: a due full is an incremental plus its synthetic
    full; retention then removes the old chain whole.
    """
    volume = tmp_path / 'disk.img'
    _make_volume(volume, seed=12, size=256 * 1024)
    config = write_config(tmp_path, 'eventlet')
    catalog = Catalog(tmp_path / 'catalog.sqlite')
    cli(config, 'schedule-set', 'nightly', str(volume), '--interval', '1',
        '--full-every', '2', '--retain-full', '1', '--synthetic-full')
    service = services(config, tmp_path / 'service.log')

    def a_synthetic_full():
        return [b for b in cli(config, 'backup-list')
                if (b.get('stats') or {}).get('synthetic_full_of')]
    wait_for(a_synthetic_full, 'a synthetic full', service)
    assert service.terminate() == 0, service.output()
    synthetic = a_synthetic_full()[0]
    assert synthetic['parent_id'] is None
    assert synthetic['schedule'] == 'nightly'
    cli(config, 'backup-verify', synthetic['id'])
    assert all(r['status'] == 'available' for r in catalog.backups())
