"""The posix driver: layout, modes, temporary files, escapes, setup."""
import os
import stat

import pytest

from chunkbackup import exception
from chunkbackup.testing.record import BackupRecord


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_modes_like_cinder(make_posix, ops, tmp_path):
    old = os.umask(0o077)
    try:
        driver = make_posix()
        vol = str(tmp_path / 'vol')
        with open(vol, 'wb') as f:
            f.write(os.urandom(100000))
        record = ops.backup(driver, vol)
    finally:
        os.umask(old)
    directory = os.path.join(driver.backup_root, record.container)
    parts = record.container.split('/')
    for depth in range(1, 4):
        assert _mode(os.path.join(driver.backup_root,
                                  *parts[:depth])) == 0o770
    names = os.listdir(directory)
    assert len(names) == 4
    for name in names:
        assert _mode(os.path.join(directory, name)) == 0o660


def test_failed_write_leaves_no_temporary_file(make_posix, tmp_path):
    driver = make_posix()
    driver.put_container('c1')
    with pytest.raises(OSError):
        with driver.get_object_writer('c1', 'obj') as writer:
            writer.write(b'abc')
            raise OSError('disk full')
    assert os.listdir(os.path.join(driver.backup_root, 'c1')) == []


def test_temporary_name_does_not_start_with_the_prefix(make_posix):
    driver = make_posix()
    driver.put_container('c1')
    writer = driver.get_object_writer('c1', 'volume_x_backup_y-00001')
    with writer:
        tmp = os.path.basename(writer.tmp)
        assert not tmp.startswith('volume_')
        assert driver.get_container_entries('c1', 'volume_') == []
        writer.write(b'data')
    assert driver.get_container_entries('c1', 'volume_') == [
        'volume_x_backup_y-00001']


def test_symlink_out_of_the_root_refused(make_posix, ops, tmp_path):
    driver = make_posix()
    outside = tmp_path / 'outside'
    outside.mkdir()
    os.makedirs(driver.backup_root)
    os.symlink(str(outside), os.path.join(driver.backup_root, 'link'))
    vol = str(tmp_path / 'vol')
    with open(vol, 'wb') as f:
        f.write(b'x' * 5000)
    with pytest.raises(exception.InvalidName, match='outside the backup'):
        ops.backup(driver, vol, container='link/c')
    assert os.listdir(str(outside)) == []


@pytest.mark.parametrize('container', ['..', '../sibling', 'a/../../x',
                                       '/etc', 'a\0b', 'a\nb'])
def test_escapes_refused_by_every_hook(make_posix, container):
    driver = make_posix()
    for call in (lambda: driver.put_container(container),
                 lambda: driver.get_container_entries(container, 'p'),
                 lambda: driver.get_object_writer(container, 'o'),
                 lambda: driver.get_object_reader(container, 'o'),
                 lambda: driver.delete_object(container, 'o')):
        with pytest.raises(exception.InvalidName):
            call()


@pytest.mark.parametrize('name', ['../x', 'a/b', '/abs', 'nul\0'])
def test_object_name_escapes_refused(make_posix, name):
    driver = make_posix()
    with pytest.raises(exception.InvalidName):
        driver.get_object_writer('c', name)


def test_default_root_follows_xdg(conf, monkeypatch, tmp_path):
    from chunkbackup.drivers import posix
    monkeypatch.setenv('XDG_DATA_HOME', str(tmp_path / 'xdg'))
    conf('path', None, 'backup_posix')
    driver = posix.PosixBackupDriver(None)
    assert driver.backup_root == str(tmp_path / 'xdg' / 'chunkbackup' /
                                     'backups')


def test_setup_error_names_the_option(make_posix, tmp_path):
    driver = make_posix()
    blocker = tmp_path / 'file'
    blocker.write_text('x')
    driver.backup_root = str(blocker / 'sub')
    with pytest.raises(exception.InvalidConfiguration,
                       match=r'\[backup_posix\] path'):
        driver.check_for_setup_error()


def test_record_without_container_restores_clear_error(make_posix, ops):
    driver = make_posix()
    with pytest.raises(exception.InvalidBackup, match='never written'):
        ops.restore(driver, BackupRecord('v'))
