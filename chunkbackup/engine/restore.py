"""The restore executor: a plan in, checked blocks written to a sink.

Objects are fetched in parallel and flow through in pieces: a piece is
decompressed as it arrives, its blocks checked on a native thread (every
block an object supplies must match the target's block map, and
optionally the whole object its MD5) and written, so memory follows the
downloads in flight, not the object size. A large object on a store that
serves ranges is fetched as several ranges at once, in order, so one
object does not serialise a restore on one connection. The sink gets data
runs and zero runs; what it does with zeros is its own business: nothing
on a new volume, punched holes in a regular file, zeros on a block device.
"""
import collections
import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import errno
import os
import stat
import threading
from typing import (Any, cast, Deque, Iterator, List, Optional, Tuple,
                    TYPE_CHECKING, Union)

from chunkbackup import backupformat as fmt
from chunkbackup import compression
from chunkbackup import concurrency
from chunkbackup.crypto import envelope
from chunkbackup.engine import plan as restore_plan
from chunkbackup import exception
from chunkbackup import pipeline

if TYPE_CHECKING:
    from chunkbackup.chunked import Run
    from chunkbackup.engine.options import EngineOptions
    from chunkbackup import nbd
    from chunkbackup.storage.base import ObjectStore

# A bad object that verify found: (volume offset, object name, what is
# wrong, whether it is missing).
Problem = Tuple[int, str, str, bool]

# Bytes asked of a stream at a time, and given by the decompressor at a
# time; blocks are checked and written in pieces of about PIECE_SIZE.
CHUNK_SIZE = 2 ** 20
PIECE_SIZE = 2 * 2 ** 20
# A compressed object larger than two of these is fetched in ranges of
# RANGE_SIZE where the store serves them and half the download slots are
# free: many objects fill the slots as plain streams (no round trip per
# range), one or a few large ones do not.
RANGE_SIZE = 4 * 2 ** 20

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


class Sink:
    """Where restored bytes go."""

    def write(self, offset: int, data: Union[bytes, memoryview]) -> None:
        raise NotImplementedError

    def zero(self, offset: int, length: int) -> None:
        """Make [offset, offset + length) read as zeros."""
        raise NotImplementedError

    def prepare(self, size: int) -> None:
        """Called before anything is written; refuse a target too small."""

    def finish(self, size: int) -> None:
        pass


class RangeSink(Sink):
    """Writes only bytes [offset, offset + length) of the volume, moved to
    the start of ``inner`` (a part of a volume, extracted).
    """

    def __init__(self, inner: Sink, offset: int, length: int) -> None:
        self.inner = inner
        self.offset = offset
        self.length = length

    def _clip(self, start: int, count: int) -> Tuple[int, int]:
        return (max(start, self.offset),
                min(start + count, self.offset + self.length))

    def write(self, offset: int, data: Union[bytes, memoryview]) -> None:
        lo, hi = self._clip(offset, len(data))
        if lo < hi:
            self.inner.write(lo - self.offset,
                             memoryview(data)[lo - offset:hi - offset])

    def zero(self, offset: int, length: int) -> None:
        lo, hi = self._clip(offset, length)
        if lo < hi:
            self.inner.zero(lo - self.offset, hi - lo)

    def prepare(self, size: int) -> None:
        self.inner.prepare(self.length)

    def finish(self, size: int) -> None:
        self.inner.finish(self.length)


class NullSink(Sink):
    """Verify: check everything, write nothing."""

    def write(self, offset: int, data: Union[bytes, memoryview]) -> None:
        pass

    def zero(self, offset: int, length: int) -> None:
        pass


class FileSink(Sink):
    """A volume file object: a regular file, a block device, os-brick's.

    On a new volume zeros are left alone (it reads as zeros already, and
    a regular file stays thin). On an existing regular file they are
    punched out where the file system can, written otherwise.
    """

    # Writeback is started after this many bytes, not left for the end.
    WRITEBACK_CHUNK = 64 * 2 ** 20

    def __init__(self, volume_file: Any, volume_is_new: bool,
                 zero_buffer: bytes) -> None:
        self.file = volume_file
        self.new = volume_is_new
        self.zeros = memoryview(zero_buffer)
        self.fd = self._descriptor(volume_file)
        self.regular = self.fd is not None and stat.S_ISREG(
            os.fstat(self.fd).st_mode)
        self.can_punch = self.regular
        self.unflushed = 0
        # [lo, hi) written since the last writeback
        self.dirty: Optional[Tuple[int, int]] = None

    @staticmethod
    def _descriptor(volume_file):
        try:
            fd = volume_file.fileno()
            mode = os.fstat(fd).st_mode
        except (AttributeError, OSError, ValueError, TypeError):
            return None  # not every volume file has a descriptor
        return fd if stat.S_ISREG(mode) or stat.S_ISBLK(mode) else None

    def write(self, offset: int, data: Union[bytes, memoryview]) -> None:
        self.file.seek(offset)
        self.file.write(data)
        if self.fd is None:
            return
        end = offset + len(data)
        self.dirty = ((offset, end) if self.dirty is None else
                      (min(self.dirty[0], offset), max(self.dirty[1], end)))
        self.unflushed += len(data)
        if self.unflushed >= self.WRITEBACK_CHUNK:
            # Start writing back what we wrote so the final fsync has
            # little left to wait for; DONTNEED also keeps a large
            # restore from evicting the rest of the page cache.
            self.file.flush()
            lo, hi = self.dirty
            os.posix_fadvise(self.fd, lo, hi - lo, os.POSIX_FADV_DONTNEED)
            self.unflushed = 0
            self.dirty = None

    def zero(self, offset: int, length: int) -> None:
        if self.new:
            return
        if self.can_punch:
            self.file.flush()
            if punch_hole(self.fd, offset, length):
                return
            self.can_punch = False  # this file system cannot: write zeros
        while length:
            n = min(length, len(self.zeros))
            self.write(offset, self.zeros[:n])
            offset += n
            length -= n

    def finish(self, size: int) -> None:
        self.file.flush()
        if self.fd is None:
            return
        if self.regular and os.fstat(self.fd).st_size < size:
            # A new volume file: the skipped zero tail still belongs to it.
            os.ftruncate(self.fd, size)
        os.fsync(self.fd)


_libc = None


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Deallocate a range of a regular file, keeping its size.

    False when the file system does not support it (the caller writes
    zeros instead).
    """
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
        _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int,
                                    ctypes.c_longlong, ctypes.c_longlong]
    if _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE,
                       offset, length) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(err, os.strerror(err))


class _Buffers:
    """Reused buffers of one size: allocated once, not once per object.

    Fresh multi-MiB allocations on many threads fragment malloc's arenas
    until RSS is twice what is in use.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._free: List[bytearray] = []
        self._lock = threading.Lock()

    def take(self) -> bytearray:
        with self._lock:
            if self._free:
                return self._free.pop()
        return bytearray(self.size)

    def give(self, buffer: bytearray) -> None:
        with self._lock:
            self._free.append(buffer)


class _Downloads:
    """What every download of one restore shares.

    ``slots`` bounds the requests in flight (restore_objects_in_flight,
    whole objects and ranges alike); ``budget`` bounds the ranges fetched
    but not yet decompressed: one per slot and one more, so every slot
    can be busy while a range waits its turn, and read-ahead holds at
    most that many ranges.
    """

    def __init__(self, store: 'ObjectStore', requests: int,
                 block_size: int) -> None:
        self.store = store
        self.requests = requests
        self.ranged = bool(getattr(store, 'supports_ranges', False))
        self.slots = threading.BoundedSemaphore(requests)
        # An object's decompressed piece and a chunk more, reused.
        self.buffers = _Buffers(max(PIECE_SIZE, block_size) + CHUNK_SIZE)
        self.budget = threading.BoundedSemaphore(requests + 1)
        self.active = 0  # objects being fetched
        self._lock = threading.Lock()
        self.range_pool = concurrent.futures.ThreadPoolExecutor(
            requests, thread_name_prefix='chunkbackup-range')

    def close(self) -> None:
        self.range_pool.shutdown(wait=True, cancel_futures=True)

    def chunks(self, fetch: restore_plan.Fetch) -> Iterator[bytes]:
        """The stored body of a fetch's object, in order, in chunks."""
        container = fetch.layer.container
        name = fetch.entry.name
        extra = cast(Optional[dict], fetch.layer.metadata.extra_metadata)
        with self._lock:
            self.active += 1
            spare = self.active <= self.requests // 2
        try:
            if self.ranged and spare and fetch.entry.length > 2 * RANGE_SIZE:
                with self.slots:
                    size = self.store.object_size(container, name, extra)
                if size > 2 * RANGE_SIZE:
                    yield from self._ranges(container, name, extra, size)
                    return
            with self.slots:
                yield from self.store.get_stream(container, name, extra,
                                                 CHUNK_SIZE)
        finally:
            with self._lock:
                self.active -= 1

    def _range(self, container, name, extra, offset, length) -> bytes:
        with self.slots:
            body = self.store.get_range(container, name, offset, length,
                                        extra)
        if len(body) != length:
            raise exception.StorageError(
                operation='get', target='%s/%s' % (container, name),
                reason='a range of %d bytes at %d gave %d bytes: the object '
                       'changed while it was read' % (length, offset,
                                                      len(body)))
        return body

    def _ranges(self, container, name, extra, size) -> Iterator[bytes]:
        ahead: Deque[concurrent.futures.Future] = collections.deque()
        next_offset = 0

        def submit(blocking: bool) -> bool:
            """Ask for the next range.

            Always when none is ahead (waiting for the budget), else only
            while the budget has room.
            """
            nonlocal next_offset
            if next_offset >= size or len(ahead) >= self.requests:
                return False
            if not self.budget.acquire(blocking=blocking):
                return False
            ahead.append(self.range_pool.submit(
                self._range, container, name, extra, next_offset,
                min(RANGE_SIZE, size - next_offset)))
            next_offset += RANGE_SIZE
            return True

        try:
            while ahead or submit(blocking=True):
                while submit(blocking=False):
                    pass
                body = ahead.popleft().result()
                try:
                    yield body
                finally:
                    self.budget.release()
        finally:
            for future in ahead:
                future.cancel()
            concurrent.futures.wait(ahead)
            for _ in ahead:
                self.budget.release()


class RestoreExecutor:
    """Fetches, checks and writes what a plan says."""

    def __init__(self, store: 'ObjectStore',
                 options: 'EngineOptions') -> None:
        self.store = store
        self.options = options

    def execute(self, plan: restore_plan.RestorePlan, sink: Sink,
                check_md5: bool, run: 'Run',
                problems: Optional[List[Problem]] = None) -> None:
        """Fetch, check and write; a bad object stops it.

        With a ``problems`` list (verify) a corrupt or missing object is
        added to it (see Problem) and the rest are still checked.
        """
        sink.prepare(plan.size)
        for start, end in plan.zero_runs:
            sink.zero(start, end - start)
        run.advance(plan.zero_bytes)
        # Without a block map (a lost _sha256file) the MD5 is all there is.
        check_md5 = check_md5 or plan.block_map is None
        downloads = _Downloads(self.store, self.options.download_threads,
                               plan.block_size or 1)
        sink_lock = threading.Lock()  # objects write from their threads
        try:
            with concurrency.Executors(self.options.cpu_threads,
                                       self.options.download_threads
                                       ) as pools:

                def fetch(item):
                    try:
                        self._restore_object(plan, item, downloads, pools,
                                             sink, sink_lock, check_md5)
                    except (exception.InvalidBackup,
                            exception.StorageObjectNotFound) as e:
                        if problems is None:
                            raise
                        problems.append((
                            item.entry.offset, item.entry.name, _problem(e),
                            isinstance(e, exception.StorageObjectNotFound)))
                    return item.supplied

                results = pipeline.unordered(
                    pools.submit_io, fetch, ((f,) for f in plan.fetches),
                    self.options.download_threads)
                for supplied in results:
                    run.advance(supplied)
                    run.check_cancel()
        finally:
            downloads.close()
        sink.finish(plan.size)

    def _restore_object(self, plan, fetch, downloads, pools, sink,
                        sink_lock, check_md5) -> None:
        """Stream one object: decompress, check and write it piece by piece.

        Decompressed bytes gather in one reused buffer until a piece's
        worth of whole blocks is there; nothing else of the object is
        held.
        """
        entry = fetch.entry
        bs = plan.block_size or 1
        md5 = plan.digests.object_hasher() if check_md5 else None
        buffer = downloads.buffers.take()
        filled = 0
        offset = entry.offset  # the volume offset of buffer[0]
        try:
            # Closed here, whatever happens: a stream holds a download slot.
            with contextlib.closing(downloads.chunks(fetch)) as body:
                if plan.keys is not None:
                    sealed_for, sealed_name = envelope.sealed_for(
                        entry, fetch.layer.backup.id)
                    body = plan.keys.open(body, sealed_for, sealed_name,
                                          entry.offset)
                pieces = compression.decompress_stream(
                    entry.compression, body, entry.length, CHUNK_SIZE)
                try:
                    for out in pieces:
                        if filled + len(out) > len(buffer):
                            # Whole blocks go; the rest moves to the front.
                            n = filled // bs * bs
                            self._piece(plan, fetch, buffer, n, offset, md5,
                                        pools, sink, sink_lock)
                            buffer[:filled - n] = buffer[n:filled]
                            filled -= n
                            offset += n
                        buffer[filled:filled + len(out)] = out
                        filled += len(out)
                except ValueError as e:
                    raise _corrupt(fetch, entry.offset, e)
            if filled:
                self._piece(plan, fetch, buffer, filled, offset, md5, pools,
                            sink, sink_lock)
        finally:
            downloads.buffers.give(buffer)
        if md5 is not None and md5.hexdigest() != entry.md5:
            raise _corrupt(fetch, entry.offset,
                           'its MD5 differs from the one in _metadata')

    def _piece(self, plan, fetch, buffer: bytearray, length: int,
               offset: int, md5, pools, sink, sink_lock) -> None:
        """Check and write buffer[:length], the volume's bytes at offset.

        Written before this returns: the buffer is reused right after.
        """
        with memoryview(buffer) as whole, whole[:length] as view:
            data_runs, zero_runs = pools.submit_cpu(
                self._check_piece, plan, fetch, view, offset, md5).result()
            with sink_lock:
                for start, data in data_runs:
                    sink.write(start, data)
                for start, end in zero_runs:
                    sink.zero(start, end - start)
            data_runs.clear()

    @staticmethod
    def _check_piece(plan, fetch, view: memoryview, offset: int, md5
                     ) -> Tuple[List[Tuple[int, Any]], List[Tuple[int, int]]]:
        """Check the blocks of the piece the object supplies; split them."""
        if md5 is not None:
            md5.update(view)
        end = offset + len(view)
        data_runs: List[Tuple[int, Any]] = []
        zero_runs: List[Tuple[int, int]] = []
        for start, stop in fetch.pieces:
            lo, hi = max(start, offset), min(stop, end)
            if lo >= hi:
                continue
            zero_blocks = check_blocks(plan, fetch, view, lo, hi, offset)
            split_runs(view, offset, lo, hi, zero_blocks, plan.block_size,
                       data_runs, zero_runs)
        return data_runs, zero_runs


def _problem(error: exception.ChunkBackupError) -> str:
    """One bad object, briefly, for a list of them."""
    if isinstance(error, exception.BackupCorrupted):
        return 'object %(object)s (volume offset %(offset)d): %(reason)s' % (
            error.kwargs)
    return error.msg


def _corrupt(fetch, offset, reason):
    return exception.BackupCorrupted(
        backup_id=fetch.layer.backup.id, object=fetch.entry.name,
        offset=offset, reason=reason)


def check_blocks(plan: restore_plan.RestorePlan, fetch: restore_plan.Fetch,
                 view: memoryview, start: int, end: int,
                 base: Optional[int] = None) -> List[bool]:
    """Check every block of [start, end) against the target's block map.

    ``view`` holds the volume's bytes from offset ``base`` (by default the
    object's offset). Returns, per block, whether it is a zero block.
    Without a block map nothing can be checked here, and zero blocks are
    found by content.
    """
    bs = plan.block_size
    base = fetch.entry.offset if base is None else base
    if plan.block_map is None:
        zeros = bytes(bs)  # startswith is a memcmp
        return [zeros.startswith(view[pos - base:min(pos + bs, end) - base])
                for pos in range(start, end, bs)]
    first = start // bs
    expected_all = plan.block_map.read(first, -(-end // bs) - first)
    size = fmt.DIGEST_SIZE
    digests = plan.block_map.digests
    full_zero = digests.zero(bs)
    zero_blocks = []
    for i, pos in enumerate(range(start, end, bs)):
        stop = min(pos + bs, end)
        expected = expected_all[i * size:(i + 1) * size]
        got = digests.block(view[pos - base:stop - base])
        if got != expected:
            raise _corrupt(fetch, pos, 'block %d does not match the SHA-256 '
                                       'in the backup\'s _sha256file'
                           % (pos // bs))
        zero_blocks.append(expected == full_zero if stop - pos == bs
                           else expected == digests.zero(stop - pos))
    return zero_blocks


def split_runs(view: memoryview, base: int, start: int, end: int,
               zero_blocks: List[bool], block_size: int,
               data_runs: List[Tuple[int, memoryview]],
               zero_runs: List[Tuple[int, int]]) -> None:
    """Cut [start, end) into data runs (views) and zero runs."""
    run_start = start
    run_zero = None
    for i, pos in enumerate(range(start, end, block_size)):
        zero = zero_blocks[i]
        if run_zero is None:
            run_zero = zero
        elif zero != run_zero:
            _emit(view, base, run_start, pos, run_zero, data_runs, zero_runs)
            run_start, run_zero = pos, zero
    if run_zero is not None:
        _emit(view, base, run_start, end, run_zero, data_runs, zero_runs)


def _emit(view, base, start, end, zero, data_runs, zero_runs):
    if zero:
        zero_runs.append((start, end))
    else:
        data_runs.append((start, view[start - base:end - base]))


class NbdSink(Sink):
    """Restore into an NBD export; zeros become WRITE_ZEROES (punched)."""

    def __init__(self, url: str, volume_is_new: bool,
                 client: Optional['nbd.NbdClient'] = None) -> None:
        from chunkbackup import nbd
        self.url = url
        self.client = client or nbd.NbdClient.connect(url, writable=True)
        self.new = volume_is_new

    @property
    def size(self) -> int:
        return self.client.size

    def write(self, offset: int, data: Union[bytes, memoryview]) -> None:
        self.client.pwrite(data, offset)

    def zero(self, offset: int, length: int) -> None:
        if not self.new:
            self.client.write_zeroes(offset, length, punch=True)

    def prepare(self, size: int) -> None:
        if self.client.size < size:
            raise exception.NbdError(
                url=self.url,
                reason='the export is %d bytes, smaller than the %d bytes '
                       'of the backup; restore to an export at least that '
                       'large' % (self.client.size, size))

    def finish(self, size: int) -> None:
        self.client.flush()

    def close(self) -> None:
        self.client.close()
