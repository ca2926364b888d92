"""The restore plan: a chain's metadata in, what to fetch and write out.

Pure: it reads no store. ``check_chain`` rejects a chain whose metadata
cannot describe a volume (overlapping or unaligned objects); ``plan``
then works out which layer owns each byte of the final image (the newest
layer wins), which objects still own something and must be fetched, and
which ranges are zeros: objects whose blocks are all zeros in the target's
block map, and ranges no object covers (a thin backup's holes), which the
block map must say are zeros.

A backup whose ``_sha256file`` is lost has no block map: Cinder restores
it from its objects alone, and so does this plan, but then nothing can
vouch for bytes no object holds, so the chain's objects must cover every
byte (Cinder's always do), and every object is fetched (its MD5 checked).
"""
import bisect
import dataclasses
from typing import Any, List, Optional, Tuple

from chunkbackup import backupformat as fmt
from chunkbackup import checksums
from chunkbackup.engine import blockmap
from chunkbackup.engine import documents
from chunkbackup import exception

Range = Tuple[int, int]
# Digests compared at a time when checking long zero ranges.
_CHECK_BLOCKS = 16384


@dataclasses.dataclass
class Fetch:
    """An object to fetch, and the byte ranges of the image it supplies."""

    layer: documents.Layer
    entry: fmt.ObjectEntry
    pieces: List[Range]

    @property
    def supplied(self) -> int:
        return sum(end - start for start, end in self.pieces)


@dataclasses.dataclass
class RestorePlan:
    size: int
    block_size: int
    # None: the target's _sha256file is lost (only MD5s can be checked).
    block_map: Optional[blockmap.BlockMap]
    fetches: List[Fetch]
    zero_runs: List[Range]
    chain: List[documents.Layer]
    # An encrypted chain's keys (chunkbackup.crypto.envelope.ChainKeys).
    keys: Optional[Any] = None

    @property
    def digests(self) -> checksums.Digests:
        """How the chain's blocks and objects were digested."""
        return self.keys.digests if self.keys else checksums.PLAIN

    @property
    def zero_bytes(self) -> int:
        return sum(end - start for start, end in self.zero_runs)

    def close(self) -> None:
        if self.block_map is not None:
            self.block_map.close()


class _Claims:
    """Disjoint claimed byte ranges: newest layer first, first claim wins."""

    def __init__(self):
        self.starts: List[int] = []
        self.ends: List[int] = []

    def claim(self, start: int, end: int) -> List[Range]:
        """Claim [start, end); return the parts nobody had claimed."""
        lo = bisect.bisect_left(self.ends, start)
        hi = bisect.bisect_right(self.starts, end)
        free = []
        cursor = start
        for s, e in zip(self.starts[lo:hi], self.ends[lo:hi]):
            if s > cursor:
                free.append((cursor, min(s, end)))
            cursor = max(cursor, e)
        if cursor < end:
            free.append((cursor, end))
        if lo < hi:
            start = min(start, self.starts[lo])
            end = max(end, self.ends[hi - 1])
        self.starts[lo:hi] = [start]
        self.ends[lo:hi] = [end]
        return [(a, b) for a, b in free if a < b]

    def gaps(self, size: int) -> List[Range]:
        """The ranges of [0, size) nobody claimed."""
        out = []
        cursor = 0
        for s, e in zip(self.starts, self.ends):
            if s > cursor:
                out.append((cursor, s))
            cursor = max(cursor, e)
        if cursor < size:
            out.append((cursor, size))
        return out


def _invalid(layer: documents.Layer, reason: str):
    return exception.InvalidBackupMetadata(
        backup_id=layer.backup.id, object=layer.location.metadata,
        reason=reason)


def check_chain(chain: List[documents.Layer], block_size: int) -> int:
    """Check the chain's objects describe a volume; return its size.

    Objects must start on a block and end on one, or at that layer's
    volume end (its last object's end). Objects of a layer may overlap
    (a folded backup's do, see ``engine.fold``): the later one in
    ``_metadata`` wins, as in Cinder's restore, which writes them in list
    order; every restored block is still checked against the block map.
    An object may then end inside a block that a later object rewrites
    whole.
    """
    for layer in chain:
        entries = layer.metadata.objects
        objects = sorted(entries, key=lambda e: e.offset)
        layer_end = layer.end
        position = {id(e): i for i, e in enumerate(entries)}
        for entry in objects:
            tail = entry.end - entry.end % block_size
            if entry.offset % block_size or (
                    entry.end % block_size and entry.end != layer_end
                    and not any(later.offset <= tail
                                and later.end >= entry.end
                                for later in entries[position[id(entry)]
                                                     + 1:])):
                raise _invalid(layer, 'object %s holds bytes %d-%d, which '
                               'are not aligned to the %d-byte SHA blocks'
                               % (entry.name, entry.offset, entry.end,
                                  block_size))
    return max((layer.end for layer in chain), default=0)


def plan(chain: List[documents.Layer],
         block_map: Optional[blockmap.BlockMap], size: int,
         block_size: Optional[int] = None) -> RestorePlan:
    """Work out the restore of the chain's last backup (see module doc).

    ``block_size`` is used only without a block map: the granularity at
    which restored zeros are found by content.
    """
    if block_map is None:
        return _plan_without_block_map(chain, size, block_size)
    target = chain[-1]
    bs = block_map.block_size
    if block_map.block_count != -(-size // bs):
        raise exception.InvalidBackupMetadata(
            backup_id=target.backup.id, object=target.location.sha256file,
            reason='it lists %d blocks but the objects of the chain make a '
                   '%d-byte volume' % (block_map.block_count, size))
    zeros = _ZeroCheck(block_map, size)
    claims = _Claims()
    fetches = []
    for layer in reversed(chain):
        # A folded layer's later objects win where they overlap earlier.
        for entry in reversed(layer.metadata.objects):
            pieces = claims.claim(entry.offset, entry.end)
            if pieces:
                fetches.append(Fetch(layer, entry, pieces))
    zero_runs = []
    for start, end in claims.gaps(size):
        if not zeros.all_zero(start, end):
            raise exception.InvalidBackupMetadata(
                backup_id=target.backup.id, object=target.location.metadata,
                reason='no object of the chain holds the bytes at offset %d'
                       ', and they are not zeros' % zeros.first_nonzero)
        zero_runs.append((start, end))
    fetches.sort(key=lambda f: f.entry.offset)
    to_fetch = []
    for fetch in fetches:
        if all(zeros.all_zero(start, end) for start, end in fetch.pieces):
            zero_runs.extend(fetch.pieces)
        else:
            to_fetch.append(fetch)
    zero_runs.sort()
    return RestorePlan(size, bs, block_map, to_fetch, _merge(zero_runs),
                       chain)


def _plan_without_block_map(chain, size, block_size) -> RestorePlan:
    target = chain[-1]
    claims = _Claims()
    fetches = []
    for layer in reversed(chain):
        # A folded layer's later objects win where they overlap earlier.
        for entry in reversed(layer.metadata.objects):
            pieces = claims.claim(entry.offset, entry.end)
            if pieces:
                fetches.append(Fetch(layer, entry, pieces))
    gaps = claims.gaps(size)
    if gaps:
        raise exception.InvalidBackupMetadata(
            backup_id=target.backup.id, object=target.location.metadata,
            reason='no object of the chain holds the bytes at offset %d, '
                   'and without its _sha256file (%s) nothing says they are '
                   'zeros; restore an older backup of the chain'
                   % (gaps[0][0], target.location.sha256file))
    fetches.sort(key=lambda f: f.entry.offset)
    return RestorePlan(size, block_size, None, fetches, [], chain)


def restrict(plan: RestorePlan, offset: int, length: int) -> RestorePlan:
    """The part of ``plan`` that supplies bytes [offset, offset + length).

    Only the objects that overlap the range are fetched. Their pieces are
    cut to it, widened to whole blocks so that every block is still
    checked whole; the sink (``RangeSink``) writes only the range.
    """
    end = offset + length
    if offset < 0 or length <= 0 or end > plan.size:
        raise exception.InvalidBackup(
            reason='the range of %d bytes at offset %d is not inside the '
                   'volume of %d bytes; give --offset and --length within '
                   'it' % (length, offset, plan.size))
    bs = plan.block_size or 1
    lo, hi = offset // bs * bs, min(plan.size, -(-end // bs) * bs)

    def cut(ranges: List[Range]) -> List[Range]:
        return [(max(a, lo), min(b, hi)) for a, b in ranges
                if a < hi and b > lo]

    fetches = []
    for fetch in plan.fetches:
        pieces = cut(fetch.pieces)
        if pieces:
            fetches.append(dataclasses.replace(fetch, pieces=pieces))
    return dataclasses.replace(plan, fetches=fetches,
                               zero_runs=cut(plan.zero_runs))


def _merge(ranges: List[Range]) -> List[Range]:
    out: List[List[int]] = []
    for start, end in ranges:
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


class _ZeroCheck:
    """Whether byte ranges are zeros according to a block map."""

    def __init__(self, block_map: blockmap.BlockMap, size: int):
        self.block_map = block_map
        self.size = size
        bs = block_map.block_size
        zero = block_map.digests.zero
        self.full = zero(bs)
        self.tail = zero(size % bs) if size % bs else None
        self.first_nonzero = 0

    def all_zero(self, start: int, end: int) -> bool:
        bs = self.block_map.block_size
        first, last = start // bs, -(-end // bs)
        for chunk_first in range(first, last, _CHECK_BLOCKS):
            count = min(_CHECK_BLOCKS, last - chunk_first)
            expected = self.full * count
            if self.tail is not None and chunk_first + count == \
                    -(-self.size // bs):
                expected = self.full * (count - 1) + self.tail
            got = self.block_map.read(chunk_first, count)
            if got != expected:
                self._note(chunk_first, got, expected)
                return False
        return True

    def _note(self, first, got, expected):
        size = fmt.DIGEST_SIZE
        for i in range(0, len(got), size):
            if got[i:i + size] != expected[i:i + size]:
                self.first_nonzero = (first + i // size) * \
                    self.block_map.block_size
                return
