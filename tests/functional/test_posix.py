"""The conformance suite against the posix driver on a real directory.

The unit run uses 64 KiB objects; this one 1 MiB objects.
"""
from oslo_config import cfg
import pytest

from chunkbackup.drivers import posix
from chunkbackup.testing import conformance


class TestPosixConformance(conformance.DriverConformance):

    @pytest.fixture
    def make_driver(self, tmp_path):
        cfg.CONF.set_override('object_size', 1024 * 1024, 'backup_posix')
        cfg.CONF.set_override('path', str(tmp_path / 'backups'),
                              'backup_posix')
        yield lambda: posix.PosixBackupDriver(None)
        cfg.CONF.clear_override('object_size', 'backup_posix')
        cfg.CONF.clear_override('path', 'backup_posix')
