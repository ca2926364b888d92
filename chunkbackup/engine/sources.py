"""Where a backup reads a volume from, and which of its ranges need reading.

A source knows the volume's size, can read a range, and may know which
ranges hold data at all (a regular file through SEEK_DATA/SEEK_HOLE, an NBD
export through ``base:allocation``). ``classify`` then splits the volume's
blocks into three kinds, in volume order:

- READ: read and hash them;
- HOLE: unallocated, so zeros: their digest is known without reading;
- KNOWN: a changed-block map says they did not change since the parent:
  their digest is the parent's.
"""
import dataclasses
import errno
import os
import stat
from typing import (Any, Callable, Iterable, Iterator, List, Optional,
                    Sequence, Tuple, TYPE_CHECKING)

from chunkbackup import exception

if TYPE_CHECKING:
    from chunkbackup import nbd

Range = Tuple[int, int]  # [start, end) in bytes

READ = 'read'
HOLE = 'hole'
KNOWN = 'known'


def volume_size_of(volume_file: Any) -> int:
    """The size of a volume, from the file object itself.

    Block devices report 0 in stat, but seek to their end.
    """
    here = volume_file.tell()
    volume_file.seek(0, os.SEEK_END)
    size = volume_file.tell()
    volume_file.seek(here)
    return size


def descriptor_of(volume_file: Any,
                  kinds: Sequence[Callable[[int], bool]] = (
                      stat.S_ISREG, stat.S_ISBLK)) -> Optional[int]:
    """The descriptor behind a volume file object, if it is of ``kinds``.

    Works through eventlet's tpool proxy (its ``fileno`` is proxied).
    """
    try:
        fd = volume_file.fileno()
        mode = os.fstat(fd).st_mode
    except (AttributeError, OSError, ValueError, TypeError):
        return None  # os-brick's file-like devices have none
    if not isinstance(fd, int):
        return None
    return fd if any(kind(mode) for kind in kinds) else None


_NOT_VOLUMES = ((stat.S_ISCHR, 'a character device'),
                (stat.S_ISFIFO, 'a FIFO'), (stat.S_ISSOCK, 'a socket'),
                (stat.S_ISDIR, 'a directory'))


def check_volume_mode(mode: int, name: str) -> None:
    """Refuse what cannot be a volume, before it is opened for reading.

    A FIFO without a writer blocks open() forever and one with a writer
    cannot seek; /dev/zero never ends and /dev/null backs up as nothing.
    Regular files and block devices are volumes (NBD exports are URLs).
    """
    for is_kind, kind in _NOT_VOLUMES:
        if is_kind(mode):
            raise exception.NotAVolume(name=name, kind=kind)


class VolumeSource:
    """A volume to back up."""

    size: int = 0
    # Reads may come from several threads at once (pread).
    parallel_reads = False
    description = 'volume'

    def data_ranges(self) -> Optional[Iterator[Range]]:
        """Ranges that may hold data, in order; None when unknown."""
        return None

    def read_into(self, offset: int, buffer: memoryview) -> int:
        """Fill ``buffer`` from ``offset``; fewer bytes only at the end."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class FileSource(VolumeSource):
    """A regular file or block device, read with pread."""

    parallel_reads = True

    def __init__(self, fd: int, size: int, skip_holes: bool,
                 file_object: Any = None, owns_file: bool = False) -> None:
        # The file object owns the descriptor: keep it alive (and close
        # it with the source when the source opened it).
        self.file_object = file_object
        self.owns_file = owns_file
        self.fd = fd
        self.size = size
        self.is_regular = stat.S_ISREG(os.fstat(fd).st_mode)
        self.skip_holes = skip_holes and self.is_regular
        self.description = 'file' if self.is_regular else 'block device'

    def data_ranges(self) -> Optional[Iterator[Range]]:
        if not self.skip_holes:
            return None
        return file_data_ranges(self.fd, self.size)

    def close(self) -> None:
        if self.owns_file and self.file_object is not None:
            self.file_object.close()

    def read_into(self, offset: int, buffer: memoryview) -> int:
        view = memoryview(buffer)
        filled = 0
        while filled < len(view):
            n = os.preadv(self.fd, [view[filled:]], offset + filled)
            if not n:
                break
            filled += n
        return filled


def file_data_ranges(fd: int, size: int) -> Iterator[Range]:
    """The allocated ranges of a regular file (SEEK_DATA / SEEK_HOLE)."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole is left
                return
            if e.errno == errno.EINVAL:  # not supported: all is data
                yield offset, size
                return
            raise
        if start >= size:
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        offset = end


class StreamSource(VolumeSource):
    """A file object without a descriptor: read in order, whole."""

    description = 'file object'

    def __init__(self, volume_file: Any, size: int,
                 owns_file: bool = False) -> None:
        self.file = volume_file
        self.size = size
        self.owns_file = owns_file
        self.position: Optional[int] = None

    def close(self) -> None:
        if self.owns_file:
            self.file.close()

    def read_into(self, offset: int, buffer: memoryview) -> int:
        if self.position != offset:
            self.file.seek(offset)
        view = memoryview(buffer)
        filled = 0
        readinto = getattr(self.file, 'readinto', None)
        while filled < len(view):
            if readinto is not None:
                n = readinto(view[filled:])
            else:
                data = self.file.read(len(view) - filled)
                n = len(data)
                view[filled:filled + n] = data
            if not n:
                break
            filled += n
        self.position = offset + filled
        return filled


def open_source(volume_file: Any, skip_holes: bool,
                owns_file: bool = False) -> VolumeSource:
    """The source of a volume file object (Cinder's or the CLI's).

    With ``owns_file`` the source closes the file object when closed.
    """
    if isinstance(volume_file, VolumeSource):
        return volume_file
    try:
        mode = os.fstat(volume_file.fileno()).st_mode
    except (AttributeError, OSError, ValueError, TypeError):
        pass  # no descriptor (os-brick's file-like devices)
    else:
        check_volume_mode(mode, getattr(volume_file, 'name', 'the volume'))
    size = volume_size_of(volume_file)
    fd = descriptor_of(volume_file)
    if fd is not None:
        if hasattr(volume_file, 'flush'):
            try:
                volume_file.flush()  # what a caller wrote must be read
            except (OSError, ValueError):
                pass
        return FileSource(fd, size, skip_holes, volume_file, owns_file)
    return StreamSource(volume_file, size, owns_file)


# ----------------------------------------------------------------------
# Which blocks to read.

@dataclasses.dataclass(frozen=True)
class Segment:
    """Blocks [first, end) of one kind."""

    first: int
    end: int
    kind: str


def to_blocks(ranges: Iterable[Range], block_size: int,
              limit: int) -> List[Tuple[int, int]]:
    """Byte ranges widened to whole blocks, merged, clipped to ``limit``."""
    out: List[List[int]] = []
    for start, end in ranges:
        if end <= start:
            continue  # an empty range changes nothing
        first = start // block_size
        last = min(-(-end // block_size), limit)
        if first >= last:
            continue
        if out and first <= out[-1][1]:
            out[-1][1] = max(out[-1][1], last)
        else:
            out.append([first, last])
    return [(a, b) for a, b in out]


def classify(block_count: int, data_blocks: Optional[List[Tuple[int, int]]],
             changed_blocks: Optional[List[Tuple[int, int]]],
             parent_blocks: int) -> Iterator[Segment]:
    """Segments of READ, HOLE and KNOWN blocks covering the volume in order.

    ``data_blocks`` None means every block may hold data;
    ``changed_blocks`` None means no changed-block map. Blocks past the
    parent's end are never KNOWN: the parent has no digest for them.
    """
    data = [(0, block_count)] if data_blocks is None else data_blocks
    # Points where the kind may change; walk them once.
    unchanged: List[Tuple[int, int]] = []
    if changed_blocks is not None:
        cursor = 0
        for first, end in changed_blocks:
            if first > cursor:
                unchanged.append((cursor, min(first, parent_blocks)))
            cursor = max(cursor, end)
        unchanged.append((cursor, parent_blocks))
        unchanged = [(a, b) for a, b in unchanged if a < b]
    segment = None
    for kind, first, end in _overlay(block_count, data, unchanged):
        if segment and segment[0] == kind and segment[2] == first:
            segment[2] = end
            continue
        if segment:
            yield Segment(segment[1], segment[2], segment[0])
        segment = [kind, first, end]
    if segment:
        yield Segment(segment[1], segment[2], segment[0])


def _overlay(block_count, data, unchanged):
    """(kind, first, end) pieces: HOLE outside data, KNOWN in unchanged."""
    bounds = {0, block_count}
    for ranges in (data, unchanged):
        for a, b in ranges:
            bounds.add(min(a, block_count))
            bounds.add(min(b, block_count))
    points = sorted(bounds)
    di = ui = 0
    for first, end in zip(points, points[1:]):
        while di < len(data) and data[di][1] <= first:
            di += 1
        while ui < len(unchanged) and unchanged[ui][1] <= first:
            ui += 1
        in_data = di < len(data) and data[di][0] <= first
        in_unchanged = ui < len(unchanged) and unchanged[ui][0] <= first
        if not in_data:
            yield HOLE, first, end
        elif in_unchanged:
            yield KNOWN, first, end
        else:
            yield READ, first, end


# ----------------------------------------------------------------------
# NBD exports (qemu-nbd, libvirt's pull-mode backup).

def is_nbd_url(name: str) -> bool:
    return isinstance(name, str) and name.split(':', 1)[0] in (
        'nbd', 'nbd+unix', 'nbds', 'nbds+unix')


class NbdSource(VolumeSource):
    """An NBD export, read through our NBD client.

    Holes from ``base:allocation``; changes from a dirty bitmap's context
    when one is named.
    """

    parallel_reads = True  # the client serialises requests itself

    def __init__(self, url: str, skip_holes: bool = True,
                 dirty_bitmap: Optional[str] = None,
                 client: Optional['nbd.NbdClient'] = None) -> None:
        from chunkbackup import nbd
        self._nbd = nbd
        self.url = url
        self.skip_holes = skip_holes
        self.dirty_bitmap = dirty_bitmap
        contexts = [nbd.BASE_ALLOCATION]
        if dirty_bitmap:
            contexts.append(nbd.dirty_bitmap_context(dirty_bitmap))
        self.client = client or nbd.NbdClient.connect(url, contexts)
        self.size = self.client.size
        self.description = 'NBD export'

    def data_ranges(self) -> Optional[Iterator[Range]]:
        if not self.skip_holes:
            return None
        # Ranges the server says read as zeros need no reading either.
        return ((offset, offset + length) for offset, length, zero
                in self._nbd.data_extents(self.client) if not zero)

    def changed_extents(self) -> List[Tuple[int, int]]:
        """(offset, length) of what the dirty bitmap marks as changed."""
        if not self.dirty_bitmap:
            raise exception.InvalidBackup(
                reason='no dirty bitmap was named for %s' % self.url)
        return list(self._nbd.dirty_extents(self.client, self.dirty_bitmap))

    def read_into(self, offset: int, buffer: memoryview) -> int:
        length = min(len(buffer), max(0, self.size - offset))
        if not length:
            return 0
        return self.client.preadinto(memoryview(buffer)[:length], offset)

    def close(self) -> None:
        self.client.close()
