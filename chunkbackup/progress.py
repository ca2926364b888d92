"""Progress of long operations, through one notifier interface.

The engine reports to a ``Progress`` object; what listens (a log line, a
terminal progress bar, an oslo.messaging notification, metrics) is a
``ProgressListener`` attached to the driver.
"""
import time
from typing import List

from chunkbackup.records import BackupLike

from oslo_log import log as logging

LOG = logging.getLogger(__name__)


class ProgressListener:
    """Receives progress; override what you need."""

    def bind(self, progress: 'Progress') -> None:
        """Called first: the operation's ``Progress`` (for its details)."""

    def started(self, operation: str, backup: BackupLike,
                total_bytes: int) -> None:
        pass

    def advanced(self, operation: str, backup: BackupLike,
                 done_bytes: int, total_bytes: int) -> None:
        pass

    def finished(self, operation: str, backup: BackupLike,
                 done_bytes: int, ok: bool) -> None:
        pass


class LogListener(ProgressListener):
    """Logs at most every ``interval`` seconds, and at start and end."""

    def __init__(self, interval: float = 30.0):
        self.interval = interval
        self._last = 0.0
        self._t0 = 0.0

    def started(self, operation: str, backup: BackupLike,
                total_bytes: int) -> None:
        self._t0 = self._last = time.monotonic()
        LOG.info('%(op)s of backup %(id)s started: %(total)d bytes.',
                 {'op': operation, 'id': backup.id, 'total': total_bytes})

    def advanced(self, operation: str, backup: BackupLike, done_bytes: int,
                 total_bytes: int) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        LOG.info('%(op)s of backup %(id)s: %(pct).0f%% done.',
                 {'op': operation, 'id': backup.id,
                  'pct': 100.0 * done_bytes / max(total_bytes, 1)})

    def finished(self, operation: str, backup: BackupLike, done_bytes: int,
                 ok: bool) -> None:
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        LOG.info('%(op)s of backup %(id)s %(how)s: %(done)d bytes in '
                 '%(sec).1fs (%(rate).0f MiB/s).',
                 {'op': operation, 'id': backup.id,
                  'how': 'finished' if ok else 'failed', 'done': done_bytes,
                  'sec': elapsed, 'rate': done_bytes / elapsed / 2 ** 20})


class Progress:
    """One operation's progress, fanned out to the listeners."""

    def __init__(self, listeners: List[ProgressListener], operation: str,
                 backup: BackupLike, total_bytes: int) -> None:
        self.listeners = listeners
        self.operation = operation
        self.backup = backup
        self.total = total_bytes
        self.done = 0
        # What the operation tells listeners besides bytes; for a backup:
        # 'prefix', 'objects' (the live list of ObjectEntry stored so far)
        # and 'extra_metadata' (Cinder's progress notifications carry them).
        self.details: dict = {}

    def __enter__(self):
        for listener in self.listeners:
            bind = getattr(listener, 'bind', None)
            if bind is not None:
                bind(self)
        for listener in self.listeners:
            listener.started(self.operation, self.backup, self.total)
        return self

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        for listener in self.listeners:
            listener.advanced(self.operation, self.backup, self.done,
                              self.total)

    def __exit__(self, exc_type, exc, tb):
        for listener in self.listeners:
            listener.finished(self.operation, self.backup, self.done,
                              exc_type is None)
