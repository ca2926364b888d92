"""A restore and a delete of the same backup started together, many times,
on the real catalogs (SQLite, PostgreSQL, MariaDB): status changes are
compare-and-set, so one of them wins, the other is refused with one line and
changes nothing, and no restore ever finds its objects deleted under it.

Both run in one process (as the service runs its jobs), so they share the
owner ``host:pid``: the owner alone cannot tell them apart.
"""
import hashlib
import os
import threading

from oslo_config import cfg
import pytest

from chunkbackup.catalog import api
from chunkbackup.catalog import models
from chunkbackup.catalog import states
from chunkbackup.drivers import posix  # noqa: F401 (registers its options)
from chunkbackup import operations
from chunkbackup import opts  # noqa: F401 (registers [chunkbackup])
from chunkbackup.testing import volumes
from tests.functional import databases

CONF = cfg.CONF
MiB = 2 ** 20
ROUNDS = 12       # at least; more until each side has won once
MAX_ROUNDS = 48


@pytest.fixture(params=databases.CATALOG_KINDS)
def catalog(request, tmp_path):
    """A fresh catalog on each database engine."""
    if request.param == 'sqlite':
        cat = api.Catalog('sqlite:///%s' % (tmp_path / 'catalog.sqlite'))
        yield cat
        cat.dispose()
        return
    with databases.scratch_database(request.param, 'cbrace') as url:
        cat = api.Catalog(url)
        try:
            yield cat
        finally:
            cat.dispose()


@pytest.fixture
def posix_store(tmp_path):
    overrides = [('driver', 'posix', 'chunkbackup'),
                 ('sha_block_size', 16384, 'chunkbackup'),
                 ('cancel_check_interval', 0, 'chunkbackup'),
                 ('path', str(tmp_path / 'store'), 'backup_posix'),
                 ('object_size', 128 * 1024, 'backup_posix')]
    for name, value, group in overrides:
        CONF.set_override(name, value, group)
    yield tmp_path / 'store'
    for name, _value, group in overrides:
        CONF.clear_override(name, group)


def _digest(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def _objects_of(store, prefix):
    prefix = os.path.basename(prefix)
    found = []
    for root, _dirs, files in os.walk(store):
        found += [f for f in files if f.startswith(prefix)]
    return found


def _race(catalog, backup_id, target):
    """Restore and delete ``backup_id`` at once; what each ended with."""
    start = threading.Barrier(2)
    outcome = {}

    def run(kind, operation):
        session = catalog.session()
        try:
            start.wait()
            operation(session)
            outcome[kind] = None
        except Exception as e:  # judged by the test
            outcome[kind] = e
        finally:
            session.close()

    threads = [
        threading.Thread(target=run, args=('restore', lambda s: (
            operations.restore_backup(s, backup_id, target)))),
        threading.Thread(target=run, args=('delete', lambda s: (
            operations.delete_backup(s, backup_id))))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(t.is_alive() for t in threads)
    return outcome['restore'], outcome['delete']


def _refused(error, backup_id):
    """The loser's error: one line naming the backup and what it is now."""
    if not isinstance(error, (states.StatusConflict, api.NotFound)):
        # Found it deleting before trying: the restore's own check.
        assert isinstance(error, operations.OperationError), repr(error)
        assert 'only available backups can be restored' in error.msg
    message = str(error)
    assert '\n' not in message and backup_id in message, message
    return True


def test_restore_and_delete_started_together(catalog, posix_store,
                                             tmp_path):
    vol = str(tmp_path / 'disk.img')
    volumes.write_volume(vol, 3 * MiB, 'mixed', seed=5, region_size=65536)
    image = _digest(vol)
    session = catalog.session()
    wins = {'restore': 0, 'delete': 0}
    try:
        for round_ in range(MAX_ROUNDS):
            if round_ >= ROUNDS and wins['restore'] and wins['delete']:
                break
            record = operations.create_backup(session, vol)
            backup_id, prefix = record.id, record.service_metadata
            assert len(_objects_of(posix_store, prefix)) > 10
            target = str(tmp_path / ('restored-%d' % round_))
            restore_error, delete_error = _race(catalog, backup_id, target)
            session.expire_all()
            now = session.get(models.Backup, backup_id)
            if restore_error is None:
                wins['restore'] += 1
                assert _digest(target) == image
            else:
                assert _refused(restore_error, backup_id)
            if delete_error is None:
                wins['delete'] += 1
                assert now is None
                assert _objects_of(posix_store, prefix) == []
            else:
                # The delete lost to the restore and did nothing.
                assert isinstance(delete_error, states.StatusConflict), \
                    repr(delete_error)
                assert '\n' not in str(delete_error)
                assert restore_error is None
                assert (now.status, now.owner) == (states.AVAILABLE, None)
                assert len(_objects_of(posix_store, prefix)) > 10
                operations.delete_backup(session, backup_id)
            # Never both refused: one of them went ahead.
            assert restore_error is None or delete_error is None
    finally:
        session.close()
    # Started together, each won some rounds: the race was run both ways.
    assert wins['restore'] and wins['delete'], wins
