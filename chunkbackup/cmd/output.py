"""How the ``chunkbackup`` command shows things to people and scripts.

Pure functions, no catalog and no terminal: sizes (``64.0 MiB``), rates
(``MiB/s``), durations, times (local, to the second, with the zone; ISO
8601 UTC for JSON) and tables cut to fit a width.
"""
import datetime
import textwrap
from typing import Any, Dict, List, Optional, Sequence, Tuple

UNITS = ('B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB')
ELLIPSIS = '\u2026'
DEFAULT_WIDTH = 100
GAP = '  '


def human_size(value: Optional[float]) -> str:
    """Bytes for people, in powers of 1024: ``512 B``, ``64.0 MiB``."""
    if value is None:
        return ''
    size = float(value)
    sign = '-' if size < 0 else ''
    size = abs(size)
    if size < 1024:
        return '%s%d B' % (sign, int(size))
    for unit in UNITS[1:]:
        size /= 1024.0
        if size < 1024 or unit == UNITS[-1]:
            break
    # 1023.96 KiB would print as 1024.0 KiB: say 1.0 MiB instead.
    if round(size, 1) >= 1024 and unit != UNITS[-1]:
        size /= 1024.0
        unit = UNITS[UNITS.index(unit) + 1]
    return '%s%.1f %s' % (sign, size, unit)


def human_rate(bytes_per_second: Optional[float]) -> str:
    """A throughput: ``381.2 MiB/s``."""
    if bytes_per_second is None:
        return ''
    return human_size(bytes_per_second) + '/s'


def human_duration(seconds: Optional[float]) -> str:
    """``0.42 s``, ``12.3 s``, ``4 min 05 s``, ``2 h 03 min``."""
    if seconds is None:
        return ''
    if seconds < 10:
        return '%.2f s' % seconds
    if seconds < 60:
        return '%.1f s' % seconds
    whole = int(round(seconds))
    if whole < 3600:
        return '%d min %02d s' % divmod(whole, 60)
    hours, rest = divmod(whole, 3600)
    if hours < 48:
        return '%d h %02d min' % (hours, rest // 60)
    return '%d d %02d h' % divmod(hours, 24)


def human_fraction(value: Optional[float]) -> str:
    """``12.5%``; tiny but non-zero fractions are not rounded to 0."""
    if value is None:
        return ''
    percent = value * 100
    if 0 < percent < 0.1:
        return '<0.1%'
    return '%.1f%%' % percent


def _as_utc(value: datetime.datetime) -> datetime.datetime:
    # The catalog keeps naive UTC (catalog.models.utcnow).
    if value.tzinfo is None:
        return value.replace(tzinfo=datetime.timezone.utc)
    return value.astimezone(datetime.timezone.utc)


def iso_utc(value: Optional[datetime.datetime]) -> Optional[str]:
    """ISO 8601 in UTC, exact: ``2026-12-03T06:14:50.123456Z``."""
    if value is None:
        return None
    return _as_utc(value).strftime('%Y-%m-%dT%H:%M:%S.%fZ')


def local_parts(value: datetime.datetime,
                tz: Optional[datetime.tzinfo] = None) -> Tuple[str, str]:
    """(``2026-12-03 07:14:50``, zone) in the local (or given) zone."""
    local = _as_utc(value).astimezone(tz)
    zone = local.strftime('%Z') or local.strftime('%z')
    if not zone.isalpha():
        zone = local.strftime('%z')  # a zone without a name: its offset
    return local.strftime('%Y-%m-%d %H:%M:%S'), zone


def local_time(value: Optional[datetime.datetime],
               tz: Optional[datetime.tzinfo] = None) -> str:
    """Local time to the second with its zone: ``2026-12-03 07:14:50 CET``."""
    if value is None:
        return ''
    text, zone = local_parts(value, tz)
    return '%s %s' % (text, zone)


def time_column(values: Sequence[Optional[datetime.datetime]],
                tz: Optional[datetime.tzinfo] = None
                ) -> Tuple[List[str], Optional[str]]:
    """Cells of a time column and the zone its title can carry.

    When every time is in one zone, the zone goes once in the title and
    the cells are shorter; otherwise (a daylight-saving change between
    rows) each cell names its own.
    """
    parts = [local_parts(v, tz) if v is not None else None for v in values]
    zones = {p[1] for p in parts if p is not None}
    if len(zones) <= 1:
        zone = zones.pop() if zones else None
        return [p[0] if p else '' for p in parts], zone
    return ['%s %s' % p if p else '' for p in parts], None


def shorten(text: str, width: int, keep: str = 'end') -> str:
    """``text`` in at most ``width`` characters, an ellipsis for the cut.

    ``keep='end'`` keeps the end (paths: ``…/vg0/data``), ``'start'`` the
    start (names, errors).
    """
    if width <= 0:
        return ''
    if len(text) <= width:
        return text
    if width == 1:
        return ELLIPSIS
    if keep == 'end':
        return ELLIPSIS + text[len(text) - width + 1:]
    return text[:width - 1] + ELLIPSIS


class Column:
    """A table column: the key of its cells, a title, how it may shrink.

    ``shrink`` is the column's share of a cut (0: never cut), ``minimum``
    the narrowest it becomes, and ``keep`` which end of a cut cell stays.
    ``right`` aligns numbers; an ``optional`` column is left out when
    the table cannot fit with it, or has nothing to show.
    """

    def __init__(self, key: str, title: str, shrink: int = 0,
                 minimum: int = 8, keep: str = 'start',
                 right: bool = False, optional: bool = False) -> None:
        self.key = key
        self.title = title
        self.shrink = shrink
        self.minimum = minimum
        self.keep = keep
        self.right = right
        # Left out (last ones first) when the table cannot fit otherwise,
        # and whenever every cell of it is empty.
        self.optional = optional


def fit_widths(natural: Sequence[int], columns: Sequence[Column],
               width: Optional[int]) -> List[int]:
    """Column widths whose sum (with the gaps) is at most ``width``.

    Shrinkable columns give up characters in proportion to their
    ``shrink`` share, never below their minimum (or their title). None:
    no limit.
    """
    widths = list(natural)
    if width is None:
        return widths
    excess = sum(widths) + len(GAP) * (len(widths) - 1) - width
    while excess > 0:
        able = [i for i, c in enumerate(columns)
                if c.shrink and widths[i] > max(c.minimum, len(c.title))]
        if not able:
            break
        total = sum(columns[i].shrink for i in able)
        cut_any = False
        for i in able:
            floor = max(columns[i].minimum, len(columns[i].title))
            share = max(1, excess * columns[i].shrink // total)
            cut = min(share, widths[i] - floor, excess)
            if cut > 0:
                widths[i] -= cut
                excess -= cut
                cut_any = True
            if excess <= 0:
                break
        if not cut_any:
            break
    return widths


def render_table(rows: Sequence[Dict[str, Any]], columns: Sequence[Column],
                 width: Optional[int] = DEFAULT_WIDTH) -> List[str]:
    """One header line and one line a row, fitted to ``width``."""
    def text(row: Dict[str, Any], key: str) -> str:
        return '' if row.get(key) is None else str(row.get(key))
    columns = [c for c in columns
               if not c.optional or any(text(r, c.key) for r in rows)]
    while True:
        cells = [[text(row, c.key) for c in columns] for row in rows]
        natural = [max([len(c.title)] + [len(r[i]) for r in cells])
                   for i, c in enumerate(columns)]
        widths = fit_widths(natural, columns, width)
        total = sum(widths) + len(GAP) * (len(widths) - 1)
        optional = [i for i, c in enumerate(columns) if c.optional]
        if width is None or total <= width or not optional:
            break
        columns = [c for i, c in enumerate(columns) if i != optional[-1]]

    def line(values: Sequence[str]) -> str:
        out = []
        for value, column, w in zip(values, columns, widths):
            value = shorten(value, w, column.keep)
            out.append(value.rjust(w) if column.right else value.ljust(w))
        return GAP.join(out).rstrip()

    lines = [line([c.title for c in columns])]
    lines.extend(line(r) for r in cells)
    return lines


def render_fields(fields: Sequence[Tuple[str, Any]],
                  width: Optional[int] = DEFAULT_WIDTH) -> List[str]:
    """A two-column Field/Value table; long values wrap to ``width``."""
    pairs = [(k, '' if v is None else str(v)) for k, v in fields]
    key_width = max([len('Field')] + [len(k) for k, _ in pairs])
    room = None if width is None else max(20, width - key_width - len(GAP))
    lines = [('Field'.ljust(key_width) + GAP + 'Value').rstrip()]
    for key, value in pairs:
        chunks = [value]
        if room is not None and len(value) > room:
            chunks = textwrap.wrap(value, room, break_long_words=True,
                                   break_on_hyphens=False) or ['']
        for i, chunk in enumerate(chunks):
            label = key if i == 0 else ''
            lines.append((label.ljust(key_width) + GAP + chunk).rstrip())
    return lines
