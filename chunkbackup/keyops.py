"""The key commands: key-create, and key-rotate over the catalog's backups.

Rotation re-wraps each encrypted backup's data key under the new master
key and rewrites its ``_metadata``; no data object is read or written.
Each backup is held (as a verify holds it) while its ``_metadata`` is
rewritten, so no delete or fold runs under it. A backup that fails is
reported and the others go on; running the command again finishes the
job (backups already under the new key are skipped).
"""
import dataclasses
import importlib
from typing import Any, Dict, List, Optional, Sequence

from oslo_log import log as logging
from sqlalchemy import orm

from chunkbackup.catalog import models
from chunkbackup.catalog import refs
from chunkbackup.catalog import states
from chunkbackup.crypto import keyfile
from chunkbackup.crypto import keys
from chunkbackup import exception
from chunkbackup import operations

LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class Rotated:
    backup_id: str
    volume: str
    result: str  # rewrapped, current, plain, failed
    detail: str = ''


def create_key_file(path: str) -> keys.MasterKey:
    return keyfile.create(path)


def new_master_key(new_key_file: Optional[str] = None,
                   new_master_key_id: Optional[str] = None,
                   create_master_key: bool = False) -> keys.MasterKey:
    """The master key to rotate to, from exactly one of the three ways."""
    given = [bool(new_key_file), bool(new_master_key_id), create_master_key]
    if sum(given) != 1:
        raise exception.InvalidConfiguration(
            reason='key-rotate needs exactly one of --new-key-file PATH, '
                   '--new-master-key-id ID or --create-master-key')
    if new_key_file:
        return keyfile.load(new_key_file)
    keymanager: Any = importlib.import_module('chunkbackup.crypto.keymanager')
    manager = keymanager.CastellanKeys()
    if create_master_key:
        return manager.create()
    return manager.get(new_master_key_id)


def rotate(session: orm.Session, master: keys.MasterKey,
           volume: Optional[str] = None,
           old_key_files: Sequence[str] = ()) -> List[Rotated]:
    """Re-wrap every available backup's data key under ``master``.

    ``old_key_files``: more key files older backups may need.
    """
    extra = [keyfile.load(path) for path in old_key_files]
    query = session.query(models.Backup).filter(
        models.Backup.status == states.AVAILABLE)
    if volume:
        query = query.filter(refs.volume_filter(volume))
    drivers: Dict[str, Any] = {}
    results = []
    for record in query.order_by(models.Backup.created_at).all():
        where = record.volume_path or record.volume_id
        driver = drivers.get(record.driver)
        if driver is None:
            driver = drivers[record.driver] = operations.load_driver(
                record.driver)
            _add_keys(driver, extra + [master])
        try:
            states.begin_verify(session, record)  # held while rewritten
        except states.StatusConflict as e:
            results.append(Rotated(record.id, where, 'failed', e.msg))
            continue
        try:
            result = driver.rewrap_backup(record, master)
            results.append(Rotated(record.id, where, result))
        except exception.ChunkBackupError as e:
            LOG.debug('Re-wrapping backup %s failed', record.id,
                      exc_info=True)
            results.append(Rotated(record.id, where, 'failed', e.msg))
        finally:
            states.end_verify(session, record)
    return results


def _add_keys(driver: Any, found: List[keys.MasterKey]) -> None:
    """Let the driver's key source also find these keys (key files)."""
    try:
        source = driver.key_source()
    except keys.KeyUnavailable:
        source = None
    if isinstance(source, keyfile.KeyFiles):
        for key in found:
            source.add(key)
