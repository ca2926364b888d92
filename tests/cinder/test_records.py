"""Export and import of backup records between Cinder and chunkbackup.

``cinder backup-export`` gives a backup_url (Cinder's ``encode_record`` with
the driver's ``driver_info``); ``cinder backup-import SERVICE URL`` records
it again where SERVICE is the configured driver. Records move between
deployments running Cinder's posix driver and ours, and between Cinder and
the standalone ``chunkbackup`` command (a process of its own, as it is for
its users), on the same backup directory.
"""
import json
import os
import subprocess
import sys

from cinder.objects import fields
import pytest

from tests.cinder import conftest

KiB = conftest.KiB
MiB = conftest.MiB


@pytest.fixture
def shared(posix_paths, overrides):
    overrides('backup_posix_path', posix_paths['ours'])
    return posix_paths['ours']


def two_versions(seed):
    v0 = conftest.random_volume(2 * MiB + 3 * KiB, seed=seed)
    v1 = bytearray(v0)
    v1[300 * KiB:400 * KiB] = bytes(100 * KiB)
    v1[MiB:MiB + 64 * KiB] = os.urandom(64 * KiB)
    return v0, bytes(v1)


def make_chain(cloud, driver, seed):
    cloud.start(driver)
    v0, v1 = two_versions(seed)
    volume = cloud.volume(v0, name='src')
    full = cloud.create_backup(volume, name='full')
    cloud.write(volume, v1)
    incr = cloud.create_backup(volume, parent=full, name='incr')
    assert (full.status, incr.status) == ('available', 'available')
    return (full, v0), (incr, v1)


def forget(cloud, *backups):
    """The records are gone (another deployment, a lost database)."""
    for backup in backups:
        backup.refresh()
        backup.destroy()


@pytest.mark.parametrize('source,target', [
    (conftest.CINDER_POSIX, conftest.OUR_POSIX),
    (conftest.OUR_POSIX, conftest.CINDER_POSIX)])
def test_records_move_between_deployments(cloud, shared, source, target):
    (full, v0), (incr, v1) = make_chain(cloud, source, seed=20)
    exported = [cloud.export_record(b) for b in (full, incr)]
    assert [e['backup_service'] for e in exported] == [source, source]
    forget(cloud, incr, full)

    cloud.start(target)
    imported = [cloud.import_record(target, e['backup_url'])
                for e in exported]
    for backup, original in zip(imported, (full, incr)):
        assert backup.id == original.id
        assert backup.status == fields.BackupStatus.AVAILABLE
        assert backup.service == target
        assert (backup.container, backup.service_metadata) == (
            original.container, original.service_metadata)
    assert imported[1].parent_id == full.id
    assert cloud.data_of(cloud.restore(imported[1])) == v1
    assert cloud.data_of(cloud.restore(imported[0])) == v0


class Standalone:
    """The chunkbackup command on its own catalog, on the same store."""

    def __init__(self, tmp_path, store):
        self.conf = conftest.write_conf(str(tmp_path / 'chunkbackup.conf'), {
            'database': {'connection': 'sqlite:///%s' % (
                tmp_path / 'catalog.sqlite')},
            'chunkbackup': {'driver': 'posix'},
            'backup_posix': {'path': store,
                             'object_size': conftest.OBJECT_SIZE},
        })
        self.tmp = tmp_path

    def run(self, *args, as_json=True):
        cmd = [os.path.join(os.path.dirname(sys.executable), 'chunkbackup'),
               '--config-file', self.conf] + list(args)
        env = dict(os.environ, HOME=str(self.tmp), XDG_DATA_HOME=str(
            self.tmp / 'data'), XDG_CONFIG_HOME=str(self.tmp / 'config'))
        result = subprocess.run(cmd, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        assert result.returncode == 0, (cmd, result.stdout, result.stderr)
        return json.loads(result.stdout) if as_json else result.stdout


@pytest.fixture
def standalone(shared, tmp_path):
    return Standalone(tmp_path, shared)


def test_cinder_export_into_standalone(cloud, shared, standalone, tmp_path):
    (full, v0), (incr, v1) = make_chain(cloud, conftest.CINDER_POSIX,
                                        seed=21)
    for backup in (full, incr):
        exported = cloud.export_record(backup)
        record = standalone.run('backup-import', '--format', 'json',
                                exported['backup_service'],
                                exported['backup_url'])
        assert record['id'] == backup.id
    shown = standalone.run('backup-show', '--format', 'json', incr.id)
    assert shown['parent_id'] == full.id and shown['status'] == 'available'
    standalone.run('backup-verify', incr.id, as_json=False)
    for backup, data in ((incr, v1), (full, v0)):
        target = str(tmp_path / ('restored-%s' % backup.id))
        standalone.run('backup-restore', backup.id, target, as_json=False)
        with open(target, 'rb') as f:
            assert f.read() == data


def test_standalone_export_into_cinder(cloud, shared, standalone, tmp_path):
    v0, v1 = two_versions(seed=22)
    path = str(tmp_path / 'disk.img')
    with open(path, 'wb') as f:
        f.write(v0)
    full = standalone.run('backup-create', '--format', 'json', '--name',
                          'full', path)
    with open(path, 'wb') as f:
        f.write(v1)
    incr = standalone.run('backup-create', '--format', 'json',
                          '--incremental', path)
    assert incr['parent_id'] == full['id']

    cloud.start(conftest.CINDER_POSIX)
    backups = []
    for record in (full, incr):
        exported = standalone.run('backup-export', '--format', 'json',
                                  record['id'])
        backups.append(cloud.import_record(conftest.CINDER_POSIX,
                                           exported['backup_url']))
    assert backups[0].display_name == 'full'
    assert backups[1].parent_id == full['id']
    assert cloud.data_of(cloud.restore(backups[1])) == v1
    assert cloud.data_of(cloud.restore(backups[0])) == v0
