"""ChunkedBackupDriver: the engine of every chunkbackup driver.

A backup is read in object-size pieces. Each piece is hashed block by block
(SHA-256), compared with the parent's block list for an incremental, and the
data to keep is MD5'd and compressed on native threads while the next piece
is read and earlier objects are being stored. ``_sha256file`` and then
``_metadata`` are written last: a backup whose ``_metadata`` exists is
complete.

A restore plans first and writes once: from the chain's metadata it works
out which layer owns each byte of the final image, fetches only the objects
that still own something, and checks the SHA-256 of every block it writes
against the target backup's ``_sha256file``.

A concrete driver supplies only Cinder's hooks (object naming and object
I/O); see ``chunkbackup.drivers.posix`` for the smallest one.
"""
import abc
import bisect
import dataclasses
import functools
import hashlib
import math
import os
import stat
import threading
import time
import types
from typing import List, Optional, Tuple

from oslo_config import cfg
from oslo_log import log as logging

from chunkbackup import backupformat as fmt
from chunkbackup import compression
from chunkbackup import concurrency
from chunkbackup import driver
from chunkbackup import exception
from chunkbackup import names
from chunkbackup import opts  # noqa: F401  (registers [chunkbackup])
from chunkbackup import pipeline
from chunkbackup import progress
from chunkbackup import storage

check_safe_id = names.check_safe_id

CONF = cfg.CONF
LOG = logging.getLogger(__name__)

GiB = 2 ** 30
CANCEL_BACKUP_STATUSES = frozenset(('deleting', 'deleted'))


def _md5_hex(data) -> str:
    # Not for security: the format's integrity check (FIPS hosts allow it).
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def volume_size_of(volume_file) -> int:
    """The size of a volume, from the file object itself.

    Block devices report 0 in stat, but seek to their end.
    """
    here = volume_file.tell()
    volume_file.seek(0, os.SEEK_END)
    size = volume_file.tell()
    volume_file.seek(here)
    return size


@dataclasses.dataclass
class _Extent:
    offset: int
    length: int
    label: str
    body: bytes
    md5: str
    # The body is (a view of) the piece's read buffer, stored raw.
    body_in_buffer: bool = False


@dataclasses.dataclass
class _Piece:
    length: int
    digests: bytes
    extents: List[_Extent]
    buffer: Optional[bytearray] = None


def _read_full(readinto, buffer: bytearray) -> int:
    """Fill ``buffer`` from ``readinto``; fewer bytes only at the end."""
    view = memoryview(buffer)
    filled = 0
    while filled < len(buffer):
        n = readinto(view[filled:])
        if not n:
            break
        filled += n
    return filled


class _BufferPool:
    """Piece buffers, reused.

    Reading into a buffer that is already mapped costs one copy; a fresh
    32 MiB object also costs page faults and zeroing, which measured
    slower than the SHA-256 of the same data. The pipeline bounds how
    many buffers are alive at once; the pool only recycles them.
    """

    def __init__(self, size: int):
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

    def give_after(self, buffer: Optional[bytearray], futures) -> None:
        """Give ``buffer`` back once ``futures`` (its raw writes) are done."""
        if buffer is None:
            return
        if not futures:
            self.give(buffer)
            return
        left = [len(futures)]

        def done(_future):
            with self._lock:
                left[0] -= 1
                last = left[0] == 0
            if last:
                self.give(buffer)

        for future in futures:
            future.add_done_callback(done)


class _Zeros:
    """What an all-zero piece hashes and compresses to, computed once.

    Zero regions then cost one memcmp (~30 GB/s) instead of SHA-256, MD5
    and compression, and still become ordinary objects Cinder restores.
    """

    def __init__(self, block_size: int, piece_size: int, compressor):
        self.block_size = block_size
        self.piece = bytes(piece_size)
        self.block = self.piece[:block_size]
        self.block_digest = fmt.zero_digest(block_size)
        self.compressor = compressor
        self._encoded = {}
        self._lock = concurrency.native_lock()

    def is_zero(self, data) -> bool:
        return len(data) <= len(self.piece) and self.piece.startswith(data)

    @functools.lru_cache(maxsize=64)
    def digests(self, length: int) -> bytes:
        full, tail = divmod(length, self.block_size)
        return self.block_digest * full + (
            fmt.zero_digest(tail) if tail else b'')

    def encoded(self, length: int) -> Tuple[str, bytes, str]:
        """(label, body, md5) of ``length`` zero bytes, computed once."""
        with self._lock:  # CPU threads race for the first zero piece
            found = self._encoded.get(length)
            if found is None:
                data = self.piece[:length]
                label, body = self.compressor.compress(data)
                found = (label, bytes(body), _md5_hex(data))
                if len(self._encoded) > 64:
                    self._encoded.clear()
                self._encoded[length] = found
            return found


@dataclasses.dataclass
class _Layer:
    """One backup of a chain with its checked metadata."""

    backup: object
    container: str
    prefix: str
    metadata: fmt.Metadata


@dataclasses.dataclass
class _Fetch:
    """An object to fetch, and the byte ranges of the image it supplies."""

    layer: _Layer
    entry: fmt.ObjectEntry
    pieces: List[Tuple[int, int]]


class _Claims:
    """Disjoint claimed byte ranges: newest layer first, first claim wins."""

    def __init__(self):
        self.starts = []
        self.ends = []

    def claim(self, start: int, end: int) -> List[Tuple[int, int]]:
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


@dataclasses.dataclass
class RestorePlan:
    size: int
    block_size: int
    sha: fmt.ShaFile
    fetches: List[_Fetch]
    zero_runs: List[Tuple[int, int]]
    chain: List[_Layer]


class _VolumeSink:
    """Writes restored ranges into the volume file."""

    # Writeback is started after this many bytes, not left for the end.
    WRITEBACK_CHUNK = 64 * 2 ** 20

    def __init__(self, volume_file, zero_buffer: bytes):
        self.file = volume_file
        self.zeros = memoryview(zero_buffer)
        self.fd = self._descriptor(volume_file)
        self.unflushed = 0
        self.dirty = None  # [lo, hi) written since the last writeback

    @staticmethod
    def _descriptor(volume_file):
        """The descriptor of a regular file or block device, or None."""
        try:
            fd = volume_file.fileno()
            mode = os.fstat(fd).st_mode
        except (AttributeError, OSError, ValueError, TypeError):
            return None  # not every volume file has a descriptor
        return fd if stat.S_ISREG(mode) or stat.S_ISBLK(mode) else None

    def write(self, offset: int, data) -> None:
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

    def write_zeros(self, offset: int, length: int) -> None:
        while length:
            n = min(length, len(self.zeros))
            self.write(offset, self.zeros[:n])
            offset += n
            length -= n

    def finish(self, size: int) -> None:
        self.file.flush()
        if self.fd is None:
            return
        if stat.S_ISREG(os.fstat(self.fd).st_mode) and \
                os.fstat(self.fd).st_size < size:
            # A new volume file: the skipped zero tail still belongs to it.
            os.ftruncate(self.fd, size)
        os.fsync(self.fd)


class _NullSink:
    def write(self, offset, data):
        pass

    def write_zeros(self, offset, length):
        pass

    def finish(self, size):
        pass


class ChunkedBackupDriver(driver.BackupDriver, metaclass=abc.ABCMeta):
    """Chunking, block maps, compression, incrementals, restore, verify.

    Subclasses implement the eight hooks below; everything else is here.
    """

    DRIVER_VERSION = fmt.VERSION
    # A backup whose status turns to deleting stops and removes its objects.
    support_force_delete = True

    def __init__(self, context, object_size: int, object_size_option: str,
                 db=None):
        super().__init__(context, db)
        conf = CONF.chunkbackup
        self.sha_block_size = conf.sha_block_size
        self.object_size = object_size
        if object_size <= 0 or object_size % self.sha_block_size:
            raise exception.InvalidConfiguration(
                reason='%s = %s must be a positive multiple of [chunkbackup] '
                       'sha_block_size = %d' % (object_size_option,
                                                object_size,
                                                self.sha_block_size))
        self.compressor = compression.Compressor(conf.compression_algorithm,
                                                 conf.compression_level)
        self.objects_in_flight = conf.objects_in_flight
        self.cpu_workers = conf.cpu_workers or concurrency.cpu_count()
        # Small objects (an incremental's runs) are mostly waiting for the
        # store; more of them may be in flight than large ones.
        self.io_workers = max(self.objects_in_flight, 16)
        self.incremental_merge_gap = conf.incremental_merge_gap
        self.restore_check_md5 = conf.restore_check_md5
        self.cancel_check_interval = conf.cancel_check_interval
        self.progress_listeners: List[progress.ProgressListener] = \
            self.default_progress_listeners()
        self._store: Optional[storage.ObjectStore] = None
        # Set by chunkbackup.faults.install() in tests.
        self.fault_injector = None
        self._zeros = _Zeros(self.sha_block_size, object_size,
                             self.compressor)

    # ------------------------------------------------------------------
    # The hooks a driver supplies (Cinder's names and meanings).

    @abc.abstractmethod
    def put_container(self, container: str) -> None:
        """Create the container if it does not exist."""

    @abc.abstractmethod
    def get_container_entries(self, container: str,
                              prefix: str) -> List[str]:
        """Names of all objects in the container that start with prefix."""

    @abc.abstractmethod
    def get_object_writer(self, container: str, object_name: str,
                          extra_metadata=None):
        """A context manager with ``write(bytes)``.

        The object exists under its name, complete, once the context exits
        without an error, and does not exist (not even partly) if it exits
        with one.
        """

    @abc.abstractmethod
    def get_object_reader(self, container: str, object_name: str,
                          extra_metadata=None):
        """A context manager with ``read()`` returning the whole body."""

    @abc.abstractmethod
    def delete_object(self, container: str, object_name: str) -> None:
        """Delete an object; may raise StorageObjectNotFound."""

    @abc.abstractmethod
    def _generate_object_name_prefix(self, backup) -> str:
        """The object name prefix of a new backup."""

    @abc.abstractmethod
    def update_container_name(self, backup, container: Optional[str]) -> str:
        """The container to use, given the one the backup asked for."""

    @abc.abstractmethod
    def get_extra_metadata(self, backup, volume) -> Optional[dict]:
        """Driver data stored in ``_metadata`` and given back to readers."""

    # Optional hooks.

    def is_transient_error(self, exc: BaseException) -> bool:
        """Whether a failure of the driver's client is worth retrying."""
        return storage.default_is_transient(exc)

    def flush_container(self, container: str) -> None:
        """Make the objects written so far durable (before _metadata)."""

    def wrap_store(self, store: storage.ObjectStore) -> storage.ObjectStore:
        """Wrap the object store seam, inside the retries (metrics, say)."""
        return store

    # ------------------------------------------------------------------

    @property
    def store(self) -> storage.ObjectStore:
        """The driver's object I/O, with every cross-cutting wrapper."""
        if self._store is None:
            conf = CONF.chunkbackup
            inner = self.wrap_store(storage.DriverStore(self))
            if self.fault_injector is not None:
                self.fault_injector.inner = inner
                inner = self.fault_injector
            self._store = storage.RetryingStore(
                inner,
                retries=conf.storage_retries,
                backoff=conf.storage_retry_backoff,
                max_delay=conf.storage_retry_max_delay)
        return self._store

    def _executors(self) -> concurrency.Executors:
        return concurrency.Executors(self.cpu_workers, self.io_workers)

    def _progress(self, operation, backup, total):
        return progress.Progress(self.progress_listeners, operation, backup,
                                 total)

    def _cancel_checker(self, backup, operation):
        """A callable that raises when the backup record says cancel."""
        start_status = getattr(backup, 'status', None)
        last = [time.monotonic()]

        def check():
            now = time.monotonic()
            if now - last[0] < self.cancel_check_interval:
                return
            last[0] = now
            self.refresh_backup(backup)
            status = getattr(backup, 'status', None)
            if operation == 'backup':
                if status in CANCEL_BACKUP_STATUSES:
                    raise exception.BackupOperationCancelled(
                        operation='backup', backup_id=backup.id)
            elif status != start_status:
                raise exception.BackupRestoreCancel(
                    backup_id=backup.id,
                    volume_id=getattr(backup, 'volume_id', None))
        return check

    # ------------------------------------------------------------------
    # Reading a backup's documents.

    def _read_metadata(self, backup, container, prefix) -> fmt.Metadata:
        name = fmt.metadata_name(prefix)
        try:
            body = self.store.get(container, name)
        except exception.StorageObjectNotFound:
            raise exception.BackupIncomplete(
                backup_id=backup.id, container=container,
                reason='%s does not exist: the backup never finished or '
                       'was deleted' % name)
        return fmt.parse_metadata(body, backup.id, name)

    def _read_sha256file(self, backup, container, prefix) -> fmt.ShaFile:
        name = fmt.sha256file_name(prefix)
        try:
            body = self.store.get(container, name)
        except exception.StorageObjectNotFound:
            raise exception.BackupIncomplete(
                backup_id=backup.id, container=container,
                reason='%s does not exist' % name)
        return fmt.parse_sha256file(body, backup.id, name)

    @staticmethod
    def _where(backup) -> Tuple[str, str]:
        container = getattr(backup, 'container', None)
        prefix = getattr(backup, 'service_metadata', None)
        if not container or not prefix:
            raise exception.InvalidBackup(
                reason='backup %s has no container or object prefix in its '
                       'record: it was never written' % backup.id)
        return container, prefix

    def _load_chain(self, backup, check_listing: bool) -> List[_Layer]:
        """The backup's chain, root (full) first, every document checked."""
        layers = []
        seen = set()
        record = backup
        while record is not None:
            if record.id in seen:
                raise exception.InvalidBackup(
                    reason='the parents of backup %s form a loop at %s'
                           % (backup.id, record.id))
            seen.add(record.id)
            container, prefix = self._where(record)
            metadata = self._read_metadata(record, container, prefix)
            if (metadata.parent_id or None) != (record.parent_id or None):
                raise exception.InvalidBackup(
                    reason='backup %s: its record names parent %s but its '
                           '_metadata names %s' % (record.id,
                                                   record.parent_id,
                                                   metadata.parent_id))
            if check_listing:
                self._check_listing(record, container, prefix, metadata)
            layers.append(_Layer(record, container, prefix, metadata))
            parent = None
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

    def _check_listing(self, record, container, prefix, metadata):
        names = set(self.store.list(container, prefix))
        names -= {fmt.metadata_name(prefix), fmt.sha256file_name(prefix)}
        expected = {entry.name for entry in metadata.objects}
        missing = sorted(expected - names)
        if missing:
            raise exception.BackupIncomplete(
                backup_id=record.id, container=container,
                reason='%d object(s) named in _metadata are missing, first '
                       '%s' % (len(missing), missing[0]))
        extra = names - expected
        if extra:
            LOG.warning('Container %(c)s holds %(n)d object(s) with the '
                        'prefix of backup %(id)s that its _metadata does '
                        'not name (ignored), e.g. %(e)s',
                        {'c': container, 'n': len(extra), 'id': record.id,
                         'e': sorted(extra)[0]})

    # ------------------------------------------------------------------
    # Backup.

    def backup(self, backup, volume_file, backup_metadata=True):
        check_safe_id('backup id', backup.id)
        check_safe_id('volume id', backup.volume_id)
        volume_size = volume_size_of(volume_file)
        parent_sha = None
        if backup.parent_id:
            parent_sha = self._parent_block_map(backup, volume_size)
        container = self.update_container_name(
            backup, getattr(backup, 'container', None))
        prefix = self._generate_object_name_prefix(backup)
        backup.container = container
        backup.service_metadata = prefix
        backup.size = max(1, math.ceil(volume_size / GiB))
        backup.save()
        LOG.debug('Backup %(id)s of volume %(vol)s (%(size)d bytes): '
                  'container %(c)s, prefix %(p)s, parent %(parent)s.',
                  {'id': backup.id, 'vol': backup.volume_id,
                   'size': volume_size, 'c': container, 'p': prefix,
                   'parent': backup.parent_id})
        self.store.ensure_container(container)
        extra_metadata = self.get_extra_metadata(
            backup, {'id': backup.volume_id, 'size': backup.size})
        try:
            entries, digests = self._store_volume(
                backup, volume_file, volume_size, container, prefix,
                parent_sha, extra_metadata)
            volume_meta = (self.get_metadata(backup.volume_id)
                           if backup_metadata else None)
            self.flush_container(container)
            self._write_documents(backup, container, prefix, entries,
                                  digests, volume_meta, extra_metadata)
        except exception.BackupOperationCancelled as e:
            LOG.warning('Backup %(id)s was cancelled; removing the objects '
                        'it wrote.', {'id': backup.id})
            self._delete_objects_quietly(container, prefix)
            return self.backup_cancelled(backup, e)
        except BaseException as e:
            LOG.error('Backup %(id)s failed (%(err)s); removing the objects '
                      'it wrote.', {'id': backup.id, 'err': e})
            self._delete_objects_quietly(container, prefix)
            raise
        backup.object_count = len(entries) + 2
        backup.save()
        return {'parent_id': backup.parent_id}

    def _parent_block_map(self, backup, volume_size) -> fmt.ShaFile:
        parent = getattr(backup, 'parent', None)
        if parent is None:
            raise exception.ParentMismatch(
                backup_id=backup.id,
                reason='its parent %s is not in the catalog' %
                       backup.parent_id)
        chain = self._load_chain(parent, check_listing=False)
        parent_size = max((e.end for layer in chain
                           for e in layer.metadata.objects), default=0)
        container, prefix = self._where(parent)
        sha = self._read_sha256file(parent, container, prefix)
        if sha.chunk_size != self.sha_block_size:
            raise exception.ParentMismatch(
                backup_id=backup.id,
                reason='parent %s was made with sha_block_size %d and this '
                       'driver uses %d; set [chunkbackup] sha_block_size = '
                       '%d or make a full backup' % (
                           parent.id, sha.chunk_size, self.sha_block_size,
                           sha.chunk_size))
        if volume_size < parent_size:
            raise exception.ParentMismatch(
                backup_id=backup.id,
                reason='the volume is %d bytes, smaller than the %d bytes of '
                       'parent %s; make a full backup' % (
                           volume_size, parent_size, parent.id))
        return sha

    def _read_pieces(self, volume_file, pool: '_BufferPool'):
        """Yield (offset, data): object-size pieces of the volume.

        Full pieces are read into reused buffers from ``pool``; the
        caller gives each back once nothing refers to it.
        """
        offset = 0
        volume_file.seek(0)
        readinto = getattr(volume_file, 'readinto', None)
        while True:
            if readinto is not None:
                data = pool.take()
                filled = _read_full(readinto, data)
                if filled < len(data):
                    pool.give(data)
                    data = bytes(memoryview(data)[:filled])
            else:
                data = volume_file.read(self.object_size)
                # A short read before the end (a pipe, a proxy) must not
                # move the piece boundaries: pieces are object-size aligned.
                while data and len(data) < self.object_size:
                    more = volume_file.read(self.object_size - len(data))
                    if not more:
                        break
                    data += more
            if not data:
                return
            yield offset, data
            offset += len(data)

    def _store_volume(self, backup, volume_file, volume_size, container,
                      prefix, parent_sha, extra_metadata):
        entries: List[fmt.ObjectEntry] = []
        digests = []
        check_cancel = self._cancel_checker(backup, 'backup')
        process = functools.partial(self._process_piece, parent_sha)
        window = self.objects_in_flight
        pool = _BufferPool(self.object_size)
        with self._executors() as pools, \
                self._progress('backup', backup, volume_size) as prog:
            # Bounded in bytes: many small objects (an incremental's runs)
            # may be stored at once, large ones objects_in_flight at a time.
            writes = pipeline.Window(self.io_workers,
                                     max_bytes=window * self.object_size)
            try:
                pieces = pipeline.ordered(pools.submit_cpu, process,
                                          self._read_pieces(volume_file,
                                                            pool),
                                          window)
                for piece in pieces:
                    digests.append(piece.digests)
                    holders = []
                    for ext in piece.extents:
                        name = fmt.data_object_name(prefix, len(entries) + 1)
                        future = pools.submit_io(
                            self.store.put, container, name, ext.body,
                            extra_metadata)
                        if ext.body_in_buffer:
                            holders.append(future)
                        writes.add(future, ext.length)
                        entries.append(fmt.ObjectEntry(
                            name, ext.offset, ext.length, ext.label,
                            ext.md5))
                    pool.give_after(piece.buffer, holders)
                    prog.advance(piece.length)
                    check_cancel()
                writes.drain()
            except BaseException:
                writes.cancel()
                raise
        return entries, b''.join(digests)

    def _block_digests(self, data) -> bytes:
        zeros = self._zeros
        if zeros.is_zero(data):
            return zeros.digests(len(data))
        bs = self.sha_block_size
        view = memoryview(data)
        sha256 = hashlib.sha256
        zero_block, zero_digest = zeros.block, zeros.block_digest
        out = []
        for i in range(0, len(data) - bs + 1, bs):
            if data.startswith(zero_block, i):
                out.append(zero_digest)
            else:
                out.append(sha256(view[i:i + bs]).digest())
        tail = len(data) % bs
        if tail:
            out.append(sha256(view[len(data) - tail:]).digest())
        return b''.join(out)

    def _changed_runs(self, parent_sha: fmt.ShaFile, first_block: int,
                      digests: bytes, length: int) -> List[Tuple[int, int]]:
        """Byte ranges of a piece whose blocks differ from the parent."""
        size = fmt.DIGEST_SIZE
        parent = parent_sha.digests
        base = first_block * size
        if parent[base:base + len(digests)] == digests:
            return []
        bs = self.sha_block_size
        gap_blocks = self.incremental_merge_gap // bs
        runs = []
        for j in range(len(digests) // size):
            k = base + j * size
            if parent[k:k + size] == digests[j * size:(j + 1) * size]:
                continue
            if runs and j - runs[-1][1] <= gap_blocks:
                runs[-1][1] = j + 1
            else:
                runs.append([j, j + 1])
        return [(a * bs, min(b * bs, length)) for a, b in runs]

    def _process_piece(self, parent_sha, offset, data) -> _Piece:
        """Hash, diff, MD5 and compress one piece (runs on a native thread)."""
        digests = self._block_digests(data)
        if parent_sha is None:
            ranges = [(0, len(data))]
        else:
            ranges = self._changed_runs(parent_sha,
                                        offset // self.sha_block_size,
                                        digests, len(data))
        extents = []
        view = memoryview(data)
        for start, end in ranges:
            chunk = data if end - start == len(data) else view[start:end]
            in_buffer = False
            if self._zeros.is_zero(chunk):
                label, body, md5 = self._zeros.encoded(end - start)
            else:
                md5 = _md5_hex(chunk)
                label, body = self.compressor.compress(chunk)
                # Stored raw: the body is the read buffer itself, no copy.
                in_buffer = body is chunk and isinstance(data, bytearray)
                if not in_buffer and not isinstance(body, bytes):
                    body = bytes(body)
            extents.append(_Extent(offset + start, end - start, label, body,
                                   md5, in_buffer))
        return _Piece(len(data), digests, extents,
                      data if isinstance(data, bytearray) else None)

    def _write_documents(self, backup, container, prefix, entries, digests,
                         volume_meta, extra_metadata):
        common = {
            'backup_id': backup.id,
            'volume_id': backup.volume_id,
            'backup_name': getattr(backup, 'display_name', None),
            'backup_description': getattr(backup, 'display_description',
                                          None),
            'created_at': str(getattr(backup, 'created_at', None)),
        }
        sha_doc = fmt.ShaFile(self.sha_block_size, digests).to_json(common)
        metadata = fmt.Metadata(
            parent_id=backup.parent_id or None, objects=entries,
            volume_meta=volume_meta, extra_metadata=extra_metadata, **common)
        self.store.put(container, fmt.sha256file_name(prefix),
                       fmt.dumps(sha_doc), extra_metadata)
        self.flush_container(container)
        self.store.put(container, fmt.metadata_name(prefix),
                       fmt.dumps(metadata.to_json()), extra_metadata)
        self.flush_container(container)

    # ------------------------------------------------------------------
    # Restore and verify.

    def plan_restore(self, backup, check_listing: bool = True) -> RestorePlan:
        """Work out, from metadata alone, what a restore fetches and writes."""
        chain = self._load_chain(backup, check_listing)
        target = chain[-1]
        sha = self._read_sha256file(backup, target.container, target.prefix)
        bs = sha.chunk_size
        size = max((e.end for layer in chain for e in layer.metadata.objects),
                   default=0)
        if sha.block_count != math.ceil(size / bs):
            raise exception.InvalidBackupMetadata(
                backup_id=backup.id, object=fmt.sha256file_name(target.prefix),
                reason='it lists %d blocks but the objects of the chain make '
                       'a %d-byte volume' % (sha.block_count, size))
        claims = _Claims()
        fetches = []
        for layer in reversed(chain):
            self._check_layer_objects(layer, bs)
            for entry in layer.metadata.objects:
                pieces = claims.claim(entry.offset, entry.end)
                for start, end in pieces:
                    if start % bs or (end % bs and end != size):
                        raise exception.InvalidBackupMetadata(
                            backup_id=layer.backup.id,
                            object=fmt.metadata_name(layer.prefix),
                            reason='object %s supplies bytes %d-%d, which are'
                                   ' not aligned to the %d-byte SHA blocks'
                                   % (entry.name, start, end, bs))
                if pieces:
                    fetches.append(_Fetch(layer, entry, pieces))
        if size and (claims.starts != [0] or claims.ends != [size]):
            hole = (claims.ends[0] if claims.starts[0] == 0 else 0)
            raise exception.InvalidBackupMetadata(
                backup_id=backup.id, object=fmt.metadata_name(target.prefix),
                reason='no object of the chain holds the bytes at offset %d'
                       % hole)
        fetches.sort(key=lambda f: f.entry.offset)
        plan = RestorePlan(size, bs, sha, [], [], chain)
        for fetch in fetches:
            if self._all_zero(sha, fetch.pieces, size):
                plan.zero_runs.extend(fetch.pieces)
            else:
                plan.fetches.append(fetch)
        LOG.debug('Restore plan of backup %(id)s: %(size)d bytes from a '
                  'chain of %(n)d, %(f)d objects to fetch of %(all)d, '
                  '%(z)d zero ranges.',
                  {'id': backup.id, 'size': size, 'n': len(chain),
                   'f': len(plan.fetches),
                   'all': sum(len(layer.metadata.objects)
                              for layer in chain),
                   'z': len(plan.zero_runs)})
        return plan

    @staticmethod
    def _check_layer_objects(layer, block_size):
        objects = sorted(layer.metadata.objects, key=lambda e: e.offset)
        for before, after in zip(objects, objects[1:]):
            if after.offset < before.end:
                raise exception.InvalidBackupMetadata(
                    backup_id=layer.backup.id,
                    object=fmt.metadata_name(layer.prefix),
                    reason='objects %s and %s overlap' % (before.name,
                                                          after.name))

    @staticmethod
    def _block_span(start, end, bs):
        return start // bs, -(-end // bs)

    def _all_zero(self, sha, pieces, size) -> bool:
        bs = sha.chunk_size
        full_zero = fmt.zero_digest(bs)
        for start, end in pieces:
            first, last = self._block_span(start, end, bs)
            expected = full_zero * (last - first)
            if end == size and size % bs:
                expected = (full_zero * (last - first - 1) +
                            fmt.zero_digest(size % bs))
            span = slice(first * fmt.DIGEST_SIZE, last * fmt.DIGEST_SIZE)
            if sha.digests[span] != expected:
                return False
        return True

    def restore(self, backup, volume_id, volume_file, volume_is_new=False):
        plan = self.plan_restore(backup)
        sink = _VolumeSink(volume_file, self._zeros.piece)
        try:
            self._execute_plan(backup, plan, sink, 'restore',
                               check_md5=self.restore_check_md5,
                               skip_zero=volume_is_new)
        except exception.BackupRestoreCancel as e:
            error = self.restore_cancelled(backup, volume_id, e)
            if error is e:
                raise
            raise error from e
        volume_meta = next((layer.metadata.volume_meta
                            for layer in reversed(plan.chain)
                            if layer.metadata.volume_meta), None)
        if volume_meta:
            self.put_metadata(volume_id, volume_meta)

    def verify(self, backup) -> RestorePlan:
        """Check a backup as a restore would, writing nothing.

        Every object that holds a block of the image is fetched, its MD5
        and the SHA-256 of every block checked; raises on the first error.
        """
        plan = self.plan_restore(backup)
        self._execute_plan(backup, plan, _NullSink(), 'verify',
                           check_md5=True, skip_zero=True)
        return plan

    def _execute_plan(self, backup, plan: RestorePlan, sink, operation,
                      check_md5: bool, skip_zero: bool):
        check_cancel = self._cancel_checker(backup, operation)
        with self._executors() as pools, \
                self._progress(operation, backup, plan.size) as prog:
            if not skip_zero:
                for start, end in plan.zero_runs:
                    sink.write_zeros(start, end - start)
            prog.advance(sum(e - s for s, e in plan.zero_runs))

            def fetch(item):
                body = self.store.get(
                    item.layer.container, item.entry.name,
                    item.layer.metadata.extra_metadata)
                return pools.submit_cpu(self._decode_and_check, plan, item,
                                        body, check_md5, skip_zero).result()

            results = pipeline.unordered(
                pools.submit_io, fetch, ((f,) for f in plan.fetches),
                self.objects_in_flight)
            for runs, supplied in results:
                for offset, data in runs:
                    sink.write(offset, data)
                prog.advance(supplied)
                check_cancel()
            sink.finish(plan.size)

    def _decode_and_check(self, plan: RestorePlan, fetch: _Fetch, body,
                          check_md5: bool, skip_zero: bool):
        """Decompress an object and check every block it supplies.

        Returns the runs to write (zero blocks left out when skip_zero) and
        the number of image bytes the object supplies.
        """
        entry, layer = fetch.entry, fetch.layer

        def corrupt(offset, reason):
            return exception.BackupCorrupted(
                backup_id=layer.backup.id, object=entry.name, offset=offset,
                reason=reason)

        try:
            data = compression.decompress(entry.compression, body,
                                          entry.length)
        except ValueError as e:
            raise corrupt(entry.offset, e)
        del body
        if check_md5 and _md5_hex(data) != entry.md5:
            raise corrupt(entry.offset, 'its MD5 differs from the one in '
                                        '_metadata')
        bs = plan.block_size
        view = memoryview(data)
        full_zero = self._zeros.block_digest if bs == self.sha_block_size \
            else fmt.zero_digest(bs)
        runs = []
        supplied = 0
        for start, end in fetch.pieces:
            supplied += end - start
            run_start = None
            for pos in range(start, end, bs):
                stop = min(pos + bs, end)
                k = pos // bs
                expected = plan.sha.digest(k)
                got = hashlib.sha256(view[pos - entry.offset:
                                          stop - entry.offset]).digest()
                if got != expected:
                    raise corrupt(pos, 'block %d does not match the SHA-256 '
                                       'in the backup\'s _sha256file' % k)
                skip = skip_zero and (
                    expected == full_zero if stop - pos == bs
                    else expected == fmt.zero_digest(stop - pos))
                if skip:
                    if run_start is not None:
                        runs.append((run_start, view[run_start - entry.offset:
                                                     pos - entry.offset]))
                        run_start = None
                elif run_start is None:
                    run_start = pos
            if run_start is not None:
                runs.append((run_start, view[run_start - entry.offset:
                                             end - entry.offset]))
        return runs, supplied

    # ------------------------------------------------------------------
    # Discovery, for rebuilding a catalog from the store.

    def find_metadata_objects(self, container: Optional[str] = None):
        """Yield (container, name) of every ``_metadata`` object.

        Object stores list their (default) container; drivers whose
        backups live in many containers (posix) override this.
        """
        if container is None:
            anonymous = types.SimpleNamespace(id='0' * 36, volume_id='0',
                                              container=None)
            container = self.update_container_name(anonymous, None)
        for name in self.store.list(container, ''):
            if name.endswith('_metadata'):
                yield container, name

    # ------------------------------------------------------------------
    # Delete.

    def delete_backup(self, backup):
        dependents = getattr(backup, 'num_dependent_backups', 0) or 0
        if getattr(backup, 'has_dependent_backups', False) or dependents:
            raise exception.BackupInUse(
                backup_id=backup.id,
                children=getattr(backup, 'dependent_backup_ids', None) or
                '%d incremental backup(s)' % max(dependents, 1))
        container = getattr(backup, 'container', None)
        prefix = getattr(backup, 'service_metadata', None)
        if not container or not prefix:
            LOG.info('Backup %s never wrote objects; nothing to delete.',
                     backup.id)
            return
        self.delete_objects(container, prefix)

    def delete_objects(self, container: str, prefix: str) -> int:
        """Delete every object with the prefix.

        _metadata goes first, so an interrupted delete never leaves a
        backup that looks complete.
        """
        try:
            names = set(self.store.list(container, prefix))
        except exception.StorageContainerNotFound:
            return 0  # a container removed by hand holds nothing to delete
        first = [n for n in (fmt.metadata_name(prefix),
                             fmt.sha256file_name(prefix)) if n in names]
        for name in first:
            self.store.delete(container, name)
        rest = sorted(names - set(first))
        with self._executors() as pools:
            for _ in pipeline.unordered(
                    pools.submit_io, self.store.delete,
                    ((container, n) for n in rest), self.objects_in_flight):
                pass
        return len(names)

    def _delete_objects_quietly(self, container, prefix):
        try:
            self.delete_objects(container, prefix)
        except Exception as e:
            LOG.error('Could not remove the objects with prefix %(p)s from '
                      '%(c)s (%(err)s); remove them by hand or run the '
                      'cleanup.', {'p': prefix, 'c': container, 'err': e})
