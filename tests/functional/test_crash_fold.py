"""SIGKILL at seeded random moments of folds and synthetic fulls.

After every kill and ``chunkbackup cleanup``: every backup that was
available is available, in its old or its new form, and restores to
exactly its image; the folded backup is either gone (the fold finished)
or back (rolled back); a killed synthetic full ends error with nothing
left in the store. Copies and deletes are slowed a little
(tests/functional/slowposix.py) so kills land inside the operations.
"""
import hashlib
import os
import random
import time

import pytest

from chunkbackup import operations
from chunkbackup.testing import volumes
from tests.functional import clitool
from tests.functional.clitool import Cli
from tests.functional.test_crash import _kill_at
from tests.functional.test_crash import _store_names

MiB = 2 ** 20
KILLS = 30
SEED = 20261203
DRIVER = 'tests.functional.slowposix.SlowPosixDriver'
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _digest(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def _timed(cli, *args):
    t0 = time.monotonic()
    result = cli.json(*args)
    return result, time.monotonic() - t0


@pytest.fixture
def catalog(tmp_path):
    with clitool.in_process(tmp_path, DRIVER) as cat:
        yield cat


def test_sigkill_during_folds_and_synthetic_fulls(tmp_path, catalog):
    cli = Cli(tmp_path)
    # The slowed driver is a test module: the installed command finds it
    # on PYTHONPATH.
    cli.extra_env['PYTHONPATH'] = os.pathsep.join(
        filter(None, [REPO_ROOT, os.environ.get('PYTHONPATH')]))
    # Copies and deletes slow enough that about half the kills land
    # inside the operation rather than in the command's start-up.
    cli.extra_env['CHUNKBACKUP_TEST_OBJECT_DELAY'] = '0.03'
    cli.config.write_text(cli.config.read_text().replace(
        '[chunkbackup]', '[chunkbackup]\ndriver = %s' % DRIVER))
    store = str(tmp_path / 'store')
    vol = str(tmp_path / 'disk.img')
    out = str(tmp_path / 'out.img')
    volumes.write_volume(vol, 4 * MiB, 'mixed', seed=3)
    rng = random.Random(SEED)
    image_of = {}

    def incremental(seed):
        # In this process: no start-up to wait for.
        volumes.change_blocks(vol, 0.1, 16384, seed=seed, max_run=6)
        session = catalog.session()
        try:
            record = operations.create_backup(session, vol,
                                              incremental=True)
            image_of[record.id] = _digest(vol)
        finally:
            session.close()

    def restores(backup_id):
        if os.path.exists(out):
            os.unlink(out)
        session = catalog.session()
        try:
            operations.restore_backup(session, backup_id, out)
        finally:
            session.close()
        assert _digest(out) == image_of[backup_id], backup_id

    full, startup = _timed(cli, 'backup-create', vol)
    image_of[full['id']] = _digest(vol)
    for seed in range(3):
        incremental(100 + seed)
    # How long a whole fold and a whole synthetic full take, start-up
    # included: the kills land between start-up and the end.
    _, show = _timed(cli, 'backup-show', full['id'])
    listed = clitool.records(catalog)
    victim = listed[1]['id']
    _, fold_time = _timed(cli, 'backup-delete', victim)
    del image_of[victim]
    synth, synth_time = _timed(cli, 'backup-create', vol, '--synthetic-full')
    image_of[synth['id']] = image_of[listed[-1]['id']]
    kills = inside = completed = 0
    outcomes = {'folded': 0, 'rolled back': 0, 'synthetic finished': 0,
                'synthetic cleaned': 0}
    for i in range(KILLS):
        incremental(200 + i)
        available = {b['id']: b for b in clitool.records(catalog)
                     if b['status'] == 'available'}
        fold = i % 2 == 0
        if fold:
            with_child = [b for b in available.values() if any(
                c['parent_id'] == b['id'] for c in available.values())]
            parent = rng.choice(with_child)
            child = [c for c in available.values()
                     if c['parent_id'] == parent['id']][0]
            args = ('backup-delete', parent['id'])
            duration = fold_time
        else:
            args = ('backup-create', vol, '--synthetic-full')
            duration = synth_time
        delay = rng.uniform(show * 0.8, duration)
        if _kill_at(cli, delay, *args):
            kills += 1
        else:
            completed += 1
        now = {b['id']: b for b in clitool.records(catalog)}
        busy = [b for b in now.values()
                if b['status'] not in ('available', 'error')]
        if busy:
            inside += 1
        session = catalog.session()
        try:
            operations.cleanup_interrupted(session)
        finally:
            session.close()
        now = {b['id']: b for b in clitool.records(catalog)}
        newest = max(available.values(), key=lambda b: b['created_at'])
        if fold:
            assert now[child['id']]['status'] == 'available'
            if parent['id'] in now:
                outcomes['rolled back'] += 1
                assert now[parent['id']]['status'] == 'available'
                assert now[child['id']]['parent_id'] == parent['id']
                restores(parent['id'])
            else:
                outcomes['folded'] += 1
                assert now[child['id']]['parent_id'] == parent['parent_id']
                del image_of[parent['id']]
                assert _store_names(store, parent) == []
            restores(child['id'])
        else:
            new = [b for b in now.values() if b['id'] not in available]
            assert len(new) <= 1
            if new and new[0]['status'] == 'available':
                outcomes['synthetic finished'] += 1
                assert new[0]['parent_id'] is None
                image_of[new[0]['id']] = image_of[newest['id']]
                restores(new[0]['id'])
            elif new:
                outcomes['synthetic cleaned'] += 1
                assert new[0]['status'] == 'error', new[0]
                assert _store_names(store, new[0]) == []
                cli.json('backup-delete', new[0]['id'])
        for backup_id in available:
            if backup_id in image_of:
                assert now[backup_id]['status'] == 'available', backup_id
    print('SIGKILL during folds and synthetic fulls: %d killed (%d with '
          'the operation under way), %d finished first; %s'
          % (kills, inside, completed, outcomes))
    assert kills >= KILLS // 2, (kills, completed)
    assert inside >= KILLS // 5, inside
    available = [b for b in clitool.records(catalog)
                 if b['status'] == 'available']
    assert {b['id'] for b in available} == set(image_of)
    for record in available:
        restores(record['id'])
    for record in available[-2:]:
        cli.json('backup-verify', record['id'])
