"""A backup's documents in the store: where they are, reading, writing.

``Location`` names a backup's objects (container and prefix, Cinder's
layout); ``load_chain`` reads and checks the ``_metadata`` of a backup and
its ancestors; block maps are streamed to and from ``_sha256file``.
"""
import dataclasses
from typing import Any, Callable, List, Optional, TYPE_CHECKING

from oslo_log import log as logging

from chunkbackup import backupformat as fmt
from chunkbackup import checksums
from chunkbackup import concurrency
from chunkbackup.engine import blockmap
from chunkbackup import exception
from chunkbackup import pipeline
from chunkbackup.records import BackupLike

if TYPE_CHECKING:
    from chunkbackup.engine.options import EngineOptions
    from chunkbackup.storage.base import ObjectStore

LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Location:
    """Where a backup's objects live: its container and object prefix."""

    container: str
    prefix: str

    @classmethod
    def of(cls, backup: BackupLike) -> 'Location':
        container = getattr(backup, 'container', None)
        prefix = getattr(backup, 'service_metadata', None)
        if not container or not prefix:
            raise exception.InvalidBackup(
                reason='backup %s has no container or object prefix in its '
                       'record: it was never written' % backup.id)
        return cls(container, prefix)

    def data_object(self, number: int) -> str:
        return fmt.data_object_name(self.prefix, number)

    @property
    def metadata(self) -> str:
        return fmt.metadata_name(self.prefix)

    @property
    def sha256file(self) -> str:
        return fmt.sha256file_name(self.prefix)


@dataclasses.dataclass
class Layer:
    """One backup of a chain with its checked metadata."""

    backup: BackupLike
    location: Location
    metadata: fmt.Metadata

    @property
    def container(self) -> str:
        return self.location.container

    @property
    def prefix(self) -> str:
        return self.location.prefix

    @property
    def end(self) -> int:
        """The end of this layer's last object: its volume's size."""
        return max((e.end for e in self.metadata.objects), default=0)


def _missing(backup, location, name, why):
    return exception.BackupIncomplete(
        backup_id=backup.id, container=location.container,
        reason='%s does not exist%s' % (name, why))


def read_metadata(store: 'ObjectStore', backup: BackupLike,
                  location: Location) -> fmt.Metadata:
    try:
        body = store.get(location.container, location.metadata)
    except exception.StorageObjectNotFound:
        raise _missing(backup, location, location.metadata,
                       ': the backup never finished or was deleted')
    return fmt.parse_metadata(body, backup.id, location.metadata)


def read_block_map(store: 'ObjectStore', backup: BackupLike,
                   location: Location, memory_budget: int,
                   temp_dir: Optional[str], missing_ok: bool = False,
                   digests: checksums.Digests = checksums.PLAIN
                   ) -> Optional[blockmap.BlockMap]:
    """The backup's ``_sha256file``, streamed into a block map.

    With ``missing_ok``, None when the backup has no ``_sha256file``
    (Cinder restores such a backup from its objects and their MD5s).
    """
    try:
        chunks = store.get_stream(location.container, location.sha256file)
        return blockmap.read_sha256file(chunks, backup.id,
                                        location.sha256file, memory_budget,
                                        temp_dir, digests)
    except exception.StorageObjectNotFound:
        if missing_ok:
            return None
        raise _missing(backup, location, location.sha256file, '')


def load_chain(store: 'ObjectStore', backup: BackupLike,
               check_listing: bool) -> List[Layer]:
    """The backup's chain, root (full) first, every document checked."""
    layers = []
    seen = set()
    record: Optional[BackupLike] = backup
    while record is not None:
        if record.id in seen:
            raise exception.InvalidBackup(
                reason='the parents of backup %s form a loop at %s'
                       % (backup.id, record.id))
        seen.add(record.id)
        location = Location.of(record)
        metadata = read_metadata(store, record, location)
        if (metadata.parent_id or None) != (record.parent_id or None):
            raise exception.InvalidBackup(
                reason='backup %s: its record names parent %s but its '
                       '_metadata names %s' % (record.id, record.parent_id,
                                               metadata.parent_id))
        if check_listing:
            _check_listing(store, record, location, metadata)
        layers.append(Layer(record, location, metadata))
        parent: Optional[BackupLike] = None
        if record.parent_id:
            parent = getattr(record, 'parent', None)
            if parent is None:
                raise exception.InvalidBackup(
                    reason='parent %s of backup %s is missing from the '
                           'catalog; import or rebuild its record first'
                           % (record.parent_id, record.id))
        record = parent
    layers.reverse()
    return layers


def _listing(store, record, location, metadata):
    """(names listed, names expected) of one backup's data objects."""
    names = set(store.list(location.container, location.prefix))
    names -= {location.metadata, location.sha256file}
    expected = {entry.name for entry in metadata.objects}
    foreign = sorted(n for n in expected
                     if not n.startswith(location.prefix))
    if foreign:
        # Not listed by prefix, so never found; but not missing: invalid.
        raise exception.InvalidBackupMetadata(
            backup_id=record.id, object=location.metadata,
            reason='object name %r is invalid: it does not start with the '
                   "backup's prefix %s" % (foreign[0][:64], location.prefix))
    return names, expected


def missing_objects(store: 'ObjectStore',
                    layer: Layer) -> List[fmt.ObjectEntry]:
    """The entries of a layer's ``_metadata`` that the store lacks."""
    names, expected = _listing(store, layer.backup, layer.location,
                               layer.metadata)
    return [e for e in layer.metadata.objects if e.name not in names]


def _check_listing(store, record, location, metadata):
    names, expected = _listing(store, record, location, metadata)
    missing = sorted(expected - names)
    if missing:
        raise exception.BackupIncomplete(
            backup_id=record.id, container=location.container,
            reason='%d object(s) named in _metadata are missing, first %s'
                   % (len(missing), missing[0]))
    extra = names - expected
    if extra:
        LOG.warning('Container %(c)s holds %(n)d object(s) with the prefix '
                    'of backup %(id)s that its _metadata does not name '
                    '(ignored), e.g. %(e)s',
                    {'c': location.container, 'n': len(extra),
                     'id': record.id, 'e': sorted(extra)[0]})


def common_fields(backup: BackupLike) -> dict:
    """The keys ``_metadata`` and ``_sha256file`` share."""
    return {
        'backup_id': backup.id,
        'volume_id': backup.volume_id,
        'backup_name': getattr(backup, 'display_name', None),
        'backup_description': getattr(backup, 'display_description', None),
        'created_at': str(getattr(backup, 'created_at', None)),
    }


def write_documents(store: 'ObjectStore', backup: BackupLike,
                    location: Location,
                    entries: List[fmt.ObjectEntry],
                    block_map: blockmap.BlockMap, volume_meta: Optional[str],
                    extra_metadata: Optional[dict],
                    flush: Callable[[], None],
                    check_cancel: Optional[Callable[[], None]] = None,
                    keys: Optional[Any] = None) -> None:
    """``_sha256file`` then ``_metadata``, each made durable in turn.

    A backup whose ``_metadata`` exists is complete, so it goes last;
    ``check_cancel`` is asked once more just before it is written. With
    an encrypted chain's ``keys`` (chunkbackup.crypto.envelope), the
    volume's metadata is sealed and ``_metadata`` signed.
    """
    common = common_fields(backup)
    store.put_stream(location.container, location.sha256file,
                     blockmap.sha256file_chunks(block_map, common),
                     extra_metadata)
    flush()
    if check_cancel is not None:
        check_cancel()
    if keys is not None and volume_meta is not None:
        volume_meta = keys.seal_text(volume_meta, backup.id, 'volume_meta')
    metadata = fmt.Metadata(
        parent_id=backup.parent_id or None, objects=entries,
        volume_meta=volume_meta, extra_metadata=extra_metadata,
        encryption=keys.section() if keys is not None else None, **common)
    document = metadata.to_json()
    if keys is not None:
        keys.sign(document)
    store.put(location.container, location.metadata,
              fmt.dumps(document), extra_metadata)
    flush()


def delete_objects(store: 'ObjectStore', container: str, prefix: str,
                   options: 'EngineOptions') -> int:
    """Delete every object with the prefix; return how many there were.

    ``_metadata`` goes first, so an interrupted delete never leaves a
    backup that looks complete.
    """
    try:
        names = set(store.list(container, prefix))
    except exception.StorageContainerNotFound:
        return 0  # a container removed by hand holds nothing to delete
    first = [n for n in (fmt.metadata_name(prefix),
                         fmt.sha256file_name(prefix)) if n in names]
    for name in first:
        store.delete(container, name)
    rest = sorted(names - set(first))
    with concurrency.Executors(options.cpu_threads,
                               options.io_threads) as pools:
        for _ in pipeline.unordered(pools.submit_io, store.delete,
                                    ((container, n) for n in rest),
                                    options.objects_in_flight):
            pass
    return len(names)
