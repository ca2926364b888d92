"""The chunkbackup command as people use it (issue 17): backups named by
prefix, name and latest, what each backup did, tables that fit, jobs and
schedules, the conventions of a command line, and installs that finish
the job. Real processes with a fresh HOME and the installed command; a
pseudo-terminal where a terminal matters."""
import datetime
import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time

from alembic import command as alembic_command
from alembic import config as alembic_config
import pytest
import sqlalchemy as sa

from chunkbackup.catalog import api
from chunkbackup.testing import volumes
from tests.functional.clitool import Cli
from tests.functional import databases
from tests.functional import test_cli

MiB = 2 ** 20
BIN = os.path.dirname(sys.executable)
SERVICE = os.path.join(BIN, 'chunkbackup-backup')


@pytest.fixture(params=databases.CATALOG_KINDS)
def db_cli(request, tmp_path):
    """The CLI on a fresh catalog of each database engine."""
    with test_cli.catalog_cli(request.param, tmp_path) as made:
        yield made


def _volume(tmp_path, name='disk.img', size=2 * MiB, seed=1, kind='mixed'):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    volumes.write_volume(str(path), size, kind, seed=seed,
                         region_size=65536)
    return str(path)


def on_terminal(cli, *args, columns=100, rows=40):
    """Run with stdout and stderr on a pseudo-terminal of that size."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ,
                struct.pack('HHHH', rows, columns, 0, 0))
    env = cli.env()
    env.pop('COLUMNS', None)
    env.pop('LINES', None)
    proc = subprocess.Popen(cli.command(*args), stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave, env=env)
    os.close(slave)
    shown = b''
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the other end closed
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    assert proc.wait() == 0, shown
    return shown.decode('utf-8', 'replace').replace('\r\n', '\n')


# 1. Names ------------------------------------------------------------------

def test_backups_by_prefix_name_and_latest(tmp_path):
    cli = Cli(tmp_path)
    a = _volume(tmp_path, 'a.img', seed=1)
    b = _volume(tmp_path, 'b.img', seed=2)
    first = cli.json('backup-create', a, '--name', 'first')
    second = cli.json('backup-create', a, '--incremental')
    other = cli.json('backup-create', b, '--name', 'other')

    assert cli.json('backup-show', first['id'][:6])['id'] == first['id']
    assert cli.json('backup-show', 'first')['id'] == first['id']
    assert cli.json('backup-show', 'latest')['id'] == other['id']
    assert cli.json('backup-show', 'latest:' + a)['id'] == second['id']
    # A relative path is the path from where the command runs.
    rel = subprocess.run(cli.command('backup-show', 'latest:a.img',
                                     '--format', 'json'),
                         cwd=str(tmp_path), env=cli.env(),
                         capture_output=True, text=True, check=True)
    assert json.loads(rel.stdout)['id'] == second['id']
    # Every command that takes a backup takes a reference.
    out = str(tmp_path / 'restored')
    cli.json('backup-restore', 'latest:' + a, out)
    with open(out, 'rb') as f, open(a, 'rb') as g:
        assert f.read() == g.read()
    assert cli.json('backup-verify', second['id'][:8])['backup_id'] == \
        second['id']
    assert cli.json('backup-export', 'other')['backup_url']

    # Ambiguity: one line that lists the candidates.
    again = cli.json('backup-create', b, '--name', 'first')
    line = cli.fails('backup-show', 'first')
    assert first['id'] in line and again['id'] in line and '2 backups' in line
    assert 'No backup zz in the catalog' in cli.fails('backup-show', 'zz')
    assert 'at least 4' in cli.fails('backup-show', first['id'][:3])
    line = cli.fails('backup-delete', 'latest:' + str(tmp_path / 'none'))
    assert 'No available backup of volume' in line
    # Nothing was deleted by the refused references.
    assert len(cli.json('backup-list')) == 4


def test_backup_list_by_path_status_time_and_limit(tmp_path):
    cli = Cli(tmp_path)
    a = _volume(tmp_path, 'a.img', seed=1)
    b = _volume(tmp_path, 'b.img', seed=2)
    made = [cli.json('backup-create', a), cli.json('backup-create', b),
            cli.json('backup-create', a, '--incremental')]
    ids = lambda rows: [r['id'] for r in rows]  # noqa: E731
    assert ids(cli.json('backup-list', '--volume', a)) == \
        [made[0]['id'], made[2]['id']]
    assert ids(cli.json('backup-list', '--volume', made[1]['volume_id'])) \
        == [made[1]['id']]
    assert cli.json('backup-list', '--volume', str(tmp_path / 'x')) == []
    assert ids(cli.json('backup-list', '--limit', '1')) == [made[2]['id']]
    assert cli.json('backup-list', '--status', 'error') == []
    assert len(cli.json('backup-list', '--status', 'error,available')) == 3
    assert len(cli.json('backup-list', '--since', '1h')) == 3
    assert cli.json('backup-list', '--before', '1h') == []
    assert 'not a time' in cli.fails('backup-list', '--since', 'soonish')
    table = cli.run('backup-list', '--volume', a).stdout
    assert 'a.img' in table and 'b.img' not in table
    assert a in cli.run('backup-list', '--volume', a, '--wide').stdout


# 2. What a backup did --------------------------------------------------------

def test_show_says_what_each_backup_did_and_stats_sums_it(tmp_path):
    cli = Cli(tmp_path)
    vol = _volume(tmp_path, size=4 * MiB, seed=3)
    with open(vol, 'r+b') as f:
        f.truncate(8 * MiB)  # a 4 MiB hole at the end
    full = cli.json('backup-create', vol)
    volumes.change_blocks(vol, 0.05, 16384, seed=4, max_run=2)
    inc = cli.json('backup-create', vol, '--incremental')
    for record in (full, inc):
        stats = record['stats']
        assert record['size_bytes'] == 8 * MiB
        # The hole (file systems may report a little more data).
        assert 3 * MiB <= stats['hole_bytes'] <= 4 * MiB
        assert 0 < stats['stored_bytes'] and stats['objects'] >= 1
        assert stats['duration_seconds'] > 0
        assert stats['throughput_bytes_per_second'] > 0
    assert full['stats']['changed_fraction'] is None
    assert 0 < inc['stats']['changed_fraction'] < 0.5
    assert 4 * MiB <= inc['stats']['bytes_read'] <= 5 * MiB

    shown = cli.run('backup-show', inc['id']).stdout
    assert 'size_gib' not in shown
    fields = dict(re.split(r'\s{2,}', line.strip(), maxsplit=1)
                  for line in shown.splitlines()[1:] if '  ' in line.strip())
    assert fields['Size'] == '8.0 MiB (8388608 bytes)'
    assert re.match(r'^[45]\.\d MiB$', fields['Read']), fields['Read']
    assert fields['Type'] == 'incremental of %s' % full['id']
    assert re.match(r'^\d+\.\d%', fields['Changed']), fields['Changed']
    assert re.search(r'\d\.\d MiB of holes skipped', fields['How'])
    assert fields['Throughput'].endswith('/s')
    assert re.match(r'^\d+\.\d+ s$|^\d+ min', fields['Duration'])

    other = _volume(tmp_path, 'other.img', size=MiB, seed=5)
    cli.json('backup-create', other)
    summary = cli.json('stats')
    total = summary['total']
    assert total['backups'] == 3 and total['volumes'] == 2
    assert total['logical_bytes'] == 17 * MiB
    listed = cli.json('backup-list')
    assert total['stored_bytes'] == sum(b['stats']['stored_bytes']
                                        for b in listed)
    (mine,) = [v for v in summary['volumes'] if v['volume'] == vol]
    assert mine['backups'] == 2 and mine['full_backups'] == 1
    only = cli.json('stats', '--volume', vol)
    assert only['total']['backups'] == 2 and len(only['volumes']) == 1
    table = cli.run('stats').stdout.splitlines()
    assert table[0].split()[:3] == ['Volume', 'Backups', 'Logical']
    assert table[-1].startswith('(all)') and '17.0 MiB' in table[-1]


# 3. Tables that fit ----------------------------------------------------------

def test_tables_fit_100_columns_with_local_times(tmp_path):
    cli = Cli(tmp_path)
    cli.extra_env['TZ'] = 'Asia/Kolkata'  # UTC+05:30, no daylight saving
    deep = tmp_path / ('a-rather-long-directory-name-for-volumes' * 2)
    vol = _volume(deep, 'the-data-disk-of-the-database-server.img')
    name = 'nightly backup of the database server before the upgrade'
    made = cli.json('backup-create', vol, '--name', name)
    cli.json('backup-create', vol, '--incremental', '--name', name)
    cli.json('schedule-set', 'database-server-nightly', vol, '--interval',
             '1d')
    cli.json('backup-create', vol, '--async')
    created = datetime.datetime.strptime(made['created_at'],
                                         '%Y-%m-%dT%H:%M:%S.%fZ')
    assert made['created_at'].endswith('Z')
    local = (created + datetime.timedelta(hours=5, minutes=30)).strftime(
        '%Y-%m-%d %H:%M:%S')
    for args in (['backup-list'], ['backup-show', 'latest'], ['stats'],
                 ['schedule-list'], ['job-list'], ['service-list']):
        shown = on_terminal(cli, *args, columns=100)
        lines = [line for line in shown.splitlines()
                 if not line.startswith('chunkbackup: ')]
        assert lines and all(len(line) <= 100 for line in lines), (
            args, [len(line) for line in lines], shown)
    listed = on_terminal(cli, 'backup-list')
    header, row = listed.splitlines()[:2]
    assert 'Created (IST)' in header and local in row
    assert made['id'][:8] in row and '2.0 MiB' in row
    assert 'server.img' in row  # the end of the path
    shown = on_terminal(cli, 'backup-show', made['id'])
    assert local + ' IST' in shown
    # On a narrower terminal the tables are narrower.
    narrow = on_terminal(cli, 'backup-list', columns=80)
    assert all(len(line) <= 80 for line in narrow.splitlines())
    # --wide: whole ids and values, however wide.
    wide = on_terminal(cli, 'backup-list', '--wide')
    assert made['id'] in wide and vol in wide and name in wide


# 4. Jobs and schedules -------------------------------------------------------

def test_jobs_queue_show_and_cancel(tmp_path):
    cli = Cli(tmp_path)
    vol = _volume(tmp_path)
    queued = cli.run('backup-create', vol, '--async', '--format', 'json')
    job = json.loads(queued.stdout)
    assert job['status'] == 'queued'
    assert 'no chunkbackup-backup service is running' in queued.stderr
    listed = cli.run('job-list', '--format', 'json')
    (row,) = json.loads(listed.stdout)
    assert row['id'] == job['job_id'] and row['volume'] == vol
    assert '1 queued job(s) wait' in listed.stderr
    shown = cli.run('job-show', str(job['job_id']))
    assert 'queued' in shown.stdout and 'waits' in shown.stderr
    cancelled = cli.json('job-cancel', str(job['job_id']))
    assert cancelled['status'] == 'cancelled'
    assert cancelled['outcome'] == 'cancelled before it ran'
    again = cli.json('job-cancel', str(job['job_id']))
    assert again['outcome'].startswith('already cancelled')
    assert 'no job 99' in cli.fails('job-show', '99')
    assert 'no job x' in cli.fails('job-cancel', 'x')


def test_schedules_set_update_list_delete(db_cli, tmp_path):
    cli = db_cli
    vol = _volume(tmp_path)
    line = cli.fails('schedule-set', 'nightly', str(tmp_path / 'nope.img'),
                     '--interval', '1d')
    assert 'does not exist' in line and 'nope.img' in line
    assert cli.json('schedule-list') == []
    made = cli.json('schedule-set', 'nightly', vol, '--interval', '1d',
                    '--full-every', '3', '--retain-full', '4')
    assert made['interval_seconds'] == 86400 and made['full_every'] == 3
    changed = cli.json('schedule-update', 'nightly', '--interval', '6h')
    assert changed['interval_seconds'] == 6 * 3600
    assert changed['full_every'] == 3 and changed['retain_full'] == 4
    assert changed['volume_path'] == vol
    off = cli.json('schedule-update', 'nightly', '--disable')
    assert off['enabled'] is False and off['interval_seconds'] == 6 * 3600
    assert 'nothing to change' in cli.fails('schedule-update', 'nightly')
    assert 'does not exist' in cli.fails('schedule-update', 'nightly',
                                         '--volume', str(tmp_path / 'x'))
    (listed,) = cli.json('schedule-list')
    assert listed['last_run_at'] is None and listed['last_result'] is None
    table = cli.run('schedule-list').stdout.splitlines()
    assert 'Last run' in table[0] and 'Next run' in table[0]
    assert 'never' in table[1] and 'disabled' in table[1]
    assert '6h' in table[1]
    cli.json('schedule-update', 'nightly', '--enable')
    assert 'at service start' in cli.run('schedule-list').stdout
    deleted = cli.json('schedule-delete', 'nightly')
    assert deleted['status'] == 'deleted'
    assert 'No schedule nightly' in cli.fails('schedule-delete', 'nightly')
    assert 'No schedule nightly' in cli.fails('schedule-update', 'nightly',
                                              '--interval', '1h')


def test_catalog_upgrades_from_0004_keeping_jobs_and_schedules(
        db_cli, tmp_path):
    """Migration 0005 on a catalog made by the previous release."""
    cli = db_cli
    url = cli.config.read_text().split('connection = ')[-1].strip() \
        if 'connection = ' in cli.config.read_text() else \
        'sqlite:///%s' % (cli.home / 'data' / 'chunkbackup' /
                          'catalog.sqlite')
    if url.startswith('sqlite'):
        (cli.home / 'data' / 'chunkbackup').mkdir(parents=True)
    engine = sa.create_engine(url)
    config = alembic_config.Config()
    config.set_main_option('script_location', os.path.join(
        os.path.dirname(api.__file__), 'migrations'))
    with engine.begin() as connection:
        config.attributes['connection'] = connection
        alembic_command.upgrade(config, '0004')
        connection.execute(sa.text(
            "INSERT INTO jobs (kind, params, status, created_at, attempts) "
            "VALUES ('backup', '{\"volume\": \"/v\"}', 'queued', "
            "'2026-12-01 00:00:00', 0)"))
        connection.execute(sa.text(
            "INSERT INTO schedules (name, volume_path, interval_seconds, "
            "full_every, retain_full, enabled, created_at) VALUES "
            "('old', '/v', 60, 7, 2, :t, '2026-12-01 00:00:00')"),
            {'t': True})
    engine.dispose()
    (job,) = cli.json('job-list')
    assert job['status'] == 'queued' and job['cancel_requested'] is False
    (schedule,) = cli.json('schedule-list')
    assert schedule['name'] == 'old' and schedule['last_result'] is None
    assert cli.json('job-cancel', str(job['id']))['status'] == 'cancelled'


def test_the_service_runs_jobs_and_schedules_and_says_how_they_ended(
        tmp_path):
    """chunkbackup-backup on its default backend, with no eventlet warning.

    A queued --incremental with no parent is a full backup; schedule-list
    shows the last run, its result and the next run.
    """
    cli = Cli(tmp_path)
    with open(cli.config, 'a') as f:
        f.write('[backup_service]\npoll_interval = 0.2\n')
    vol = _volume(tmp_path)
    job = cli.json('backup-create', vol, '--async', '--incremental')
    log = open(tmp_path / 'service.log', 'wb')
    proc = subprocess.Popen([SERVICE, '--config-file', str(cli.config)],
                            stdout=log, stderr=subprocess.STDOUT,
                            env=cli.env(), start_new_session=True)

    def wait_for(what, condition):
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            found = condition()
            if found:
                return found
            assert proc.poll() is None, (tmp_path / 'service.log').read_text()
            time.sleep(0.3)
        pytest.fail('%s did not happen:\n%s'
                    % (what, (tmp_path / 'service.log').read_text()))

    def job_ended():
        (row,) = cli.json('job-list')
        return row if row['status'] not in ('queued', 'running') else None

    def schedule_ran():
        (row,) = cli.json('schedule-list')
        return row if row['last_result'] else None
    try:
        done = wait_for('the job', job_ended)
        cli.json('schedule-set', 'hourly', vol, '--interval', '1h')
        schedule = wait_for('the scheduled run', schedule_ran)
        assert 'up' in cli.run('service-list').stdout
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()
    output = (tmp_path / 'service.log').read_text()
    assert 'Eventlet is deprecated' not in output, output
    assert 'EventletDeprecationWarning' not in output
    assert done['id'] == job['job_id'] and done['status'] == 'done', done
    record = cli.json('backup-show', done['backup_id'])
    assert not record['incremental']
    assert record['stats']['incremental_fallback']
    assert schedule['last_result'] == 'available', schedule
    assert schedule['last_backup_id']
    ran = datetime.datetime.strptime(schedule['last_run_at'],
                                     '%Y-%m-%dT%H:%M:%S.%fZ')
    nxt = datetime.datetime.strptime(schedule['next_run_at'],
                                     '%Y-%m-%dT%H:%M:%S.%fZ')
    assert nxt - ran == datetime.timedelta(hours=1)
    table = cli.run('schedule-list').stdout.splitlines()
    assert 'available' in table[1] and 'never' not in table[1]


# 5. Conventions --------------------------------------------------------------

def test_help_version_and_options_anywhere(tmp_path):
    cli = Cli(tmp_path)
    version = cli.run('--version', config=False)
    assert re.match(r'^chunkbackup \d', version.stdout), version.stdout
    shown = cli.run('--help', config=False).stdout
    assert shown.index('backup-create') < shown.index('--config-file')
    assert shown.index('Backups:') < shown.index('Options')
    assert '--log-file' not in shown and '--help-all' in shown
    everything = cli.run('--help-all', config=False).stdout
    assert '--log-file' in everything and 'backup-create' in everything
    sub = cli.run('backup-restore', '--help', config=False).stdout
    assert 'latest:VOLUME' in sub and 'target' in sub
    assert '--log-file' not in sub
    line = cli.fails('--shell_completion', 'bash', config=False)
    assert 'unrecognized arguments' in line or 'invalid choice' in line
    # --format and --debug before the command, as after it.
    vol = _volume(tmp_path)
    before = cli.run('--format', 'json', 'backup-create', vol)
    assert json.loads(before.stdout)['status'] == 'available'
    debugged = cli.run('--debug', 'backup-list')
    assert 'DEBUG' in debugged.stderr
    assert 'DEBUG' in cli.run('backup-list', '--debug').stderr
    assert 'DEBUG' not in cli.run('backup-list').stderr


def _complete(cli, words):
    script = cli.run('completion', 'bash', config=False).stdout
    tmp = cli.tmp / 'completion.bash'
    tmp.write_text(script)
    program = ('source %s; COMP_WORDS=(%s); COMP_CWORD=%d; '
               '_chunkbackup_complete; echo "${COMPREPLY[@]}"'
               % (tmp, ' '.join(words), len(words) - 1))
    result = subprocess.run(['bash', '-c', program], capture_output=True,
                            text=True, check=True)
    return result.stdout.split()


def test_bash_completion_works(tmp_path):
    cli = Cli(tmp_path)
    assert _complete(cli, ['chunkbackup', 'backup-re']) == ['backup-restore']
    assert set(_complete(cli, ['chunkbackup', 'backup-restore', '--f'])) \
        == {'--force', '--format'}
    assert '--since' in _complete(cli, ['chunkbackup', '--debug',
                                        'backup-list', '--s'])
    zsh = cli.run('completion', 'zsh', config=False).stdout
    assert 'bashcompinit' in zsh and '_chunkbackup_complete' in zsh
    assert 'completion' in cli.fails('completion', 'fish', config=False)


def test_progress_rates_say_mib_per_second(tmp_path):
    cli = Cli(tmp_path)
    vol = _volume(tmp_path, size=8 * MiB)
    shown = on_terminal(cli, 'backup-create', vol)
    assert 'MiB/s]' in shown or 'KiB/s]' in shown or 'GiB/s]' in shown
    assert 'MB/s' not in shown


# 8. Installs -----------------------------------------------------------------

@pytest.mark.parametrize('url,module,extra', [
    ('postgresql+psycopg2://postgres@127.0.0.1:5432/test', 'psycopg2',
     'chunkbackup[postgresql]'),
    ('mysql+pymysql://root@127.0.0.1:3306/test', 'pymysql',
     'chunkbackup[mysql]'),
])
def test_a_missing_database_driver_names_the_extra(tmp_path, url, module,
                                                   extra):
    cli = Cli(tmp_path, url)
    hidden = tmp_path / 'hidden'
    (hidden / module).mkdir(parents=True)
    (hidden / module / '__init__.py').write_text(
        'raise ModuleNotFoundError("No module named %r", name=%r)\n'
        % (module, module))
    cli.extra_env['PYTHONPATH'] = str(hidden)
    line = cli.fails('backup-list')
    assert module in line and extra in line, line
