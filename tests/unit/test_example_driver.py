"""The example driver of doc/writing-a-driver.md passes the whole suite."""
import importlib.util
import os

from oslo_config import cfg
import pytest

from chunkbackup.testing import conformance

_PATH = os.path.join(os.path.dirname(__file__), '..', '..', 'doc',
                     'examples', 'memory_driver.py')
_spec = importlib.util.spec_from_file_location('memory_driver', _PATH)
memory_driver = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(memory_driver)


class TestMemoryDriverConformance(conformance.DriverConformance):

    @pytest.fixture
    def make_driver(self):
        cfg.CONF.set_override('object_size', 64 * 1024, 'backup_memory')
        yield lambda: memory_driver.MemoryBackupDriver(None)
        cfg.CONF.clear_override('object_size', 'backup_memory')
        memory_driver._STORE.clear()
