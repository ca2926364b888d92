"""Cinder 29 in the test process, set up the way cinder-backup sets up.

- Concurrency: Cinder 29 runs cinder-backup on eventlet (its default) or on
  native threads (``OS_CINDER_DISABLE_EVENTLET_PATCHING=1``). These tests
  run on native threads; ``test_eventlet.py`` runs ``test_manager.py`` again
  in a child process on eventlet (``CHUNKBACKUP_CINDER_CONCURRENCY``), where
  the manager hands drivers ``eventlet.tpool.Proxy`` volume files.
- Options: every option module of Cinder is imported before ours (as in a
  cinder-backup process that then loads our driver), and ``cfg.CONF`` is
  parsed from a cinder.conf: a SQLite database made by Cinder's own
  migrations, oslo.messaging's fake transport and its ``test``
  notification driver, which records every notification.
- The volume service: cinder-backup asks it (over RPC) to attach volumes.
  ``VolumeService`` stands in for it and answers with os-brick's ``local``
  connector on a file (or a file-like device, as os-brick's RBD connector
  gives), so the backup manager's own code runs everything else: status
  checks, ``tpool_wrap``, the driver calls, notifications, records.
"""
import io
import os
import uuid

import pytest

if not os.environ.get('CHUNKBACKUP_REQUIRE_CINDER'):
    # Outside `tox -e cinder` (which sets it, so a broken install fails
    # there), a checkout without Cinder installed skips this directory.
    pytest.importorskip('cinder')

_MODE = os.environ.get('CHUNKBACKUP_CINDER_CONCURRENCY', 'threading')
os.environ['OS_CINDER_DISABLE_EVENTLET_PATCHING'] = (
    '0' if _MODE == 'eventlet' else '1')

from cinder import monkey_patch  # noqa: E402

monkey_patch.patch()

from oslo_config import cfg  # noqa: E402

# tests/conftest.py parsed an empty command line; Cinder's command modules
# register command-line options, which needs an unparsed CONF.
cfg.CONF.clear()

from cinder import objects  # noqa: E402

objects.register_all()

from cinder.backup import api as backup_api  # noqa: E402
from cinder.backup import manager as backup_manager  # noqa: E402
from cinder import context as cinder_context  # noqa: E402
from cinder.db import migration  # noqa: E402
from cinder.objects import fields  # noqa: E402
import cinder.opts  # noqa: E402,F401  (every option Cinder registers)
from cinder import rpc  # noqa: E402
from cinder.volume import volume_utils  # noqa: E402
from oslo_messaging.notify import _impl_test  # noqa: E402
from oslo_service import loopingcall  # noqa: E402

# Ours, after Cinder's: what happens when cinder-backup loads our driver.
import chunkbackup.cinder_compat  # noqa: E402,F401
import chunkbackup.drivers.google  # noqa: E402,F401
import chunkbackup.drivers.posix  # noqa: E402,F401
import chunkbackup.drivers.s3  # noqa: E402,F401
import chunkbackup.drivers.swift  # noqa: E402,F401
# The real servers of the functional tests, for the object-store drivers.
from tests.functional.conftest import gcs_server  # noqa: E402,F401
from tests.functional.conftest import moto_server  # noqa: E402,F401
from tests.functional.conftest import swift_server  # noqa: E402,F401

CONF = cfg.CONF
KiB = 1024
MiB = 1024 * KiB
HOST = 'test-host'
USER_ID = 'c0ffee00-0000-4000-8000-000000000001'
PROJECT_ID = 'c0ffee00-0000-4000-8000-000000000002'
OUR_POSIX = 'chunkbackup.drivers.posix.PosixBackupDriver'
CINDER_POSIX = 'cinder.backup.drivers.posix.PosixBackupDriver'
CINDER_SWIFT = 'cinder.backup.drivers.swift.SwiftBackupDriver'
# Small objects, so a few MiB make many: Cinder's and ours alike. The SHA
# block stays at both defaults (32 KiB), so incrementals can cross over.
OBJECT_SIZE = 256 * KiB


def concurrency_mode() -> str:
    return _MODE


def write_conf(path: str, sections: dict) -> str:
    with open(path, 'w') as f:
        for section, values in sections.items():
            f.write('[%s]\n' % section)
            for name, value in values.items():
                f.write('%s = %s\n' % (name, value))
            f.write('\n')
    return path


class CinderSetup:
    """cinder.conf, the database and the messaging of one test session."""

    def __init__(self, root):
        self.root = str(root)
        self.base_conf = write_conf(os.path.join(self.root, 'cinder.conf'), {
            'DEFAULT': {
                'host': HOST,
                'state_path': self.root,
                'transport_url': 'fake:/',
                # Cinder's own posix driver, the oracle of the format.
                'backup_posix_path': os.path.join(self.root, 'cinder-posix'),
                'backup_file_size': OBJECT_SIZE,
                'backup_enable_progress_timer': 'false',
            },
            'database': {'connection': 'sqlite:///%s' % os.path.join(
                self.root, 'cinder.sqlite')},
            'oslo_concurrency': {'lock_path': os.path.join(self.root,
                                                           'locks')},
            'oslo_messaging_notifications': {'driver': 'test'},
        })
        self.load()
        migration.db_sync()
        rpc.init(CONF)

    def load(self, *extra_files: str) -> None:
        """Parse cinder.conf, then ``extra_files`` (later ones win)."""
        args = ['--config-file', self.base_conf]
        for path in extra_files:
            args += ['--config-file', path]
        CONF(args, project='cinder', default_config_files=[],
             default_config_dirs=[])


@pytest.fixture(scope='session')
def cinder_setup(tmp_path_factory):
    return CinderSetup(tmp_path_factory.mktemp('cinder'))


@pytest.fixture
def overrides(cinder_setup):
    """set(name, value, group=None); every override is cleared after."""
    done = []

    def set_(name, value, group=None):
        CONF.set_override(name, value, group)
        done.append((name, group))

    # A test must see a cancellation on the first check after it happens.
    set_('cancel_check_interval', 0, 'chunkbackup')
    set_('storage_retry_backoff', 0.01, 'chunkbackup')
    set_('storage_retry_max_delay', 0.05, 'chunkbackup')
    yield set_
    for name, group in reversed(done):
        CONF.clear_override(name, group)


@pytest.fixture
def posix_paths(overrides, tmp_path):
    """Both posix drivers below this test's tmp dir, with small objects."""
    ours = str(tmp_path / 'ours')
    theirs = str(tmp_path / 'cinder-posix')
    overrides('path', ours, 'backup_posix')
    overrides('object_size', OBJECT_SIZE, 'backup_posix')
    overrides('backup_posix_path', theirs)
    return {'ours': ours, 'cinder': theirs}


@pytest.fixture
def notifications():
    """Notifications sent through Cinder's notifier, as (event, payload)."""
    _impl_test.reset()

    def sent(event_type=None):
        found = [(m['event_type'], m['payload'])
                 for _ctxt, m, _prio, _retry in _impl_test.NOTIFICATIONS]
        return [(e, p) for e, p in found
                if event_type is None or e == event_type]

    yield sent
    _impl_test.reset()


def request_context(project_id=PROJECT_ID, auth_token=None):
    return cinder_context.RequestContext(USER_ID, project_id, is_admin=True,
                                         auth_token=auth_token)


class Device(io.RawIOBase):
    """A volume that is a file-like object, not a path (os-brick's RBD
    connector gives such). It has no file descriptor, so its size is known
    only by seeking to its end. ``on_offset`` calls ``action`` the first
    time a read or a write reaches ``offset``.
    """

    def __init__(self, data: bytes = b'', size: int = None):
        self.buf = bytearray(data if size is None else bytes(size))
        self.pos = 0
        self.triggers = []

    def on_offset(self, offset: int, action) -> None:
        self.triggers.append([offset, action])

    def _fire(self, end: int) -> None:
        for trigger in self.triggers:
            if trigger[1] is not None and end > trigger[0]:
                action, trigger[1] = trigger[1], None
                action()

    def readable(self):
        return True

    def writable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos,
                io.SEEK_END: len(self.buf)}[whence]
        self.pos = base + offset
        return self.pos

    def tell(self):
        return self.pos

    def readinto(self, b):
        data = self.buf[self.pos:self.pos + len(b)]
        b[:len(data)] = data
        self.pos += len(data)
        self._fire(self.pos)
        return len(data)

    def write(self, b):
        data = bytes(b)
        end = self.pos + len(data)
        if end > len(self.buf):
            self.buf.extend(bytes(end - len(self.buf)))
        self.buf[self.pos:end] = data
        self.pos = end
        self._fire(end)
        return len(data)

    def fileno(self):
        raise io.UnsupportedOperation('a device without a descriptor')


class VolumeService:
    """Answers cinder-backup's RPC calls to the volume service.

    Attaching gives os-brick's ``local`` connector on the volume's file
    (or hands its ``Device`` object over as the device itself).
    """

    def __init__(self):
        self.devices = {}
        self.manager = None

    def initialize_connection(self, ctxt, volume, properties):
        return {'driver_volume_type': 'local',
                'data': {'device_path': self.devices[volume.id]}}

    def terminate_connection(self, ctxt, volume, properties, force=False):
        pass

    def remove_export(self, ctxt, volume, sync=False):
        pass

    def secure_file_operations_enabled(self, ctxt, volume):
        return False

    def get_backup_device(self, ctxt, backup, volume):
        # The volume service answers by calling continue_backup back.
        self.manager.continue_backup(
            ctxt, backup, objects.BackupDeviceInfo(volume=volume,
                                                   secure_enabled=False))


class Cloud:
    """A cinder-backup (the real BackupManager) and its database."""

    def __init__(self, setup: CinderSetup, tmp_path, monkeypatch):
        self.setup = setup
        self.tmp = tmp_path
        self.ctxt = request_context()
        self.volumes = VolumeService()
        # Finding the host's initiator names needs root and privsep; the
        # local connector needs none of them.
        monkeypatch.setattr(volume_utils, 'brick_get_connector_properties',
                            lambda *args, **kwargs: {'host': HOST,
                                                     'ip': '127.0.0.1'})
        self.manager = None

    # cinder-backup --------------------------------------------------------

    def start(self, backup_driver: str = None):
        """A backup manager for CONF.backup_driver (or ``backup_driver``).

        Initialised as the service does: the driver class is imported from
        the option and constructed with a request context, then its
        check_for_setup_error runs.
        """
        if backup_driver is not None:
            CONF.set_override('backup_driver', backup_driver)
        try:
            manager = backup_manager.BackupManager(host=HOST,
                                                   service_name='backup')
        finally:
            if backup_driver is not None:
                CONF.clear_override('backup_driver')
        manager.volume_rpcapi = self.volumes
        self.volumes.manager = manager
        try:
            manager._setup_backup_driver(self.ctxt)
        except loopingcall.LoopingCallDone:
            pass
        assert manager.is_working()
        self.manager = manager
        return manager

    # Volumes --------------------------------------------------------------

    def volume(self, data=None, device=None, name='vol', description=None,
               metadata=None, status='available', glance=None):
        """A volume record and its data (a file, or a ``Device``)."""
        volume = objects.Volume(
            context=self.ctxt, size=1, display_name=name,
            display_description=description, metadata=metadata or {},
            status=status, host=HOST, user_id=USER_ID,
            project_id=self.ctxt.project_id, availability_zone='nova')
        volume.create()
        if device is not None:
            self.volumes.devices[volume.id] = device
        else:
            path = str(self.tmp / ('volume-%s' % volume.id))
            with open(path, 'wb') as f:
                f.write(data or b'')
            self.volumes.devices[volume.id] = path
        for key, value in (glance or {}).items():
            self.manager.db.volume_glance_metadata_create(
                self.ctxt, volume.id, key, value)
        return volume

    def data_of(self, volume) -> bytes:
        device = self.volumes.devices[volume.id]
        if isinstance(device, Device):
            return bytes(device.buf)
        with open(device, 'rb') as f:
            return f.read()

    def write(self, volume, data: bytes) -> None:
        with open(self.volumes.devices[volume.id], 'wb') as f:
            f.write(data)

    # What the API does, then the manager -----------------------------------

    def backup_record(self, volume, parent=None, name='backup',
                      description=None):
        volume.refresh()
        self.manager.db.volume_update(
            self.ctxt, volume.id,
            {'status': 'backing-up', 'previous_status': volume.status})
        backup = objects.Backup(
            context=self.ctxt, volume_id=volume.id, user_id=USER_ID,
            project_id=self.ctxt.project_id, display_name=name,
            display_description=description, host=HOST,
            status=fields.BackupStatus.CREATING, size=volume.size,
            parent_id=parent.id if parent is not None else None,
            availability_zone='nova')
        backup.create()
        return backup

    def create_backup(self, volume, parent=None, name='backup',
                      description=None):
        backup = self.backup_record(volume, parent, name, description)
        self.manager.create_backup(self.ctxt, backup)
        backup.refresh()
        return backup

    def restore(self, backup, volume=None, device=None):
        """Restore into ``volume``, or into a new one as the API makes it."""
        volume_is_new = volume is None
        if volume is None:
            volume = self.volume(device=device, status='creating',
                                 name='restore_backup_%s' % backup.id)
        self.manager.db.volume_update(self.ctxt, volume.id,
                                      {'status': 'restoring-backup'})
        backup.refresh()
        backup.status = fields.BackupStatus.RESTORING
        backup.restore_volume_id = volume.id
        backup.save()
        self.manager.restore_backup(self.ctxt, backup, volume.id,
                                    volume_is_new)
        volume.refresh()
        backup.refresh()
        return volume

    def delete(self, backup):
        backup.refresh()
        backup.status = fields.BackupStatus.DELETING
        backup.save()
        self.manager.delete_backup(self.ctxt, backup)

    def export_record(self, backup) -> dict:
        return self.manager.export_record(self.ctxt, backup)

    def import_record(self, backup_service: str, backup_url: str):
        """``cinder backup-import``: the API's record, then the manager."""
        backup = backup_api.API()._get_import_backup(self.ctxt, backup_url)
        self.manager.import_record(self.ctxt, backup, backup_service,
                                   backup_url, [])
        return objects.Backup.get_by_id(self.ctxt, backup.id)

    def backup_object(self, backup_id):
        return objects.Backup.get_by_id(self.ctxt, backup_id)


@pytest.fixture
def cloud(cinder_setup, overrides, tmp_path, monkeypatch):
    return Cloud(cinder_setup, tmp_path, monkeypatch)


def random_volume(size: int, seed: int) -> bytes:
    """Mixed content: random runs, zero runs and text-like runs."""
    import random
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        kind = rng.random()
        run = rng.choice((16, 48, 100, 300)) * KiB
        if kind < 0.3:
            out += bytes(run)
        elif kind < 0.7:
            out += rng.randbytes(run)
        else:
            out += (b'chunkbackup %d ' % rng.randrange(10 ** 6)) * (run // 18)
    return bytes(out[:size])


def new_id() -> str:
    return str(uuid.uuid4())
