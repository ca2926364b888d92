"""Failures leave no empty directories in the store (issue 15, item 6)."""
import errno
import os

import pytest

from chunkbackup import exception
from chunkbackup.testing.record import BackupRecord


def _volume(tmp_path, size):
    vol = str(tmp_path / 'vol')
    with open(vol, 'wb') as f:
        f.write(os.urandom(size))
    return vol


def test_store_full_leaves_no_directory(make_posix, tmp_path):
    driver = make_posix()
    writer = driver.get_object_writer
    calls = []

    def full_after_two(container, name, extra_metadata=None):
        calls.append(name)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return writer(container, name, extra_metadata)
    driver.get_object_writer = full_after_two
    vol = _volume(tmp_path, 6 * driver.object_size)
    record = BackupRecord('vol-1')
    with pytest.raises(exception.StorageError,
                       match='No space left on device'):
        with open(vol, 'rb') as f:
            driver.backup(record, f)
    assert len(calls) >= 3
    assert os.listdir(driver.backup_root) == []


def test_delete_removes_empty_directories_only(make_posix, ops, tmp_path):
    driver = make_posix()
    vol = _volume(tmp_path, 3 * driver.object_size)
    first = ops.backup(driver, vol)
    shared = [ops.backup(driver, vol, volume_id='vol-%d' % i,
                         container='shared') for i in (2, 3)]
    driver.delete_backup(first)
    assert sorted(os.listdir(driver.backup_root)) == ['shared']
    driver.delete_backup(shared[0])
    # Another backup still lives in it.
    assert os.listdir(os.path.join(driver.backup_root, 'shared'))
    driver.delete_backup(shared[1])
    assert os.listdir(driver.backup_root) == []
    # The root itself stays.
    assert os.path.isdir(driver.backup_root)
