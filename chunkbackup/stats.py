"""What the store holds, summed from the catalog (``chunkbackup stats``).

Per volume and in all: how many backups, their logical size (what they
restore to, summed), the bytes their backups read and the bytes they
stored (after compression), from each backup's recorded stats
(chunkbackup.engine.backup.BackupStats). Backups recorded without stats
(imported, or rebuilt from the store) are counted but add no read or
stored bytes; ``backups_without_stats`` says how many.
"""
from typing import Any, Dict, Iterable, List, Optional


def _empty(volume: Optional[str]) -> Dict[str, Any]:
    return {'volume': volume, 'volume_ids': [], 'backups': 0,
            'full_backups': 0, 'incremental_backups': 0,
            'logical_bytes': 0, 'read_bytes': 0, 'stored_bytes': 0,
            'objects': 0, 'backups_without_stats': 0, 'ratio': None,
            'newest_at': None}


def _add(entry: Dict[str, Any], backup: Any) -> None:
    entry['backups'] += 1
    if backup.parent_id:
        entry['incremental_backups'] += 1
    else:
        entry['full_backups'] += 1
    entry['logical_bytes'] += int(backup.size_bytes or 0)
    stats = backup.stats or {}
    if stats:
        entry['read_bytes'] += int(stats.get('bytes_read') or 0)
        entry['stored_bytes'] += int(stats.get('stored_bytes') or 0)
        entry['objects'] += int(stats.get('objects') or 0)
    else:
        entry['backups_without_stats'] += 1
        entry['objects'] += int(backup.object_count or 0)
    created = backup.created_at
    if created is not None and (entry['newest_at'] is None or
                                created > entry['newest_at']):
        entry['newest_at'] = created


def _ratio(entry: Dict[str, Any]) -> None:
    # Logical over stored, counting only backups that recorded stats.
    counted = entry['logical_bytes']
    if entry['stored_bytes'] and not entry['backups_without_stats']:
        entry['ratio'] = round(counted / entry['stored_bytes'], 3)


def summarize(backups: Iterable[Any]) -> Dict[str, Any]:
    """``{'volumes': [per volume, by path], 'total': {...}}`` of catalog
    records (chunkbackup.catalog.models.Backup).

    ``newest_at`` is a datetime (naive UTC); everything else is exact.
    """
    volumes: Dict[str, Dict[str, Any]] = {}
    total = _empty(None)
    for backup in backups:
        key = getattr(backup, 'volume_path', None) or backup.volume_id
        entry = volumes.setdefault(key, _empty(key))
        if backup.volume_id not in entry['volume_ids']:
            entry['volume_ids'].append(backup.volume_id)
        _add(entry, backup)
        _add(total, backup)
    listed: List[Dict[str, Any]] = []
    for key in sorted(volumes):
        _ratio(volumes[key])
        listed.append(volumes[key])
    _ratio(total)
    del total['volume_ids']
    total['volumes'] = len(listed)
    return {'volumes': listed, 'total': total}
