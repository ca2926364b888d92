"""The backup writer: a volume in, data objects and a block map out.

The volume is walked in volume order as segments of READ, HOLE and KNOWN
blocks (see ``sources.classify``), one object-size window at a time; long
stretches of holes or of blocks a changed-block map vouches for are bulk
items that cost digest arithmetic, not I/O.

Every object flows to the store in pieces of a few MiB, never whole: a
piece is read and its blocks hashed on a native thread while the piece
before it is MD5'd and compressed (one stream per object) and the one
before that is on its way to the store. Memory follows the pieces in
flight, not the object size.

A full backup stores each run of read blocks (short holes between runs
are stored as zeros, long ones left out); which runs those are follows
from the segments alone. An incremental first hashes a window's blocks
(in pieces, nothing kept) to find the runs whose digest differs from the
parent's (past the parent's end, from zeros), then streams those runs
from the volume again, hashing them anew: what is stored and the digests
recorded for it always come from the same read, also when a store's
retry reads it once more. Whatever was skipped, every backup stores an
object that reaches the volume's end, so readers derive the volume size
from the objects.
"""
import collections
import concurrent.futures
import dataclasses
import functools
import threading
from typing import (Any, Deque, Dict, Generator, Iterator, List, Optional,
                    Tuple, TYPE_CHECKING, Union)

from chunkbackup import backupformat as fmt
from chunkbackup import checksums
from chunkbackup import concurrency
from chunkbackup.crypto import envelope
from chunkbackup.engine import blockmap
from chunkbackup.engine import documents
from chunkbackup.engine import sources
from chunkbackup import pipeline

if TYPE_CHECKING:
    from chunkbackup.chunked import Run
    from chunkbackup.compression import Compressor
    from chunkbackup.crypto.envelope import ChainKeys
    from chunkbackup.engine.options import EngineOptions
    from chunkbackup.storage.base import ObjectStore

# Blocks in one bulk item of holes or map-vouched blocks: 512 MiB of a
# volume at the default block size, 512 KiB of digests.
BULK_BLOCKS = 16384
# A full backup stores two runs of data as one object when a hole of at
# most this many bytes lies between them: fewer objects, and the zeros
# cost little. Longer holes are left out (their MD5 would not be free).
HOLE_MERGE_GAP = 2 ** 20
# Bytes of a volume an object moves through the pipeline at a time: what
# is read, hashed, compressed and sent together (rounded to blocks).
PIECE_SIZE = 4 * 2 ** 20
# Pieces of an object read and hashed ahead of the one being compressed.
READ_AHEAD = 1
# Windows whose digests may wait for their objects before the writer
# stops planning more (each holds a window's digests, not data).
PENDING_WINDOWS = 64


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
    # An incremental reads the runs it stores a second time (see above).
    bytes_reread: int = 0
    changed_map: Optional[str] = None  # None, 'used' or 'rejected'
    # The cipher of an encrypted backup (None: plain).
    encryption: Optional[str] = None
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
    # The chain's keys when it is encrypted (an incremental keeps them).
    keys: Optional['ChainKeys'] = None


class Zeros:
    """What zeros hash and compress to, computed once.

    Zero regions then cost one memcmp (~30 GB/s) instead of SHA-256, MD5
    and compression, and still become ordinary objects Cinder restores.
    """

    def __init__(self, block_size: int, piece_size: int,
                 compressor: 'Compressor',
                 digests: checksums.Digests = checksums.PLAIN) -> None:
        self.block_size = block_size
        self.piece = bytes(piece_size)
        self.view = memoryview(self.piece)
        self.block = self.piece[:block_size]
        self.hashing = digests
        self.block_digest = digests.zero(block_size)
        self.compressor = compressor
        self._encoded: Dict[int, _ZeroObject] = {}
        self._lock = concurrency.native_lock()

    def is_zero(self, data: Union[bytes, memoryview]) -> bool:
        return len(data) <= len(self.piece) and self.piece.startswith(data)

    @functools.lru_cache(maxsize=16)
    def digests(self, length: int) -> bytes:
        """The digests of ``length`` zero bytes cut into blocks."""
        full, tail = divmod(length, self.block_size)
        return self.block_digest * full + (
            self.hashing.zero(tail) if tail else b'')

    def pieces(self, length: int) -> Iterator[memoryview]:
        """``length`` zero bytes, a piece at a time (no allocation)."""
        while length > 0:
            n = min(length, len(self.piece))
            yield self.view[:n]
            length -= n

    def chunks(self, length: int) -> Iterator[bytes]:
        """``length`` zero bytes as bytes chunks (whole pieces uncopied)."""
        for view in self.pieces(length):
            yield self.piece if len(view) == len(self.piece) else bytes(view)

    def encoded(self, length: int) -> '_ZeroObject':
        """How an object of ``length`` zero bytes is stored, once."""
        with self._lock:  # CPU threads race for the first zero object
            found = self._encoded.get(length)
            if found is None:
                found = self._encode(length)
                if len(self._encoded) > 64:
                    self._encoded.clear()
                self._encoded[length] = found
            return found

    def for_digests(self, digests: checksums.Digests) -> 'Zeros':
        """These zeros, digested another way (an encrypted chain's)."""
        if digests is self.hashing:
            return self
        return Zeros(self.block_size, len(self.piece), self.compressor,
                     digests)

    def _encode(self, length: int) -> '_ZeroObject':
        md5 = self.hashing.object_hasher()
        for piece in self.pieces(length):
            md5.update(piece)
        if self.compressor.family is None:
            # Raw zeros are sent from the zero piece, never held.
            return _ZeroObject('none', md5.hexdigest(), None, length)
        encoder = self.compressor.stream(length, self.view[:length])
        parts = [encoder.compress(piece) for piece in self.pieces(length)]
        parts.append(encoder.flush())
        body = b''.join(parts)
        return _ZeroObject(encoder.label, md5.hexdigest(), body, len(body))


@dataclasses.dataclass(frozen=True)
class _ZeroObject:
    label: str
    md5: str
    body: Optional[bytes]  # None: raw, sent from the zero piece
    stored: int


class BufferPool:
    """Piece buffers, reused, at most ``limit`` alive at once.

    Reading into a buffer that is already mapped costs one copy; a fresh
    one also costs page faults and zeroing, which measured slower than the
    SHA-256 of the same data. ``take`` waits while ``limit`` buffers are
    out. A holder always gives its buffer back without needing another
    (a piece is hashed, then encoded, then given back), so waiting never
    deadlocks.
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


class _Aborted(Exception):
    """Raised in an object's stream once the backup has failed elsewhere."""


@dataclasses.dataclass
class _Piece:
    """Blocks [first, end) of an object, read or known to be zeros."""

    first: int
    end: int
    kind: str  # READ or HOLE


@dataclasses.dataclass
class _Object:
    """One data object: its blocks, and what storing it produced."""

    name: str
    first: int
    end: int
    pieces: List[_Piece]
    # Set by the attempt that stored it (a retry starts over).
    digests: bytes = b''
    label: str = ''
    md5: str = ''
    stored: int = 0
    read: int = 0
    future: Optional[concurrent.futures.Future] = None


@dataclasses.dataclass
class _Window:
    """A stretch of blocks whose digests go to the block map together.

    ``digests`` holds what is known without storing anything (holes, the
    map's vouched blocks, an incremental's first hashing); each object's
    own digests replace its blocks' when it is stored.
    """

    first: int
    end: int
    digests: bytes
    objects: List[_Object]
    read: int = 0

    def done(self) -> bool:
        return all(o.future is not None and o.future.done()
                   for o in self.objects)


class BackupWriter:
    """Writes one backup's data objects and builds its block map."""

    def __init__(self, store: 'ObjectStore', options: 'EngineOptions',
                 compressor: 'Compressor', zeros: Zeros,
                 keys: Optional['ChainKeys'] = None,
                 backup_id: str = '') -> None:
        self.store = store
        self.options = options
        self.compressor = compressor
        # An encrypted chain's keys: keyed digests, sealed bodies.
        self.keys = keys
        self.backup_id = backup_id
        self.digests = keys.digests if keys else checksums.PLAIN
        self.zeros = zeros.for_digests(self.digests)
        self.bs = options.sha_block_size
        self.window_blocks = options.object_size // self.bs
        self.piece_blocks = max(1, min(PIECE_SIZE, options.object_size)
                                // self.bs)
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
        self.source = source
        self.location = location
        self.extra_metadata = extra_metadata
        self.stats = stats
        self.entries.clear()
        self._failed = threading.Event()
        # Reads of a source that cannot take them in parallel take turns.
        self._read_lock = (None if source.parallel_reads
                           else concurrency.native_lock())
        in_flight = self.options.objects_in_flight
        # Each object in flight: the piece being encoded and the ones read
        # ahead; then one per CPU thread for an incremental's hashing.
        self.pool = BufferPool(self.piece_blocks * self.bs,
                               in_flight * (READ_AHEAD + 1) +
                               self.options.cpu_threads)
        self._named = 0
        self._covered = 0  # the end block of the objects planned so far
        block_map = blockmap.BlockMap(self.bs, self.options.block_map_memory,
                                      self.options.temp_dir, self.digests)
        try:
            with concurrency.Executors(self.options.cpu_threads,
                                       in_flight) as pools:
                self.pools = pools
                uploads = pipeline.Window(in_flight)
                try:
                    self._write_windows(segments, block_map, uploads, run)
                    uploads.drain()
                except BaseException:
                    self._failed.set()
                    uploads.cancel()
                    raise
        except BaseException:
            block_map.close()
            raise
        return self.entries, block_map

    def _write_windows(self, segments, block_map, uploads, run) -> None:
        pending: Deque[_Window] = collections.deque()
        for window in self._windows(segments):
            for obj in window.objects:
                obj.future = self.pools.submit_io(self._store_object, obj)
                uploads.add(obj.future)
            pending.append(window)
            self._finish_windows(pending, block_map, run,
                                 wait=len(pending) > PENDING_WINDOWS)
            run.check_cancel()
        end = self._volume_end_object()
        if end is not None:
            end.future = self.pools.submit_io(self._store_object, end)
            uploads.add(end.future)
            pending.append(_Window(self.block_count, self.block_count, b'',
                                   [end]))
        while pending:
            self._finish_windows(pending, block_map, run, wait=True)

    def _finish_windows(self, pending: Deque[_Window],
                        block_map: blockmap.BlockMap, run: 'Run',
                        wait: bool) -> None:
        """Put the oldest windows whose objects are stored in the map."""
        while pending and (wait or pending[0].done()):
            window = pending.popleft()
            wait = False
            digests = bytearray(window.digests)
            size = fmt.DIGEST_SIZE
            for obj in window.objects:
                assert obj.future is not None
                obj.future.result()
                if window.end > window.first:
                    # (The volume-end object's block is in the map already.)
                    k = (obj.first - window.first) * size
                    digests[k:k + len(obj.digests)] = obj.digests
                self._record(obj, window)
            block_map.append(bytes(digests))
            self.stats.bytes_read += window.read
            start, stop = self._byte_range(window.first, window.end)
            run.advance(stop - start)

    def _record(self, obj: _Object, window: _Window) -> None:
        start, stop = self._byte_range(obj.first, obj.end)
        self.entries.append(fmt.ObjectEntry(obj.name, start, stop - start,
                                            obj.label, obj.md5))
        stats = self.stats
        stats.objects += 1
        stats.stored_bytes += obj.stored
        stats.stored_logical_bytes += stop - start
        if self.parent is None:
            window.read += obj.read
        else:
            stats.bytes_reread += obj.read

    # ------------------------------------------------------------------
    # Windows and the objects they hold, in volume order.

    def _windows(self, segments) -> Iterator[_Window]:
        """Object-size windows of the volume, and bulk stretches."""
        wb = self.window_blocks
        bucket: List[Tuple[int, int, str]] = []
        for segment in segments:
            first, end, kind = segment.first, segment.end, segment.kind
            while first < end:
                window_end = min((first // wb + 1) * wb, self.block_count)
                if bucket and first >= self._window_end(bucket[0][0]):
                    yield self._window(bucket)
                    bucket = []
                if kind != sources.READ and not bucket and first % wb == 0 \
                        and end >= window_end:
                    # Whole windows of one kind: no reading, no object.
                    whole = min(end, first + BULK_BLOCKS)
                    if whole < end or end == self.block_count:
                        stop = whole
                    else:
                        stop = max(window_end, end // wb * wb)
                    yield self._bulk(first, stop, kind)
                    first = stop
                    continue
                stop = min(end, window_end)
                bucket.append((first, stop, kind))
                first = stop
        if bucket:
            yield self._window(bucket)

    def _window_end(self, block: int) -> int:
        return min((block // self.window_blocks + 1) * self.window_blocks,
                   self.block_count)

    def _byte_range(self, first: int, end: int) -> Tuple[int, int]:
        return first * self.bs, min(end * self.bs, self.size)

    def _known_digests(self, first: int, end: int, kind: str) -> bytes:
        if kind == sources.KNOWN:
            return self._parent_map().read(first, end - first)
        start, stop = self._byte_range(first, end)
        return self.zeros.digests(stop - start)

    def _bulk(self, first: int, end: int, kind: str) -> _Window:
        digests = self._known_digests(first, end, kind)
        if self.parent is None:
            return _Window(first, end, digests, [])
        # An incremental stores the blocks that differ from the parent:
        # holes where the parent had data (a map's blocks never differ).
        runs = self._changed_runs(
            [(first, end, kind)], first, end, digests) \
            if kind == sources.HOLE else []
        return _Window(first, end, digests,
                       [self._object(a, b, [(first, end, kind)])
                        for a, b in runs])

    def _window(self, pieces: List[Tuple[int, int, str]]) -> _Window:
        first, end = pieces[0][0], pieces[-1][1]
        if self.parent is None:
            digests = b''.join(self._known_digests(a, b, kind)
                               if kind != sources.READ else
                               b'\0' * fmt.DIGEST_SIZE * (b - a)
                               for a, b, kind in pieces)
            runs = self._full_runs(pieces)
            return _Window(first, end, digests,
                           [self._object(a, b, pieces) for a, b in runs])
        digests, read = self._first_hashing(pieces)
        runs = self._changed_runs(pieces, first, end, digests)
        return _Window(first, end, digests,
                       [self._object(a, b, pieces) for a, b in runs], read)

    def _object(self, first: int, end: int,
                pieces: List[Tuple[int, int, str]]) -> _Object:
        """The object of blocks [first, end), cut into pieces to stream."""
        self._named += 1
        self._covered = max(self._covered, end)
        name = self.location.data_object(self._named)
        parts = []
        for a, b, kind in pieces:
            lo, hi = max(a, first), min(b, end)
            # What lies between stored runs is read (or zeros): a map's
            # vouched blocks never sit inside an object (_mergeable).
            assert lo >= hi or kind != sources.KNOWN
            for p in range(lo, hi, self.piece_blocks):
                parts.append(_Piece(p, min(hi, p + self.piece_blocks),
                                    sources.READ if kind == sources.READ
                                    else sources.HOLE))
        return _Object(name, first, end, parts)

    def _volume_end_object(self) -> Optional[_Object]:
        """The last block when nothing else reaches the volume's end.

        Readers (ours and Cinder's) take the volume size from the objects;
        a volume whose last blocks were holes or unchanged zeros past the
        parent's end would otherwise restore short. Those blocks are zeros.
        """
        covered = max(self._byte_range(0, self._covered)[1],
                      self.parent.size if self.parent else 0)
        if covered >= self.size or self.block_count == 0:
            return None
        first = self.block_count - 1
        return self._object(first, self.block_count,
                            [(first, self.block_count, sources.HOLE)])

    # ------------------------------------------------------------------
    # An incremental's first hashing, and the runs to store.

    def _first_hashing(self, pieces) -> Tuple[bytes, int]:
        """Digests of a window's blocks; READ ones hashed in pieces.

        A few pieces at a time (one per CPU thread and one more), each
        buffer taken here, not on the CPU thread: a CPU thread never waits
        for a buffer, so the objects that hold buffers always progress.
        """
        digests: List[bytes] = []
        running: Deque[Tuple[int, bytearray, concurrent.futures.Future]] \
            = collections.deque()
        read = 0
        for a, b, kind in pieces:
            if kind != sources.READ:
                digests.append(self._known_digests(a, b, kind))
                continue
            for p in range(a, b, self.piece_blocks):
                digests.append(b'')  # filled in when hashed
                buffer = self.pool.take()
                running.append((len(digests) - 1, buffer,
                                self.pools.submit_cpu(
                                    self._hash_only, buffer, p,
                                    min(b, p + self.piece_blocks))))
                while len(running) > self.options.cpu_threads:
                    read += self._collect(running, digests)
        while running:
            read += self._collect(running, digests)
        return b''.join(digests), read

    def _collect(self, running, digests: List[bytes]) -> int:
        # Buffers are given back here, never on a CPU thread: under
        # eventlet the pool's condition belongs to the green threads.
        index, buffer, job = running.popleft()
        try:
            digests[index], read = job.result()
        finally:
            self.pool.give(buffer)
        return read

    def _hash_only(self, buffer: bytearray, first: int,
                   end: int) -> Tuple[bytes, int]:
        n = self._read(buffer, first, end)
        start, stop = self._byte_range(first, end)
        return self._hash(buffer, 0, stop - start), n

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

    def _changed_runs(self, pieces, first: int, end: int, digests: bytes):
        """Block runs [a, b) whose digests differ from the parent's."""
        base = self._base_digests(first, end)
        if base == digests:
            return []
        size = fmt.DIGEST_SIZE
        gap = self.options.incremental_merge_gap // self.bs
        runs: List[List[int]] = []
        for a, b, kind in pieces:
            if kind == sources.KNOWN:
                continue
            for block in range(a, b):
                k = (block - first) * size
                if base[k:k + size] == digests[k:k + size]:
                    continue
                if runs and self._mergeable(runs[-1][1], block, gap, pieces):
                    runs[-1][1] = block + 1
                else:
                    runs.append([block, block + 1])
        return self._split_at_windows(runs)

    def _mergeable(self, run_end: int, block: int, gap: int,
                   pieces) -> bool:
        if block - run_end > gap:
            return False
        if (run_end // self.window_blocks) != (block // self.window_blocks):
            return False
        # Blocks in between become part of the object: they must be read
        # (or holes, zeros), never vouched for by a map.
        return all(kind != sources.KNOWN or b <= run_end or a >= block
                   for a, b, kind in pieces)

    def _full_runs(self, pieces):
        """Runs of read blocks; a short hole between two becomes zeros."""
        gap = max(HOLE_MERGE_GAP, self.options.incremental_merge_gap) \
            // self.bs
        runs: List[List[int]] = []
        for first, end, kind in pieces:
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

    # ------------------------------------------------------------------
    # Reading and hashing a piece (on a native thread).

    def _read(self, buffer: bytearray, first: int, end: int) -> int:
        """Read blocks [first, end) into the buffer; zeros past the end."""
        start, stop = self._byte_range(first, end)
        target = memoryview(buffer)[:stop - start]
        if self._read_lock is None:
            got = self.source.read_into(start, target)
        else:
            with self._read_lock:
                got = self.source.read_into(start, target)
        if got < len(target):  # the volume shrank under us
            target[got:] = self.zeros.view[:len(target) - got]
        return got

    def _hash(self, buffer: bytearray, start: int, stop: int) -> bytes:
        """Block digests of buffer[start:stop]; zero blocks by memcmp."""
        zeros = self.zeros
        view = memoryview(buffer)
        if zeros.is_zero(view[start:stop]):
            return zeros.digests(stop - start)
        bs = self.bs
        digest = self.digests.block
        zero_block, zero_digest = zeros.block, zeros.block_digest
        out = []
        # bytearray.startswith is a memcmp; comparing memoryviews is not.
        for i in range(start, stop - bs + 1, bs):
            if buffer.startswith(zero_block, i):
                out.append(zero_digest)
            else:
                out.append(digest(view[i:i + bs]))
        tail = (stop - start) % bs
        if tail:
            out.append(digest(view[stop - tail:stop]))
        return b''.join(out)

    def _load(self, piece: _Piece, buffer: Optional[bytearray]):
        """(view, digests, read) of one piece, read into ``buffer``."""
        start, stop = self._byte_range(piece.first, piece.end)
        if buffer is None:  # a hole: zeros
            return (self.zeros.view[:stop - start],
                    self.zeros.digests(stop - start), 0)
        n = self._read(buffer, piece.first, piece.end)
        return (memoryview(buffer)[:stop - start],
                self._hash(buffer, 0, stop - start), n)

    # ------------------------------------------------------------------
    # Storing one object as a stream (on an I/O thread).

    def _store_object(self, obj: _Object) -> None:
        """Stream the object; every attempt's stream is closed after it.

        A stream a failed attempt left half-read holds piece buffers
        until it is closed: waiting for the garbage collector (a traceback
        may keep it alive) could leave a retry no buffer to read into.
        """
        if self._failed.is_set():
            raise _Aborted()
        streams: List[Generator[Union[bytes, memoryview], None, None]] = []

        def produce() -> Iterator[Union[bytes, memoryview]]:
            for earlier in streams:
                earlier.close()
            streams.append(self._stream(obj))
            return streams[-1]

        try:
            self.store.put_stream(self.location.container, obj.name,
                                  produce, self.extra_metadata)
        finally:
            for stream in streams:
                stream.close()

    def _stream(self, obj: _Object
                ) -> Generator[Union[bytes, memoryview], None, None]:
        """The object's body, a piece at a time; records what it stored.

        Pieces are read and hashed ahead on native threads; MD5 and
        compression run there too, in order. Leading zero pieces are only
        counted: an object that is zeros to the end is stored as the
        zero object of its length, computed once.
        """
        start, stop = self._byte_range(obj.first, obj.end)
        length = stop - start
        # (buffer or None, future of _load), in piece order
        loads: Deque[Tuple[Optional[bytearray], concurrent.futures.Future]] \
            = collections.deque()
        upcoming = iter(obj.pieces)
        digests: List[bytes] = []
        md5 = self.digests.object_hasher()
        encoder: Any = None  # a StreamEncoder, perhaps sealing
        current: Optional[bytearray] = None  # the piece being encoded
        zeros_held = 0
        read = stored = 0
        try:
            while True:
                for piece in upcoming:
                    # Buffers are taken and given here, never on a CPU
                    # thread, which therefore never waits for one.
                    buffer = (self.pool.take()
                              if piece.kind == sources.READ else None)
                    loads.append((buffer, self.pools.submit_cpu(
                        self._load, piece, buffer)))
                    if len(loads) > READ_AHEAD:
                        break
                if not loads:
                    break
                current, load = loads.popleft()
                view, piece_digests, n = load.result()
                digests.append(piece_digests)
                read += n
                if self._failed.is_set():
                    raise _Aborted()
                if encoder is None and self.zeros.is_zero(view):
                    zeros_held += len(view)
                    self._give(current)
                    current = None
                    continue
                if encoder is None:
                    encoder = self.compressor.stream(length, view)
                    if self.keys is not None:
                        encoder = envelope.SealingEncoder(
                            encoder, self.keys.sealer(self.backup_id,
                                                      obj.name))
                    for zero in self.zeros.pieces(zeros_held):
                        out = self.pools.submit_cpu(self._encode, encoder,
                                                    md5, zero).result()
                        stored += len(out)
                        if out:
                            yield out
                out = self.pools.submit_cpu(self._encode, encoder, md5,
                                            view).result()
                stored += len(out)
                if isinstance(out, memoryview):
                    # Stored raw: the buffer itself goes, and comes back
                    # once the store asks for the next chunk (a store
                    # copies or sends what it keeps).
                    yield out
                    self._give(current)
                    current = None
                    continue
                self._give(current)
                current = None
                if out:
                    yield out
            if encoder is None:
                zero = self.pools.submit_cpu(self.zeros.encoded,
                                             length).result()
                obj.label, obj.md5 = zero.label, zero.md5
                stored = zero.stored
                body = ([zero.body] if zero.body is not None
                        else self.zeros.chunks(length))
                if self.keys is not None:
                    # Sealed for this object alone: never a shared body.
                    sealer = self.keys.sealer(self.backup_id, obj.name)
                    stored = 0
                    for out in sealer.seal_all(body):
                        stored += len(out)
                        yield out
                else:
                    yield from body
            else:
                tail = self.pools.submit_cpu(encoder.flush).result()
                stored += len(tail)
                if tail:
                    yield tail
                obj.label, obj.md5 = encoder.label, md5.hexdigest()
        finally:
            self._give(current)
            for buffer, load in loads:
                # Pieces read ahead of a failure: wait, give them back.
                concurrent.futures.wait([load])
                self._give(buffer)
        obj.digests = b''.join(digests)
        obj.stored, obj.read = stored, read

    def _give(self, buffer: Optional[bytearray]) -> None:
        """Give a piece's buffer back (None: a hole's, or given already)."""
        if buffer is not None:
            self.pool.give(buffer)

    @staticmethod
    def _encode(encoder, md5, view) -> Union[bytes, memoryview]:
        """MD5 and compress a piece: bytes, or ``view`` itself when raw."""
        md5.update(view)
        return encoder.compress(view)
