"""What the benchmarks' child processes share.

Each operation runs in a fresh process, so its peak RSS is its own. The
backups that earlier processes made are remembered in a small JSON file
(``Catalog``), from which a process rebuilds the records it needs.
"""
import json
import os
import resource
from typing import Any, Dict, Optional


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM).

    Not getrusage's ru_maxrss of the child: Linux copies the parent's peak
    into a forked child, so every child would report at least the parent's.
    """
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError('no VmHWM in /proc/self/status')


def cpu_seconds() -> float:
    """User + system CPU time of this process, all its threads.

    The machine is shared: wall time stretches with other people's load,
    CPU time much less, so both are reported.
    """
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def posix_driver(root: str, **engine: Any) -> Any:
    """A posix driver below ``root``, [chunkbackup] options overridden."""
    from oslo_config import cfg

    from chunkbackup.drivers import posix

    cfg.CONF([], project='chunkbackup', default_config_files=[])
    cfg.CONF.set_override('path', root, 'backup_posix')
    for name, value in engine.items():
        cfg.CONF.set_override(name, value, 'chunkbackup')
    driver = posix.PosixBackupDriver(None)
    driver.progress_listeners = []
    return driver


def remote_driver(store: str, groups: Dict[str, Dict[str, Any]]) -> Any:
    """A swift or s3 driver, options set by group: {'backup_s3': {...}}.

    The remote benchmark hands a child process its endpoint, credentials
    and object size this way, as a config file would.
    """
    from oslo_config import cfg

    from chunkbackup.drivers import s3
    from chunkbackup.drivers import swift

    classes = {'swift': swift.SwiftBackupDriver, 's3': s3.S3BackupDriver}
    cfg.CONF([], project='chunkbackup', default_config_files=[])
    driver_class = classes[store]
    for group, values in groups.items():
        for name, value in values.items():
            cfg.CONF.set_override(name, value, group)
    driver = driver_class(None)
    driver.progress_listeners = []
    return driver


class Catalog:
    """The backups earlier child processes made, by the benchmark's name."""

    def __init__(self, path: str):
        self.path = path
        self.entries: Dict[str, dict] = {}
        if os.path.exists(path):
            with open(path) as f:
                self.entries = json.load(f)

    def record(self, name: Optional[str]) -> Any:
        """The backup record of ``name``, its parents linked; None: none."""
        from chunkbackup.testing.record import BackupRecord

        if name is None:
            return None
        info = self.entries[name]
        return BackupRecord(info['volume_id'], id=info['id'],
                            parent=self.record(info['parent']),
                            container=info['container'],
                            service_metadata=info['prefix'],
                            status='available')

    def add(self, name: str, record: Any, parent: Optional[str]) -> None:
        self.entries[name] = {'id': record.id, 'volume_id': record.volume_id,
                              'parent': parent,
                              'container': record.container,
                              'prefix': record.service_metadata}

    def save(self) -> None:
        with open(self.path, 'w') as f:
            json.dump(self.entries, f)


def run_operation(driver: Any, catalog: Catalog, op: str, name: str,
                  parent: Optional[str] = None, volume: Optional[str] = None,
                  target: Optional[str] = None, target_mode: str = 'wb',
                  **backup_args: Any) -> None:
    """One benchmark operation (backup, restore, verify) of ``name``.

    A backup is recorded in ``catalog`` (saved) as the child of ``parent``;
    a restore writes ``target``, opened with ``target_mode`` ('r+b' for a
    target that already has the volume's size).
    """
    from chunkbackup.testing.record import BackupRecord

    if op == 'backup':
        record = BackupRecord('bench', parent=catalog.record(parent))
        with open(volume, 'rb') as f:
            driver.backup(record, f, **backup_args)
        catalog.add(name, record, parent)
    elif op == 'restore':
        with open(target, target_mode) as f:
            driver.restore(catalog.record(name), 'bench', f,
                           volume_is_new=True)
    elif op == 'verify':
        driver.verify(catalog.record(name))
    else:
        raise ValueError('unknown benchmark operation %r' % op)
    catalog.save()
