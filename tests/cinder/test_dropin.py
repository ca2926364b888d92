"""Where our drivers used to differ from Cinder's chunked drivers (issue 16).

Each test drives Cinder's own BackupManager (conftest.Cloud) or runs
Cinder's posix driver on the same inputs as the oracle: cancellation as
late as Cinder's, progress notifications, object_count, volume metadata
of every layer, Cinder's configurations (tiny SHA blocks, containers,
Swift's catalog and service tokens), backups without a _sha256file, and
the migration of a cinder.conf (``chunkbackup cinder-options``).
"""
import json
import logging
import os
import socket
import subprocess
import sys
import time

from cinder import exception as cinder_exception
from cinder import objects as cinder_objects
from cinder.objects import fields
from cinder import service_auth
from oslo_config import cfg
from oslo_messaging.notify import _impl_test
import pytest

from chunkbackup import backupformat as fmt
from chunkbackup import cinder_options
from chunkbackup.drivers import posix
from chunkbackup.drivers import swift
from chunkbackup import exception
from chunkbackup import opts
from tests.cinder import conftest
from tests.cinder import test_manager
from tests.cinder import test_posix_oracle
from tests.cinder.test_posix_oracle import drivers  # noqa: F401
from tests.cinder.test_posix_oracle import shared  # noqa: F401
from tests.cinder import test_readme

CONF = cfg.CONF
KiB = conftest.KiB
MiB = conftest.MiB
OBJECT = conftest.OBJECT_SIZE
BOTH = test_manager.BOTH
objects_of = test_manager.objects_of
root_of = test_manager.root_of
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


@pytest.fixture(autouse=True)
def forget_backup_records(cinder_setup):
    """Remove the backup records a test made: Cinder's quota (10 backups a
    project) counts them in the session's database for later modules.
    """
    ctxt = conftest.request_context()
    before = {b.id for b in cinder_objects.BackupList.get_all(ctxt)}
    yield
    for backup in cinder_objects.BackupList.get_all(ctxt):
        if backup.id not in before:
            backup.destroy()


# 1. Cancellation ------------------------------------------------------------

@pytest.mark.parametrize('driver', BOTH)
def test_one_object_backup_force_deleted_is_cancelled(cloud, posix_paths,
                                                      overrides, driver):
    """A force-delete seen after the last object still cancels."""
    overrides('cancel_check_interval', 30.0, 'chunkbackup')
    cloud.start(driver)
    device = conftest.Device(conftest.random_volume(OBJECT, seed=20))
    volume = cloud.volume(device=device)
    backup = cloud.backup_record(volume)
    device.on_offset(0, lambda: cloud.manager.db.backup_update(
        cloud.ctxt, backup.id, {'status': fields.BackupStatus.DELETING}))
    cloud.manager.create_backup(cloud.ctxt, backup)
    backup.refresh()
    assert backup.status == fields.BackupStatus.DELETING
    assert objects_of(root_of(posix_paths, driver), backup) == []


def test_cancel_is_checked_before_metadata(cloud, posix_paths, overrides,
                                           monkeypatch):
    """Deleted while its _sha256file is written: no _metadata appears."""
    overrides('cancel_check_interval', 30.0, 'chunkbackup')
    cloud.start(conftest.OUR_POSIX)
    volume = cloud.volume(conftest.random_volume(2 * OBJECT, seed=21))
    backup = cloud.backup_record(volume)
    real_writer = posix.PosixBackupDriver.get_object_writer

    def writer(self, container, name, extra_metadata=None):
        if name.endswith('_sha256file'):
            cloud.manager.db.backup_update(
                cloud.ctxt, backup.id,
                {'status': fields.BackupStatus.DELETING})
        return real_writer(self, container, name, extra_metadata)

    monkeypatch.setattr(posix.PosixBackupDriver, 'get_object_writer', writer)
    cloud.manager.create_backup(cloud.ctxt, backup)
    backup.refresh()
    assert backup.status == fields.BackupStatus.DELETING
    assert objects_of(posix_paths['ours'], backup) == []


# 2. Progress ----------------------------------------------------------------

class SlowDevice(conftest.Device):
    def readinto(self, b):
        time.sleep(0.3)
        return super().readinto(b)


def test_progress_timer_at_start_and_every_interval(cloud, posix_paths,
                                                    notifications,
                                                    overrides):
    overrides('backup_enable_progress_timer', True)
    overrides('backup_timer_interval', 1)
    cloud.start(conftest.OUR_POSIX)
    device = SlowDevice(conftest.random_volume(8 * OBJECT, seed=22))
    backup = cloud.create_backup(cloud.volume(device=device))
    assert backup.status == 'available'
    percents = [p['backup_percent']
                for _, p in notifications('backup.createprogress')]
    # At the start (nothing stored yet), at ~1 s and ~2 s, and at 100%.
    assert percents[0] == 0
    assert len(percents) >= 3 and percents[-1] == 100
    assert all(0 <= p < 100 for p in percents[:-1])


def test_no_timer_when_disabled(cloud, posix_paths, notifications,
                                overrides):
    overrides('backup_enable_progress_timer', False)
    overrides('backup_timer_interval', 1)
    cloud.start(conftest.OUR_POSIX)
    device = SlowDevice(conftest.random_volume(8 * OBJECT, seed=22))
    cloud.create_backup(cloud.volume(device=device))
    sent = notifications('backup.createprogress')
    assert [p['backup_percent'] for _, p in sent] == [100]


def test_progress_payload_is_cinders(cloud, posix_paths, notifications,
                                     overrides):
    overrides('backup_object_number_per_notification', 4)
    payloads = {}
    for driver in BOTH:
        cloud.start(driver)
        _impl_test.reset()
        volume = cloud.volume(conftest.random_volume(9 * OBJECT, seed=23))
        backup = cloud.create_backup(volume)
        sent = [p for _, p in notifications('backup.createprogress')]
        payloads[driver] = (backup, sent)
    ours_backup, ours = payloads[conftest.OUR_POSIX]
    _, theirs = payloads[conftest.CINDER_POSIX]
    assert sorted(ours[-1]) == sorted(theirs[-1])
    assert sorted(ours[0]) == sorted(theirs[0])
    last = ours[-1]
    assert last['prefix'] == ours_backup.service_metadata
    assert last['volume_meta'] is None
    assert last['id'] == len(last['list']) + 1 == ours_backup.object_count + 1
    doc = test_manager.metadata_doc(posix_paths['ours'], ours_backup)
    assert last['list'] == doc['objects']
    assert len(ours[0]['list']) == 4


# 3. object_count ------------------------------------------------------------

@pytest.mark.parametrize('driver', BOTH)
def test_object_count_counts_data_objects(cloud, posix_paths, driver):
    cloud.start(driver)
    volume = cloud.volume(conftest.random_volume(5 * OBJECT + 7, seed=24))
    backup = cloud.create_backup(volume)
    names = objects_of(root_of(posix_paths, driver), backup)
    assert backup.object_count == len(names) - 2 == 6


# 4. Volume metadata of every layer -----------------------------------------

def test_volume_metadata_of_every_layer(cloud, posix_paths):
    """put_metadata for every layer, base first: the Glance metadata of
    the full backup survives an incremental made without any, and the
    newest layer's volume metadata wins.
    """
    results = {}
    for driver in BOTH:
        cloud.start(driver)
        db = cloud.manager.db
        data = conftest.random_volume(2 * OBJECT, seed=25)
        volume = cloud.volume(data, metadata={'old': '1', 'both': 'old'},
                              glance={'image_id': 'img-1', 'os': 'debian'})
        full = cloud.create_backup(volume)
        db.volume_metadata_update(cloud.ctxt, volume.id,
                                  {'new': '2', 'both': 'new'}, True)
        db.volume_glance_metadata_delete_by_volume(cloud.ctxt, volume.id)
        changed = bytearray(data)
        changed[:KiB] = os.urandom(KiB)
        cloud.write(volume, bytes(changed))
        incr = cloud.create_backup(volume, parent=full)
        assert incr.status == 'available'
        restored = cloud.restore(incr)
        assert cloud.data_of(restored) == bytes(changed)
        meta = dict(restored.metadata)
        assert meta.pop('src_backup_id') == incr.id
        glance = {row['key']: row['value'] for row in
                  db.volume_glance_metadata_get(cloud.ctxt, restored.id)}
        results[driver] = meta, glance
    assert results[conftest.OUR_POSIX] == results[conftest.CINDER_POSIX]
    meta, glance = results[conftest.OUR_POSIX]
    assert meta == {'new': '2', 'both': 'new'}
    assert glance == {'image_id': 'img-1', 'os': 'debian'}


# 5. Cinder's configurations -------------------------------------------------

def test_tiny_sha_blocks_as_cinder_accepts(drivers, overrides,  # noqa
                                           caplog):
    overrides('sha_block_size', 32, 'chunkbackup')
    overrides('backup_sha_block_size_bytes', 32)
    caplog.set_level(logging.WARNING)
    drivers.load()
    assert 'slow' in caplog.text
    v0 = conftest.random_volume(96 * KiB + 40, seed=26)
    v1 = bytearray(v0)
    v1[1000:1064] = os.urandom(64)
    theirs = drivers.backup(drivers.cinder, v0)
    assert drivers.restore(drivers.ours, theirs) == v0
    ours = drivers.backup(drivers.ours, bytes(v1), parent=theirs)
    stored = drivers.ours.plan_restore(ours).chain[-1].metadata.objects
    assert sum(e.length for e in stored) == 3 * 32   # 1000..1064: 3 blocks
    assert drivers.restore(drivers.cinder, ours) == bytes(v1)
    assert drivers.restore(drivers.ours, ours) == bytes(v1)


class CinderStyleContainers(posix.PosixBackupDriver):
    """A subclass written to Cinder's hook contract: None = no change."""

    def update_container_name(self, backup, container):
        return None


def test_update_container_name_none_keeps_the_container(cloud, posix_paths):
    cloud.start(__name__ + '.CinderStyleContainers')
    volume = cloud.volume(conftest.random_volume(OBJECT, seed=27))
    default = cloud.create_backup(volume)
    assert default.status == 'available'
    assert default.container == os.path.join(default.id[0:2],
                                             default.id[2:4], default.id)
    named = cloud.backup_record(volume)
    named.container = 'chosen'
    named.save()
    cloud.manager.create_backup(cloud.ctxt, named)
    named.refresh()
    assert (named.status, named.container) == ('available', 'chosen')
    assert objects_of(posix_paths['ours'], named)
    assert cloud.data_of(cloud.restore(named)) == cloud.data_of(volume)


@pytest.mark.parametrize('driver', BOTH)
def test_posix_create_containers_false(cloud, posix_paths, overrides,
                                       driver):
    overrides('backup_create_containers', False)
    overrides('create_container', False, 'backup_posix')
    cloud.start(driver)
    volume = cloud.volume(conftest.random_volume(OBJECT, seed=28))
    backup = cloud.backup_record(volume)
    with pytest.raises(Exception):
        cloud.manager.create_backup(cloud.ctxt, backup)
    backup.refresh()
    assert backup.status == fields.BackupStatus.ERROR
    root = root_of(posix_paths, driver)
    assert not os.path.exists(os.path.join(root, backup.id[0:2]))
    # A container an administrator made is used.
    os.makedirs(os.path.join(root, 'made'))
    backup = cloud.backup_record(volume)
    backup.container = 'made'
    backup.save()
    cloud.manager.create_backup(cloud.ctxt, backup)
    backup.refresh()
    assert backup.status == 'available'


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_swift_per_user_endpoint_checked_at_setup(cloud, overrides,
                                                  swift_server):
    overrides('auth_mode', 'per_user', 'backup_swift')
    overrides('url', 'http://127.0.0.1:%d/v1/AUTH_' % _closed_port(),
              'backup_swift')
    driver = swift.SwiftBackupDriver(cloud.ctxt)
    with pytest.raises(exception.StorageError):
        driver.check_for_setup_error()
    prefix = swift_server.storage_url.rsplit('/AUTH_', 1)[0]
    overrides('url', prefix + '/AUTH_', 'backup_swift')
    swift.SwiftBackupDriver(cloud.ctxt).check_for_setup_error()


def test_swift_single_user_auth_url_from_the_catalog(cloud, overrides,
                                                     swift_server):
    """keystone_catalog_info and region_name, as Cinder finds Keystone."""
    overrides('auth_mode', 'single_user', 'backup_swift')
    overrides('user', swift_server.user, 'backup_swift')
    overrides('key', swift_server.key, 'backup_swift')
    overrides('region_name', 'r1', 'backup_swift')
    overrides('container', 'dropin-catalog', 'backup_swift')
    overrides('object_size', OBJECT, 'backup_swift')
    ctxt = conftest.request_context()
    ctxt.service_catalog = [
        {'type': 'object-store', 'endpoints': []},
        {'type': 'identity', 'name': 'keystone', 'endpoints': [
            {'region': 'r2', 'publicURL': 'http://127.0.0.1:%d/auth/v1.0'
             % _closed_port()},
            {'region': 'r1', 'publicURL': swift_server.auth_url}]}]
    driver = swift.SwiftBackupDriver(ctxt)
    driver.check_for_setup_error()   # no auth_url: nothing to reach yet
    record = _Record('dropin-catalog')
    data = conftest.random_volume(3 * OBJECT, seed=29)
    _backup_restore(driver, record, data)


class _Record:
    """A backup record with Cinder's attributes (no database)."""

    def __init__(self, container):
        import uuid
        self.id = str(uuid.uuid4())
        self.volume_id = str(uuid.uuid4())
        self.container = container
        self.parent_id = None
        self.parent = None
        self.service_metadata = None
        self.display_name = self.display_description = None
        self.created_at = None
        self.size = 1
        self.status = 'creating'
        self.object_count = 0

    def save(self):
        pass

    def refresh(self):
        pass


def _backup_restore(driver, record, data):
    import io
    driver.backup(record, io.BytesIO(data), backup_metadata=False)
    record.status = 'restoring'
    out = io.BytesIO()
    driver.restore(record, record.volume_id, out, True)
    out.seek(0, io.SEEK_END)
    out.truncate(len(data))
    assert out.getvalue() == data


# A forwarding HTTP proxy that records the X-Service-Token of each request.
# It runs in a process of its own: this one is set up as cinder-backup, and
# a server thread here would share its patched sockets.
_PROXY = r'''
import http.client, http.server, sys, urllib.parse
upstream = urllib.parse.urlsplit(sys.argv[1])
record = open(sys.argv[2], 'a')


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def log_message(self, *args):
        pass

    def forward(self):
        record.write('%s\n' % self.headers.get('X-Service-Token'))
        record.flush()
        length = int(self.headers.get('Content-Length') or 0)
        body = self.rfile.read(length) if length else None
        conn = http.client.HTTPConnection(upstream.hostname, upstream.port,
                                          timeout=30)
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ('host', 'connection')}
        conn.request(self.command, self.path, body, headers)
        answer = conn.getresponse()
        data = answer.read()
        self.send_response(answer.status)
        for k, v in answer.getheaders():
            if k.lower() not in ('connection', 'transfer-encoding',
                                 'content-length'):
                self.send_header(k, v)
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(data)
        conn.close()

    do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = forward


server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
'''


def test_swift_service_token_in_per_user_mode(cloud, cinder_setup, overrides,
                                              swift_server, tmp_path):
    token, storage_url = test_readme.swift_token(swift_server)
    prefix, account = storage_url.rsplit('/AUTH_', 1)
    record = tmp_path / 'service-tokens'
    proxy = subprocess.Popen([sys.executable, '-c', _PROXY, prefix,
                              str(record)], stdout=subprocess.PIPE,
                             text=True)
    port = int(proxy.stdout.readline())
    extra = conftest.write_conf(str(tmp_path / 'service-user.conf'), {
        'service_user': {'send_service_user_token': 'true',
                         'auth_type': 'admin_token',
                         'endpoint': 'http://127.0.0.1:1/',
                         'token': 'service-token-16'}})
    try:
        cinder_setup.load(extra)
        service_auth.reset_globals()
        service_auth._SERVICE_SESSION = None
        overrides('auth_mode', 'per_user', 'backup_swift')
        overrides('service_auth', True, 'backup_swift')
        overrides('url', 'http://127.0.0.1:%d/v1/AUTH_' % port,
                  'backup_swift')
        overrides('container', 'dropin-service-token', 'backup_swift')
        overrides('object_size', OBJECT, 'backup_swift')
        ctxt = conftest.request_context(project_id=account, auth_token=token)
        driver = swift.SwiftBackupDriver(ctxt)
        driver.check_for_setup_error()
        _backup_restore(driver, _Record('dropin-service-token'),
                        conftest.random_volume(2 * OBJECT, seed=30))
        # Every request after the endpoint check (GET /info) carries it.
        tokens = record.read_text().splitlines()
        assert len(tokens) > 4
        assert set(tokens[1:]) == {'service-token-16'}
    finally:
        proxy.terminate()
        proxy.wait()
        cinder_setup.load()
        service_auth.reset_globals()
        service_auth._SERVICE_SESSION = None


# 6. Nothing stranded ---------------------------------------------------------

def test_backup_without_sha256file_restores(drivers, shared, caplog):  # noqa
    v0, v1, _ = test_posix_oracle.versions()
    full = drivers.backup(drivers.cinder, v0)
    incr = drivers.backup(drivers.cinder, v1, parent=full)
    directory = os.path.join(shared, incr.container)
    os.unlink(os.path.join(directory,
                           fmt.sha256file_name(incr.service_metadata)))
    # The oracle restores it ...
    assert drivers.restore(drivers.cinder, incr) == v1
    # ... and so do we, MD5s checked, with a warning.
    caplog.set_level(logging.WARNING)
    assert drivers.restore(drivers.ours, incr) == v1
    assert 'no _sha256file' in caplog.text
    assert drivers.restore(drivers.ours, incr, new=False, size=len(v1),
                           junk=True) == v1
    assert drivers.ours.verify(incr).block_map is None
    # It cannot be the parent of an incremental; a clear error says so.
    with pytest.raises(exception.ParentMismatch, match='_sha256file'):
        drivers.backup(drivers.ours, v1, parent=incr)
    # A damaged object is caught by its MD5.
    name = drivers.ours.plan_restore(incr).chain[-1].metadata.objects[0].name
    path = os.path.join(directory, name)
    with open(path, 'r+b') as f:
        body = bytearray(f.read())
        body[len(body) // 2] ^= 0xFF
        f.seek(0)
        f.write(body)
    with pytest.raises(exception.BackupCorrupted):
        drivers.restore(drivers.ours, incr)


def test_extra_object_with_the_prefix_is_tolerated(drivers, shared,  # noqa
                                                   caplog):
    data = conftest.random_volume(MiB, seed=31)
    backup = drivers.backup(drivers.cinder, data)
    stray = os.path.join(shared, backup.container,
                         backup.service_metadata + '-99999')
    with open(stray, 'wb') as f:
        f.write(b'left over')
    with pytest.raises(cinder_exception.InvalidBackup):
        drivers.restore(drivers.cinder, backup)
    caplog.set_level(logging.WARNING)
    assert drivers.restore(drivers.ours, backup) == data
    assert 'does not name' in caplog.text


# 7. Migration ----------------------------------------------------------------

def cinder_backup_options():
    from cinder.backup import chunkeddriver
    from cinder.backup import driver
    from cinder.backup.drivers import gcs
    from cinder.backup.drivers import nfs
    from cinder.backup.drivers import posix as cinder_posix
    from cinder.backup.drivers import s3
    from cinder.backup.drivers import swift as cinder_swift
    opts = (chunkeddriver.backup_opts + driver.backup_opts +
            cinder_posix.posixbackup_service_opts +
            nfs.nfsbackup_service_opts +
            cinder_swift.swiftbackup_service_opts +
            s3.s3backup_service_opts + gcs.gcsbackup_service_opts)
    return {opt.name for opt in opts}


def test_every_cinder_option_is_mapped_in_code_readme_and_sample():
    names = cinder_backup_options()
    mapped = set(cinder_options.BY_NAME)
    assert names - mapped == set()
    assert mapped - names == {'storage_availability_zone'}
    with open(os.path.join(ROOT, 'README.md')) as f:
        readme = f.read()
    for name in sorted(mapped):
        assert '`%s`' % name in readme, name
    with open(os.path.join(ROOT, 'etc', 'chunkbackup',
                           'chunkbackup.conf.sample')) as f:
        sample = f.read()
    for mapping in cinder_options.MAPPINGS:
        for store in cinder_options.STORE_GROUPS:
            found = cinder_options.target(mapping, store)
            if found and found[0] != cinder_options.KEEP:
                assert mapping.cinder in sample, mapping.cinder
    # (opts.list_opts() would load the standalone catalog's [database]
    # options, which clash with Cinder's in this process.)
    groups = [(opts.ENGINE_GROUP, opts.engine_opts)] + [
        (module.GROUP, module.OPTS) for module in opts._driver_modules()]
    opts._note_cinder_equivalents(groups)
    for group, our_opts in groups:
        for opt in our_opts:
            assert 'Cinder' in opt.help, (group, opt.name)
            if group != opts.ENGINE_GROUP or opt.name != 'driver':
                assert cinder_options.help_note(group, opt.dest) in \
                    opt.help, (group, opt.name)


def test_cinder_options_command_gives_an_equivalent_configuration(
        cloud, cinder_setup, tmp_path):
    cinder_conf = conftest.write_conf(str(tmp_path / 'old-cinder.conf'), {
        'DEFAULT': {
            'backup_driver': conftest.CINDER_POSIX,
            'state_path': str(tmp_path / 'state'),
            'backup_posix_path': '$state_path/backup',
            'backup_file_size': 4 * 64 * KiB,
            'backup_sha_block_size_bytes': 4096,
            'backup_compression_algorithm': 'bz2',
            'backup_object_number_per_notification': 3,
        }})
    env = dict(os.environ, HOME=str(tmp_path), XDG_DATA_HOME=str(tmp_path))
    result = subprocess.run(
        [sys.executable, '-m', 'chunkbackup.cmd.cli', 'cinder-options',
         cinder_conf], capture_output=True, text=True, env=env, check=True)
    out = result.stdout
    assert 'backup_driver = %s' % conftest.OUR_POSIX in out
    converted = str(tmp_path / 'converted.conf')
    with open(converted, 'w') as f:
        f.write(out)
    try:
        cinder_setup.load(cinder_conf, converted)
        assert CONF.backup_driver == conftest.OUR_POSIX
        assert CONF.chunkbackup.sha_block_size == 4096
        assert CONF.chunkbackup.compression_algorithm == 'bz2'
        assert CONF.backup_posix.object_size == 256 * KiB
        assert CONF.backup_posix.path == str(tmp_path / 'state' / 'backup')
        assert CONF.backup_object_number_per_notification == 3
        cloud.start()
        data = conftest.random_volume(MiB, seed=32)
        backup = cloud.create_backup(cloud.volume(data))
        assert backup.status == 'available'
        # Where Cinder's posix driver (on the old cinder.conf) finds it.
        from oslo_utils import importutils
        theirs = importutils.import_class(conftest.CINDER_POSIX)(cloud.ctxt)
        assert theirs.backup_path == CONF.backup_posix.path
        sha = theirs._read_sha256file(backup)
        assert sha['chunk_size'] == 4096
        doc = theirs._read_metadata(backup)
        assert {list(o.values())[0]['compression']
                for o in doc['objects']} <= {'bz2', 'none'}
    finally:
        cinder_setup.load()


def test_cinder_options_refuses_other_drivers(tmp_path):
    cinder_conf = conftest.write_conf(str(tmp_path / 'ceph.conf'), {
        'DEFAULT': {'backup_driver':
                    'cinder.backup.drivers.ceph.CephBackupDriver'}})
    env = dict(os.environ, HOME=str(tmp_path), XDG_DATA_HOME=str(tmp_path))
    result = subprocess.run(
        [sys.executable, '-m', 'chunkbackup.cmd.cli', 'cinder-options',
         cinder_conf], capture_output=True, text=True, env=env)
    assert result.returncode != 0
    assert 'not one of Cinder\'s chunked drivers' in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_swift_conf_converted(tmp_path):
    text = ('[DEFAULT]\nbackup_driver = %s\nbackup_swift_user = u\n'
            'backup_swift_key = k\nbackup_swift_auth_url = http://ks/v3\n'
            'backup_swift_auth_version = 3\n'
            'backup_swift_service_auth = true\n' % conftest.CINDER_SWIFT)
    out = cinder_options.convert(text)
    section = out.split('[backup_swift]')[1]
    for line in ('auth_mode = per_user', 'user = u', 'key = k',
                 'auth_url = http://ks/v3', 'auth_version = 3',
                 'service_auth = true'):
        assert line in section.splitlines(), line
    json.dumps(out)
