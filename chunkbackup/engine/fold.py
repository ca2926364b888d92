"""Re-homing objects: folding a backup into its child, synthetic fulls.

Both work on documents alone, never on the volume:

- **Fold** (forget backup B whose child C exists): the objects of B that
  still own bytes of C's image (the restore plan's rule: the newest layer
  wins, and within a layer the later object in ``_metadata``) are copied
  under C's prefix, server-side (``ObjectStore.copy``). C's new
  ``_metadata`` lists them first, then C's own objects, and names B's
  parent as its parent. Cinder's restore writes a chain's objects in list
  order at their offsets, so C's objects still overwrite B's where they
  overlap; C's image is unchanged, and so is its ``_sha256file``.
- **Synthetic full**: every object of a chain that owns bytes of the
  newest image is copied under a new backup's prefix; its ``_metadata``
  lists them oldest layer first, with no parent, and its ``_sha256file``
  is the newest one's digests (with the new backup's ids).

The plans are pure (``plan_fold``, ``plan_synthetic``); ``copy_objects``
and ``write_metadata`` do the I/O. Copies are made under names no
``_metadata`` names yet, so until the new ``_metadata`` replaces the old
one (one atomic overwrite) the old form is intact; afterwards the new
form is complete.
"""
import dataclasses
import re
from typing import Dict, List, Optional, Sequence, Tuple, TYPE_CHECKING

from chunkbackup import backupformat as fmt
from chunkbackup import checksums
from chunkbackup import compression
from chunkbackup import concurrency
from chunkbackup.crypto import envelope
from chunkbackup.engine import documents
from chunkbackup.engine import plan as restore_plan
from chunkbackup import pipeline

if TYPE_CHECKING:
    from chunkbackup.crypto.envelope import ChainKeys
    from chunkbackup.engine import blockmap
    from chunkbackup.engine.options import EngineOptions
    from chunkbackup.storage.base import ObjectStore

# (source container, source name, entry under its new name)
Copy = Tuple[str, str, fmt.ObjectEntry]
Range = Tuple[int, int]
_NUMBER = re.compile(r'-(\d+)$')


@dataclasses.dataclass
class Rehoming:
    """What a fold or synthetic full copies, and the ``_metadata`` after."""

    location: documents.Location   # where the copies go (C, or the new)
    copies: List[Copy]
    metadata: fmt.Metadata
    dropped: List[fmt.ObjectEntry]  # objects that own nothing any more
    # Each copy's pieces: the ranges of the image it owns.
    pieces: Dict[str, List[Range]] = dataclasses.field(default_factory=dict)
    # Copies to be rewritten with only their pieces (see make_base_safe):
    # name in metadata -> names of the new objects, one per piece.
    rewrites: Dict[str, List[str]] = dataclasses.field(default_factory=dict)

    @property
    def copied_names(self) -> List[str]:
        return [entry.name for _, _, entry in self.copies]


def owners(layers: Sequence[documents.Layer]
           ) -> List[Tuple[documents.Layer, fmt.ObjectEntry, List[Range]]]:
    """The objects that own bytes of the last layer's image, oldest first.

    Newest layer first, later objects of a layer first: the first to claim
    a byte owns it (as ``engine.plan`` restores).
    """
    claims = restore_plan._Claims()
    owning = []
    for layer in reversed(layers):
        for entry in reversed(layer.metadata.objects):
            pieces = claims.claim(entry.offset, entry.end)
            if pieces:
                owning.append((layer, entry, pieces))
    owning.reverse()
    return owning


def _next_number(location: documents.Location,
                 entries: Sequence[fmt.ObjectEntry]) -> int:
    numbers = [0]
    for entry in entries:
        if entry.name.startswith(location.prefix + '-'):
            match = _NUMBER.search(entry.name)
            if match:
                numbers.append(int(match.group(1)))
    return max(numbers) + 1


def plan_fold(parent: documents.Layer,
              child: documents.Layer) -> Rehoming:
    """Fold ``parent`` (B) into ``child`` (C): see the module doc.

    The names of the copies continue C's numbering, so planning the same
    fold again (a clean-up finishing it) gives the same names.
    """
    kept = owners([parent, child])
    kept_of_parent = [(entry, pieces) for layer, entry, pieces in kept
                      if layer is parent]
    kept_ids = {id(entry) for entry, _ in kept_of_parent}
    dropped = [e for e in parent.metadata.objects if id(e) not in kept_ids]
    number = _next_number(child.location, child.metadata.objects)
    copies = []
    owned = {}
    for entry, pieces in kept_of_parent:
        name = fmt.data_object_name(child.location.prefix, number)
        number += 1
        copies.append((parent.container, entry.name,
                       _rehomed(parent, entry, name)))
        owned[name] = pieces
    metadata = dataclasses.replace(
        child.metadata, parent_id=parent.metadata.parent_id or None,
        objects=[c[2] for c in copies] + list(child.metadata.objects))
    return Rehoming(child.location, copies, metadata, dropped, owned)


def _rehomed(layer: documents.Layer, entry: fmt.ObjectEntry,
             name: str) -> fmt.ObjectEntry:
    """The entry of a copy: a sealed object keeps what it was sealed as."""
    if layer.metadata.encryption is None:
        return dataclasses.replace(entry, name=name)
    return envelope.rehomed(entry, layer.backup.id, name)


def plan_synthetic(chain: Sequence[documents.Layer],
                   location: documents.Location,
                   common: dict) -> Rehoming:
    """A full backup at ``location`` with the chain's newest image.

    ``common`` are the new backup's ids and names (``_metadata`` keys).
    """
    target = chain[-1]
    copies = []
    owned = {}
    for number, (layer, entry, pieces) in enumerate(owners(chain),
                                                    start=1):
        name = fmt.data_object_name(location.prefix, number)
        copies.append((layer.container, entry.name,
                       _rehomed(layer, entry, name)))
        owned[name] = pieces
    metadata = fmt.Metadata(
        parent_id=None, objects=[c[2] for c in copies],
        volume_meta=target.metadata.volume_meta,
        extra_metadata=target.metadata.extra_metadata,
        encryption=target.metadata.encryption, **common)
    return Rehoming(location, copies, metadata, [], owned)


def make_base_safe(rehoming: Rehoming, block_map: 'blockmap.BlockMap',
                   size: int) -> None:
    """Keep a full backup's overlaps away from Cinder's zero skipping.

    Cinder restores the base (full) backup of a chain onto a new volume
    writing only the non-zero MiB of each object, so where a later object
    of a full backup holds zeros over an earlier one's data, Cinder would
    leave the earlier data. A result with no parent (a fold of a full, a
    synthetic full) therefore has each copy that later objects overwrite
    where the image holds a zero block rewritten with only the pieces it
    owns (read through the client, see ``rewrite``): no overlap is left
    where zeros matter. Incrementals are written whole by Cinder, and keep
    their server-side copies.
    """
    if rehoming.metadata.parent_id:
        return
    bs = block_map.block_size
    last = -(-size // bs) - 1
    zero = block_map.digests.zero
    full, tail = zero(bs), zero(size - last * bs)
    number = _next_number(rehoming.location, rehoming.metadata.objects)
    for _src_container, _src_name, entry in rehoming.copies:
        pieces = rehoming.pieces.get(entry.name, [(entry.offset, entry.end)])
        if pieces == [(entry.offset, entry.end)]:
            continue
        if not _zeros_in(_overwritten(entry, pieces), block_map, bs, last,
                         full, tail):
            continue
        names = []
        for _piece in pieces:
            names.append(fmt.data_object_name(rehoming.location.prefix,
                                              number))
            number += 1
        rehoming.rewrites[entry.name] = names


def _overwritten(entry: fmt.ObjectEntry,
                 pieces: List[Range]) -> List[Range]:
    out = []
    cursor = entry.offset
    for start, end in pieces:
        if start > cursor:
            out.append((cursor, start))
        cursor = end
    if cursor < entry.end:
        out.append((cursor, entry.end))
    return out


def _zeros_in(ranges: List[Range], block_map: 'blockmap.BlockMap', bs: int,
              last: int, full: bytes, tail: bytes) -> bool:
    size = fmt.DIGEST_SIZE
    for start, end in ranges:
        first, stop = start // bs, -(-end // bs)
        got = block_map.read(first, stop - first)
        for i in range(stop - first):
            zero = tail if first + i == last else full
            if got[i * size:(i + 1) * size] == zero:
                return True
    return False


def rewrite(store: 'ObjectStore', rehoming: Rehoming,
            compressor: 'compression.Compressor',
            keys: Optional['ChainKeys'] = None, backup_id: str = '') -> None:
    """Make the rewrites ``make_base_safe`` chose, and put their objects in
    the new ``_metadata`` in place of the copies they replace.

    An encrypted chain's object is opened and its pieces sealed anew for
    ``backup_id`` (the backup they now belong to).
    """
    if not rehoming.rewrites:
        return
    container = rehoming.location.container
    replaced: Dict[str, List[fmt.ObjectEntry]] = {}
    keep = []
    for src_container, src_name, entry in rehoming.copies:
        names = rehoming.rewrites.get(entry.name)
        if names is None:
            keep.append((src_container, src_name, entry))
            continue
        stored_body = store.get(src_container, src_name)
        if keys is not None:
            sealed_backup, sealed_name = envelope.sealed_for(entry, '')
            stored_body = b''.join(keys.open(
                [stored_body], sealed_backup, sealed_name, entry.offset))
        body = compression.decompress(entry.compression, stored_body,
                                      entry.length)
        digests = keys.digests if keys is not None else checksums.PLAIN
        new_entries = []
        for name, (start, end) in zip(names,
                                      rehoming.pieces[entry.name]):
            data = body[start - entry.offset:end - entry.offset]
            label, stored = compressor.compress(data)
            if keys is not None:
                stored = b''.join(keys.sealer(backup_id, name).seal_all(
                    [stored]))
            store.put(container, name, bytes(stored))
            md5 = digests.object_hasher()
            md5.update(data)
            new_entries.append(fmt.ObjectEntry(
                name, start, end - start, label, md5.hexdigest()))
        replaced[entry.name] = new_entries
    rehoming.copies = keep
    objects: List[fmt.ObjectEntry] = []
    for entry in rehoming.metadata.objects:
        objects.extend(replaced.get(entry.name, [entry]))
    rehoming.metadata = dataclasses.replace(rehoming.metadata,
                                            objects=objects)


def copy_objects(store: 'ObjectStore', rehoming: Rehoming,
                 options: 'EngineOptions',
                 check: Optional[object] = None) -> int:
    """Make every copy (in parallel, server-side); return how many."""
    container = rehoming.location.container
    items = [(src_container, src_name, container, entry.name)
             for src_container, src_name, entry in rehoming.copies]
    done = 0
    with concurrency.Executors(options.cpu_threads,
                               options.io_threads) as pools:
        for _ in pipeline.unordered(pools.submit_io, store.copy, items,
                                    options.objects_in_flight):
            done += 1
    return done


def write_metadata(store: 'ObjectStore', location: documents.Location,
                   metadata: fmt.Metadata,
                   keys: Optional['ChainKeys'] = None) -> None:
    """Replace (or write) ``_metadata``: one atomic put (signed anew when
    the chain is encrypted).
    """
    document = metadata.to_json()
    if keys is not None:
        keys.sign(document)
    store.put(location.container, location.metadata, fmt.dumps(document),
              metadata.extra_metadata
              if isinstance(metadata.extra_metadata, dict) else None)


def stray_copies(store: 'ObjectStore', layer: documents.Layer) -> List[str]:
    """Objects with the layer's prefix that its ``_metadata`` does not
    name: copies of a fold that never replaced the ``_metadata``.
    """
    names = set(store.list(layer.container, layer.prefix))
    names -= {layer.location.metadata, layer.location.sha256file}
    return sorted(names - {e.name for e in layer.metadata.objects})
