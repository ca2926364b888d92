"""A posix driver that pauses before every object it stores, for tests.

Tests of shutdown and cancellation must catch a backup half-way, whatever
the speed of the machine. This driver is the posix driver with a pause
before each put, set by the environment of the process that runs it
(``CHUNKBACKUP_TEST_PUT_DELAY``, seconds). It is chosen by class path:
``[chunkbackup] driver = chunkbackup.testing.slow.SlowPosixBackupDriver``.
The pause wraps the storage seam (``wrap_store``), so the engine, its
retries and its cancellation run unchanged.
"""
import os
import time

from chunkbackup.drivers import posix
from chunkbackup import storage

DELAY_ENV = 'CHUNKBACKUP_TEST_PUT_DELAY'


class DelayingStore(storage.ObjectStore):
    """Sleeps ``delay`` seconds before each put, then passes it on."""

    def __init__(self, inner: storage.ObjectStore, delay: float):
        self.inner = inner
        self.delay = delay

    def ensure_container(self, container):
        self.inner.ensure_container(container)

    def put(self, container, name, body, extra_metadata=None):
        time.sleep(self.delay)
        self.inner.put(container, name, body, extra_metadata)

    def get(self, container, name, extra_metadata=None):
        return self.inner.get(container, name, extra_metadata)

    def list(self, container, prefix):
        return self.inner.list(container, prefix)

    def delete(self, container, name):
        self.inner.delete(container, name)


class SlowPosixBackupDriver(posix.PosixBackupDriver):

    def wrap_store(self, store: storage.ObjectStore) -> storage.ObjectStore:
        delay = float(os.environ.get(DELAY_ENV) or 0)
        return DelayingStore(store, delay) if delay > 0 else store
