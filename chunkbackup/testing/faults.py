"""Fault injection at the storage seam, for tests of what we promise.

``FaultInjectingStore`` wraps the same ``ObjectStore`` interface as the
retries do, inside them, so an injected transient fault is retried exactly
as a real one would be. Faults are chosen by a seeded random rate or at
chosen calls (the n-th put, say), before or after the real operation:

- ``error``, ``timeout``, ``reset``: transient failures before the call;
- ``lost_reply``: the call happens, then a transient failure is reported
  (a put that landed but whose reply was lost; a get whose transfer broke
  off after the data, as a driver reports a short read);
- ``permanent``: a failure that must not be retried.
"""
import dataclasses
import random
import threading
from typing import (FrozenSet, Generator, List, Optional, Tuple,
                    TYPE_CHECKING)

from chunkbackup import exception
from chunkbackup import storage

if TYPE_CHECKING:
    from chunkbackup.chunked import ChunkedBackupDriver

TRANSIENT_KINDS = ('error', 'timeout', 'reset', 'lost_reply')
OPERATIONS = ('put', 'get', 'list', 'delete')


@dataclasses.dataclass
class FaultPlan:
    """Which calls fail, and how."""

    rate: float = 0.0
    kinds: Tuple[str, ...] = TRANSIENT_KINDS
    seed: int = 0
    # (operation, n): the n-th call (1-based) of that operation fails.
    fail_on: FrozenSet[Tuple[str, int]] = frozenset()
    operations: Tuple[str, ...] = OPERATIONS


class FaultInjectingStore(storage.ForwardingStore):
    """Fails chosen calls of ``put``, ``get``, ``list`` and ``delete``.

    Streams count as puts and gets, and so do ranged reads and sizes. A
    ``lost_reply`` on ``get_stream`` breaks the transfer off after the
    first chunk, as a cut connection does, so the retries must resume it.
    """

    def __init__(self, plan: FaultPlan,
                 inner: Optional[storage.ObjectStore] = None) -> None:
        if inner is not None:  # otherwise wrap() attaches it
            super().__init__(inner)
        self.plan = plan
        self.injected = 0
        self.calls = {op: 0 for op in OPERATIONS}
        self.enabled = True
        self._rng = random.Random(plan.seed)
        self._lock = threading.Lock()

    def disable(self) -> None:
        self.enabled = False

    def wrap(self, inner: storage.ObjectStore) -> 'FaultInjectingStore':
        """Attach to the store to wrap (``storage.add_wrapper`` calls it)."""
        self.inner = inner
        return self

    def _choose(self, operation: str) -> Optional[str]:
        with self._lock:
            self.calls[operation] += 1
            if not self.enabled or operation not in self.plan.operations:
                return None
            chosen = (operation, self.calls[operation]) in self.plan.fail_on
            if not chosen and self.plan.rate:
                chosen = self._rng.random() < self.plan.rate
            if not chosen:
                return None
            self.injected += 1
            return self._rng.choice(self.plan.kinds)

    @staticmethod
    def _fault(kind: str, operation: str,
               target: str) -> exception.StorageError:
        reason = 'injected %s fault' % kind
        cls = (exception.StorageError if kind == 'permanent'
               else exception.TransientStorageError)
        return cls(operation=operation, target=target, reason=reason)

    def _run(self, operation, target, fn, *args):
        kind = self._choose(operation)
        if kind is None:
            return fn(*args)
        if kind == 'lost_reply':
            fn(*args)
        raise self._fault(kind, operation, target)

    def put(self, container: str, name: str, body: bytes,
            extra_metadata: Optional[dict] = None) -> None:
        self._run('put', storage.base.target_of(container, name),
                  self.inner.put, container, name, body, extra_metadata)

    def put_stream(self, container: str, name: str,
                   produce: storage.Produce,
                   extra_metadata: Optional[dict] = None) -> None:
        self._run('put', storage.base.target_of(container, name),
                  self.inner.put_stream, container, name, produce,
                  extra_metadata)

    def get(self, container: str, name: str,
            extra_metadata: Optional[dict] = None) -> bytes:
        return self._run('get', storage.base.target_of(container, name),
                         self.inner.get, container, name, extra_metadata)

    def get_stream(self, container: str, name: str,
                   extra_metadata: Optional[dict] = None,
                   chunk_size: int = storage.DEFAULT_CHUNK_SIZE
                   ) -> Generator[bytes, None, None]:
        target = storage.base.target_of(container, name)
        kind = self._choose('get')
        if kind is not None and kind != 'lost_reply':
            raise self._fault(kind, 'get', target)
        chunks = self.inner.get_stream(container, name, extra_metadata,
                                       chunk_size)
        for chunk in chunks:
            yield chunk
            if kind == 'lost_reply':
                raise self._fault(kind, 'get', target)
        if kind == 'lost_reply':  # an empty body: nothing to cut
            raise self._fault(kind, 'get', target)

    def get_range(self, container: str, name: str, offset: int,
                  length: int, extra_metadata: Optional[dict] = None
                  ) -> bytes:
        return self._run('get', storage.base.target_of(container, name),
                         self.inner.get_range, container, name, offset,
                         length, extra_metadata)

    def object_size(self, container: str, name: str,
                    extra_metadata: Optional[dict] = None) -> int:
        # A size is asked for as a body is: the same faults, as a get.
        return self._run('get', storage.base.target_of(container, name),
                         self.inner.object_size, container, name,
                         extra_metadata)

    def list(self, container: str, prefix: str) -> List[str]:
        return self._run('list', '%s/%s*' % (container, prefix),
                         self.inner.list, container, prefix)

    def delete(self, container: str, name: str) -> None:
        self._run('delete', storage.base.target_of(container, name),
                  self.inner.delete, container, name)


def install(driver: 'ChunkedBackupDriver',
            plan: FaultPlan) -> FaultInjectingStore:
    """Inject faults into a driver's storage seam (inside its retries)."""
    injector = FaultInjectingStore(plan)
    storage.add_wrapper(driver, injector.wrap)
    return injector
