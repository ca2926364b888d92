"""SIGKILL at seeded random moments of real backups and restores.

After every kill: no record of the killed backup is available, the next
incremental chooses the last good parent, ``chunkbackup cleanup`` removes
what the killed process left in the store, and every available backup
restores to exactly the volume it read.
"""
import hashlib
import os
import random
import signal
import time

from chunkbackup import operations
from chunkbackup.testing import volumes
from tests.functional import clitool
from tests.functional.clitool import Cli

MiB = 2 ** 20
KILLS = 30
SEED = 20261121


def _digest(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(MiB), b''):
            h.update(chunk)
    return h.hexdigest()


def _store_names(store, record):
    directory = os.path.join(store, record['container'] or '')
    if not record['container'] or not os.path.isdir(directory):
        return []
    return [n for n in os.listdir(directory)
            if n.startswith(record['object_prefix'])]


def _kill_at(cli, delay, *args):
    """Start the command, SIGKILL it after ``delay`` s; True if killed."""
    proc = cli.popen(*args)
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False  # finished first: not a kill
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.returncode == -signal.SIGKILL


def _by_id(catalog):
    return {b['id']: b for b in clitool.records(catalog)}


def test_sigkill_during_backups(tmp_path):
    cli = Cli(tmp_path)
    store = str(tmp_path / 'store')
    vol = str(tmp_path / 'disk.img')
    volumes.write_volume(vol, 64 * MiB, 'mixed', seed=1)
    rng = random.Random(SEED)
    t0 = time.monotonic()
    good = cli.json('backup-create', vol)
    duration = time.monotonic() - t0  # a whole run, start-up included
    image_of = {good['id']: _digest(vol)}
    last_good = good['id']
    kills = completed = 0
    # The kills and cleanups are real commands; the checks and the
    # incrementals between kills run in this process (no start-up each).
    with clitool.in_process(tmp_path) as catalog:
        for i in range(KILLS):
            volumes.change_blocks(vol, 0.02, 16384, seed=100 + i,
                                  max_run=8)
            args = ['backup-create', vol] + (
                ['--incremental'] if i % 3 else [])
            before = _by_id(catalog)
            if _kill_at(cli, rng.uniform(0, duration), *args):
                kills += 1
            else:
                completed += 1
            new = [b for b in clitool.records(catalog)
                   if b['id'] not in before]
            assert len(new) <= 1
            if new and new[0]['status'] == 'available':
                image_of[new[0]['id']] = _digest(vol)  # finished in time
                last_good = new[0]['id']
            elif new:
                killed = new[0]
                assert killed['status'] == 'creating', killed
                cleaned = cli.json('cleanup')
                assert [c['id'] for c in cleaned] == [killed['id']]
                after = _by_id(catalog)[killed['id']]
                assert after['status'] == 'error'
                assert _store_names(store, after) == [], 'leftovers remain'
            # The next incremental takes the last good backup as parent.
            with catalog.session() as session:
                inc = operations.create_backup(session, vol,
                                               incremental=True)
            assert inc.parent_id == last_good
            image_of[inc.id] = _digest(vol)
            last_good = inc.id
        print('SIGKILL during backups: %d killed mid-way, %d finished first'
              % (kills, completed))
        assert kills >= KILLS * 2 // 3, (kills, completed)

        available = [b for b in clitool.records(catalog)
                     if b['status'] == 'available']
        assert {b['id'] for b in available} == set(image_of)
        out = str(tmp_path / 'restored')
        for record in available:
            with catalog.session() as session:
                operations.restore_backup(session, record['id'], out,
                                          force=True)
            assert _digest(out) == image_of[record['id']], record['id']
    # And through the command, the newest.
    cli.json('backup-restore', last_good, out, '--force')
    assert _digest(out) == image_of[last_good]


def test_sigkill_during_restores(tmp_path):
    cli = Cli(tmp_path)
    vol = str(tmp_path / 'disk.img')
    volumes.write_volume(vol, 64 * MiB, 'mixed', seed=2)
    full = cli.json('backup-create', vol)
    volumes.change_blocks(vol, 0.05, 16384, seed=3, max_run=8)
    inc = cli.json('backup-create', vol, '--incremental')
    want = _digest(vol)
    out = str(tmp_path / 'restored')
    t0 = time.monotonic()
    cli.json('backup-restore', inc['id'], out)
    duration = time.monotonic() - t0
    rng = random.Random(SEED)
    with clitool.in_process(tmp_path) as catalog:
        for i in range(10):
            os.unlink(out)
            killed = _kill_at(cli, rng.uniform(0, duration),
                              'backup-restore', inc['id'], out)
            if killed:
                assert _by_id(catalog)[inc['id']]['status'] in (
                    'restoring', 'available')
                cli.json('cleanup')
                assert _by_id(catalog)[inc['id']]['status'] == \
                    'available'
            # Rerunning the restore completes it, whatever the kill left.
            cli.json('backup-restore', inc['id'], out, '--force')
            assert _digest(out) == want
    cli.json('backup-verify', full['id'])
