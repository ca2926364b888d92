"""Three chunkbackup-backup workers sharing one catalog, with failures.

Three real service processes share a PostgreSQL catalog (and, in a second
run, MariaDB) and an S3 store (moto). Thirty backup jobs over ten volumes
are queued; one worker is SIGKILLed while it stores a backup and another is
SIGSTOPped past its lease, then continued. Every put waits (the slow test
driver), so a backup is in flight when the signals come, on any machine.

Then the catalog, the bucket and the surviving workers' metrics must agree:
every job ended once, done (or failed after its attempts, with the
reason); no backup was made twice; no interrupted backup became available
or a parent; the bucket holds only the objects of available backups; every
available backup restores byte-exact.
"""
import datetime
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import boto3
from botocore import config as boto_config
import pytest
import sqlalchemy as sa

from chunkbackup.testing import slow
from chunkbackup.testing import volumes
from tests.functional import databases
from tests.functional.test_service import cli
from tests.functional.test_service import Service

MiB = 2 ** 20
OBJECT_SIZE = 64 * 1024
LEASE = 3.0
PUT_DELAY = 0.08
JOB_ATTEMPTS = 3
SLOW_S3 = 'chunkbackup.testing.slow.SlowS3BackupDriver'
DEADLINE = 240
# Restores every backup named on the command line in one process (one
# start-up instead of one a backup) and prints each one's SHA-256.
RESTORER = '''
import hashlib, json, os, sys
from oslo_config import cfg
from chunkbackup import opts  # noqa
from chunkbackup.catalog import api
from chunkbackup import operations
cfg.CONF(['--config-file', sys.argv[1]], project='chunkbackup')
session = api.Catalog().session()
digests = {}
for backup_id in sys.argv[3:]:
    target = os.path.join(sys.argv[2], backup_id)
    operations.restore_backup(session, backup_id, target)
    with open(target, 'rb') as f:
        digests[backup_id] = hashlib.sha256(f.read()).hexdigest()
    os.unlink(target)
print(json.dumps(digests))
'''


@pytest.fixture(params=sorted(databases.DATABASES))
def database(request):
    """A fresh database on the server, dropped afterwards."""
    with databases.scratch_database(request.param, 'cbworkers') as url:
        engine = sa.create_engine(url)
        try:
            yield engine
        finally:
            engine.dispose()


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _config(tmp_path, index, url, server, bucket, port):
    path = tmp_path / ('worker%d.conf' % index)
    path.write_text(
        '[chunkbackup]\n'
        'driver = %(driver)s\n'
        'cancel_check_interval = 0.1\n'
        '[backup_s3]\n'
        'endpoint_url = %(endpoint)s\n'
        'access_key = %(ak)s\n'
        'secret_key = %(sk)s\n'
        'region = %(region)s\n'
        'addressing_style = path\n'
        'bucket = %(bucket)s\n'
        'object_size = %(object_size)d\n'
        '[database]\n'
        'connection = %(url)s\n'
        '[backup_service]\n'
        # One process a worker: the test signals the worker it names
        # host:pid (under threading the worker is a cotyledon child).
        'backend = eventlet\n'
        'poll_interval = 0.2\n'
        'max_concurrent_operations = 2\n'
        'shutdown_grace_period = 30\n'
        'lease_seconds = %(lease)s\n'
        'job_attempts = %(attempts)d\n'
        'metrics_host = 127.0.0.1\n'
        'metrics_port = %(port)d\n' % {
            'driver': SLOW_S3, 'endpoint': server.endpoint,
            'ak': server.access_key, 'sk': server.secret_key,
            'region': server.region, 'bucket': bucket,
            'object_size': OBJECT_SIZE, 'url': url.render_as_string(
                hide_password=False), 'lease': LEASE,
            'attempts': JOB_ATTEMPTS, 'port': port})
    return str(path)


def _rows(engine, sql, **params):
    with engine.connect() as conn:
        result = conn.execute(sa.text(sql), params)
        return [dict(r._mapping) for r in result]


def _wait(condition, what, timeout=DEADLINE):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.1)
    pytest.fail('timed out waiting for %s' % what)


def _metrics(port):
    with urllib.request.urlopen('http://127.0.0.1:%d/metrics' % port,
                                timeout=10) as r:
        text = r.read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith('#') or not line.strip():
            continue
        name, value = line.rsplit(' ', 1)
        values[name] = float(value)
    return values


def _metric(values, name, **labels):
    wanted = ','.join('%s="%s"' % kv for kv in sorted(labels.items()))
    return values.get('%s{%s}' % (name, wanted) if labels else name, 0.0)


def _digest(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_three_workers_fail_over_with_nothing_lost(tmp_path, moto_server,
                                                   database):
    started = time.monotonic()
    bucket = 'cbworkers-%s' % uuid.uuid4().hex[:12]
    ports = [_free_port() for _ in range(3)]
    configs = [_config(tmp_path, i, database.url, moto_server, bucket, p)
               for i, p in enumerate(ports)]
    vols = []
    for i in range(10):
        path = str(tmp_path / ('vol%d.img' % i))
        volumes.write_volume(path, 2 * MiB + i * 8192, 'mixed', seed=i,
                             region_size=65536)
        vols.append(path)
    digests = {v: _digest(v) for v in vols}
    # Ten fulls, then two incrementals of each volume, queued as
    # 'chunkbackup backup-create --async' queues them (the catalog is
    # migrated by the first CLI command).
    cli(configs[0], 'backup-list')
    with database.begin() as conn:
        for round_ in range(3):
            for vol in vols:
                conn.execute(sa.text(
                    "INSERT INTO jobs (kind, params, status, created_at, "
                    "attempts) VALUES ('backup', :p, 'queued', :t, 0)"),
                    {'p': json.dumps({'volume': vol,
                                      'incremental': bool(round_)}),
                     't': datetime.datetime.utcnow()})
    timings = {'queued': time.monotonic() - started}
    workers = [Service(c, str(tmp_path / ('worker%d.log' % i)),
                       put_delay=PUT_DELAY)
               for i, c in enumerate(configs)]
    names = ['%s:%d' % (socket.gethostname(), w.proc.pid) for w in workers]
    killed, paused, steady = workers
    try:
        def creating(name):
            return _rows(database, "SELECT id FROM backups WHERE status = "
                         "'creating' AND owner = :o AND object_count = 0 "
                         "AND container IS NOT NULL", o=name)

        # SIGKILL one worker while it stores a backup.
        _wait(lambda: creating(names[0]), 'worker 0 to store a backup')
        time.sleep(PUT_DELAY * 3)
        killed.kill()
        # SIGSTOP another past its lease, while it stores a backup.
        in_flight = _wait(lambda: creating(names[1]),
                          'worker 1 to store a backup')
        paused.signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        # Its work is taken over once its lease expired.
        _wait(lambda: _rows(database, "SELECT status FROM backups WHERE "
                                      "id = :i AND status = 'error'",
                            i=in_flight[0]['id']),
              'the paused worker\'s backup to be taken over')
        assert time.monotonic() - stopped_at >= LEASE - 1
        time.sleep(1)
        paused.signal(signal.SIGCONT)

        def all_ended():
            jobs = _rows(database, 'SELECT * FROM jobs ORDER BY id')
            ended = [j for j in jobs if j['status'] in ('done', 'failed')]
            return jobs if len(ended) == 30 else None
        jobs = _wait(all_ended, 'the 30 jobs to end')
        timings['jobs ended'] = time.monotonic() - started
        listed = cli(configs[2], 'service-list')
        by_name = {w['name']: w for w in listed}
        assert by_name[names[0]]['state'] == 'down'
        assert by_name[names[1]]['state'] == 'up'
        assert by_name[names[2]]['state'] == 'up'
        metrics = {name: _metrics(port)
                   for name, port in zip(names[1:], ports[1:])}
    except BaseException:
        # A failure must not leave workers running (they would keep
        # polling a dropped database and load the machine for later tests).
        for worker in workers:
            if worker.alive():
                try:
                    os.killpg(worker.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        raise
    finally:
        for worker in workers:
            if worker.alive():
                try:
                    os.killpg(worker.proc.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
    for worker in (paused, steady):
        assert worker.terminate() == 0, worker.output()
    timings['workers stopped'] = time.monotonic() - started
    backups = {b['id']: b for b in _rows(database, 'SELECT * FROM backups')}
    for b in backups.values():
        if isinstance(b['stats'], str):  # MariaDB's JSON is text
            b['stats'] = json.loads(b['stats'])

    # Every job ended exactly once: done with its own backup, or failed
    # after its attempts with the reason.
    done = [j for j in jobs if j['status'] == 'done']
    for job in jobs:
        if job['status'] == 'failed':
            assert job['attempts'] == JOB_ATTEMPTS, job
            assert 'let its lease expire' in job['error'] or \
                'stopped' in job['error'], job
    assert len(done) >= 28, jobs
    made = [j['backup_id'] for j in done]
    assert None not in made and len(set(made)) == len(made), jobs
    assert all(backups[b]['status'] == 'available' for b in made)
    # No backup was made twice: each available backup is one done job's.
    available = {i for i, b in backups.items() if b['status'] == 'available'}
    assert available == set(made)
    # Interrupted backups ended error, taken over, and are nobody's parent.
    interrupted = {i for i, b in backups.items() if b['status'] != 'available'}
    assert interrupted, 'no backup was interrupted'
    assert {backups[i]['status'] for i in interrupted} == {'error'}
    assert in_flight[0]['id'] in interrupted
    assert not [b for b in backups.values()
                if b['parent_id'] in interrupted]
    assert not [b for b in backups.values() if b['owner']]
    assert not _rows(database, 'SELECT * FROM volume_locks')
    # At least one job ran again after its worker stopped.
    assert [j for j in jobs if j['attempts'] > 1]

    # The bucket holds exactly the objects of the available backups.
    client = boto3.client(
        's3', endpoint_url=moto_server.endpoint,
        aws_access_key_id=moto_server.access_key,
        aws_secret_access_key=moto_server.secret_key,
        region_name=moto_server.region,
        config=boto_config.Config(s3={'addressing_style': 'path'}))
    keys = [o['Key'] for page in client.get_paginator(
        'list_objects_v2').paginate(Bucket=bucket)
        for o in page.get('Contents', [])]
    prefixes = {backups[i]['service_metadata'] for i in available}
    orphans = [k for k in keys
               if not any(k.startswith(p) for p in prefixes)]
    assert orphans == []
    for prefix in prefixes:
        assert prefix + '_metadata' in keys

    # Every available backup restores byte-exact.
    result = subprocess.run(
        [sys.executable, '-c', RESTORER, configs[2], str(tmp_path)] +
        sorted(available), capture_output=True, timeout=DEADLINE,
        env=dict(os.environ, **{slow.DELAY_ENV: '0'}))
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    restored = json.loads(result.stdout)
    assert restored == {i: digests[backups[i]['volume_path']]
                        for i in available}

    # The surviving workers' metrics agree with the catalog.
    takeovers = {'backup': 0, 'job': 0}
    for name, values in metrics.items():
        theirs = [j for j in done if j['owner'] == name]
        assert _metric(values, 'chunkbackup_operations_total',
                       kind='backup', result='done') == len(theirs)
        assert _metric(values, 'chunkbackup_backup_bytes_stored_total') == \
            sum(backups[j['backup_id']]['stats']['stored_bytes']
                for j in theirs)
        assert _metric(values, 'chunkbackup_backup_bytes_read_total') == \
            sum(backups[j['backup_id']]['stats']['bytes_read']
                for j in theirs)
        for kind in takeovers:
            takeovers[kind] += _metric(
                values, 'chunkbackup_leases_taken_over_total', kind=kind)
        assert _metric(values, 'chunkbackup_storage_operations_total',
                       driver='s3', operation='put') >= sum(
            backups[j['backup_id']]['stats']['objects'] for j in theirs)
        assert _metric(values, 'chunkbackup_queue_depth') == 0
    assert takeovers['backup'] == len(interrupted)
    assert takeovers['backup'] == len(
        [i for i in interrupted
         if backups[i]['fail_reason'].startswith('interrupted: ')])
    # The paused worker's backup was taken over by its lease (the killed
    # one's, on this host, as soon as its process was found gone).
    assert 'whose lease expired' in backups[in_flight[0]['id']][
        'fail_reason']
    # Each run that did not end by itself was taken over once: re-queued,
    # failed at the last attempt, or found done.
    assert takeovers['job'] == sum(j['attempts'] - 1 for j in jobs) + len(
        [j for j in jobs if j['status'] == 'failed']) + len(
        [j for j in done if (j['error'] or '').startswith('done:')])
    timings['checked'] = time.monotonic() - started
    print('\nworkers: %d jobs done, %d failed, %d backups interrupted, '
          '%d re-runs, %d takeovers (backups %d, jobs %d), %d objects in '
          'the bucket; seconds: %s'
          % (len(done), len(jobs) - len(done), len(interrupted),
             sum(j['attempts'] - 1 for j in jobs),
             sum(takeovers.values()), takeovers['backup'],
             takeovers['job'], len(keys),
             ', '.join('%s %.0f' % kv for kv in timings.items())))


@pytest.mark.parametrize('database', ['mariadb'], indirect=True)
def test_a_writer_paused_before_its_commit_does_not_hold_the_takeover(
        database):
    """A worker stopped between an UPDATE and its COMMIT keeps the row
    locked; on MariaDB the server ends that transaction once it has been
    idle for the lease, so the worker taking the work over is not held
    (it was: three workers' takeover waited for as long as one stayed
    paused). A process without a lease (the CLI) is not cut off.
    """
    from chunkbackup.catalog import api
    from chunkbackup.catalog import leases
    from chunkbackup.catalog import models
    from chunkbackup.catalog import states

    url = database.url.render_as_string(hide_password=False)
    timeout = 'SELECT @@session.idle_write_transaction_timeout'
    cli_catalog = api.Catalog(url)
    with cli_catalog.engine.connect() as conn:
        assert conn.scalar(sa.text(timeout)) == 0
    cli_catalog.dispose()

    leases.enable(2)
    catalog = api.Catalog(url)
    paused, taker = catalog.session(), catalog.session()
    try:
        record = states.begin_backup(paused, volume_id='vol', driver='s3',
                                     container='c')
        assert paused.scalar(sa.text(timeout)) == 2
        paused.execute(sa.update(models.Backup)
                       .where(models.Backup.id == record.id)
                       .values(lease_expires_at=leases.expiry()))
        # ... and the worker stops here, its row locked.
        taker.execute(sa.text('SET SESSION innodb_lock_wait_timeout = 20'))
        taken = taker.execute(
            sa.update(models.Backup)
            .where(models.Backup.id == record.id,
                   models.Backup.status == states.CREATING)
            .values(status=states.ERROR)).rowcount
        taker.commit()
        assert taken == 1
        with pytest.raises(sa.exc.OperationalError):
            paused.commit()  # it resumes: its transaction was ended
        paused.rollback()
        assert paused.get(models.Backup, record.id).status == states.ERROR
    finally:
        paused.close()
        taker.close()
        catalog.dispose()
        leases.disable()
