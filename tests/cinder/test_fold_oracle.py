"""Cinder's own posix driver restores folded backups and synthetic fulls.

A chain written by ours is folded from the full upward (each fold makes
the child the chain's new full backup) and a synthetic full is made of its
newest backup; Cinder's driver restores every result byte-exact, onto new
volumes (where Cinder skips the zeros of the chain's full backup) and onto
volumes of junk. The chain includes a range that goes from data to zeros,
the case where an overlap inside a full backup would restore stale data.
"""
import os

from cinder.objects import fields

from tests.cinder import conftest
from tests.cinder.test_posix_oracle import drivers  # noqa: F401
from tests.cinder.test_posix_oracle import shared  # noqa: F401

KiB = conftest.KiB
MiB = conftest.MiB
BLOCK = 32 * KiB


def _versions():
    v0 = conftest.random_volume(3 * MiB + 7 * KiB, seed=21)
    v1 = bytearray(v0)
    v1[64 * KiB:1200 * KiB] = os.urandom(1136 * KiB)
    v1[len(v0) - 3 * KiB:] = b'\xff' * (3 * KiB)
    v2 = bytearray(v1)
    v2[:BLOCK] = b'\x01' * BLOCK
    # data -> zeros over most (not all) of what incr1 wrote
    v2[64 * KiB:1152 * KiB] = bytes(1088 * KiB)
    v2[2 * MiB:2 * MiB + 5 * BLOCK] = os.urandom(5 * BLOCK)
    v3 = bytearray(v2)
    v3[MiB:MiB + 3 * BLOCK] = os.urandom(3 * BLOCK)
    return [bytes(v) for v in (v0, v1, v2, v3)]


def _fold(drivers, parent, child):  # noqa: F811
    drivers.ours.fold_into_child(parent, child)
    # The catalog's part, in Cinder's database.
    child.parent_id = parent.parent_id
    child.save()
    drivers.ours.delete_objects(parent.container, parent.service_metadata)
    parent.status = fields.BackupStatus.DELETED
    parent.save()


def _restored_everywhere(drivers, backup, data):  # noqa: F811
    for driver in (drivers.cinder, drivers.ours):
        assert drivers.restore(driver, backup) == data
        assert drivers.restore(driver, backup, new=False, size=len(data),
                               junk=True) == data


def test_cinder_restores_folded_backups_and_synthetic_fulls(
        drivers, overrides):  # noqa: F811
    overrides('compression_algorithm', 'zstd', 'chunkbackup')
    drivers.load()
    images = _versions()
    chain = []
    for data in images:
        chain.append(drivers.backup(drivers.ours, data,
                                    parent=chain[-1] if chain else None))
    full, incr1, incr2, incr3 = chain
    _fold(drivers, full, incr1)                 # incr1: the new full
    incr1 = drivers.cloud.backup_object(incr1.id)
    assert incr1.parent_id is None
    for backup, data in zip((incr1, incr2, incr3), images[1:]):
        _restored_everywhere(drivers, drivers.cloud.backup_object(
            backup.id), data)
    _fold(drivers, incr1, drivers.cloud.backup_object(incr2.id))
    incr2 = drivers.cloud.backup_object(incr2.id)
    assert incr2.parent_id is None
    # incr1's object at 1024 KiB (to 1216 KiB) is kept under incr2, and
    # incr2's zeros (1024-1152 KiB) come after it: without
    # fold.make_base_safe, Cinder skips those zeros of a full backup on a
    # new volume and restores incr1's data there.
    _restored_everywhere(drivers, incr2, images[2])
    _restored_everywhere(drivers, drivers.cloud.backup_object(incr3.id),
                         images[3])
    drivers.ours.verify(drivers.cloud.backup_object(incr3.id))
    # A synthetic full of the newest: Cinder restores it alone.
    record = drivers.cloud.backup_record(drivers.volume)
    newest = drivers.cloud.backup_object(incr3.id)
    drivers.ours.synthetic_full(record, newest)
    record.status = fields.BackupStatus.AVAILABLE
    record.service = conftest.OUR_POSIX
    record.save()
    synthetic = drivers.cloud.backup_object(record.id)
    _restored_everywhere(drivers, synthetic, images[3])
    # Cinder continues the synthetic full with an incremental of its own.
    v4 = bytearray(images[3])
    v4[:BLOCK] = bytes(BLOCK)
    theirs = drivers.backup(drivers.cinder, bytes(v4), parent=synthetic)
    _restored_everywhere(drivers, theirs, bytes(v4))
