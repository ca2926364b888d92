"""Cinder's own posix driver as the oracle of the on-storage format.

Both drivers are loaded as cinder-backup loads them and work on the same
directory with real Cinder Backup objects. Backups written by Cinder are
restored, verified and extended incrementally by ours; backups written by
ours (and chains mixing both) are restored by Cinder's, also onto new
volumes where a range went from data to zeros in an incremental.
"""
import os

from cinder.objects import fields
from oslo_utils import importutils
import pytest

from tests.cinder import conftest

KiB = conftest.KiB
MiB = conftest.MiB
BLOCK = 32 * KiB


@pytest.fixture
def shared(posix_paths, overrides):
    """Both drivers on one directory, as after switching backup_driver."""
    overrides('backup_posix_path', posix_paths['ours'])
    return posix_paths['ours']


class Drivers:
    def __init__(self, cloud, tmp_path):
        self.cloud = cloud
        self.tmp = tmp_path
        self.load()
        self.volume = cloud.volume(name='source', metadata={'k': 'v'})
        self.n = 0

    def load(self):
        """Construct both drivers (they read their options then)."""
        ctxt = self.cloud.ctxt
        self.ours = importutils.import_class(conftest.OUR_POSIX)(ctxt)
        self.cinder = importutils.import_class(conftest.CINDER_POSIX)(ctxt)

    def _file(self, data=None):
        self.n += 1
        path = str(self.tmp / ('vol-%d' % self.n))
        with open(path, 'wb') as f:
            f.write(data or b'')
        return path

    def backup(self, driver, data, parent=None):
        record = self.cloud.backup_record(self.volume, parent=parent)
        with open(self._file(data), 'rb') as f:
            driver.backup(record, f)   # as the manager calls it
        record.status = fields.BackupStatus.AVAILABLE
        record.service = (conftest.OUR_POSIX if driver is self.ours
                          else conftest.CINDER_POSIX)
        record.save()
        return self.cloud.backup_object(record.id)

    def restore(self, driver, backup, new=True, size=None, junk=False):
        """Restore into a new (empty) file or over a file of junk."""
        path = self._file(os.urandom(size) if junk else None)
        backup.status = fields.BackupStatus.RESTORING
        backup.save()
        with open(path, 'r+b') as f:
            driver.restore(backup, self.volume.id, f, new)
        backup.status = fields.BackupStatus.AVAILABLE
        backup.save()
        with open(path, 'rb') as f:
            return f.read()


@pytest.fixture
def drivers(cloud, shared, tmp_path):
    cloud.start(conftest.OUR_POSIX)
    return Drivers(cloud, tmp_path)


def versions():
    v0 = conftest.random_volume(3 * MiB + 7 * KiB, seed=10)
    v1 = bytearray(v0)
    v1[64 * KiB:200 * KiB] = os.urandom(136 * KiB)
    v1[len(v0) - 3 * KiB:] = b'\xff' * (3 * KiB)       # the short tail
    v2 = bytearray(v1)
    v2[:BLOCK] = b'\x01' * BLOCK
    v2[64 * KiB:200 * KiB] = bytes(136 * KiB)       # data -> zeros
    v2[MiB:MiB + 5 * BLOCK] = os.urandom(5 * BLOCK)
    return v0, bytes(v1), bytes(v2)


@pytest.mark.parametrize('theirs', ['zlib', 'bz2', 'zstd', 'none'])
def test_cinder_chain_restored_verified_extended_by_ours(drivers, overrides,
                                                         theirs):
    overrides('backup_compression_algorithm', theirs)
    drivers.load()
    v0, v1, v2 = versions()
    full = drivers.backup(drivers.cinder, v0)
    incr = drivers.backup(drivers.cinder, v1, parent=full)
    assert full.service_metadata.startswith('volume_%s_' % full.volume_id)

    plan = drivers.ours.verify(incr)
    assert plan.size == len(v1)
    assert drivers.restore(drivers.ours, incr) == v1
    assert drivers.restore(drivers.ours, full) == v0
    assert drivers.restore(drivers.ours, incr, new=False, size=len(v1),
                           junk=True) == v1

    # Ours continues Cinder's chain with an incremental of its own.
    ours = drivers.backup(drivers.ours, v2, parent=incr)
    assert ours.parent_id == incr.id
    changed = drivers.ours.plan_restore(ours).chain[-1].metadata.objects
    assert sum(e.length for e in changed) == 1 * BLOCK + 5 * 32 * KiB + \
        5 * BLOCK
    assert drivers.restore(drivers.ours, ours) == v2
    # ... which Cinder restores, data-to-zeros range included.
    assert drivers.restore(drivers.cinder, ours) == v2
    assert drivers.restore(drivers.cinder, ours, new=False, size=len(v2),
                           junk=True) == v2


@pytest.mark.parametrize('ours', ['zstd', 'zlib', 'gzip', 'bz2', 'none'])
def test_our_chain_restored_by_cinder(drivers, overrides, ours):
    overrides('compression_algorithm', ours, 'chunkbackup')
    drivers.load()
    v0, v1, v2 = versions()
    full = drivers.backup(drivers.ours, v0)
    incr1 = drivers.backup(drivers.ours, v1, parent=full)
    incr2 = drivers.backup(drivers.ours, v2, parent=incr1)
    for backup, data in ((full, v0), (incr1, v1), (incr2, v2)):
        assert drivers.restore(drivers.cinder, backup) == data
        assert drivers.restore(drivers.cinder, backup, new=False,
                               size=len(data), junk=True) == data
    # And Cinder extends our chain.
    v3 = bytearray(v2)
    v3[2 * MiB:2 * MiB + BLOCK] = bytes(BLOCK)
    theirs = drivers.backup(drivers.cinder, bytes(v3), parent=incr2)
    assert drivers.restore(drivers.ours, theirs) == bytes(v3)
    assert drivers.restore(drivers.cinder, theirs) == bytes(v3)


def _names(root, backup):
    directory = os.path.join(root, backup.container)
    if not os.path.isdir(directory):
        return []  # removed with its last object
    return [n for n in os.listdir(directory)
            if n.startswith(backup.service_metadata)]


def test_each_deletes_the_others_backups(drivers, shared):
    data = conftest.random_volume(MiB, seed=11)
    theirs = drivers.backup(drivers.cinder, data)
    ours = drivers.backup(drivers.ours, data)
    assert len(_names(shared, theirs)) == len(_names(shared, ours)) == 4 + 2
    drivers.ours.delete_backup(theirs)
    drivers.cinder.delete_backup(ours)
    assert _names(shared, theirs) == [] and _names(shared, ours) == []
    # Ours also removes the directory its delete left empty; Cinder's
    # leaves it.
    assert not os.path.exists(os.path.join(shared, theirs.container))
    assert os.listdir(os.path.join(shared, ours.container)) == []


@pytest.mark.parametrize('ours', ['zstd', 'zlib', 'bz2', 'none'])
def test_streamed_objects_restored_by_cinder(drivers, overrides, ours):
    """Objects of several pieces, streamed, read whole by Cinder's driver."""
    from chunkbackup.engine import backup as backup_writer

    object_size = 3 * backup_writer.PIECE_SIZE  # three pieces an object
    overrides('compression_algorithm', ours, 'chunkbackup')
    overrides('object_size', object_size, 'backup_posix')
    overrides('backup_file_size', object_size)
    drivers.load()
    v0 = conftest.random_volume(2 * object_size + 5 * MiB + 3 * KiB, seed=11)
    v1 = bytearray(v0)
    v1[object_size - MiB:object_size + 2 * MiB] = os.urandom(3 * MiB)
    full = drivers.backup(drivers.ours, v0)
    incr = drivers.backup(drivers.ours, bytes(v1), parent=full)
    objects = drivers.ours.plan_restore(full).chain[-1].metadata.objects
    assert [e.length for e in objects][:2] == [object_size] * 2
    assert drivers.restore(drivers.cinder, full) == v0
    assert drivers.restore(drivers.cinder, incr) == bytes(v1)
    assert drivers.restore(drivers.cinder, incr, new=False, size=len(v1),
                           junk=True) == bytes(v1)
