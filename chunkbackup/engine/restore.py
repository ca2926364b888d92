"""The restore executor: a plan in, checked blocks written to a sink.

Objects are fetched in parallel, decoded and checked on native threads:
every block an object supplies must match the target's block map, and
(optionally) the object its MD5. The sink gets data runs and zero runs;
what it does with zeros is its own business: nothing on a new volume,
punched holes in a regular file, zeros on a block device.
"""
import ctypes
import ctypes.util
import errno
import hashlib
import os
import stat
from typing import Any, Dict, List, Optional, Tuple, TYPE_CHECKING, Union

from chunkbackup import backupformat as fmt
from chunkbackup import checksums
from chunkbackup import compression
from chunkbackup import concurrency
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
        with concurrency.Executors(self.options.cpu_threads,
                                   self.options.io_threads) as pools:

            def fetch(item):
                try:
                    body = self.store.get(
                        item.layer.container, item.entry.name,
                        item.layer.metadata.extra_metadata)
                    return pools.submit_cpu(self._decode_and_check, plan,
                                            item, body, check_md5).result()
                except (exception.InvalidBackup,
                        exception.StorageObjectNotFound) as e:
                    if problems is None:
                        raise
                    problems.append((
                        item.entry.offset, item.entry.name, _problem(e),
                        isinstance(e, exception.StorageObjectNotFound)))
                    return [], [], item.supplied

            results = pipeline.unordered(
                pools.submit_io, fetch, ((f,) for f in plan.fetches),
                self.options.objects_in_flight)
            for data_runs, zero_runs, supplied in results:
                for offset, data in data_runs:
                    sink.write(offset, data)
                for start, end in zero_runs:
                    sink.zero(start, end - start)
                run.advance(supplied)
                run.check_cancel()
        sink.finish(plan.size)

    def _decode_and_check(self, plan, fetch, body, check_md5):
        """Decode an object, check its blocks, split data from zeros."""
        entry = fetch.entry
        try:
            data = compression.decompress(entry.compression, body,
                                          entry.length)
        except ValueError as e:
            raise _corrupt(fetch, entry.offset, e)
        del body
        # Without a block map (a lost _sha256file) the MD5 is all there is.
        check_md5 = check_md5 or plan.block_map is None
        if check_md5 and checksums.md5_hex(data) != entry.md5:
            raise _corrupt(fetch, entry.offset,
                           'its MD5 differs from the one in _metadata')
        view = memoryview(data)
        data_runs: List[Tuple[int, Any]] = []
        zero_runs: List[Tuple[int, int]] = []
        for start, end in fetch.pieces:
            zero_blocks = check_blocks(plan, fetch, view, start, end)
            split_runs(view, entry.offset, start, end, zero_blocks,
                       plan.block_size, data_runs, zero_runs)
        return data_runs, zero_runs, fetch.supplied


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
                 view: memoryview, start: int, end: int) -> List[bool]:
    """Check every block of [start, end) against the target's block map.

    Returns, per block, whether it is a zero block. Without a block map
    nothing can be checked here, and zero blocks are found by content.
    """
    bs = plan.block_size
    if plan.block_map is None:
        base = fetch.entry.offset
        zeros = bytes(bs)  # startswith is a memcmp
        return [zeros.startswith(view[pos - base:min(pos + bs, end) - base])
                for pos in range(start, end, bs)]
    first = start // bs
    expected_all = plan.block_map.read(first, -(-end // bs) - first)
    size = fmt.DIGEST_SIZE
    base = fetch.entry.offset
    full_zero = _zero_digest(bs)
    zero_blocks = []
    for i, pos in enumerate(range(start, end, bs)):
        stop = min(pos + bs, end)
        expected = expected_all[i * size:(i + 1) * size]
        got = hashlib.sha256(view[pos - base:stop - base]).digest()
        if got != expected:
            raise _corrupt(fetch, pos, 'block %d does not match the SHA-256 '
                                       'in the backup\'s _sha256file'
                           % (pos // bs))
        zero_blocks.append(expected == full_zero if stop - pos == bs
                           else expected == _zero_digest(stop - pos))
    return zero_blocks


_ZERO_CACHE: Dict[int, bytes] = {}


def _zero_digest(length: int) -> bytes:
    found = _ZERO_CACHE.get(length)
    if found is None:
        found = _ZERO_CACHE[length] = fmt.zero_digest(length)
    return found


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
