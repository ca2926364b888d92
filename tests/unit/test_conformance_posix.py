"""The driver conformance suite against the posix driver (a real directory)."""
from oslo_config import cfg
import pytest

from chunkbackup.drivers import posix
from chunkbackup.testing import conformance


class TestPosixConformance(conformance.DriverConformance):

    object_size = 64 * 1024

    @pytest.fixture
    def make_driver(self, tmp_path):
        cfg.CONF.set_override('object_size', self.object_size,
                              'backup_posix')
        cfg.CONF.set_override('path', str(tmp_path / 'backups'),
                              'backup_posix')
        yield lambda: posix.PosixBackupDriver(None)
        cfg.CONF.clear_override('object_size', 'backup_posix')
        cfg.CONF.clear_override('path', 'backup_posix')
