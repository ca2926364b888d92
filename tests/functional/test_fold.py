"""Forgetting any backup (folds), synthetic fulls, policies: posix, via the
real ``chunkbackup`` command. The object-store drivers run the same checks
in their own files (``fold_chain_checks``).
"""
import hashlib
import os
import re

import pytest

from chunkbackup.testing import volumes
from tests.functional.clitool import Cli

MiB = 2 ** 20


def _digest(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def _chain_of_five(cli, vol, seed):
    """A full and 4 incrementals; the image digest of each."""
    volumes.write_volume(vol, 4 * MiB, 'mixed', seed=seed)
    images = {}
    ids = []
    for i in range(5):
        if i:
            volumes.change_blocks(vol, 0.1, 16384, seed=seed * 10 + i,
                                  max_run=6)
        args = ['backup-create', vol] + (['--incremental'] if i else [])
        record = cli.json(*args)
        ids.append(record['id'])
        images[record['id']] = _digest(vol)
    return ids, images


def _check_all(cli, images, out):
    listed = {b['id']: b for b in cli.json('backup-list')}
    assert set(listed) == set(images)
    for backup_id, want in images.items():
        assert listed[backup_id]['status'] == 'available'
        cli.json('backup-verify', backup_id)
        if os.path.exists(out):
            os.unlink(out)
        cli.json('backup-restore', backup_id, out)
        assert _digest(out) == want, backup_id


# Through the CLI, one order (the middle backups in every order, and the
# full, are folded on every driver by chunkbackup.testing.folds).
ORDERS = [[3, 1, 2]]


@pytest.mark.parametrize('order', ORDERS, ids=lambda o: '-'.join(map(str, o)))
def test_forget_middle_backups_in_any_order(tmp_path, order):
    cli = Cli(tmp_path)
    vol = str(tmp_path / 'disk.img')
    ids, images = _chain_of_five(cli, vol, seed=len(order) + order[0])
    for index in order:
        result = cli.json('backup-delete', ids[index])
        assert result['folded_into']
        del images[ids[index]]
        _parents_consistent(cli)
    _check_all(cli, images, str(tmp_path / 'out.img'))
    # A new incremental still finds its parent and restores.
    volumes.change_blocks(vol, 0.05, 16384, seed=99, max_run=4)
    inc = cli.json('backup-create', vol, '--incremental')
    assert inc['parent_id'] == ids[4]
    out = str(tmp_path / 'inc.img')
    cli.json('backup-restore', inc['id'], out)
    assert _digest(out) == _digest(vol)


def _parents_consistent(cli):
    listed = {b['id']: b for b in cli.json('backup-list')}
    for b in listed.values():
        assert b['parent_id'] is None or b['parent_id'] in listed


def test_fold_reclaims_space_and_keeps_no_stray(tmp_path):
    cli = Cli(tmp_path)
    vol = str(tmp_path / 'disk.img')
    volumes.write_volume(vol, 4 * MiB, 'mixed', seed=7)
    full = cli.json('backup-create', vol)
    # The incremental rewrites the full's first object (256 KiB) whole.
    with open(vol, 'r+b') as f:
        f.write(os.urandom(256 * 1024))
    inc = cli.json('backup-create', vol, '--incremental')
    want = _digest(vol)
    store = tmp_path / 'store'

    def data_objects():
        return [p for p in store.rglob('*') if p.is_file()
                and re.search(r'-\d{5}$', p.name)]
    before = len(data_objects())
    assert before == full['object_count'] + inc['object_count']
    cli.json('backup-delete', full['id'])   # the full, into its child
    # The full's first object owned nothing any more: not kept.
    child = cli.json('backup-show', inc['id'])
    assert len(data_objects()) == before - 1 == child['object_count']
    assert child['parent_id'] is None and not child['incremental']
    assert not list(store.rglob('.tmp-*'))
    out = str(tmp_path / 'out.img')
    cli.json('backup-restore', inc['id'], out)
    assert _digest(out) == want
    cli.json('backup-verify', inc['id'])


def test_no_fold_keeps_the_refusal_and_pins_protect(tmp_path):
    cli = Cli(tmp_path)
    vol = str(tmp_path / 'disk.img')
    ids, images = _chain_of_five(cli, vol, seed=3)
    line = cli.fails('backup-delete', ids[1], '--no-fold')
    assert ids[1] in line
    cli.json('backup-pin', ids[2])
    line = cli.fails('backup-delete', ids[2])
    assert 'pinned' in line and 'backup-unpin' in line
    assert cli.json('backup-show', ids[2])['pinned'] is True
    cli.json('backup-unpin', ids[2])
    cli.json('backup-delete', ids[2])


def test_synthetic_full(tmp_path):
    cli = Cli(tmp_path)
    vol = str(tmp_path / 'disk.img')
    ids, images = _chain_of_five(cli, vol, seed=5)
    want = images[ids[4]]
    # The volume changes afterwards: a synthetic full does not read it.
    volumes.change_blocks(vol, 0.2, 16384, seed=55, max_run=4)
    full = cli.json('backup-create', vol, '--synthetic-full')
    assert full['parent_id'] is None and full['status'] == 'available'
    assert full['stats']['synthetic_full_of'] == ids[4]
    images[full['id']] = want
    # The old chain can go whole; the synthetic full stays restorable.
    for backup_id in reversed(ids):
        cli.json('backup-delete', backup_id)
        del images[backup_id]
    _check_all(cli, images, str(tmp_path / 'out.img'))
    inc = cli.json('backup-create', vol, '--incremental')
    assert inc['parent_id'] == full['id']
    out = str(tmp_path / 'inc.img')
    cli.json('backup-restore', inc['id'], out)
    assert _digest(out) == _digest(vol)


def test_forget_policy_dry_run_and_json(tmp_path):
    cli = Cli(tmp_path)
    vol = str(tmp_path / 'disk.img')
    ids, images = _chain_of_five(cli, vol, seed=11)
    cli.json('backup-pin', ids[1])
    rows = cli.json('forget', '--keep-last', '2', '--volume', vol,
                    '--dry-run')
    by_id = {r['id']: r for r in rows}
    assert by_id[ids[4]]['action'] == 'keep'
    assert by_id[ids[4]]['reason'] == 'last snapshot'
    assert by_id[ids[1]]['reason'] == 'pinned'
    assert [by_id[i]['action'] for i in ids] == [
        'remove', 'keep', 'remove', 'keep', 'keep']
    assert by_id[ids[0]]['result'] == 'dry run'
    assert len(cli.json('backup-list')) == 5
    table = cli.run('forget', '--keep-last', '2', '--dry-run').stdout
    assert 'last snapshot' in table and 'pinned' in table
    rows = cli.json('forget', '--keep-last', '2', '--volume', vol)
    by_id = {r['id']: r for r in rows}
    assert by_id[ids[2]]['result'] == 'folded into %s' % ids[3]
    assert by_id[ids[0]]['result'] == 'folded into %s' % ids[1]
    for gone in (ids[0], ids[2]):
        del images[gone]
    _check_all(cli, images, str(tmp_path / 'out.img'))
    line = cli.fails('forget', '--volume', vol)
    assert 'no policy given' in line
    line = cli.fails('forget', '--keep-within', '2w')
    assert 'not valid' in line


def test_posix_driver_folds_and_synthetic_full(overrides, tmp_path):
    """The same checks as the object stores' (hard links here)."""
    from chunkbackup.drivers import posix
    from chunkbackup.testing import folds
    overrides('path', str(tmp_path / 'store'), 'backup_posix')
    overrides('object_size', 128 * 1024, 'backup_posix')
    overrides('sha_block_size', 16384, 'chunkbackup')
    driver = posix.PosixBackupDriver(None)
    assert folds.fold_chain_checks(driver, str(tmp_path)) == 20
    # Hard links: a folded child's copies share the parent's inodes until
    # the parent goes; none are left with a second name.
    store = tmp_path / 'store'
    shared = [str(p) for p in store.rglob("*-0*")
              if p.is_file() and os.stat(p).st_nlink != 1]
    assert shared == [], shared[:3]
