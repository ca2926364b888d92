import filecmp
import uuid

from oslo_config import cfg
import pytest

from chunkbackup.catalog import api
from chunkbackup.drivers import posix
from chunkbackup.testing.record import BackupRecord

CONF = cfg.CONF
_ENGINE = ('compression_algorithm', 'compression_level', 'sha_block_size',
           'objects_in_flight', 'restore_objects_in_flight', 'cpu_workers',
           'incremental_merge_gap',
           'restore_check_md5', 'storage_retries', 'storage_retry_backoff',
           'cancel_check_interval')


@pytest.fixture
def conf():
    """Set options for one test; every override is cleared afterwards."""
    def set_(name, value, group='chunkbackup'):
        CONF.set_override(name, value, group)
    CONF.set_override('cancel_check_interval', 0, 'chunkbackup')
    yield set_
    for name in _ENGINE:
        CONF.clear_override(name, 'chunkbackup')
    for name in ('object_size', 'path'):
        CONF.clear_override(name, 'backup_posix')


@pytest.fixture
def make_posix(conf, tmp_path):
    """A posix driver factory with a small object size below tmp_path."""
    def make(object_size=64 * 1024, block_size=4096, **engine):
        conf('sha_block_size', block_size)
        conf('object_size', object_size, 'backup_posix')
        conf('path', str(tmp_path / 'backups'), 'backup_posix')
        for name, value in engine.items():
            conf(name, value)
        return posix.PosixBackupDriver(None)
    return make


class Ops:
    """Backup, restore and compare, on files below a tmp dir."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path

    def backup(self, driver, path, parent=None, volume_id='vol-1', **kw):
        record = BackupRecord(volume_id, parent=parent, **kw)
        with open(path, 'rb') as f:
            driver.backup(record, f)
        record.status = 'available'
        return record

    def restore(self, driver, record, new=True, base=None):
        out = str(self.tmp / ('out-%s' % uuid.uuid4().hex[:8]))
        with open(out, 'wb') as f:
            if base is not None:
                with open(base, 'rb') as src:
                    f.write(src.read())
        with open(out, 'r+b') as f:
            driver.restore(record, record.volume_id, f, volume_is_new=new)
        return out

    def copy(self, path, name):
        dst = str(self.tmp / name)
        with open(path, 'rb') as s, open(dst, 'wb') as d:
            d.write(s.read())
        return dst

    @staticmethod
    def same(a, b):
        return filecmp.cmp(a, b, shallow=False)


@pytest.fixture
def ops(tmp_path):
    return Ops(tmp_path)


@pytest.fixture
def catalog(tmp_path, conf):
    """A real SQLite catalog and a posix store below tmp_path."""
    conf('connection', 'sqlite:///%s' % (tmp_path / 'catalog.sqlite'),
         'database')
    conf('path', str(tmp_path / 'store'), 'backup_posix')
    conf('object_size', 64 * 1024, 'backup_posix')
    conf('driver', 'posix')
    cat = api.Catalog()
    yield cat
    cat.dispose()
    CONF.clear_override('connection', 'database')
    CONF.clear_override('driver', 'chunkbackup')
