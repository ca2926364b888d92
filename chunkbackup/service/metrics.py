"""Prometheus metrics of a ``chunkbackup-backup`` worker.

With ``[backup_service] metrics_port`` set, each worker serves them (with
prometheus_client) at ``http://HOST:PORT/metrics``:

- ``chunkbackup_operations_total{kind,result}``: backups and retention
  deletes, by how they ended (done, failed, cancelled, lease_lost);
- ``chunkbackup_backup_bytes_read_total``, ``..._stored_total`` and
  ``chunkbackup_restore_bytes_total``; ``chunkbackup_operation_seconds``;
- ``chunkbackup_storage_operations_total``, ``..._retries_total`` and
  ``..._errors_total`` by driver and storage operation (an error is one
  that failed after its retries);
- ``chunkbackup_queue_depth``, ``chunkbackup_running_operations``,
  ``chunkbackup_leases_taken_over_total{kind}``;
- ``chunkbackup_schedule_last_success_timestamp_seconds{schedule}``: when
  the newest available backup of each schedule was made, read from the
  catalog, so every worker reports every schedule.
"""
import threading
import weakref
from typing import Dict, List, Optional, Tuple

import prometheus_client
from prometheus_client import core

from chunkbackup import storage

PREFIX = 'chunkbackup'


class _StorageCollector:
    """Storage calls of every driver this process loaded, by driver."""

    def __init__(self):
        self._lock = threading.Lock()
        # (driver, inner metrics: attempts, outer metrics: after retries)
        self._live: List[Tuple[str, storage.StoreMetrics,
                               storage.StoreMetrics]] = []
        self._done: Dict[Tuple[str, str], List[int]] = {}

    def observe(self, driver) -> None:
        inner = storage.metrics_of(driver.store)
        if inner is None:
            return
        outer = storage.StoreMetrics()
        # Outside the retries: one call an operation, errors that stayed.
        driver._store = storage.MeteredStore(driver._store, outer)
        entry = (storage.store_name(driver), inner, outer)
        with self._lock:
            self._live.append(entry)
        weakref.finalize(driver, self._fold, entry)

    def _fold(self, entry) -> None:
        with self._lock:
            if entry in self._live:
                self._live.remove(entry)
            self._add(self._done, entry)

    @staticmethod
    def _add(totals, entry) -> None:
        name, inner, outer = entry
        attempts = inner.snapshot()
        for op, stats in outer.snapshot().items():
            row = totals.setdefault((name, op), [0, 0, 0])
            row[0] += stats.calls
            row[1] += max(0, attempts[op].calls - stats.calls)
            row[2] += stats.errors

    def collect(self):
        with self._lock:
            totals = {k: list(v) for k, v in self._done.items()}
            for entry in self._live:
                self._add(totals, entry)
        families = [
            core.CounterMetricFamily(
                PREFIX + '_storage_operations', 'Storage operations, each '
                'counted once however often it was retried.',
                labels=['driver', 'operation']),
            core.CounterMetricFamily(
                PREFIX + '_storage_retries', 'Storage attempts that failed '
                'transiently and were retried.',
                labels=['driver', 'operation']),
            core.CounterMetricFamily(
                PREFIX + '_storage_errors', 'Storage operations that failed '
                'after their retries.', labels=['driver', 'operation'])]
        for (name, op), values in sorted(totals.items()):
            for family, value in zip(families, values):
                family.add_metric([name, op], value)
        return families


class Metrics:
    """One worker's metrics, in a registry of its own."""

    def __init__(self):
        self.registry = prometheus_client.CollectorRegistry()
        r = self.registry
        self.operations = prometheus_client.Counter(
            PREFIX + '_operations', 'Operations by kind and how they ended.',
            ['kind', 'result'], registry=r)
        self.bytes_read = prometheus_client.Counter(
            PREFIX + '_backup_bytes_read', 'Volume bytes read by backups.',
            registry=r)
        self.bytes_stored = prometheus_client.Counter(
            PREFIX + '_backup_bytes_stored', 'Bytes stored by backups '
            '(after compression).', registry=r)
        self.bytes_restored = prometheus_client.Counter(
            PREFIX + '_restore_bytes', 'Volume bytes written by restores.',
            registry=r)
        self.durations = prometheus_client.Histogram(
            PREFIX + '_operation_seconds', 'How long operations took.',
            ['kind'], registry=r,
            buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600,
                     float('inf')))
        self.queue_depth = prometheus_client.Gauge(
            PREFIX + '_queue_depth', 'Jobs queued in the catalog.',
            registry=r)
        self.running = prometheus_client.Gauge(
            PREFIX + '_running_operations', 'Operations this worker runs.',
            registry=r)
        self.taken_over = prometheus_client.Counter(
            PREFIX + '_leases_taken_over', 'Expired leases of other (or '
            'paused) workers this worker took over, by what they held.',
            ['kind'], registry=r)
        self.schedule_last_success = prometheus_client.Gauge(
            PREFIX + '_schedule_last_success_timestamp_seconds',
            'When the newest available backup of the schedule was started '
            '(Unix time).', ['schedule'], registry=r)
        self.storage = _StorageCollector()
        r.register(self.storage)
        self._server = None

    def serve(self, port: int, host: str) -> None:
        self._server = prometheus_client.start_http_server(
            port, addr=host, registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            server, thread = self._server
            server.shutdown()
            server.server_close()
            self._server = None

    def render(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)


def stats_bytes(stats: Optional[dict]) -> Tuple[int, int]:
    """(bytes read, bytes stored) of a backup record's stats."""
    stats = stats or {}
    return int(stats.get('bytes_read') or 0), int(
        stats.get('stored_bytes') or 0)
