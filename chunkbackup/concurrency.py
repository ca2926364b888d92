"""Where work runs: native threads for CPU, green or native threads for I/O.

hashlib, zlib, bz2 and zstd release the GIL, so CPU work scales over native
threads. Inside an eventlet-patched process (cinder-backup) a green thread
must never run that work itself: it would block every other green thread.
There the CPU stage goes through ``eventlet.tpool`` (native threads), while
I/O waits cooperatively in green threads. Outside eventlet both are plain
thread pools.
"""
import concurrent.futures
import os
import sys
import threading
from typing import Any, Callable


def eventlet_patched() -> bool:
    """True when eventlet has monkey-patched threading in this process."""
    # A patched process has imported eventlet already; importing it here
    # otherwise would only cost time and print its deprecation warning.
    if 'eventlet' not in sys.modules:
        return False
    from eventlet import patcher
    return patcher.is_monkey_patched('thread')


def native_thread_local() -> threading.local:
    """A thread-local object keyed by native thread, even under eventlet."""
    if eventlet_patched():
        from eventlet import patcher
        return patcher.original('threading').local()
    return threading.local()


def native_lock() -> threading.Lock:
    """A lock that native threads (eventlet's tpool included) can share."""
    if eventlet_patched():
        from eventlet import patcher
        return patcher.original('threading').Lock()
    return threading.Lock()


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


class Executors:
    """A CPU pool and an I/O pool with the futures interface.

    ``cpu.submit(fn, ...)`` always runs ``fn`` on a native thread;
    ``io.submit(fn, ...)`` runs it on a thread that may block on I/O.
    """

    def __init__(self, cpu_workers: int, io_workers: int):
        self.cpu_workers = cpu_workers or cpu_count()
        self.io_workers = io_workers
        self._patched = eventlet_patched()
        # Under eventlet these pools make green threads (threading is
        # patched); the CPU pool hands its work to eventlet's native tpool.
        self._cpu = concurrent.futures.ThreadPoolExecutor(
            self.cpu_workers, thread_name_prefix='chunkbackup-cpu')
        self._io = concurrent.futures.ThreadPoolExecutor(
            io_workers, thread_name_prefix='chunkbackup-io')

    def submit_cpu(self, fn: Callable, *args: Any
                   ) -> concurrent.futures.Future:
        if self._patched:
            from eventlet import tpool
            return self._cpu.submit(tpool.execute, fn, *args)
        return self._cpu.submit(fn, *args)

    def submit_io(self, fn: Callable, *args: Any
                  ) -> concurrent.futures.Future:
        return self._io.submit(fn, *args)

    def shutdown(self, cancel: bool = False) -> None:
        for pool in (self._cpu, self._io):
            pool.shutdown(wait=True, cancel_futures=cancel)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.shutdown(cancel=exc_type is not None)
