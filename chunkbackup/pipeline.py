"""Bounded stages for the engine: at most N things in flight, always.

Memory is bounded by configuration (objects in flight x object size), never
by the size of the volume: a stage takes its next input only when a result
has left it.
"""
import collections
import concurrent.futures
from typing import (Callable, Deque, Dict, Iterable, Iterator, Optional,
                    Tuple)


def ordered(submit: Callable, fn: Callable, items: Iterable[Tuple],
            window: int) -> Iterator:
    """Yield ``fn(*item)`` for each item, in order, ``window`` at a time.

    The next item is drawn from ``items`` (a generator may read a volume)
    only when fewer than ``window`` results are pending.
    """
    pending: Deque[concurrent.futures.Future] = collections.deque()
    try:
        for item in items:
            while len(pending) >= window:
                yield pending.popleft().result()
            pending.append(submit(fn, *item))
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


def unordered(submit: Callable, fn: Callable, items: Iterable[Tuple],
              window: int) -> Iterator:
    """Yield ``fn(*item)`` results as they complete, ``window`` at a time."""
    items = iter(items)
    pending = set()
    try:
        for item in items:
            pending.add(submit(fn, *item))
            if len(pending) >= window:
                done, pending = concurrent.futures.wait(
                    pending, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        while pending:
            done, pending = concurrent.futures.wait(
                pending, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                yield future.result()
    finally:
        for future in pending:
            future.cancel()


class Window:
    """Futures whose results nobody needs, but whose failures matter.

    ``add`` blocks while more than ``size`` futures, or more than
    ``max_bytes`` of their declared sizes, are pending (one is always
    allowed), and raises the error of any that failed; ``drain`` waits for
    all of them.
    """

    def __init__(self, size: int, max_bytes: Optional[int] = None):
        self.size = size
        self.max_bytes = max_bytes
        self.pending: Dict[concurrent.futures.Future, int] = {}
        self.pending_bytes = 0

    def _collect(self, return_when, timeout=None):
        done, _ = concurrent.futures.wait(self.pending, timeout=timeout,
                                          return_when=return_when)
        for future in done:
            self.pending_bytes -= self.pending.pop(future)
        for future in done:
            future.result()

    def _full(self) -> bool:
        if len(self.pending) > self.size:
            return True
        return (self.max_bytes is not None and len(self.pending) > 1 and
                self.pending_bytes > self.max_bytes)

    def add(self, future: concurrent.futures.Future, nbytes: int = 0) -> None:
        self.pending[future] = nbytes
        self.pending_bytes += nbytes
        # A failure stops the work at once: nothing more is handed out
        # after one write failed (against a stalled store each would
        # cost a whole deadline), and cancel() reaches this one too.
        self._collect(concurrent.futures.FIRST_EXCEPTION, timeout=0)
        while self._full():
            self._collect(concurrent.futures.FIRST_COMPLETED)

    def drain(self) -> None:
        while self.pending:
            self._collect(concurrent.futures.FIRST_EXCEPTION)

    def cancel(self) -> None:
        for future in self.pending:
            future.cancel()
