"""What a backup reads: the parent it compares with, and the read plan.

``load_parent`` reads and checks what an incremental compares with.
``plan_reads`` turns a source's allocated ranges and a changed-block map
into segments of READ, HOLE and KNOWN blocks (``sources.classify``),
checking the map first (``mapcheck``): a map that fails the check is
dropped, and the backup reads every allocated block instead.
"""
from typing import Iterable, List, Optional, Tuple, TYPE_CHECKING

from oslo_log import log as logging

from chunkbackup import checksums
from chunkbackup import concurrency
from chunkbackup.engine import backup as backup_writer
from chunkbackup.engine import documents
from chunkbackup.engine import encryption
from chunkbackup.engine import mapcheck
from chunkbackup.engine.options import EngineOptions
from chunkbackup.engine import sources
from chunkbackup import exception
from chunkbackup.records import BackupLike

if TYPE_CHECKING:
    from chunkbackup.storage.base import ObjectStore

LOG = logging.getLogger(__name__)
Range = Tuple[int, int]


def load_parent(store: 'ObjectStore', backup: BackupLike, volume_size: int,
                options: EngineOptions,
                key_source: Optional[encryption.KeySourceFactory] = None
                ) -> backup_writer.Parent:
    """The parent's block map and size, checked against this backup."""
    parent = getattr(backup, 'parent', None)
    if parent is None:
        raise exception.ParentMismatch(
            backup_id=backup.id,
            reason='its parent %s is not in the catalog' % backup.parent_id)
    chain = documents.load_chain(store, parent, check_listing=False)
    keys = encryption.chain_keys(chain, key_source or _no_keys)
    if keys is None and options.encrypts:
        raise exception.ParentMismatch(
            backup_id=backup.id,
            reason='parent %s is not encrypted and [chunkbackup] encryption '
                   '= %s: an incremental keeps its chain\'s encryption; '
                   'make a full backup to start an encrypted chain'
                   % (parent.id, options.encryption))
    parent_size = max(layer.end for layer in chain)
    if volume_size < parent_size:
        raise exception.ParentMismatch(
            backup_id=backup.id,
            reason='the volume is %d bytes, smaller than the %d bytes of '
                   'parent %s; make a full backup' % (
                       volume_size, parent_size, parent.id))
    block_map = documents.read_block_map(
        store, parent, chain[-1].location, options.block_map_memory,
        options.temp_dir, missing_ok=True,
        digests=keys.digests if keys else checksums.PLAIN)
    if block_map is None:
        raise exception.ParentMismatch(
            backup_id=backup.id,
            reason='parent %s has no _sha256file (%s is lost), so there '
                   'are no block digests to compare with; it can still be '
                   'restored, but make a full backup instead of an '
                   'incremental' % (parent.id, chain[-1].location.sha256file))
    bs = block_map.block_size
    problem = None
    if bs != options.sha_block_size:
        problem = ('parent %s was made with sha_block_size %d and this '
                   'driver uses %d; set [chunkbackup] sha_block_size = %d or '
                   'make a full backup' % (parent.id, bs,
                                           options.sha_block_size, bs))
    elif block_map.block_count != -(-parent_size // bs):
        problem = ('the _sha256file of parent %s lists %d blocks but its '
                   'chain restores %d bytes; make a full backup' % (
                       parent.id, block_map.block_count, parent_size))
    if problem:
        block_map.close()
        raise exception.ParentMismatch(backup_id=backup.id, reason=problem)
    return backup_writer.Parent(block_map, parent_size, keys)


def _no_keys():
    raise exception.InvalidConfiguration(
        reason='an encrypted backup was found but no key source was given')


def plan_reads(source: sources.VolumeSource,
               parent: Optional[backup_writer.Parent],
               changed_extents: Optional[Iterable[Range]],
               options: EngineOptions,
               stats: backup_writer.BackupStats) -> List[sources.Segment]:
    """What to read, what is a hole, what the parent vouches for."""
    bs = options.sha_block_size
    block_count = -(-source.size // bs)
    data_ranges = source.data_ranges()
    data = (None if data_ranges is None else
            sources.to_blocks(data_ranges, bs, block_count))
    changed = None
    known_limit = 0
    if parent is not None and changed_extents is not None:
        changed = sources.to_blocks(
            sorted((offset, offset + length)
                   for offset, length in changed_extents), bs, block_count)
        # Only whole parent blocks can be unchanged: a short last block
        # of a volume that grew is a new block.
        known_limit = (parent.block_map.block_count
                       if source.size == parent.size
                       else parent.size // bs)
    segments = list(sources.classify(block_count, data, changed,
                                     known_limit))
    if changed is not None:
        segments = _check_map(source, parent, segments, data, changed,
                              known_limit, options, stats)
    for segment in segments:
        start = segment.first * bs
        length = min(segment.end * bs, source.size) - start
        if segment.kind == sources.HOLE:
            stats.hole_bytes += length
        elif segment.kind == sources.KNOWN:
            stats.known_bytes += length
    return segments


def _check_map(source, parent, segments, data, changed, known_limit,
               options, stats):
    block_count = -(-source.size // options.sha_block_size)
    unchanged_holes: List[Range] = []
    if data is not None:
        # Holes the map vouches for must have been zeros in the parent.
        unchanged = [(s.first, s.end) for s in sources.classify(
            block_count, None, changed, known_limit)
            if s.kind == sources.KNOWN]
        unchanged_holes = intersect(unchanged, complement(data, block_count))
    with concurrency.Executors(options.cpu_threads,
                               options.io_threads) as pools:
        verdict = mapcheck.check(
            source, segments, unchanged_holes, parent.block_map, source.size,
            parent.size, options.changed_extents_sample, pools)
    stats.blocks_sampled = verdict.sampled
    stats.bytes_read += verdict.bytes_read
    if verdict.trusted:
        stats.changed_map = 'used'
        return segments
    stats.changed_map = 'rejected'
    stats.map_mismatch = verdict.reason
    LOG.warning('The changed-block map is wrong (%(why)s); reading the whole '
                'volume instead.', {'why': verdict.reason})
    return list(sources.classify(block_count, data, None, 0))


def complement(ranges: List[Range], limit: int) -> List[Range]:
    """The parts of [0, limit) that sorted, disjoint ``ranges`` miss."""
    out = []
    cursor = 0
    for start, end in ranges:
        if start > cursor:
            out.append((cursor, start))
        cursor = max(cursor, end)
    if cursor < limit:
        out.append((cursor, limit))
    return out


def intersect(a: List[Range], b: List[Range]) -> List[Range]:
    """The intersection of two sorted lists of disjoint ranges."""
    out = []
    i = j = 0
    while i < len(a) and j < len(b):
        start = max(a[i][0], b[j][0])
        end = min(a[i][1], b[j][1])
        if start < end:
            out.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out
