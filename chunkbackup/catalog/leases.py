"""Leases: how long a service worker's hold on a record lasts unrenewed.

A ``chunkbackup-backup`` worker holds the backups it creates, restores or
deletes, the jobs it runs and the volumes it backs up under a lease that
expires ``[backup_service] lease_seconds`` after its last renewal. Its
heartbeat renews only leases that have not expired yet, so a worker that
was paused or cut off past its lease cannot revive it: another worker
takes the work over (:mod:`chunkbackup.catalog.workers`), and the paused
one finds out (:class:`LeaseLost`) before it writes ``_metadata`` or
changes a record, and stops.

The CLI takes no leases: its records carry none (``lease_expires_at`` is
NULL) and a process that is gone is found by its ``host:pid``, as before.

Times are the workers' clocks (UTC): hosts sharing a catalog keep them in
step (NTP), well within ``lease_seconds``.
"""
import datetime
from typing import Optional

import sqlalchemy as sa

from chunkbackup.catalog import models
from chunkbackup import exception

_lease_seconds: Optional[float] = None


class LeaseLost(exception.ChunkBackupError):
    """This worker's lease on a record lapsed; another one takes over."""

    msg_fmt = ("%(what)s stopped: the lease of %(owner)s lapsed (not "
               "renewed within [backup_service] lease_seconds, e.g. the "
               "process was paused or cut off from the catalog), so "
               "another worker takes the work over")


def enable(seconds: float) -> None:
    """From now on, records this process takes carry a lease."""
    global _lease_seconds
    _lease_seconds = float(seconds)


def disable() -> None:
    global _lease_seconds
    _lease_seconds = None


def lease_seconds() -> Optional[float]:
    """The lease length of this process, or None when it takes none."""
    return _lease_seconds


def expiry(now: Optional[datetime.datetime] = None
           ) -> Optional[datetime.datetime]:
    """When a lease taken or renewed now expires (None: no lease)."""
    if _lease_seconds is None:
        return None
    return (now or models.utcnow()) + datetime.timedelta(
        seconds=_lease_seconds)


def unexpired(column: sa.ColumnElement,
              now: Optional[datetime.datetime] = None) -> sa.ColumnElement:
    """SQL: the lease in ``column`` is absent (CLI) or still running."""
    return sa.or_(column.is_(None), column > (now or models.utcnow()))
