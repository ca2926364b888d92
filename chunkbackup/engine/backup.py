"""The backup writer: a volume in, data objects and a block map out.

The volume is walked in volume order as segments of READ, HOLE and KNOWN
blocks (see ``sources.classify``). Object-size windows that hold READ
blocks are read into reused buffers and hashed, diffed, MD5'd and
compressed on native threads while later windows are read and earlier
objects stored; long stretches of holes or of blocks a changed-block map
vouches for are bulk items that cost digest arithmetic, not I/O.

A full backup stores each run of read blocks (short holes between runs
are stored as zeros, long ones left out). An incremental stores each run of
blocks whose digest differs from the parent's (past the parent's end, from
zeros). Whatever was skipped, every backup stores an object that reaches
the volume's end, so readers derive the volume size from the objects.
"""
import concurrent.futures
import dataclasses
import functools
import hashlib
import threading
from typing import (Any, Dict, List, Optional, Sequence, Tuple, TYPE_CHECKING,
                    Union)

from chunkbackup import backupformat as fmt
from chunkbackup import checksums
from chunkbackup import concurrency
from chunkbackup.engine import blockmap
from chunkbackup.engine import documents
from chunkbackup.engine import sources
from chunkbackup import pipeline

if TYPE_CHECKING:
    from chunkbackup.chunked import Run
    from chunkbackup.compression import Compressor
    from chunkbackup.engine.options import EngineOptions
    from chunkbackup.storage.base import ObjectStore

# Blocks in one bulk item of holes or map-vouched blocks: 512 MiB of a
# volume at the default block size, 512 KiB of digests.
BULK_BLOCKS = 16384
# A full backup stores two runs of data as one object when a hole of at
# most this many bytes lies between them: fewer objects, and the zeros
# cost little. Longer holes are left out (their MD5 would not be free).
HOLE_MERGE_GAP = 2 ** 20


@dataclasses.dataclass
class BackupStats:
    """What a backup did, for its record and for people."""

    volume_size: int = 0
    bytes_read: int = 0
    hole_bytes: int = 0
    known_bytes: int = 0
    stored_bytes: int = 0
    stored_logical_bytes: int = 0
    objects: int = 0
    changed_map: Optional[str] = None  # None, 'used' or 'rejected'
    blocks_sampled: int = 0
    map_mismatch: Optional[str] = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Parent:
    """What an incremental compares with.

    The parent's block map, and the size its chain restores to.
    """

    block_map: blockmap.BlockMap
    size: int


class Zeros:
    """What zeros hash and compress to, computed once.

    Zero regions then cost one memcmp (~30 GB/s) instead of SHA-256, MD5
    and compression, and still become ordinary objects Cinder restores.
    """

    def __init__(self, block_size: int, piece_size: int,
                 compressor: 'Compressor') -> None:
        self.block_size = block_size
        self.piece = bytes(piece_size)
        self.view = memoryview(self.piece)
        self.block = self.piece[:block_size]
        self.block_digest = fmt.zero_digest(block_size)
        self.compressor = compressor
        self._encoded: Dict[int, Tuple[str, bytes, str]] = {}
        self._lock = concurrency.native_lock()

    def is_zero(self, data: Union[bytes, memoryview]) -> bool:
        return len(data) <= len(self.piece) and self.piece.startswith(data)

    @functools.lru_cache(maxsize=16)
    def digests(self, length: int) -> bytes:
        """The digests of ``length`` zero bytes cut into blocks."""
        full, tail = divmod(length, self.block_size)
        return self.block_digest * full + (
            fmt.zero_digest(tail) if tail else b'')

    def encoded(self, length: int) -> Tuple[str, bytes, str]:
        """(label, body, md5) of ``length`` zero bytes, computed once."""
        with self._lock:  # CPU threads race for the first zero piece
            found = self._encoded.get(length)
            if found is None:
                data = self.view[:length]
                label, body = self.compressor.compress(data)
                found = (label, bytes(body), checksums.md5_hex(data))
                if len(self._encoded) > 64:
                    self._encoded.clear()
                self._encoded[length] = found
            return found


class BufferPool:
    """Window buffers, reused, at most ``limit`` alive at once.

    Reading into a buffer that is already mapped costs one copy; a fresh
    32 MiB object also costs page faults and zeroing, which measured
    slower than the SHA-256 of the same data. ``take`` waits while
    ``limit`` buffers are out: buffers come back when the pipeline is
    done with them or when the raw writes that hold them end, which
    never needs the waiting thread, so the limit bounds memory without a
    deadlock as long as it exceeds the pipeline's window.
    """

    def __init__(self, size: int, limit: int):
        self.size = size
        self.limit = limit
        self.out = 0
        self._free: List[bytearray] = []
        self._cond = threading.Condition()

    def take(self) -> bytearray:
        with self._cond:
            while self.out >= self.limit:
                self._cond.wait()
            self.out += 1
            if self._free:
                return self._free.pop()
        return bytearray(self.size)

    def give(self, buffer: bytearray) -> None:
        with self._cond:
            self.out -= 1
            self._free.append(buffer)
            self._cond.notify()

    def give_after(self, buffer: Optional[bytearray],
                   futures: Sequence[concurrent.futures.Future]) -> None:
        """Give ``buffer`` back once ``futures`` (its raw writes) are done."""
        if buffer is None:
            return
        if not futures:
            self.give(buffer)
            return
        left = [len(futures)]

        def done(_future):
            with self._cond:
                left[0] -= 1
                last = left[0] == 0
            if last:
                self.give(buffer)

        for future in futures:
            future.add_done_callback(done)


@dataclasses.dataclass
class _Extent:
    offset: int
    length: int
    label: str
    body: Any
    md5: str
    # The body is (a view of) the window's buffer, stored raw.
    in_buffer: bool = False


@dataclasses.dataclass
class _Work:
    """Blocks [first, end) to process as one item, by piece kind."""

    first: int
    end: int
    pieces: List[Tuple[int, int, str]]
    buffer: Optional[bytearray] = None
    filled: bool = False
    read: int = 0  # bytes read from the volume into the buffer


@dataclasses.dataclass
class _Result:
    digests: bytes
    extents: List[_Extent]
    buffer: Optional[bytearray]
    length: int
    read: int


class BackupWriter:
    """Writes one backup's data objects and builds its block map."""

    def __init__(self, store: 'ObjectStore', options: 'EngineOptions',
                 compressor: 'Compressor', zeros: Zeros) -> None:
        self.store = store
        self.options = options
        self.compressor = compressor
        self.zeros = zeros
        self.bs = options.sha_block_size
        self.window_blocks = options.object_size // self.bs
        # The objects stored so far, in order (progress reports list them).
        self.entries: List[fmt.ObjectEntry] = []

    def write(self, location: documents.Location,
              source: sources.VolumeSource, segments: List[sources.Segment],
              parent: Optional[Parent], extra_metadata: Optional[dict],
              run: 'Run', stats: BackupStats
              ) -> Tuple[List[fmt.ObjectEntry], blockmap.BlockMap]:
        """Store the volume's objects; return their entries and the map."""
        self.size = source.size
        self.block_count = -(-source.size // self.bs)
        self.parent = parent
        self.parent_blocks = parent.block_map.block_count if parent else 0
        block_map = blockmap.BlockMap(self.bs, self.options.block_map_memory,
                                      self.options.temp_dir)
        entries = self.entries
        entries.clear()
        window = self.options.objects_in_flight
        # The window's buffers and one more (being filled, or written raw).
        pool = BufferPool(self.options.object_size, window + 1)
        process = functools.partial(self._process, source)
        try:
            with concurrency.Executors(self.options.cpu_threads,
                                       self.options.io_threads) as pools:
                # Bounded in bytes: many small objects (an incremental's
                # runs) may be stored at once, large ones a few at a time.
                writes = pipeline.Window(
                    self.options.io_threads,
                    max_bytes=window * self.options.object_size)
                try:
                    results = pipeline.ordered(
                        pools.submit_cpu, process,
                        self._work_items(segments, source, pool), window)
                    for result in results:
                        block_map.append(result.digests)
                        self._store_extents(result, entries, location,
                                            pools, writes, pool,
                                            extra_metadata, stats)
                        stats.bytes_read += result.read
                        run.advance(result.length)
                        run.check_cancel()
                    self._store_volume_end(entries, location, pools, writes,
                                           extra_metadata, stats)
                    writes.drain()
                except BaseException:
                    writes.cancel()
                    raise
        except BaseException:
            block_map.close()
            raise
        return entries, block_map

    # ------------------------------------------------------------------
    # Work items, in volume order.

    def _work_items(self, segments, source, pool):
        """Yield (work,): windows with READ blocks, and bulk stretches."""
        wb = self.window_blocks
        bucket: List[Tuple[int, int, str]] = []
        for segment in segments:
            first, end, kind = segment.first, segment.end, segment.kind
            while first < end:
                window_end = min((first // wb + 1) * wb, self.block_count)
                if bucket and first >= self._window_end(bucket[0][0]):
                    yield self._window(bucket, source, pool)
                    bucket = []
                if kind != sources.READ and not bucket and first % wb == 0 \
                        and end >= window_end:
                    # Whole windows of one kind: no buffer, no reading.
                    whole = min(end, first + BULK_BLOCKS)
                    if whole < end or end == self.block_count:
                        stop = whole
                    else:
                        stop = max(window_end, end // wb * wb)
                    yield (_Work(first, stop, [(first, stop, kind)]),)
                    first = stop
                    continue
                stop = min(end, window_end)
                bucket.append((first, stop, kind))
                first = stop
        if bucket:
            yield self._window(bucket, source, pool)

    def _window_end(self, block: int) -> int:
        return min((block // self.window_blocks + 1) * self.window_blocks,
                   self.block_count)

    def _window(self, pieces, source, pool):
        work = _Work(pieces[0][0], pieces[-1][1], pieces)
        if any(kind == sources.READ for _, _, kind in pieces):
            work.buffer = pool.take()
            if not source.parallel_reads:
                self._fill(source, work)  # in order, on this thread
        return (work,)

    def _byte_range(self, first: int, end: int) -> Tuple[int, int]:
        return first * self.bs, min(end * self.bs, self.size)

    def _fill(self, source, work: _Work) -> None:
        """Read the READ pieces into the buffer (holes are left alone)."""
        if work.filled or work.buffer is None:
            return
        view = memoryview(work.buffer)
        base = work.first * self.bs
        read = 0
        for first, end, kind in work.pieces:
            start, stop = self._byte_range(first, end)
            target = view[start - base:stop - base]
            if kind == sources.READ:
                got = source.read_into(start, target)
                read += got
                if got < len(target):  # the volume shrank under us
                    target[got:] = self.zeros.view[:len(target) - got]
        work.filled = True
        work.read = read

    # ------------------------------------------------------------------
    # Processing one item (on a native thread).

    def _process(self, source, work: _Work) -> _Result:
        self._fill(source, work)
        start, stop = self._byte_range(work.first, work.end)
        view = memoryview(work.buffer) if work.buffer is not None else None
        digests = b''.join(self._digests(view, work, first, end, kind)
                           for first, end, kind in work.pieces)
        runs = self._stored_runs(work, digests)
        self._zero_stored_holes(work, runs)
        extents = [self._extent(view, work, a, b) for a, b in runs]
        return _Result(digests, extents, work.buffer, stop - start,
                       work.read)

    def _zero_stored_holes(self, work: _Work, runs) -> None:
        """Zero the holes inside stored runs, and only those.

        A window with a little data is mostly hole: zeroing all of it
        would cost a memcpy of the whole window for nothing.
        """
        if work.buffer is None:
            return
        view = memoryview(work.buffer)
        base = work.first * self.bs
        for first, end, kind in work.pieces:
            if kind != sources.HOLE:
                continue
            for run_first, run_end in runs:
                lo, hi = max(first, run_first), min(end, run_end)
                if lo < hi:
                    start, stop = self._byte_range(lo, hi)
                    view[start - base:stop - base] = \
                        self.zeros.view[:stop - start]

    def _digests(self, view, work, first, end, kind) -> bytes:
        start, stop = self._byte_range(first, end)
        if kind == sources.HOLE:
            return self.zeros.digests(stop - start)
        if kind == sources.KNOWN:
            return self._parent_map().read(first, end - first)
        base = work.first * self.bs
        return self._hash(work.buffer, start - base, stop - base)

    def _hash(self, buffer: bytearray, start: int, stop: int) -> bytes:
        """Block digests of buffer[start:stop]; zero blocks by memcmp."""
        zeros = self.zeros
        view = memoryview(buffer)
        if zeros.is_zero(view[start:stop]):
            return zeros.digests(stop - start)
        bs = self.bs
        sha256 = hashlib.sha256
        zero_block, zero_digest = zeros.block, zeros.block_digest
        out = []
        # bytearray.startswith is a memcmp; comparing memoryviews is not.
        for i in range(start, stop - bs + 1, bs):
            if buffer.startswith(zero_block, i):
                out.append(zero_digest)
            else:
                out.append(sha256(view[i:i + bs]).digest())
        tail = (stop - start) % bs
        if tail:
            out.append(sha256(view[stop - tail:stop]).digest())
        return b''.join(out)

    def _parent_map(self) -> blockmap.BlockMap:
        assert self.parent is not None, 'only incrementals have a parent'
        return self.parent.block_map

    def _base_digests(self, first: int, end: int) -> bytes:
        """The parent's digests of blocks [first, end); zeros past its end."""
        known_end = min(end, self.parent_blocks)
        parts = []
        if first < known_end:
            parts.append(self._parent_map().read(first, known_end - first))
        if end > max(first, known_end):
            start, stop = self._byte_range(max(first, known_end), end)
            parts.append(self.zeros.digests(stop - start))
        return b''.join(parts)

    def _stored_runs(self, work: _Work, digests: bytes):
        """Block runs [a, b) of the item to store as objects."""
        if self.parent is None:
            return self._full_runs(work)
        base = self._base_digests(work.first, work.end)
        if base == digests:
            return []
        size = fmt.DIGEST_SIZE
        gap = self.options.incremental_merge_gap // self.bs
        runs: List[List[int]] = []
        for first, end, kind in work.pieces:
            if kind == sources.KNOWN:
                continue
            for b in range(first, end):
                k = (b - work.first) * size
                if base[k:k + size] == digests[k:k + size]:
                    continue
                if runs and self._mergeable(runs[-1][1], b, gap, work):
                    runs[-1][1] = b + 1
                else:
                    runs.append([b, b + 1])
        return self._split_at_windows(runs)

    def _mergeable(self, run_end: int, block: int, gap: int,
                   work: _Work) -> bool:
        if block - run_end > gap:
            return False
        if (run_end // self.window_blocks) != (block // self.window_blocks):
            return False
        # Blocks in between become part of the object: they must be in
        # the buffer (read, or zeros), never vouched for by a map.
        return all(kind != sources.KNOWN or end <= run_end or first >= block
                   for first, end, kind in work.pieces) and (
            work.buffer is not None or block == run_end)

    def _full_runs(self, work: _Work):
        """Runs of read blocks; a short hole between two becomes zeros."""
        gap = max(HOLE_MERGE_GAP, self.options.incremental_merge_gap) \
            // self.bs
        runs: List[List[int]] = []
        for first, end, kind in work.pieces:
            if kind != sources.READ:
                continue
            if runs and first - runs[-1][1] <= gap:
                runs[-1][1] = end
            else:
                runs.append([first, end])
        return runs

    def _split_at_windows(self, runs):
        wb = self.window_blocks
        out = []
        for first, end in runs:
            while first < end:
                stop = min(end, (first // wb + 1) * wb)
                out.append((first, stop))
                first = stop
        return out

    def _extent(self, view, work: _Work, first: int, end: int) -> _Extent:
        start, stop = self._byte_range(first, end)
        length = stop - start
        if view is None:  # nothing was read: these are zeros
            return _Extent(start, length, *self.zeros.encoded(length))
        base = work.first * self.bs
        chunk = view[start - base:stop - base]
        if self.zeros.is_zero(chunk):
            return _Extent(start, length, *self.zeros.encoded(length))
        md5 = checksums.md5_hex(chunk)
        label, body = self.compressor.compress(chunk)
        # Stored raw: the body is the read buffer itself, no copy.
        in_buffer = body is chunk
        if not in_buffer and not isinstance(body, bytes):
            body = bytes(body)
        return _Extent(start, length, label, body, md5, in_buffer)

    # ------------------------------------------------------------------
    # Storing.

    def _store_extents(self, result, entries, location, pools, writes, pool,
                       extra_metadata, stats):
        holders = []
        for ext in result.extents:
            self._put(ext, entries, location, pools, writes, extra_metadata,
                      stats, holders)
        pool.give_after(result.buffer, holders)

    def _put(self, ext, entries, location, pools, writes, extra_metadata,
             stats, holders=None):
        name = location.data_object(len(entries) + 1)
        future = pools.submit_io(self.store.put, location.container, name,
                                 ext.body, extra_metadata)
        if ext.in_buffer and holders is not None:
            holders.append(future)
        writes.add(future, ext.length)
        entries.append(fmt.ObjectEntry(name, ext.offset, ext.length,
                                       ext.label, ext.md5))
        stats.objects += 1
        stats.stored_bytes += len(ext.body)
        stats.stored_logical_bytes += ext.length

    def _store_volume_end(self, entries, location, pools, writes,
                          extra_metadata, stats):
        """Store the last block when nothing else reaches the volume's end.

        Readers (ours and Cinder's) take the volume size from the objects;
        a volume whose last blocks were holes or unchanged zeros past the
        parent's end would otherwise restore short. Those blocks are zeros.
        """
        covered = max([e.end for e in entries] +
                      [self.parent.size if self.parent else 0])
        if covered >= self.size:
            return
        start = (self.block_count - 1) * self.bs
        length = self.size - start
        self._put(_Extent(start, length, *self.zeros.encoded(length)),
                  entries, location, pools, writes, extra_metadata, stats)
