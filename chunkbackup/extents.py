"""Changed-block maps given by users: which bytes changed since the parent.

``chunkbackup backup-create VOLUME --incremental --changed-extents FILE``
takes a map of the ranges written since the parent backup was made, so an
incremental backup reads only those ranges. :func:`parse_changed_extents`
turns such a map into an :class:`ExtentMap`: sorted, merged (overlapping and
touching ranges joined), non-overlapping ``(offset, length)`` ranges inside
the volume. Four JSON shapes are accepted, recognised from the first entry:

``qemu-img map --output=json`` of a dirty bitmap
    ``[{"start": S, "length": L, "depth": 0, "present": P, "zero": Z,
    "data": D}, ...]`` from ``qemu-img map --output=json --image-opts
    'driver=nbd,...,x-dirty-bitmap=qemu:dirty-bitmap:NAME'``. In that mode
    QEMU reports the bitmap through the allocation flags, **inverted**: a
    dirty (changed) range is ``"data": false``, a clean one ``"data": true``.
    A qemu-img map is always read this way: a plain allocation map (without
    ``x-dirty-bitmap``) says what is allocated, not what changed, and is no
    changed-block map. Entries with ``"zero": true`` or ``present`` unlike
    ``data`` cannot come from a dirty bitmap, so such maps are refused; a
    fully allocated, non-sparse allocation map has neither and cannot be
    told from a bitmap with no dirty range.
``nbdinfo --map=qemu:dirty-bitmap:NAME --json URL``
    ``[{"offset": O, "length": L, "type": T, "description": "dirty"}, ...]``
    where bit 0 of ``type`` (value 1) means dirty. ``nbdinfo --map --json``
    of ``base:allocation`` has the same shape, but there bit 0 means hole;
    only a dirty-bitmap map is meaningful here, and maps whose types or
    descriptions are not those of a dirty bitmap are refused.
``rbd diff --format json``
    ``[{"offset": O, "length": L, "exists": "true"}, ...]``. Every entry is
    a change: ``"exists": "false"`` is a discarded range, which now reads as
    zeros and must be backed up too.
a plain list
    ``[[offset, length], ...]`` or ``{"extents": [[offset, length], ...]}``,
    in any order, overlaps allowed.

qemu-img and nbdinfo list every range of the volume, changed or not, so
their map must cover the volume from byte 0 to its end without gaps; a map
that stops short was made for a smaller volume, or was cut. In every shape a
range that starts at or past the volume's end is refused (the map belongs to
another volume); one that starts inside and runs past the end is clipped.

Parsing is linear in the size of the map for sorted input (every tool above
prints its ranges in order), and top-level lists are decoded one entry at a
time, so what is kept is the merged ranges (two arrays of 64-bit integers),
not the decoded document: a 1 TiB volume's map of 100k ranges costs a few
MiB at most.
"""
import array
import bisect
import json
import re
import sys
from typing import Any, Callable, Iterable, Iterator, Optional, Tuple, Union

from oslo_log import log as logging

from chunkbackup import exception

LOG = logging.getLogger(__name__)

Extent = Tuple[int, int]

# For the CLI's --changed-extents option.
CHANGED_EXTENTS_HELP = (
    'A JSON map of the ranges changed since the parent backup; only those '
    'are read. Accepted: "qemu-img map --output=json --image-opts '
    'driver=nbd,...,x-dirty-bitmap=qemu:dirty-bitmap:NAME" (dirty ranges '
    'are the entries with "data": false, as QEMU reports them in that '
    'mode), "nbdinfo --map=qemu:dirty-bitmap:NAME --json URL", "rbd diff '
    '--from-snap SNAP --format json IMAGE", or a list of [offset, length] '
    'pairs. Allocation maps (qemu-img map without x-dirty-bitmap, nbdinfo '
    '--map of base:allocation) are not changed-block maps.')

_WHITESPACE = re.compile(r'[ \t\n\r]*')
# nbdinfo's descriptions of qemu:dirty-bitmap types 0 and 1.
_DIRTY_BITMAP_DESCRIPTIONS = ('clean', 'dirty')
_RBD_EXISTS = {'true': True, 'false': False, True: True, False: False}


class _Fail:
    """Builds InvalidChangedExtents errors for one map."""

    def __init__(self, source: str):
        self.source = source

    def __call__(self, reason: str) -> exception.InvalidChangedExtents:
        return exception.InvalidChangedExtents(source=self.source,
                                               reason=reason)


# Reads one entry of a map's shape: (offset, length, changed).
_Reader = Callable[[int, Any, _Fail], Tuple[int, int, bool]]


def _describe(index: int, entry) -> str:
    text = json.dumps(entry, sort_keys=True)
    if len(text) > 100:
        text = text[:97] + '...'
    return 'entry %d %s' % (index, text)


def _skip_whitespace(text: str, pos: int = 0) -> int:
    match = _WHITESPACE.match(text, pos)
    assert match is not None  # it matches the empty string too
    return match.end()


def _entries(text: str, fail: _Fail) -> Iterator:
    """The map's entries, a top-level list decoded one entry at a time."""
    pos = _skip_whitespace(text)
    if not text.startswith('[', pos):
        try:
            document = json.loads(text)
        except ValueError as e:
            raise fail('it is not JSON (%s)' % e)
        if (isinstance(document, dict) and list(document) == ['extents'] and
                isinstance(document['extents'], list)):
            yield from document['extents']
            return
        raise fail('it is neither a JSON list nor an object with just an '
                   '"extents" list')
    decoder = json.JSONDecoder()
    pos = _skip_whitespace(text, pos + 1)
    if text.startswith(']', pos):
        pos += 1
    else:
        while True:
            try:
                entry, pos = decoder.raw_decode(text, pos)
            except ValueError as e:
                raise fail('it is not JSON (%s)' % e)
            yield entry
            pos = _skip_whitespace(text, pos)
            if text.startswith(',', pos):
                pos = _skip_whitespace(text, pos + 1)
            elif text.startswith(']', pos):
                pos += 1
                break
            else:
                raise fail("it is not JSON (expected ',' or ']' at "
                           "character %d)" % pos)
    if _skip_whitespace(text, pos) != len(text):
        raise fail('it is not JSON (extra data after the list at character '
                   '%d)' % pos)


def _integer(entry: dict, key: str, index: int, fail: _Fail,
             shown=None) -> int:
    """``entry[key]`` as a non-negative integer; ``shown`` is quoted."""
    shown = entry if shown is None else shown
    if key not in entry:
        raise fail('%s has no "%s"' % (_describe(index, shown), key))
    value = entry[key]
    # bool is an int in Python; it is never a valid offset or length.
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail('%s: "%s" is not an integer' % (_describe(index, shown),
                                                   key))
    if value < 0:
        raise fail('%s: "%s" is negative' % (_describe(index, shown), key))
    return value


# One reader a shape: entry -> (offset, length, changed).

def _read_qemu_img(index: int, entry, fail: _Fail) -> Tuple[int, int, bool]:
    if not isinstance(entry, dict):
        raise fail('%s is not an object like the first entry (qemu-img map)'
                   % _describe(index, entry))
    start = _integer(entry, 'start', index, fail)
    length = _integer(entry, 'length', index, fail)
    data = entry.get('data')
    if not isinstance(data, bool):
        raise fail('%s: "data" is not true or false'
                   % _describe(index, entry))
    present = entry.get('present', data)
    if entry.get('zero', False) is not False or present is not data:
        # The NBD dirty-bitmap context has no zero flag, and its dirty bit
        # lands in QEMU's hole bit, so present always equals data there.
        raise fail('%s is an allocation map entry, not a dirty-bitmap one; '
                   'run qemu-img map with x-dirty-bitmap=qemu:dirty-bitmap:'
                   'NAME in --image-opts' % _describe(index, entry))
    # x-dirty-bitmap mode reports dirty ranges as "data": false.
    return start, length, not data


def _read_nbdinfo(index: int, entry, fail: _Fail) -> Tuple[int, int, bool]:
    if not isinstance(entry, dict):
        raise fail('%s is not an object like the first entry (nbdinfo)'
                   % _describe(index, entry))
    offset = _integer(entry, 'offset', index, fail)
    length = _integer(entry, 'length', index, fail)
    kind = _integer(entry, 'type', index, fail)
    description = entry.get('description')
    if kind > 1 or (isinstance(description, str) and
                    description not in _DIRTY_BITMAP_DESCRIPTIONS):
        raise fail('%s is not a dirty-bitmap entry (type 0 "clean" or 1 '
                   '"dirty"); run nbdinfo --map=qemu:dirty-bitmap:NAME, not '
                   'a map of base:allocation' % _describe(index, entry))
    return offset, length, bool(kind & 1)


def _read_rbd(index: int, entry, fail: _Fail) -> Tuple[int, int, bool]:
    if not isinstance(entry, dict):
        raise fail('%s is not an object like the first entry (rbd diff)'
                   % _describe(index, entry))
    offset = _integer(entry, 'offset', index, fail)
    length = _integer(entry, 'length', index, fail)
    exists = entry.get('exists')
    if not isinstance(exists, (str, bool)) or exists not in _RBD_EXISTS:
        raise fail('%s: "exists" is not "true" or "false"'
                   % _describe(index, entry))
    # "false" is a discarded range: it reads as zeros now, so it changed.
    return offset, length, True


def _read_pair(index: int, entry, fail: _Fail) -> Tuple[int, int, bool]:
    if not isinstance(entry, list) or len(entry) != 2:
        raise fail('%s is not an [offset, length] pair'
                   % _describe(index, entry))
    pair = {'offset': entry[0], 'length': entry[1]}
    return (_integer(pair, 'offset', index, fail, shown=entry),
            _integer(pair, 'length', index, fail, shown=entry), True)


def _shape(entry: object) -> Tuple[Optional[str], Optional[_Reader], bool]:
    """(name, reader, lists the whole volume) of the first entry's shape."""
    if isinstance(entry, list):
        return 'list of [offset, length] pairs', _read_pair, False
    if isinstance(entry, dict):
        if 'start' in entry and 'data' in entry:
            return 'qemu-img map (x-dirty-bitmap)', _read_qemu_img, True
        if 'offset' in entry and 'type' in entry:
            return 'nbdinfo --map (dirty bitmap)', _read_nbdinfo, True
        if 'offset' in entry and 'exists' in entry:
            return 'rbd diff', _read_rbd, False
    return None, None, False


class _Builder:
    """Merges ranges as they come: in one pass when they come in order."""

    def __init__(self):
        self.starts = array.array('q')
        self.ends = array.array('q')
        self.in_order = True

    def add(self, start: int, end: int) -> None:
        if start >= end:
            return
        if self.in_order and self.ends:
            if start < self.starts[-1]:
                self.in_order = False
            elif start <= self.ends[-1]:
                if end > self.ends[-1]:
                    self.ends[-1] = end
                return
        self.starts.append(start)
        self.ends.append(end)

    def build(self, volume_size: int) -> 'ExtentMap':
        if self.in_order:
            return ExtentMap._from_arrays(self.starts, self.ends, volume_size)
        ranges = sorted(zip(self.starts, self.ends))
        self.starts = self.ends = None
        merged = _Builder()
        for start, end in ranges:
            merged.add(start, end)
        return ExtentMap._from_arrays(merged.starts, merged.ends,
                                      volume_size)


class ExtentMap:
    """Sorted, merged, non-overlapping byte ranges of one volume.

    Iterating gives ``(offset, length)`` pairs in volume order; ranges never
    touch (touching ranges are merged) and all lie in ``[0, volume_size)``.
    Lookups are binary searches.
    """

    __slots__ = ('volume_size', '_starts', '_ends', 'changed_bytes')

    def __init__(self, extents: Iterable[Extent] = (), volume_size: int = 0):
        """Normalise ``(offset, length)`` pairs given in any order.

        A range starting at or past ``volume_size`` raises ValueError; one
        running past it is clipped.
        """
        _check_size(volume_size)
        builder = _Builder()
        for offset, length in extents:
            if offset < 0 or length < 0:
                raise ValueError('negative range (%d, %d)' % (offset, length))
            if length and offset >= volume_size:
                raise ValueError('range (%d, %d) starts past the end of a '
                                 '%d-byte volume'
                                 % (offset, length, volume_size))
            builder.add(offset, min(offset + length, volume_size))
        other = builder.build(volume_size)
        self._set(other._starts, other._ends, volume_size)

    @classmethod
    def _from_arrays(cls, starts: array.array, ends: array.array,
                     volume_size: int) -> 'ExtentMap':
        """Wrap arrays that are already sorted, merged and clipped."""
        extent_map = cls.__new__(cls)
        extent_map._set(starts, ends, volume_size)
        return extent_map

    def _set(self, starts, ends, volume_size):
        self._starts = starts
        self._ends = ends
        self.volume_size = volume_size
        self.changed_bytes = sum(ends) - sum(starts)

    def __iter__(self) -> Iterator[Extent]:
        for start, end in zip(self._starts, self._ends):
            yield start, end - start

    def __len__(self) -> int:
        return len(self._starts)

    def __eq__(self, other) -> bool:
        if not isinstance(other, ExtentMap):
            return NotImplemented
        return (self.volume_size == other.volume_size and
                self._starts == other._starts and self._ends == other._ends)

    def __repr__(self) -> str:
        shown = [r for r, _ in zip(self, range(8))]
        more = ', ...%d more' % (len(self) - 8) if len(self) > 8 else ''
        return 'ExtentMap(%s%s, volume_size=%d)' % (shown, more,
                                                    self.volume_size)

    def _first_ending_after(self, offset: int) -> int:
        return bisect.bisect_right(self._ends, offset)

    def contains(self, offset: int, length: int) -> bool:
        """Whether every byte of ``[offset, offset+length)`` changed."""
        if length <= 0:
            return True
        i = self._first_ending_after(offset)
        return (i < len(self._starts) and self._starts[i] <= offset and
                self._ends[i] >= offset + length)

    def overlaps(self, offset: int, length: int) -> bool:
        """Whether any byte of ``[offset, offset+length)`` changed."""
        if length <= 0:
            return False
        i = self._first_ending_after(offset)
        return i < len(self._starts) and self._starts[i] < offset + length

    def intersection(self, offset: int, length: int) -> Iterator[Extent]:
        """The changed ranges inside ``[offset, offset+length)``, clipped."""
        end = offset + length
        i = self._first_ending_after(offset)
        while i < len(self._starts) and self._starts[i] < end:
            start = max(self._starts[i], offset)
            yield start, min(self._ends[i], end) - start
            i += 1

    def complement(self) -> 'ExtentMap':
        """The unchanged ranges of the volume."""
        starts, ends = array.array('q'), array.array('q')
        cursor = 0
        for start, end in zip(self._starts, self._ends):
            if start > cursor:
                starts.append(cursor)
                ends.append(start)
            cursor = end
        if cursor < self.volume_size:
            starts.append(cursor)
            ends.append(self.volume_size)
        return ExtentMap._from_arrays(starts, ends, self.volume_size)

    def align(self, block_size: int) -> 'ExtentMap':
        """Each range widened to whole blocks (the last block may be short).

        A block is changed when any of its bytes changed, so an incremental
        backup that compares whole SHA blocks reads these ranges.
        """
        if isinstance(block_size, bool) or not isinstance(block_size, int) \
                or block_size <= 0:
            raise ValueError('block size %r is not a positive integer'
                             % (block_size,))
        builder = _Builder()
        for start, end in zip(self._starts, self._ends):
            builder.add(start - start % block_size,
                        min(-(-end // block_size) * block_size,
                            self.volume_size))
        return builder.build(self.volume_size)


def _check_size(volume_size: int) -> None:
    if isinstance(volume_size, bool) or not isinstance(volume_size, int) or \
            volume_size < 0:
        raise ValueError('volume size %r is not a non-negative integer'
                         % (volume_size,))


def parse_changed_extents(data: Union[bytes, str], volume_size: int,
                          source: str = 'map') -> ExtentMap:
    """The changed ranges of a ``volume_size``-byte volume from a JSON map.

    ``source`` names the map in error messages (the file name, say). Raises
    InvalidChangedExtents when the map is not JSON, not one of the accepted
    shapes (see the module docstring), holds negative or non-integer
    numbers, does not fit the volume, or is an allocation map rather than a
    dirty bitmap.
    """
    _check_size(volume_size)
    fail = _Fail(source)
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            data = bytes(data).decode('utf-8-sig')
        except UnicodeDecodeError:
            raise fail('it is not UTF-8 text')
    builder = _Builder()
    name: Optional[str] = None
    reader: Optional[_Reader] = None
    covers_volume = False
    covered = 0   # where the next entry of a whole-volume map must start
    for index, entry in enumerate(_entries(data, fail)):
        if reader is None:
            name, reader, covers_volume = _shape(entry)
            if reader is None:
                raise fail('%s has an unknown shape'
                           % _describe(index, entry))
        offset, length, changed = reader(index, entry, fail)
        if covers_volume:
            if offset != covered:
                raise fail('%s leaves a gap or overlap at byte %d, but a %s '
                           'lists every range in order; give the map as the '
                           'tool printed it' % (_describe(index, entry),
                                                covered, name))
            covered = offset + length
        if not length:
            continue
        if offset >= volume_size:
            raise fail('%s starts at or past the end of the %d-byte volume, '
                       'so it was made for another volume'
                       % (_describe(index, entry), volume_size))
        if changed:
            builder.add(offset, min(offset + length, volume_size))
    if covers_volume and covered < volume_size:
        raise fail('the %s ends at byte %d but the volume has %d bytes, so '
                   'it was made for another volume or is cut short; map the '
                   'whole volume' % (name, covered, volume_size))
    extent_map = builder.build(volume_size)
    LOG.debug('Changed-extents map %(src)s (%(shape)s): %(n)d ranges, '
              '%(changed)d of %(size)d bytes changed.',
              {'src': source, 'shape': name or 'empty list',
               'n': len(extent_map), 'changed': extent_map.changed_bytes,
               'size': volume_size})
    return extent_map


def read_changed_extents(path: str, volume_size: int) -> ExtentMap:
    """:func:`parse_changed_extents` of a file (``-`` reads stdin)."""
    try:
        if path == '-':
            data = sys.stdin.buffer.read()
        else:
            with open(path, 'rb') as f:
                data = f.read()
    except OSError as e:
        raise exception.InvalidChangedExtents(
            source=path, reason='it cannot be read (%s)' % (e.strerror or e))
    return parse_changed_extents(data, volume_size, source=path)
