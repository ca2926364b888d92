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
from typing import FrozenSet, Optional, Tuple

from chunkbackup import exception
from chunkbackup import storage

TRANSIENT_KINDS = ('error', 'timeout', 'reset', 'lost_reply')
OPERATIONS = ('put', 'get', 'list', 'delete')


@dataclasses.dataclass
class FaultPlan:
    rate: float = 0.0
    kinds: Tuple[str, ...] = TRANSIENT_KINDS
    seed: int = 0
    # (operation, n): the n-th call (1-based) of that operation fails.
    fail_on: FrozenSet[Tuple[str, int]] = frozenset()
    operations: Tuple[str, ...] = OPERATIONS


class FaultInjectingStore(storage.ObjectStore):

    def __init__(self, plan: FaultPlan,
                 inner: Optional[storage.ObjectStore] = None):
        self.plan = plan
        self.inner = inner
        self.injected = 0
        self.calls = {op: 0 for op in OPERATIONS}
        self.enabled = True
        self._rng = random.Random(plan.seed)
        self._lock = threading.Lock()

    def disable(self) -> None:
        self.enabled = False

    def _choose(self, operation) -> Optional[str]:
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

    def _run(self, operation, target, fn, *args):
        kind = self._choose(operation)
        if kind is None:
            return fn(*args)
        reason = 'injected %s fault' % kind
        if kind == 'permanent':
            raise exception.StorageError(operation=operation, target=target,
                                         reason=reason)
        if kind == 'lost_reply':
            fn(*args)
        raise exception.TransientStorageError(
            operation=operation, target=target, reason=reason)

    def ensure_container(self, container):
        self.inner.ensure_container(container)

    def put(self, container, name, body, extra_metadata=None):
        self._run('put', '%s/%s' % (container, name), self.inner.put,
                  container, name, body, extra_metadata)

    def get(self, container, name, extra_metadata=None):
        return self._run('get', '%s/%s' % (container, name), self.inner.get,
                         container, name, extra_metadata)

    def list(self, container, prefix):
        return self._run('list', '%s/%s*' % (container, prefix),
                         self.inner.list, container, prefix)

    def delete(self, container, name):
        self._run('delete', '%s/%s' % (container, name), self.inner.delete,
                  container, name)


def install(driver, plan: FaultPlan) -> FaultInjectingStore:
    """Inject faults into a driver's storage seam (inside its retries)."""
    injector = FaultInjectingStore(plan)
    driver.fault_injector = injector
    driver._store = None  # rebuilt with the injector on next use
    return injector
