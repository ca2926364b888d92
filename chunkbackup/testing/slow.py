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
from typing import Optional

from chunkbackup.drivers import posix
from chunkbackup.drivers import s3
from chunkbackup import storage

DELAY_ENV = 'CHUNKBACKUP_TEST_PUT_DELAY'


class DelayingStore(storage.ForwardingStore):
    """Sleeps ``delay`` seconds before each put, then passes it on."""

    def __init__(self, inner: storage.ObjectStore, delay: float):
        super().__init__(inner)
        self.delay = delay

    def put(self, container: str, name: str, body: bytes,
            extra_metadata: Optional[dict] = None) -> None:
        time.sleep(self.delay)
        self.inner.put(container, name, body, extra_metadata)

    def put_stream(self, container: str, name: str,
                   produce: storage.Produce,
                   extra_metadata: Optional[dict] = None) -> None:
        time.sleep(self.delay)
        self.inner.put_stream(container, name, produce, extra_metadata)


class SlowPosixBackupDriver(posix.PosixBackupDriver):

    def wrap_store(self, store: storage.ObjectStore) -> storage.ObjectStore:
        delay = float(os.environ.get(DELAY_ENV) or 0)
        return DelayingStore(store, delay) if delay > 0 else store


class SlowS3BackupDriver(s3.S3BackupDriver):
    """The S3 driver with the same pause before each put."""

    store_name = 's3'  # in messages and metrics

    def wrap_store(self, store: storage.ObjectStore) -> storage.ObjectStore:
        delay = float(os.environ.get(DELAY_ENV) or 0)
        return DelayingStore(store, delay) if delay > 0 else store
