"""Our posix driver run by Cinder's BackupManager, beside Cinder's own.

Each test drives the manager as the API and the volume service would
(conftest.Cloud): create_backup, restore_backup, delete_backup, with
statuses, volume files wrapped by ``cinder.utils.tpool_wrap`` and
notifications through Cinder's notifier. Where Cinder's posix driver can do
the same, it runs the same test and both must end the same way.

test_eventlet.py runs this module again with cinder-backup's default
concurrency, eventlet.
    """
import json
import os

from cinder import exception as cinder_exception
from cinder.objects import fields
from cinder import utils as cinder_utils
import pytest

from chunkbackup import backupformat as fmt
from tests.cinder import conftest

KiB = conftest.KiB
MiB = conftest.MiB
OBJECT = conftest.OBJECT_SIZE
BOTH = [conftest.OUR_POSIX, conftest.CINDER_POSIX]


def objects_of(root, backup):
    """Names of the backup's objects in its posix container."""
    directory = os.path.join(root, backup.container)
    if not os.path.isdir(directory):
        return []
    return sorted(n for n in os.listdir(directory)
                  if n.startswith(backup.service_metadata))


def metadata_doc(root, backup):
    name = fmt.metadata_name(backup.service_metadata)
    with open(os.path.join(root, backup.container, name)) as f:
        return json.load(f)


def root_of(posix_paths, driver):
    return posix_paths['ours' if driver == conftest.OUR_POSIX else 'cinder']


def test_volume_files_are_wrapped_as_the_manager_wraps_them(tmp_path):
    """tpool_wrap: an eventlet tpool proxy under eventlet, else the file."""
    with open(tmp_path / 'f', 'wb') as f:
        wrapped = cinder_utils.tpool_wrap(f)
        if conftest.concurrency_mode() == 'eventlet':
            from eventlet import tpool
            assert isinstance(wrapped, tpool.Proxy)
        else:
            assert wrapped is f


def test_backup_incremental_restore_delete(cloud, posix_paths):
    cloud.start(conftest.OUR_POSIX)
    data = conftest.random_volume(3 * MiB + 5 * KiB, seed=1)
    volume = cloud.volume(data)
    full = cloud.create_backup(volume, name='full')
    assert full.status == fields.BackupStatus.AVAILABLE
    assert full.service == conftest.OUR_POSIX
    assert full.parent_id is None and full.size == 1
    names = objects_of(posix_paths['ours'], full)
    assert len(names) == 13 + 2     # data objects, _sha256file, _metadata
    assert cloud.manager.db.volume_get(cloud.ctxt, volume.id)[
        'status'] == 'available'

    changed = bytearray(data)
    changed[100 * KiB:180 * KiB] = os.urandom(80 * KiB)
    changed[2 * MiB:2 * MiB + 64 * KiB] = bytes(64 * KiB)  # data to zeros
    cloud.write(volume, bytes(changed))
    incr = cloud.create_backup(volume, parent=full, name='incr')
    assert incr.status == fields.BackupStatus.AVAILABLE
    assert incr.parent_id == full.id
    assert cloud.backup_object(full.id).num_dependent_backups == 1
    doc = metadata_doc(posix_paths['ours'], incr)
    stored = sum(list(o.values())[0]['length'] for o in doc['objects'])
    assert stored == 3 * 32 * KiB + 2 * 32 * KiB

    restored = cloud.restore(incr)               # a new volume
    assert restored.status == 'available'
    assert cloud.data_of(restored) == bytes(changed)
    restored = cloud.restore(full, volume=restored)  # an existing one
    assert cloud.data_of(restored) == data
    assert cloud.backup_object(full.id).status == 'available'

    cloud.delete(incr)
    cloud.delete(full)
    assert objects_of(posix_paths['ours'], incr) == []
    assert objects_of(posix_paths['ours'], full) == []
    with pytest.raises(cinder_exception.BackupNotFound):
        cloud.backup_object(full.id)


def test_volume_metadata_round_trip(cloud, posix_paths):
    """Cinder's backup metadata (version 2), as Cinder's driver writes it."""
    docs = {}
    for driver in BOTH:
        cloud.start(driver)
        volume = cloud.volume(
            conftest.random_volume(MiB, seed=2), name='database',
            description='the main database',
            metadata={'role': 'db', 'tier': 'gold'},
            glance={'image_id': 'img-1', 'os_distro': 'debian'})
        backup = cloud.create_backup(volume)
        meta = json.loads(metadata_doc(root_of(posix_paths, driver),
                                       backup)['volume_meta'])
        docs[driver] = meta
        assert meta['version'] == 2
        assert meta['volume-metadata'] == {'role': 'db', 'tier': 'gold'}
        assert meta['volume-glance-metadata'] == {'image_id': 'img-1',
                                                  'os_distro': 'debian'}
        base = meta['volume-base-metadata']
        assert (base['id'], base['display_name']) == (volume.id, 'database')

        # A new volume made for the restore takes the name back ...
        restored = cloud.restore(backup)
        assert restored.display_name == 'database'
        assert restored.display_description == 'the main database'
        assert restored.metadata == {'role': 'db', 'tier': 'gold',
                                     'src_backup_id': backup.id}
        assert restored.bootable is True
        assert cloud.manager.db.volume_glance_metadata_get(
            cloud.ctxt, restored.id)
        # ... a named volume keeps its name; metadata comes back.
        named = cloud.volume(name='keep-my-name', metadata={'x': 'y'})
        named = cloud.restore(backup, volume=named)
        assert named.display_name == 'keep-my-name'
        assert named.metadata == {'role': 'db', 'tier': 'gold',
                                  'src_backup_id': backup.id}
    ours, theirs = docs[conftest.OUR_POSIX], docs[conftest.CINDER_POSIX]
    assert sorted(ours) == sorted(theirs)
    assert sorted(ours['volume-base-metadata']) == sorted(
        theirs['volume-base-metadata'])


def test_unsupported_metadata_version_fails_the_restore(cloud, posix_paths,
                                                        overrides):
    """As with Cinder's drivers: the data is written, the restore fails."""
    cloud.start(conftest.OUR_POSIX)
    overrides('backup_metadata_version', 3)
    volume = cloud.volume(b'm' * 300 * KiB, name='future')
    backup = cloud.create_backup(volume)
    with pytest.raises(cinder_exception.BackupOperationError,
                       match='version'):
        cloud.restore(backup)
    assert cloud.backup_object(backup.id).status == 'available'


@pytest.mark.parametrize('driver', BOTH)
def test_createprogress_notifications(cloud, posix_paths, notifications,
                                      overrides, driver):
    """One every backup_object_number_per_notification objects, then 100."""
    cloud.start(driver)
    overrides('backup_object_number_per_notification', 4)
    volume = cloud.volume(conftest.random_volume(18 * OBJECT, seed=3))
    backup = cloud.create_backup(volume)
    sent = notifications('backup.createprogress')
    assert [p['backup_id'] for _, p in sent] == [backup.id] * 5  # 4,8,12,16
    percents = [p['backup_percent'] for _, p in sent]
    assert percents[-1] == 100
    if driver == conftest.OUR_POSIX:
        assert percents == sorted(percents)
        assert percents[:4] == [pytest.approx(100 * n / 18)
                                for n in (4, 8, 12, 16)]
    events = [e for e, _ in notifications()]
    assert events.index('backup.create.start') < events.index(
        'backup.createprogress')
    assert events[-1] == 'backup.create.end'


@pytest.mark.parametrize('driver', BOTH)
def test_backup_cancelled_by_delete(cloud, posix_paths, driver):
    """`cinder backup-delete --force` on a creating backup: the status
    turns to deleting; the backup stops, removes what it wrote and the
    manager reports it aborted, then the delete completes.
    """
    cloud.start(driver)
    device = conftest.Device(conftest.random_volume(24 * OBJECT, seed=4))
    volume = cloud.volume(device=device)
    backup = cloud.backup_record(volume)
    device.on_offset(5 * OBJECT, lambda: cloud.manager.db.backup_update(
        cloud.ctxt, backup.id, {'status': fields.BackupStatus.DELETING}))
    cloud.manager.create_backup(cloud.ctxt, backup)  # no error
    backup.refresh()
    assert backup.status == fields.BackupStatus.DELETING
    assert cloud.manager.db.volume_get(cloud.ctxt, volume.id)[
        'status'] == 'available'
    assert device.pos < 24 * OBJECT        # it stopped reading early
    root = root_of(posix_paths, driver)
    assert objects_of(root, backup) == []
    cloud.manager.delete_backup(cloud.ctxt, backup)
    with pytest.raises(cinder_exception.BackupNotFound):
        cloud.backup_object(backup.id)


@pytest.mark.parametrize('driver', BOTH)
def test_restore_cancelled_by_status_change(cloud, posix_paths, driver):
    """A restore whose backup left `restoring` stops with Cinder's
    BackupRestoreCancel: the manager leaves the volume in error and the
    backup available, and raises nothing.
    """
    cloud.start(driver)
    data = conftest.random_volume(24 * OBJECT, seed=5)
    backup = cloud.create_backup(cloud.volume(data))
    target = conftest.Device(size=len(data))
    target.on_offset(6 * OBJECT, lambda: cloud.manager.db.backup_update(
        cloud.ctxt, backup.id, {'status': fields.BackupStatus.AVAILABLE}))
    volume = cloud.restore(backup, device=target)
    assert volume.status == 'error'
    assert cloud.backup_object(backup.id).status == 'available'
    assert bytes(target.buf) != data


def test_restore_cancel_raises_cinders_class(cloud, posix_paths):
    """What the manager catches is cinder.exception.BackupRestoreCancel."""
    cloud.start(conftest.OUR_POSIX)
    data = conftest.random_volume(8 * OBJECT, seed=6)
    backup = cloud.create_backup(cloud.volume(data))
    backup.status = fields.BackupStatus.RESTORING
    backup.save()
    target = conftest.Device(size=len(data))
    target.on_offset(OBJECT, lambda: cloud.manager.db.backup_update(
        cloud.ctxt, backup.id, {'status': fields.BackupStatus.ERROR}))
    driver = cloud.manager.service(cloud.ctxt)
    with pytest.raises(cinder_exception.BackupRestoreCancel) as info:
        driver.restore(backup, 'target-volume', cinder_utils.tpool_wrap(
            target), True)
    assert backup.id in str(info.value) and 'target-volume' in str(
        info.value)


def test_device_sized_by_seeking(cloud, posix_paths):
    """A volume with no descriptor (as os-brick's RBD connector hands
    over): its size comes from seeking to its end, not from stat.
    """
    cloud.start(conftest.OUR_POSIX)
    data = conftest.random_volume(2 * MiB + 12345, seed=7)
    device = conftest.Device(data)
    backup = cloud.create_backup(cloud.volume(device=device))
    doc = metadata_doc(posix_paths['ours'], backup)
    end = max(list(o.values())[0]['offset'] + list(o.values())[0]['length']
              for o in doc['objects'])
    assert end == len(data)
    target = conftest.Device(size=len(data))
    cloud.restore(backup, device=target)
    assert bytes(target.buf) == data
