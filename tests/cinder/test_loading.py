"""Our drivers as cinder-backup loads them, and our options beside Cinder's."""
import os
import subprocess
import sys

from cinder.backup import driver as cinder_driver
from cinder.backup import manager as backup_manager
from cinder import context as cinder_context
import cinder.opts
from oslo_config import cfg
from oslo_utils import importutils
import pytest

from chunkbackup import chunked
from chunkbackup import cinder_compat
from chunkbackup import opts as our_opts
from chunkbackup import progress
from tests.cinder import conftest

CONF = cfg.CONF
DRIVERS = [
    'chunkbackup.drivers.posix.PosixBackupDriver',
    'chunkbackup.drivers.swift.SwiftBackupDriver',
    'chunkbackup.drivers.google.GoogleBackupDriver',
    'chunkbackup.drivers.gcs.GoogleBackupDriver',
    'chunkbackup.drivers.s3.S3BackupDriver',
]


def _cinder_opts():
    return [(group, list(opts)) for group, opts in cinder.opts.list_opts()]


def _driver_opts():
    """What loading our drivers registers: the engine's and the drivers'."""
    groups = [(our_opts.ENGINE_GROUP, our_opts.engine_opts)]
    for module in our_opts._driver_modules():
        groups.append((module.GROUP, module.OPTS))
    return groups


@pytest.mark.parametrize('cinder_first', [True, False])
def test_options_register_beside_cinders(cinder_first):
    """Every Cinder option and ours in one ConfigOpts, in either order."""
    conf = cfg.ConfigOpts()
    batches = [_cinder_opts(), _driver_opts()]
    if not cinder_first:
        batches.reverse()
    for batch in batches:
        for group, opts in batch:
            conf.register_opts(  # DuplicateOptError?
                opts, group=None if group == 'DEFAULT' else group)
    ours = {group for group, _ in _driver_opts()}
    theirs = {group for group, _ in _cinder_opts()}
    assert not ours & theirs
    # A [DEFAULT] option named like one of our groups would shadow it.
    default_names = {o.name for g, opts in _cinder_opts() if g == 'DEFAULT'
                     for o in opts}
    assert not ours & default_names
    assert conf.backup_posix.object_size == 32 * 2 ** 20
    assert conf.backup_posix_path.endswith('backup')  # Cinder's, untouched


def test_the_process_holds_both(cinder_setup):
    # conftest imported every Cinder option module, then our drivers.
    assert CONF.backup_driver == conftest.CINDER_SWIFT
    assert CONF.backup_metadata_version == 2
    assert CONF.chunkbackup.sha_block_size == CONF.backup_sha_block_size_bytes


@pytest.mark.parametrize('path', DRIVERS)
def test_manager_loads_each_driver(cloud, overrides, posix_paths, path):
    """BackupManager: import_class(CONF.backup_driver), then cls(context)."""
    overrides('backup_driver', path)
    manager = backup_manager.BackupManager(host=conftest.HOST,
                                           service_name='backup')
    assert manager.driver_name == path
    assert manager.service is importutils.import_class(path)
    ctxt = conftest.request_context()
    driver = manager.service(ctxt)        # as continue_backup does
    assert isinstance(driver, chunked.ChunkedBackupDriver)
    assert driver.context is ctxt
    assert isinstance(driver.cinder, cinder_compat.CinderSupport)
    assert driver.support_force_delete is True
    assert manager.check_support_to_force_delete(ctxt) is True
    kinds = [type(listener) for listener in driver.progress_listeners]
    assert cinder_compat.CreateProgressNotifier in kinds
    # The setup check is the one the service runs, with context=...
    if path.endswith('PosixBackupDriver'):
        manager.service(context=ctxt).check_for_setup_error()
        assert os.path.isdir(posix_paths['ours'])


def test_gcs_alias_is_the_same_class():
    gcs = importutils.import_class(DRIVERS[3])
    assert gcs is importutils.import_class(DRIVERS[2])


def test_standalone_construction_is_not_cinder(cinder_setup, posix_paths):
    from chunkbackup.drivers import posix
    driver = posix.PosixBackupDriver(None)
    assert driver.cinder is None
    assert [type(x) for x in driver.progress_listeners] == [
        progress.LogListener]
    assert driver.get_metadata('v') is None
    # A db handed over (Cinder's older calling convention) means Cinder.
    driver = posix.PosixBackupDriver(None, db=cinder_driver.BackupMetadataAPI(
        cinder_context.get_admin_context()).db)
    assert driver.cinder is not None


def test_standalone_never_imports_cinder(tmp_path):
    """Without a Cinder context the project loads no Cinder module."""
    code = (
        'import sys\n'
        'from oslo_config import cfg\n'
        'cfg.CONF([], default_config_files=[], default_config_dirs=[])\n'
        'from chunkbackup.drivers import posix\n'
        'cfg.CONF.set_override("path", sys.argv[1], "backup_posix")\n'
        'from chunkbackup.testing.record import BackupRecord\n'
        'import io\n'
        'd = posix.PosixBackupDriver(None)\n'
        'r = BackupRecord("vol-1")\n'
        'd.backup(r, io.BytesIO(b"x" * 100000))\n'
        'out = io.BytesIO()\n'
        'd.restore(r, "vol-1", out, volume_is_new=True)\n'
        'assert out.getvalue() == b"x" * 100000\n'
        'bad = sorted(m for m in sys.modules if m.split(".")[0] == "cinder")\n'
        'print(bad)\n'
        'sys.exit(1 if bad else 0)\n')
    result = subprocess.run([sys.executable, '-c', code, str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    assert result.returncode == 0, result.stdout
