"""The ``chunkbackup`` command: backups of files and block devices.

    chunkbackup backup-create /path/to/disk.img
    chunkbackup backup-create /path/to/disk.img --incremental
    chunkbackup backup-list
    chunkbackup backup-restore latest /path/to/restored.img

Every command prints a table (or JSON with ``--format json``), exits 0 on
success, and on failure prints one line to stderr and exits non-zero (the
traceback only with ``--debug``). A backup is named by its id, a unique
id prefix of at least 4 characters, its name, ``latest`` or
``latest:VOLUME`` (see chunkbackup.catalog.refs).

The command line is parsed by argparse alone; oslo.config reads the
configuration files (and oslo.log's options, which ``--help-all`` lists).
"""
import argparse
import dataclasses
import datetime
import json
import os
import re
import shutil
import signal
import sys
from typing import (Any, Callable, List, NoReturn, Optional, Sequence,
                    TextIO, Tuple, Union)

from oslo_config import cfg
from oslo_log import log as logging
import sqlalchemy as sa
from sqlalchemy import orm

from chunkbackup.catalog import api
from chunkbackup.catalog import models
from chunkbackup.cmd import output
from chunkbackup import exception
from chunkbackup import extents
from chunkbackup import objectlock
from chunkbackup import operations
from chunkbackup import opts  # noqa: F401  (registers [chunkbackup])
from chunkbackup import progress
from chunkbackup.records import BackupLike
from chunkbackup import streams

CONF = cfg.CONF
LOG = logging.getLogger(__name__)
PROG = 'chunkbackup'
USER_CONFIG = os.path.join(os.path.expanduser('~'), '.config', 'chunkbackup',
                           'chunkbackup.conf')
EXIT_FAILURE = 1
EXIT_USAGE = 2
# A command's parsed arguments (argparse's Namespace).
CommandArgs = Any
Columns = Sequence[output.Column]
# The shortest id shown in tables; longer when needed to stay unique.
SHORT_ID = 8


class Terminated(KeyboardInterrupt):
    """SIGTERM: stop and clean up exactly as on Ctrl-C (SIGINT)."""


def _on_sigterm(signum, frame):
    raise Terminated()


def version() -> str:
    """chunkbackup's version, as installed."""
    try:
        from importlib import metadata
        return metadata.version('chunkbackup')
    except Exception:
        return 'unknown'


def note(message: str) -> None:
    """One line for people on stderr (stdout keeps the result)."""
    sys.stderr.write('%s: %s\n' % (PROG, message))


# Output ------------------------------------------------------------------

def table_width(args: CommandArgs) -> Optional[int]:
    """The width tables are fitted to (None with --wide: no limit).

    The terminal's width, else $COLUMNS, else 100.
    """
    if getattr(args, 'wide', False):
        return None
    if sys.stdout.isatty():
        return shutil.get_terminal_size((output.DEFAULT_WIDTH, 24)).columns
    try:
        return max(40, int(os.environ.get('COLUMNS', '')))
    except ValueError:
        return output.DEFAULT_WIDTH


def short_id_length(ids: Sequence[str], minimum: int = SHORT_ID) -> int:
    """The shortest prefix length, at least ``minimum``, unique in ids."""
    length = minimum
    longest = max((len(i) for i in ids), default=0)
    while length < longest:
        if len({i[:length] for i in ids}) == len(set(ids)):
            return length
        length += 1
    return max(length, minimum)


def print_table(rows: Sequence[dict], columns: Columns,
                width: Optional[int] = output.DEFAULT_WIDTH,
                out: TextIO = sys.stdout) -> None:
    for line in output.render_table(rows, columns, width):
        out.write(line + '\n')


def print_fields(fields: Sequence[Tuple[str, Any]],
                 width: Optional[int] = output.DEFAULT_WIDTH,
                 out: TextIO = sys.stdout) -> None:
    for line in output.render_fields(fields, width):
        out.write(line + '\n')


def _json_default(value):
    if isinstance(value, datetime.datetime):
        return output.iso_utc(value)
    return str(value)


def emit(args: CommandArgs, data: Union[dict, List[dict]],
         columns: Optional[Columns] = None,
         table: Optional[Union[List[dict], Sequence[Tuple[str, Any]]]] = None
         ) -> None:
    """JSON of ``data`` with --format json; else a table for people.

    ``table`` is what people see (rows for ``columns``, or (field, value)
    pairs); by default ``data`` itself.
    """
    if args.format == 'json':
        json.dump(data, sys.stdout, indent=2, sort_keys=True,
                  default=_json_default)
        sys.stdout.write('\n')
        return
    shown = data if table is None else table
    if columns is not None:
        print_table(shown, columns, table_width(args))  # type: ignore
    elif isinstance(shown, dict):
        print_fields(list(shown.items()), table_width(args))
    else:
        print_fields(shown, table_width(args))  # type: ignore


def _zoned(title: str, cells: List[str], zone: Optional[str]) -> str:
    return '%s (%s)' % (title, zone) if zone else title


def backup_view(record: models.Backup) -> dict:
    """A backup for JSON: exact values (bytes, ISO 8601 UTC times)."""
    return {
        'id': record.id,
        'volume_id': record.volume_id,
        'volume_path': record.volume_path,
        'status': record.status,
        'name': record.display_name,
        'description': record.display_description,
        'incremental': record.is_incremental,
        'parent_id': record.parent_id,
        # Cinder's size: GiB, rounded up.
        'size_gib': record.size,
        'size_bytes': record.size_bytes,
        'object_count': record.object_count,
        'driver': record.driver,
        'container': record.container,
        'object_prefix': record.service_metadata,
        'created_at': output.iso_utc(record.created_at),
        'data_timestamp': output.iso_utc(record.data_timestamp),
        'fail_reason': record.fail_reason,
        'stats': record.stats,
        'object_lock': (record.stats or {}).get('object_lock'),
        'verify_status': record.verify_status,
        'verify_reason': record.verify_reason,
        'verified_at': output.iso_utc(record.verified_at),
        # The process (service worker: host:pid) working on it now.
        'worker': record.owner,
        'pinned': bool(record.pinned),
        'schedule': record.schedule_name,
    }


def how_made(stats: Optional[dict]) -> str:
    """How a backup read its volume, in words."""
    if not stats:
        return ''
    parts = []
    if stats.get('hole_bytes'):
        parts.append('%s of holes skipped'
                     % output.human_size(stats['hole_bytes']))
    if stats.get('changed_map') == 'used':
        parts.append('changed-block map used (%d blocks sampled)'
                     % stats.get('blocks_sampled', 0))
    elif stats.get('changed_map') == 'rejected':
        parts.append('changed-block map rejected (%s): volume read whole'
                     % (stats.get('map_mismatch') or 'mismatch'))
    if stats.get('known_bytes') and stats.get('changed_map') != 'used':
        parts.append('%s known from the parent'
                     % output.human_size(stats['known_bytes']))
    if stats.get('encryption'):
        parts.append('encrypted (%s)' % stats['encryption'])
    if stats.get('incremental_fallback'):
        parts.append('full, as no backup could be the parent of '
                     '--incremental')
    return '; '.join(parts) or 'volume read whole'


def _count(number: int, word: str) -> str:
    return '%d %s%s' % (number, word, '' if number == 1 else 's')


def backup_fields(record: models.Backup) -> List[Tuple[str, Any]]:
    """A backup for people: sizes, times, what it did."""
    stats = record.stats or {}
    fields: List[Tuple[str, Any]] = [
        ('ID', record.id),
        ('Name', record.display_name),
        ('Description', record.display_description),
        ('Status', record.status),
        ('Volume', record.volume_path),
        ('Volume ID', record.volume_id),
        ('Type', 'incremental of %s' % record.parent_id
         if record.parent_id else 'full'),
        ('Size', '%s (%d bytes)' % (output.human_size(record.size_bytes),
                                    record.size_bytes or 0)),
    ]
    if stats:
        fields += [
            ('Read', output.human_size(stats.get('bytes_read'))),
            ('Stored', '%s in %s' % (
                output.human_size(stats.get('stored_bytes')),
                _count(stats.get('objects', record.object_count or 0),
                       'object'))),
        ]
        if stats.get('changed_fraction') is not None:
            fields.append(('Changed', '%s (%s)' % (
                output.human_fraction(stats['changed_fraction']),
                output.human_size(stats.get('stored_logical_bytes')))))
        fields.append(('How', how_made(stats)))
        if stats.get('duration_seconds') is not None:
            fields.append(('Duration',
                           output.human_duration(stats['duration_seconds'])))
            fields.append(('Throughput', output.human_rate(
                stats.get('throughput_bytes_per_second'))))
    else:
        fields.append(('Objects', record.object_count))
    fields += [
        ('Created', output.local_time(record.created_at)),
        ('Driver', record.driver),
        ('Container', record.container),
        ('Object prefix', record.service_metadata),
        ('Verify', ('%s at %s' % (record.verify_status,
                                  output.local_time(record.verified_at)))
         if record.verify_status else 'never verified'),
    ]
    fields.append(('Object lock', object_lock_text(record)))
    if record.verify_reason:
        fields.append(('Verify problem', record.verify_reason))
    if record.fail_reason:
        fields.append(('Error', record.fail_reason))
    if record.owner:
        fields.append(('Worker', record.owner))
    return [(k, v) for k, v in fields if v not in (None, '')]


def object_lock_text(record: models.Backup) -> str:
    """The backup's object lock in words, or why it has none."""
    lock = objectlock.recorded_lock(record)
    if lock is not None:
        return lock.describe() + ('' if lock.active() else ', expired')
    if operations.driver_class_can_lock(record.driver) is False:
        return 'none (the %s driver cannot lock objects)' % record.driver
    return 'none'


def _catalog_ids(session: orm.Session) -> List[str]:
    return list(session.scalars(sa.select(models.Backup.id)))


def backup_rows(session: orm.Session, records: Sequence[models.Backup],
                args: CommandArgs) -> Tuple[List[dict], Columns]:
    """Rows and columns of a backup table that fits the width."""
    wide = getattr(args, 'wide', False)
    length = 36 if wide else short_id_length(_catalog_ids(session))
    times, zone = output.time_column([r.created_at for r in records])
    rows = []
    for record, created in zip(records, times):
        rows.append({
            'id': record.id[:length],
            'volume': record.volume_path or record.volume_id,
            'status': record.status,
            'name': record.display_name,
            'size': output.human_size(record.size_bytes),
            'type': 'incr' if record.parent_id else 'full',
            'created': created,
            'verify': record.verify_status or '',
        })
    columns = [
        output.Column('id', 'ID'),
        output.Column('volume', 'Volume', shrink=3, minimum=12, keep='end'),
        output.Column('status', 'Status'),
        output.Column('name', 'Name', shrink=2, minimum=6, optional=True),
        output.Column('size', 'Size', right=True),
        output.Column('type', 'Type', optional=True),
        output.Column('created', _zoned('Created', times, zone)),
        output.Column('verify', 'Verify', optional=True),
    ]
    return rows, columns


class TerminalProgress(progress.ProgressListener):
    """A progress bar with throughput (MiB/s) and ETA, on a terminal."""

    def __init__(self) -> None:
        self.bar: Any = None  # a tqdm.tqdm while an operation runs

    def started(self, operation: str, backup: BackupLike,
                total_bytes: int) -> None:
        import tqdm
        # A terminal that reports no size (some ptys, serial consoles)
        # gets 80x24: tqdm would otherwise draw nothing at all.
        size = shutil.get_terminal_size()
        # unit 'iB' with a divisor of 1024 reads KiB, MiB, MiB/s: what
        # the numbers are (tqdm's 'B' would say MB for MiB).
        self.bar = tqdm.tqdm(total=total_bytes, unit='iB', unit_scale=True,
                             unit_divisor=1024, desc=operation,
                             file=sys.stderr, ncols=size.columns,
                             nrows=size.lines, leave=True)

    def advanced(self, operation: str, backup: BackupLike, done_bytes: int,
                 total_bytes: int) -> None:
        if self.bar is not None:
            self.bar.update(done_bytes - self.bar.n)

    def finished(self, operation: str, backup: BackupLike, done_bytes: int,
                 ok: bool) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def listeners() -> List[progress.ProgressListener]:
    return [TerminalProgress()] if sys.stderr.isatty() else []


# Times given on the command line ------------------------------------------

_RELATIVE = re.compile(r'^(\d+(?:\.\d+)?)\s*([smhdw])$')
_UNIT_SECONDS = {'s': 1, 'm': 60, 'h': 3600, 'd': 86400, 'w': 604800}


def parse_when(text: str,
               now: Optional[datetime.datetime] = None
               ) -> datetime.datetime:
    """A time for --since/--before, as naive UTC (the catalog's).

    ``30m``, ``2h``, ``3d``, ``1w`` ago; or a local date or time,
    ``2026-12-01``, ``2026-12-01 14:30[:00]`` (``T`` works too), with an
    optional ``Z`` or ``+01:00``.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    value = text.strip()
    match = _RELATIVE.match(value.lower())
    if match:
        ago = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        moment = now - datetime.timedelta(seconds=ago)
    else:
        iso = value.replace(' ', 'T', 1)
        if iso.endswith(('Z', 'z')):
            iso = iso[:-1] + '+00:00'
        try:
            moment = datetime.datetime.fromisoformat(iso)
        except ValueError:
            raise argparse.ArgumentTypeError(
                '%r is not a time: give 2026-12-01, "2026-12-01 14:30", '
                'or an age such as 30m, 2h, 3d, 1w' % text)
        if moment.tzinfo is None:
            moment = moment.astimezone()  # local time, as people give it
    return moment.astimezone(datetime.timezone.utc).replace(tzinfo=None)


def parse_interval(text: str) -> int:
    """Seconds for --interval: ``3600``, or ``30m``, ``6h``, ``1d``."""
    value = text.strip().lower()
    if value.isdigit():
        seconds = int(value)
    else:
        match = _RELATIVE.match(value)
        if not match:
            raise argparse.ArgumentTypeError(
                '%r is not an interval: give seconds (3600) or 30m, 6h, '
                '1d, 1w' % text)
        seconds = int(float(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    if seconds < 1:
        raise argparse.ArgumentTypeError('the interval must be at least 1 '
                                         'second, not %r' % text)
    return seconds


def human_interval(seconds: Optional[int]) -> str:
    """``30s``, ``15m``, ``6h``, ``1d``, ``1d 6h``."""
    if not seconds:
        return ''
    parts = []
    for unit, size in (('w', 604800), ('d', 86400), ('h', 3600),
                       ('m', 60), ('s', 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append('%d%s' % (count, unit))
    return ' '.join(parts[:2])


# Commands: backups -------------------------------------------------------

def _incremental_mode(args: CommandArgs) -> Tuple[bool, bool]:
    """(incremental, strict) of --incremental[=strict]."""
    mode = args.incremental
    return mode is not None, mode == 'strict'


def cmd_backup_create(args: CommandArgs, session: orm.Session) -> None:
    incremental, strict = _incremental_mode(args)
    if args.async_:
        from chunkbackup.catalog import states
        if args.changed_extents == '-':
            raise operations.OperationError(
                reason='--async cannot read a map from standard input; '
                       'give a file')
        changed = (os.path.abspath(args.changed_extents)
                   if args.changed_extents else None)
        job = states.enqueue_job(session, 'backup', {
            'volume': operations.volume_name(args.volume),
            'incremental': incremental,
            'incremental_fallback': incremental and not strict,
            'name': args.display_name,
            'description': args.display_description,
            'volume_id': args.volume_id,
            'container': args.container,
            'changed_extents': changed,
            'dirty_bitmap': args.dirty_bitmap})
        _warn_if_no_service(session)
        emit(args, {'job_id': job.id, 'status': job.status,
                    'kind': job.kind})
        return
    if getattr(args, 'synthetic_full', False):
        emit(args, backup_view(_synthetic_full(args, session)))
        return
    if args.volume == streams.STDIO:
        record = _backup_stdin(args, session, incremental, strict)
        emit(args, backup_view(record), table=backup_fields(record))
        return
    if args.size is not None:
        raise operations.OperationError(
            reason='--size is for a volume read from standard input (-); '
                   'a file or device has its own size')
    record = operations.create_backup(
        session, args.volume, incremental=incremental,
        fallback_full=incremental and not strict,
        name=args.display_name, description=args.display_description,
        volume_id=args.volume_id, container=args.container,
        changed_extents=args.changed_extents, dirty_bitmap=args.dirty_bitmap,
        listeners=listeners(), warn=lambda m: note('warning: ' + m))
    emit(args, backup_view(record), table=backup_fields(record))


def _backup_stdin(args: CommandArgs, session: orm.Session,
                  incremental: bool, strict: bool) -> models.Backup:
    if args.size is None:
        raise operations.OperationError(
            reason='a volume read from standard input (-) needs --size '
                   '(its size in bytes, e.g. --size 10G)')
    if args.async_:
        raise operations.OperationError(
            reason='--async cannot read a volume from standard input')
    return operations.create_backup_from_stream(
        session, args.size, volume_id=args.volume_id,
        incremental=incremental, fallback_full=incremental and not strict,
        name=args.display_name, description=args.display_description,
        container=args.container, changed_extents=args.changed_extents,
        dirty_bitmap=args.dirty_bitmap, listeners=listeners(),
        warn=lambda m: note('warning: ' + m))


def _byte_range(args: CommandArgs) -> Optional[Tuple[int, int]]:
    if args.offset is None and args.length is None:
        return None
    if args.length is None:
        raise operations.OperationError(
            reason='--offset needs --length (how many bytes to restore)')
    return (args.offset or 0, args.length)


def cmd_backup_restore(args: CommandArgs, session: orm.Session) -> None:
    byte_range = _byte_range(args)
    if args.target == streams.STDIO:
        # Standard output carries the volume: nothing else goes there.
        record, written = operations.restore_to_stream(
            session, args.backup_id, sys.stdout.buffer,
            listeners=listeners(), byte_range=byte_range)
        note('restored backup %s: %d bytes to standard output'
             % (record.id, written))
        return
    record = operations.restore_backup(session, args.backup_id, args.target,
                                       force=args.force,
                                       listeners=listeners(),
                                       byte_range=byte_range)
    emit(args, {'backup_id': record.id, 'target': args.target,
                'size_bytes': record.size_bytes, 'status': 'restored'},
         table=[('Backup', record.id), ('Target', args.target),
                ('Size', output.human_size(record.size_bytes)),
                ('Status', 'restored')])


def _statuses(values: Optional[List[str]]) -> List[str]:
    found: List[str] = []
    for value in values or ():
        found += [v.strip() for v in value.split(',') if v.strip()]
    return found


def cmd_backup_list(args: CommandArgs, session: orm.Session) -> None:
    records = api.list_backups(
        session, args.volume_id, volume=args.volume,
        statuses=_statuses(args.status), since=args.since,
        before=args.before, limit=args.limit)
    if args.format == 'json':
        emit(args, [backup_view(r) for r in records])
        return
    rows, columns = backup_rows(session, records, args)
    emit(args, rows, columns)


def cmd_backup_show(args: CommandArgs, session: orm.Session) -> None:
    record = api.get_backup(session, args.backup_id)
    emit(args, backup_view(record), table=backup_fields(record))


def cmd_backup_delete(args: CommandArgs, session: orm.Session) -> None:
    from chunkbackup import folding
    record, child = folding.delete_or_fold(session, args.backup_id,
                                           fold=not args.no_fold)
    result = {'backup_id': record.id, 'status': 'deleted'}
    table = [('Backup', record.id), ('Status', 'deleted')]
    if child:
        result['folded_into'] = child
        table.append(('Folded into', child))
    emit(args, result, table=table)


def _synthetic_full(args: CommandArgs, session: orm.Session
                    ) -> models.Backup:
    from chunkbackup import folding
    if args.incremental or args.changed_extents is not None or \
            args.dirty_bitmap:
        raise operations.OperationError(
            reason='--synthetic-full reads no volume: leave out '
                   '--incremental, --changed-extents and --dirty-bitmap')
    if args.async_:
        raise operations.OperationError(
            reason='--synthetic-full runs in the foreground; leave out '
                   '--async')
    return folding.create_synthetic_full(
        session, args.volume, name=args.display_name,
        description=args.display_description, volume_id=args.volume_id,
        container=args.container)


FORGET_COLUMNS = [
    output.Column('id', 'ID'),
    output.Column('volume_id', 'Volume ID', optional=True),
    output.Column('created_at', 'Created'),
    output.Column('action', 'Action'),
    output.Column('reason', 'Reason', shrink=2, minimum=8),
    output.Column('result', 'Result', shrink=1, minimum=8, optional=True)]


def cmd_forget(args: CommandArgs, session: orm.Session) -> None:
    from chunkbackup import folding
    rules = policy_from_args(args)
    volume_id = None
    if args.volume:
        volume_id = operations.volume_id_of(
            operations.volume_name(args.volume))
    if args.volume_id:
        volume_id = args.volume_id
    rows = folding.forget(session, rules, volume_id=volume_id,
                          dry_run=args.dry_run,
                          schedule_name=args.schedule)
    emit(args, rows, FORGET_COLUMNS, table=_forget_table(rows))
    failed = [r for r in rows if (r['result'] or '').startswith('failed')]
    if failed:
        raise operations.OperationError(
            reason='%d of the backups to remove could not be removed, '
                   'first %s: %s' % (len(failed), failed[0]['id'],
                                     failed[0]['result']))


def _forget_table(rows: List[dict]) -> List[dict]:
    """forget's rows for people: short ids, local times."""
    n = short_id_length([r['id'] for r in rows])
    return [dict(r, id=r['id'][:n], volume_id=(r['volume_id'] or '')[:n],
                 created_at=output.local_time(r['created_at']))
            for r in rows]


def policy_from_args(args: CommandArgs) -> Any:
    """The --keep-* options as a chunkbackup.policy.Policy."""
    from chunkbackup import policy
    try:
        within = (policy.Duration.parse(args.keep_within)
                  if args.keep_within else None)
        return policy.Policy(
            keep_last=args.keep_last or 0, keep_hourly=args.keep_hourly or 0,
            keep_daily=args.keep_daily or 0,
            keep_weekly=args.keep_weekly or 0,
            keep_monthly=args.keep_monthly or 0,
            keep_yearly=args.keep_yearly or 0, keep_within=within)
    except policy.PolicyError as e:
        raise operations.OperationError(reason=str(e))


def add_keep_options(parser: argparse.ArgumentParser) -> None:
    for rule, what in (('last', 'the N newest backups'),
                       ('hourly', 'the newest backup of each of the last N '
                                  'hours that have one'),
                       ('daily', 'the same per day'),
                       ('weekly', 'the same per ISO week'),
                       ('monthly', 'the same per month'),
                       ('yearly', 'the same per year')):
        parser.add_argument('--keep-%s' % rule, dest='keep_%s' % rule,
                            type=int, metavar='N', help='keep %s' % what)
    parser.add_argument('--keep-within', dest='keep_within',
                        metavar='DURATION',
                        help='keep every backup made within DURATION '
                             '(e.g. 1y5m7d2h, 36h) before the newest one')


def cmd_backup_pin(args: CommandArgs, session: orm.Session) -> None:
    from chunkbackup import folding
    record = folding.set_pinned(session, args.backup_id, True)
    emit(args, {'backup_id': record.id, 'pinned': True})


def cmd_backup_unpin(args: CommandArgs, session: orm.Session) -> None:
    from chunkbackup import folding
    record = folding.set_pinned(session, args.backup_id, False)
    emit(args, {'backup_id': record.id, 'pinned': False})


def cmd_backup_verify(args: CommandArgs, session: orm.Session) -> None:
    record, plan = operations.verify_backup(session, args.backup_id,
                                            listeners=listeners())
    emit(args, {'backup_id': record.id, 'status': 'verified',
                'size_bytes': plan.size, 'objects_checked':
                len(plan.fetches), 'chain_length': len(plan.chain)},
         table=[('Backup', record.id), ('Status', 'verified'),
                ('Size', output.human_size(plan.size)),
                ('Objects checked', len(plan.fetches)),
                ('Chain length', len(plan.chain))])


def cmd_backup_export(args: CommandArgs, session: orm.Session) -> None:
    exported = operations.export_backup(session, args.backup_id)
    if args.format == 'json':
        emit(args, exported)
    else:
        # Never wrapped: the URL is copied whole.
        print_fields(list(exported.items()), None)


def cmd_backup_import(args: CommandArgs, session: orm.Session) -> None:
    record = operations.import_backup(session, args.exporter_service,
                                      args.backup_url)
    emit(args, backup_view(record), table=backup_fields(record))


def _ratio(value: Optional[float]) -> str:
    if not value:
        return ''
    return '>999x' if value >= 1000 else '%.1fx' % value


def cmd_stats(args: CommandArgs, session: orm.Session) -> None:
    from chunkbackup import stats as store_stats
    summary = store_stats.summarize(
        api.list_backups(session, volume=args.volume,
                         statuses=('available', 'restoring')))
    if args.format == 'json':
        emit(args, summary)
        return
    rows = []
    for entry in summary['volumes'] + [dict(summary['total'],
                                            volume='(all)')]:
        rows.append({
            'volume': entry['volume'],
            'backups': '%d (%d full)' % (entry['backups'],
                                         entry['full_backups']),
            'logical': output.human_size(entry['logical_bytes']),
            'read': output.human_size(entry['read_bytes']),
            'stored': output.human_size(entry['stored_bytes']),
            'ratio': _ratio(entry['ratio']),
            'newest': output.local_time(entry['newest_at']),
        })
    emit(args, rows, [
        output.Column('volume', 'Volume', shrink=1, minimum=12, keep='end'),
        output.Column('backups', 'Backups'),
        output.Column('logical', 'Logical', right=True),
        output.Column('read', 'Read', right=True),
        output.Column('stored', 'Stored', right=True),
        output.Column('ratio', 'Ratio', right=True),
        output.Column('newest', 'Newest'),
    ])
    if summary['total'].get('backups_without_stats'):
        note('%d backup(s) (imported or rebuilt) record no stats: their '
             'stored bytes are not counted'
             % summary['total']['backups_without_stats'])


# Commands: catalog, jobs, schedules, service ------------------------------

def cmd_catalog_rebuild(args: CommandArgs, session: orm.Session) -> None:
    added = operations.rebuild_catalog(session, args.container)
    emit(args, [{'id': i, 'status': 'recorded'} for i in added],
         [output.Column('id', 'ID'), output.Column('status', 'Status')])


def _service_up(session: orm.Session) -> bool:
    from chunkbackup.catalog import workers
    return any(w.state == 'up' for w in workers.list_workers(session))


def _warn_if_no_service(session: orm.Session) -> None:
    from chunkbackup.catalog import states
    waiting = session.scalar(sa.select(sa.func.count(models.Job.id))
                             .where(models.Job.status == states.QUEUED))
    if waiting and not _service_up(session):
        note('no chunkbackup-backup service is running on this catalog: '
             '%d queued job(s) wait until one starts' % waiting)


def job_view(job: models.Job) -> dict:
    return {'id': job.id, 'kind': job.kind, 'status': job.status,
            'worker': job.owner, 'attempts': job.attempts,
            'backup_id': job.backup_id, 'error': job.error,
            'volume': (job.params or {}).get('volume'),
            'params': job.params,
            'cancel_requested': bool(job.cancel_requested),
            'created_at': output.iso_utc(job.created_at),
            'started_at': output.iso_utc(job.started_at),
            'finished_at': output.iso_utc(job.finished_at)}


def cmd_job_list(args: CommandArgs, session: orm.Session) -> None:
    query = sa.select(models.Job)
    statuses = _statuses(args.status)
    if statuses:
        query = query.where(models.Job.status.in_(statuses))
    jobs = list(session.scalars(query.order_by(models.Job.id.desc())
                                .limit(args.limit)))[::-1]
    if args.format == 'json':
        emit(args, [job_view(j) for j in jobs])
    else:
        times, zone = output.time_column([j.created_at for j in jobs])
        length = short_id_length(_catalog_ids(session))
        rows = [{'id': j.id, 'kind': j.kind, 'status': j.status,
                 'volume': (j.params or {}).get('volume'),
                 'backup': (j.backup_id or '')[:length],
                 'runs': j.attempts, 'created': t,
                 'worker': j.owner, 'error': j.error}
                for j, t in zip(jobs, times)]
        emit(args, rows, [
            output.Column('id', 'ID', right=True),
            output.Column('kind', 'Kind'),
            output.Column('status', 'Status'),
            output.Column('volume', 'Volume', shrink=2, minimum=12,
                          keep='end'),
            output.Column('backup', 'Backup'),
            output.Column('runs', 'Runs', right=True),
            output.Column('created', _zoned('Created', times, zone)),
            output.Column('worker', 'Worker', shrink=1, minimum=8,
                          optional=True),
            output.Column('error', 'Error', shrink=3, minimum=10,
                          optional=True),
        ])
    _warn_if_no_service(session)


def _job(session: orm.Session, job_id: str) -> models.Job:
    job = None
    if job_id.isdigit():
        job = session.get(models.Job, int(job_id))
    if job is None:
        raise operations.OperationError(
            reason="no job %s in the catalog; 'chunkbackup job-list' shows "
                   "the jobs" % job_id)
    return job


def cmd_job_show(args: CommandArgs, session: orm.Session) -> None:
    job = _job(session, args.job_id)
    fields: List[Tuple[str, Any]] = [
        ('ID', job.id), ('Kind', job.kind), ('Status', job.status),
        ('Volume', (job.params or {}).get('volume')),
        ('Incremental', (job.params or {}).get('incremental')),
        ('Backup', job.backup_id), ('Runs', job.attempts),
        ('Worker', job.owner),
        ('Created', output.local_time(job.created_at)),
        ('Started', output.local_time(job.started_at)),
        ('Finished', output.local_time(job.finished_at)),
        ('Cancel requested', 'yes' if job.cancel_requested else None),
        ('Error', job.error)]
    emit(args, job_view(job),
         table=[(k, v) for k, v in fields if v not in (None, '')])
    from chunkbackup.catalog import states
    if job.status == states.QUEUED and not _service_up(session):
        note('job %d waits: no chunkbackup-backup service is running on '
             'this catalog' % job.id)


def cmd_job_cancel(args: CommandArgs, session: orm.Session) -> None:
    from chunkbackup.catalog import states
    job = _job(session, args.job_id)
    outcome = states.cancel_job(session, job.id)
    session.refresh(job)
    emit(args, dict(job_view(job), outcome=outcome),
         table=[('Job', job.id), ('Status', job.status),
                ('Outcome', outcome)])


def schedule_view(row: models.Schedule,
                  last: Optional[models.Backup] = None) -> dict:
    from chunkbackup.service import schedules
    return {
        'name': row.name,
        'volume_path': row.volume_path,
        'volume_id': row.volume_id,
        'container': row.container,
        'interval_seconds': row.interval_seconds,
        'full_every': row.full_every,
        'retain_full': row.retain_full,
        'enabled': row.enabled,
        'keep_policy': row.keep_policy,
        'retention_scope': row.retention_scope,
        'synthetic_full': bool(row.synthetic_full),
        'last_run_at': output.iso_utc(row.last_run_at),
        'last_result': schedules.last_result(row, last),
        'last_error': row.last_error,
        'last_backup_id': row.last_backup_id or (last.id if last else None),
        'next_run_at': output.iso_utc(schedules.next_run(row)),
    }


def _schedule_rows(session: orm.Session,
                   rows: Sequence[models.Schedule]) -> List[dict]:
    from chunkbackup.service import schedules
    return [schedule_view(r, schedules.last_backup_of(session, r))
            for r in rows]


def _schedule_table(views: Sequence[dict]) -> Tuple[List[dict], Columns]:
    def when(text):
        if not text:
            return None
        return datetime.datetime.strptime(text, '%Y-%m-%dT%H:%M:%S.%fZ')
    now = models.utcnow()
    last, zone_l = output.time_column([when(v['last_run_at'])
                                       for v in views])
    nexts: List[Optional[datetime.datetime]] = []
    for v in views:
        moment = when(v['next_run_at'])
        if not v['enabled']:
            nexts.append(None)
        elif moment is None or moment <= now:
            nexts.append(None)
        else:
            nexts.append(moment)
    following, zone_n = output.time_column(nexts)
    rows = []
    for v, l_cell, n_cell in zip(views, last, following):
        if not v['enabled']:
            n_cell = 'disabled'
        elif not n_cell:
            n_cell = 'due now' if v['last_run_at'] else 'at service start'
        rows.append({'name': v['name'], 'volume': v['volume_path'],
                     'every': human_interval(v['interval_seconds']),
                     'full': v['full_every'], 'keep': v['retain_full'],
                     'last': l_cell or 'never',
                     'result': v['last_result'] or '',
                     'next': n_cell})
    zone = zone_l or zone_n
    return rows, [
        output.Column('name', 'Name', shrink=1, minimum=6),
        output.Column('volume', 'Volume', shrink=3, minimum=12, keep='end'),
        output.Column('every', 'Every'),
        output.Column('full', 'Full', right=True),
        output.Column('keep', 'Keep', right=True),
        output.Column('last', _zoned('Last run', [], zone)),
        output.Column('result', 'Result'),
        output.Column('next', 'Next run'),
    ]


def _emit_schedule(args: CommandArgs, session: orm.Session,
                   row: models.Schedule) -> None:
    (view,) = _schedule_rows(session, [row])
    fields = [('Name', view['name']), ('Volume', view['volume_path']),
              ('Volume ID', view['volume_id']),
              ('Container', view['container']),
              ('Every', human_interval(view['interval_seconds'])),
              ('Full every', view['full_every']),
              ('Keep chains', view['retain_full']),
              ('Enabled', 'yes' if view['enabled'] else 'no')]
    emit(args, view, table=[(k, v) for k, v in fields
                            if v not in (None, '')])


def cmd_schedule_set(args: CommandArgs, session: orm.Session) -> None:
    from chunkbackup.service import schedules
    row = schedules.set_schedule(
        session, args.schedule_name, args.volume, args.interval,
        full_every=args.full_every, retain_full=args.retain_full,
        container=args.container, volume_id=args.volume_id,
        enabled=not args.disabled, **_schedule_retention(args))
    _emit_schedule(args, session, row)


def cmd_schedule_update(args: CommandArgs, session: orm.Session) -> None:
    from chunkbackup.service import schedules
    changes = {key: getattr(args, key) for key in (
        'volume', 'interval', 'full_every', 'retain_full', 'container',
        'volume_id', 'enabled') if getattr(args, key) is not None}
    if not changes:
        raise operations.OperationError(
            reason='nothing to change: give --interval, --volume, '
                   '--full-every, --retain-full, --container, --volume-id, '
                   '--enable or --disable')
    row = schedules.update_schedule(session, args.schedule_name, **changes)
    _emit_schedule(args, session, row)


def cmd_schedule_delete(args: CommandArgs, session: orm.Session) -> None:
    from chunkbackup.service import schedules
    schedules.delete_schedule(session, args.schedule_name)
    emit(args, {'name': args.schedule_name, 'status': 'deleted'},
         table=[('Schedule', args.schedule_name), ('Status', 'deleted'),
                ('Backups', 'kept (delete them with backup-delete)')])


def _schedule_retention(args: CommandArgs) -> dict:
    rules = policy_from_args(args)
    return {'keep_policy': None if rules.empty else rules.to_dict(),
            'retention_scope': args.retention_scope,
            'synthetic_full': args.synthetic_full}


def cmd_schedule_list(args: CommandArgs, session: orm.Session) -> None:
    from chunkbackup.service import schedules
    views = _schedule_rows(session, schedules.list_schedules(session))
    if args.format == 'json':
        emit(args, views)
        return
    rows, columns = _schedule_table(views)
    emit(args, rows, columns)


def cmd_service_list(args: CommandArgs, session: orm.Session) -> None:
    from chunkbackup.catalog import workers
    found = list(workers.list_workers(session))
    if args.format == 'json':
        emit(args, [{'name': w.name, 'host': w.host,
                     'started_at': output.iso_utc(w.started_at),
                     'heartbeat_at': output.iso_utc(w.heartbeat_at),
                     'running': w.running_operations, 'state': w.state}
                    for w in found])
        return
    started, zone = output.time_column([w.started_at for w in found])
    beat, _ = output.time_column([w.heartbeat_at for w in found])
    emit(args, [{'name': w.name, 'host': w.host, 'started_at': s,
                 'heartbeat_at': b, 'running': w.running_operations,
                 'state': w.state}
                for w, s, b in zip(found, started, beat)],
         [output.Column('name', 'Name', shrink=1, minimum=10),
          output.Column('host', 'Host', shrink=1, minimum=8),
          output.Column('started_at', _zoned('Started', [], zone)),
          output.Column('heartbeat_at', 'Last heartbeat'),
          output.Column('running', 'Running', right=True),
          output.Column('state', 'State')])


def cmd_cleanup(args: CommandArgs, session: orm.Session) -> None:
    cleaned = operations.cleanup_interrupted(session)
    emit(args, [_cleaned_view(session, i) for i in cleaned],
         [output.Column('id', 'ID'), output.Column('status', 'Status'),
          output.Column('objects', 'Objects')])


def _cleaned_view(session: orm.Session, backup_id: str) -> dict:
    """What the clean-up left of a backup: error (objects removed), or,
    for an interrupted fold, deleted (finished) or available (rolled
    back, objects kept).
    """
    record = session.get(models.Backup, backup_id)
    if record is None:
        return {'id': backup_id, 'status': 'deleted', 'objects': 'removed'}
    if record.status == 'available':
        return {'id': backup_id, 'status': 'available', 'objects': 'kept'}
    return {'id': backup_id, 'status': record.status, 'objects': 'removed'}


def cmd_key_create(args: CommandArgs, session: Optional[orm.Session]
                   ) -> None:
    from chunkbackup import keyops
    key = keyops.create_key_file(args.path)
    emit(args, {'path': args.path, 'key_id': key.key_id},
         table=[('Key file', args.path), ('Key id', key.key_id),
                ('Mode', '0600'),
                ('Next', 'set [chunkbackup] encryption = aes-256-gcm and '
                         'key_file = %s' % args.path),
                ('Warning', 'a lost key means lost backups: keep a copy '
                            'of this file somewhere safe, apart from the '
                            'backups')])


def cmd_key_rotate(args: CommandArgs, session: orm.Session) -> None:
    from chunkbackup import keyops
    master = keyops.new_master_key(args.new_key_file, args.new_master_key_id,
                                   args.create_master_key)
    results = keyops.rotate(session, master, args.volume,
                            old_key_files=args.old_key_file or ())
    failed = [r for r in results if r.result == 'failed']
    rows = [dataclasses.asdict(r) for r in results]
    if args.format == 'json':
        emit(args, {'key_id': master.key_id, 'backups': rows})
    else:
        length = short_id_length(_catalog_ids(session))
        for row in rows:
            row['backup_id'] = row['backup_id'][:length]
        emit(args, rows, [
            output.Column('backup_id', 'Backup'),
            output.Column('volume', 'Volume', shrink=2, minimum=12,
                          keep='end'),
            output.Column('result', 'Result'),
            output.Column('detail', 'Detail', shrink=3, minimum=10,
                          optional=True),
        ])
        done = sum(r.result in ('rewrapped', 'current') for r in results)
        where = ('key_file = %s' % args.new_key_file if args.new_key_file
                 else 'master_key_id = %s' % master.key_id)
        sys.stdout.write(
            '%d encrypted backup(s) are under key %s; set [chunkbackup] %s '
            'now, and keep the old key until a rerun reports no failure.\n'
            % (done, master.key_id, where))
    if failed:
        raise operations.OperationError(
            reason='%d backup(s) could not be re-wrapped (see the table); '
                   'fix the cause and run key-rotate again' % len(failed))


def cmd_cinder_options(args: CommandArgs, session: Optional[orm.Session]
                       ) -> None:
    from chunkbackup import cinder_options

    with open(args.cinder_conf) as f:
        text = f.read()
    try:
        sys.stdout.write(cinder_options.convert(text))
    except ValueError as e:
        raise exception.InvalidConfiguration(reason=str(e))


def cmd_completion(args: CommandArgs, session: Optional[orm.Session]
                   ) -> None:
    from chunkbackup.cmd import completion
    sys.stdout.write(completion.script(args.shell, build_parser()))


# The command line ---------------------------------------------------------

class Parser(argparse.ArgumentParser):
    """argparse with errors as one line on stderr (no usage block)."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        sys.stderr.write('%s: error: %s (see %s --help)\n'
                         % (self.prog, message, self.prog))
        raise SystemExit(EXIT_USAGE)


class TopParser(Parser):
    """The top level: its --help lists the commands first."""

    commands: List[Tuple[str, str, str]] = []  # (group, name, help)
    show_all = False

    def format_help(self) -> str:
        formatter = self._get_formatter()
        formatter.add_usage(self.usage, self._actions,
                            self._mutually_exclusive_groups)
        formatter.add_text(self.description)
        text = formatter.format_help()
        import textwrap
        width = max(len(name) for _, name, _ in self.commands) + 2
        room = max(30, shutil.get_terminal_size().columns - width - 4)
        group = None
        for title, name, summary in self.commands:
            if title != group:
                text += '\n%s:\n' % title
                group = title
            lines = textwrap.wrap(summary, room) or ['']
            text += '  %s%s\n' % (name.ljust(width), lines[0])
            for more in lines[1:]:
                text += '  %s%s\n' % (' ' * width, more)
        rest = self._get_formatter()
        for action_group in self._action_groups:
            if action_group.title in ('positional arguments',
                                      'subcommands'):
                continue
            rest.start_section(action_group.title)
            rest.add_text(action_group.description)
            rest.add_arguments(action_group._group_actions)
            rest.end_section()
        rest.add_text(self.epilog)
        return text + '\n' + rest.format_help()


# (group title, commands) in the order --help lists them.
COMMAND_GROUPS = ('Backups', 'Store and catalog', 'Service, jobs and '
                  'schedules', 'Other')


def _log_options() -> list:
    """oslo.log's command-line options (passed on to oslo.config)."""
    try:
        from oslo_log import _options
        return [o for o in _options.common_cli_opts +
                _options.logging_cli_opts if o.dest != 'debug']
    except (ImportError, AttributeError):  # pragma: no cover
        return []


def _add_common(parser: argparse.ArgumentParser, top: bool,
                show_all: bool) -> None:
    """Options accepted before and after the command.

    Below the command they default to SUPPRESS, so that leaving one out
    there keeps what was given before it.
    """
    default = (lambda value: value) if top else (
        lambda value: argparse.SUPPRESS)
    hide = (lambda text: text) if top else (lambda text: argparse.SUPPRESS)
    group = parser.add_argument_group('Options (before or after the '
                                      'command)') if top else parser
    group.add_argument('--format', choices=('table', 'json'),
                       default=default('table'),
                       help=hide('table for people (default), json for '
                                 'scripts (exact bytes, ISO 8601 UTC '
                                 'times)'))
    group.add_argument('-d', '--debug', action='store_true',
                       default=default(False),
                       help=hide('log everything to stderr, and the '
                                 'traceback of a failure'))
    group.add_argument('--wide', action='store_true',
                       default=default(False),
                       help=hide('tables at full width with whole ids '
                                 '(default: fitted to the terminal, or '
                                 '100 columns)'))
    group.add_argument('--config-file', dest='config_file',
                       action='append', metavar='PATH',
                       default=default(None),
                       help=hide('configuration file (default %s when '
                                 'it exists); repeatable' % USER_CONFIG))
    group.add_argument('--config-dir', dest='config_dir',
                       action='append', metavar='DIR',
                       default=default(None),
                       help=hide('directory of *.conf files read after '
                                 'the files'))
    if top:
        logs = parser.add_argument_group(
            'Logging options (oslo.log)',
            None if show_all else 'see chunkbackup --help-all')
    for opt in _log_options():
        flag = '--' + opt.name
        text = opt.help if (top and show_all) else argparse.SUPPRESS
        target = logs if top else parser
        if isinstance(opt, cfg.BoolOpt):
            target.add_argument(flag, dest='log_' + opt.dest,
                                action='store_const', const=True,
                                default=default(None), help=text)
            target.add_argument('--no' + opt.name, dest='log_' + opt.dest,
                                action='store_const', const=False,
                                default=default(None),
                                help=argparse.SUPPRESS)
        else:
            target.add_argument(flag, dest='log_' + opt.dest,
                                metavar=opt.metavar or opt.dest.upper(),
                                default=default(None), help=text)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError('%r is not a whole number of at '
                                         'least 1' % text)
    return value


BACKUP_REF_HELP = ('the backup: its id, a unique prefix of it (4+ '
                   'characters), its name, latest, or latest:VOLUME')


def _size_arg(text: str) -> int:
    try:
        return streams.parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


def build_parser(show_all: bool = False) -> TopParser:
    """The whole command line: global options, one parser a command."""
    parser = TopParser(
        prog=PROG, add_help=False,
        usage='%(prog)s [OPTIONS] COMMAND [ARGS]',
        description='Backups of files, block devices and NBD exports, in '
                    'OpenStack Cinder\'s chunked format. Run "%(prog)s '
                    'COMMAND --help" for a command\'s own options.'
                    % {'prog': PROG},
        epilog='Backups are named by id, a unique id prefix (4+ '
               'characters), name, latest or latest:VOLUME.')
    parser.show_all = show_all
    general = parser.add_argument_group('General')
    general.add_argument('-h', '--help', action='help',
                         help='show this help and exit')
    general.add_argument('--help-all', action='store_true',
                         help='show this help with the logging options')
    general.add_argument('--version', action='version',
                         version='%s %s' % (PROG, version()))
    _add_common(parser, top=True, show_all=show_all)
    subparsers = parser.add_subparsers(dest='command', metavar='COMMAND',
                                       parser_class=Parser, prog=PROG)
    commands: List[Tuple[str, str, str]] = []

    def command(group: str, name: str, func: Callable, help_text: str,
                catalog: bool = True) -> argparse.ArgumentParser:
        sub = subparsers.add_parser(
            name, help=help_text, description=help_text, add_help=False,
            epilog='Also here: --format table|json, --debug, --wide, '
                   '--config-file, --config-dir (see %s --help).' % PROG)
        sub.add_argument('-h', '--help', action='help',
                         help='show this help and exit')
        sub.set_defaults(func=func, needs_catalog=catalog)
        _add_common(sub, top=False, show_all=show_all)
        commands.append((group, name, help_text.split('. ')[0].rstrip('.')))
        return sub

    backups, store, service, other = COMMAND_GROUPS

    p = command(backups, 'backup-create', cmd_backup_create,
                'Back up a file, block device or NBD export (full, or '
                '--incremental).')
    p.add_argument('volume', help='file, block device, or NBD export '
                                  '(nbd://HOST:PORT/EXPORT, '
                                  'nbd+unix:///EXPORT?socket=PATH) to back '
                                  'up; - reads standard input (with --size '
                                  'and --volume-id)')
    p.add_argument('--size', type=_size_arg, metavar='BYTES',
                   help='with -: the size of the volume on standard input '
                        '(e.g. 10G); it is spooled to a sparse file in '
                        '[chunkbackup] temp_dir, which needs room for its '
                        'data (not its zeros)')
    # A flag, so "--incremental VOLUME" never takes the volume for its
    # value; "--incremental=strict" is turned into the hidden
    # --incremental-strict before parsing (see parse_args).
    p.add_argument('--incremental', action='store_const', const='auto',
                   help='store only what changed since the newest available '
                        'backup of this volume; with none, a full backup is '
                        'made (and said). --incremental=strict refuses '
                        'instead')
    p.add_argument('--incremental-strict', dest='incremental',
                   action='store_const', const='strict',
                   help=argparse.SUPPRESS)
    p.add_argument('--name', dest='display_name',
                   help='a name for the backup (other commands take it '
                        'where they take an id)')
    p.add_argument('--description', dest='display_description',
                   help='a description of the backup')
    p.add_argument('--volume-id', dest='volume_id',
                   help='volume id (default: a stable id of the path)')
    p.add_argument('--container', help='container (bucket, directory) to '
                                       'store the backup in')
    p.add_argument('--changed-extents', dest='changed_extents',
                   metavar='FILE',
                   help='with --incremental: ' + extents.CHANGED_EXTENTS_HELP +
                        ' "-" reads standard input. A sample of the rest is '
                        'read to check the map; a wrong map makes the '
                        'backup read everything.')
    p.add_argument('--dirty-bitmap', dest='dirty_bitmap', metavar='NAME',
                   help='with --incremental and an NBD export: read only '
                        'what the export\'s dirty bitmap NAME marks as '
                        'changed (qemu-nbd -B NAME, libvirt pull-mode '
                        'backup); checked by sampling like '
                        '--changed-extents')
    p.add_argument('--synthetic-full', dest='synthetic_full',
                   action='store_true',
                   help='make a full backup from the newest backup of the '
                        'volume in the store, without reading the volume '
                        '(its image is the newest backup\'s); the old chain '
                        'can then be deleted')
    p.add_argument('--async', dest='async_', action='store_true',
                   help='queue the backup for chunkbackup-backup to run '
                        '(see job-list)')

    p = command(backups, 'backup-list', cmd_backup_list,
                'List backups, oldest first.')
    p.add_argument('--volume', metavar='VOLUME',
                   help='only the backups of this volume: its path (as '
                        'given to backup-create), NBD URL or volume id')
    p.add_argument('--volume-id', dest='volume_id',
                   help='only the backups with exactly this volume id')
    p.add_argument('--status', action='append', metavar='STATUS',
                   help='only backups in this status (available, error, '
                        'creating, ...); repeat or separate with commas')
    p.add_argument('--since', type=parse_when, metavar='WHEN',
                   help='only backups made at or after WHEN: 2026-12-01, '
                        '"2026-12-01 14:30" (local time), or an age: 30m, '
                        '2h, 3d, 1w')
    p.add_argument('--before', type=parse_when, metavar='WHEN',
                   help='only backups made before WHEN (as --since)')
    p.add_argument('--limit', type=_positive, metavar='N',
                   help='only the newest N of those')

    p = command(backups, 'backup-show', cmd_backup_show,
                'Show one backup: sizes, what it read and stored, how.')
    p.add_argument('backup_id', metavar='BACKUP', help=BACKUP_REF_HELP)

    p = command(backups, 'backup-restore', cmd_backup_restore,
                'Restore a backup (and its chain) to a file or device.')
    p.add_argument('backup_id', metavar='BACKUP', help=BACKUP_REF_HELP)
    p.add_argument('target', help='file (created if missing), block '
                                  'device, NBD export URL, or - for '
                                  'standard output')
    p.add_argument('--force', action='store_true',
                   help='overwrite a target that is not empty')
    p.add_argument('--offset', type=_size_arg, metavar='BYTES',
                   help='with --length: restore only the bytes from this '
                        'offset of the volume (e.g. 1G), written from the '
                        'start of the target')
    p.add_argument('--length', type=_size_arg, metavar='BYTES',
                   help='how many bytes to restore (from --offset, default '
                        '0), e.g. 64M')

    p = command(backups, 'backup-delete', cmd_backup_delete,
                'Delete a backup; one that an incremental depends on is '
                'folded into it (the incremental keeps its image).')
    p.add_argument('backup_id', metavar='BACKUP', help=BACKUP_REF_HELP)
    p.add_argument('--no-fold', dest='no_fold', action='store_true',
                   help='refuse a backup that has incrementals instead of '
                        'folding it (Cinder\'s behaviour)')
    for name, func, text in (
            ('backup-pin', cmd_backup_pin,
             'Pin a backup: no retention policy removes it.'),
            ('backup-unpin', cmd_backup_unpin,
             'Unpin a backup: policies may remove it again.')):
        command(backups, name, func, text).add_argument(
            'backup_id', metavar='BACKUP', help=BACKUP_REF_HELP)

    p = command(backups, 'forget', cmd_forget,
                'Remove backups by a retention policy (restic\'s rules); '
                'every backup is listed with keep or remove and why. '
                'Backups with incrementals are folded into them.')
    add_keep_options(p)
    p.add_argument('--volume', help='only the backups of this volume (file, '
                                    'block device or NBD URL)')
    p.add_argument('--volume-id', dest='volume_id',
                   help='only the backups of this volume id')
    p.add_argument('--schedule', metavar='NAME',
                   help='only the backups this schedule made')
    p.add_argument('--dry-run', dest='dry_run', action='store_true',
                   help='say what would be removed, remove nothing')

    for name, func, text in (
            ('backup-verify', cmd_backup_verify,
             'Check every object and block of a backup, writing nothing.'),
            ('backup-export', cmd_backup_export,
             'Print the backup record as a Cinder backup_url.')):
        command(backups, name, func, text).add_argument(
            'backup_id', metavar='BACKUP', help=BACKUP_REF_HELP)

    p = command(backups, 'backup-import', cmd_backup_import,
                'Record a backup exported by chunkbackup or cinder.')
    p.add_argument('exporter_service', metavar='backup_service',
                   help='the exporter\'s backup_service, e.g. '
                        'cinder.backup.drivers.posix.PosixBackupDriver')
    p.add_argument('backup_url', help='the backup_url that backup-export '
                                      '(or cinder backup-export) printed')

    p = command(store, 'stats', cmd_stats,
                'Sum the catalog: logical and stored bytes, per volume '
                'and in all.')
    p.add_argument('--volume', metavar='VOLUME',
                   help='only this volume (path, NBD URL or volume id)')

    p = command(store, 'catalog-rebuild', cmd_catalog_rebuild,
                'Record the backups the store holds that the catalog lacks.')
    p.add_argument('--container', help='only this container')
    p.add_argument('--replace', action='store_true',
                   help='first move the SQLite catalog file aside (kept as '
                        'FILE.damaged-TIME) and start a new one: for a '
                        'damaged catalog. Failed backups, jobs and '
                        'schedules are not in the store and are not '
                        'rebuilt')
    command(store, 'cleanup', cmd_cleanup,
            'Finish what interrupted processes left. Backups they were '
            'making end error with their objects removed, restores they '
            'ran release their backup.')

    p = command(service, 'job-list', cmd_job_list,
                'List the jobs that --async queued, with their worker.')
    p.add_argument('--status', action='append', metavar='STATUS',
                   help='only jobs in this status (queued, running, done, '
                        'failed, cancelled); repeat or use commas')
    p.add_argument('--limit', type=_positive, default=50, metavar='N',
                   help='the newest N jobs (default 50)')
    p = command(service, 'job-show', cmd_job_show, 'Show one job.')
    p.add_argument('job_id', metavar='JOB', help='the job number (job-list)')
    p = command(service, 'job-cancel', cmd_job_cancel,
                'Cancel a queued job, or stop a running one. A running '
                'job\'s backup ends error with its objects removed.')
    p.add_argument('job_id', metavar='JOB', help='the job number (job-list)')

    def schedule_options(p, update):
        if update:
            p.add_argument('--volume', help='back up this file or block '
                                            'device instead')
            p.add_argument('--interval', type=parse_interval,
                           help='time between backups: seconds, or 30m, '
                                '6h, 1d')
        else:
            p.add_argument('volume', help='file, block device or NBD '
                                          'export to back up')
            p.add_argument('--interval', type=parse_interval, required=True,
                           help='time between backups: seconds, or 30m, '
                                '6h, 1d')
        p.add_argument('--full-every', dest='full_every', type=_positive,
                       default=None if update else 7,
                       help='every Nth backup of a chain is full%s'
                            % ('' if update else ' (default 7)'))
        p.add_argument('--retain-full', dest='retain_full', type=_positive,
                       default=None if update else 2,
                       help='chains to keep, counted by full backups%s; '
                            'older ones are deleted after each run'
                            % ('' if update else ' (default 2)'))
        p.add_argument('--container', help='container (bucket, directory) '
                                           'to store the backups in')
        p.add_argument('--volume-id', dest='volume_id',
                       help='volume id (default: a stable id of the path)')

    p = command(service, 'schedule-set', cmd_schedule_set,
                'Create (or replace) a schedule that chunkbackup-backup '
                'runs.')
    p.add_argument('schedule_name', metavar='NAME',
                   help='the schedule\'s name; its backups are named '
                        'schedule:NAME')
    schedule_options(p, update=False)
    p.add_argument('--disabled', action='store_true',
                   help='keep the schedule but do not run it')
    add_keep_options(p)
    p.add_argument('--retention-scope', dest='retention_scope',
                   choices=('schedule', 'volume'), default='schedule',
                   help='which backups retention considers: the ones this '
                        'schedule made (default), or every backup of the '
                        'volume')
    p.add_argument('--synthetic-full', dest='synthetic_full',
                   action='store_true',
                   help='when a full is due, make an incremental and a '
                        'synthetic full of it instead of reading the whole '
                        'volume')

    p = command(service, 'schedule-update', cmd_schedule_update,
                'Change only the given fields of a schedule.')
    p.add_argument('schedule_name', metavar='NAME',
                   help='the schedule to change (schedule-list)')
    schedule_options(p, update=True)
    enabled = p.add_mutually_exclusive_group()
    enabled.add_argument('--enable', dest='enabled', action='store_const',
                         const=True, default=None, help='run it again')
    enabled.add_argument('--disable', dest='enabled', action='store_const',
                         const=False, help='keep it but do not run it')

    p = command(service, 'schedule-delete', cmd_schedule_delete,
                'Delete a schedule. Its backups are kept.')
    p.add_argument('schedule_name', metavar='NAME',
                   help='the schedule to delete (schedule-list)')

    command(service, 'schedule-list', cmd_schedule_list,
            'List the schedules of the catalog: last run, result, next '
            'run. The [schedule:NAME] sections of the configuration are '
            'not listed.')
    command(service, 'service-list', cmd_service_list,
            'List the chunkbackup-backup workers sharing the catalog. '
            'Last heartbeat, running operations, up or down.')

    p = command(store, 'key-create', cmd_key_create,
                'Make a new master key file (mode 0600) for encrypted '
                'backups. A lost key means lost backups: keep a copy.',
                catalog=False)
    p.add_argument('path', help='where to write the key file (never '
                                'overwritten)')
    p = command(store, 'key-rotate', cmd_key_rotate,
                'Re-wrap the data keys of encrypted backups under a new '
                'master key; no data object is rewritten.')
    p.add_argument('--new-key-file', metavar='PATH',
                   help='the new master key, a file made by key-create')
    p.add_argument('--new-master-key-id', metavar='ID',
                   help='the new master key, by its id in the key manager')
    p.add_argument('--create-master-key', action='store_true',
                   help='create the new master key in the key manager')
    p.add_argument('--old-key-file', metavar='PATH', action='append',
                   help='another key file that older backups may need '
                        '(besides [chunkbackup] key_file); repeatable')
    p.add_argument('--volume', help='only the backups of this volume (path '
                                    'or id)')

    p = command(other, 'cinder-options', cmd_cinder_options,
                'Print the chunkbackup options equivalent to a '
                'cinder.conf\'s backup options.', catalog=False)
    p.add_argument('cinder_conf', help='path of the cinder.conf')
    p = command(other, 'completion', cmd_completion,
                'Print a shell completion script. Use: eval "$(chunkbackup '
                'completion bash)" in ~/.bashrc, or zsh in ~/.zshrc.',
                catalog=False)
    p.add_argument('shell', choices=('bash', 'zsh'),
                   help='the shell the script is for')

    parser.commands = commands
    return parser


def spelled_for_argparse(argv: List[str]) -> List[str]:
    """``argv`` with ``--incremental=strict`` as the flag argparse knows."""
    return ['--incremental-strict' if arg == '--incremental=strict' else arg
            for arg in argv]


def parse_args(argv: List[str], conf: cfg.ConfigOpts = CONF
               ) -> argparse.Namespace:
    """The command's arguments; oslo.config gets the configuration."""
    show_all = '--help-all' in argv
    parser = build_parser(show_all=show_all)
    if show_all:
        parser.print_help()
        raise SystemExit(0)
    args = parser.parse_args(spelled_for_argparse(argv))
    if not args.command:
        parser.print_help(sys.stderr)
        raise SystemExit(EXIT_USAGE)
    oslo_argv: List[str] = []
    for path in args.config_file or ():
        oslo_argv += ['--config-file', path]
    for path in args.config_dir or ():
        oslo_argv += ['--config-dir', path]
    if args.debug:
        oslo_argv.append('--debug')
    for opt in _log_options():
        value = getattr(args, 'log_' + opt.dest, None)
        if value is None:
            continue
        if isinstance(opt, cfg.BoolOpt):
            oslo_argv.append(('--' if value else '--no') + opt.name)
        else:
            oslo_argv += ['--' + opt.name, value]
    logging.register_options(conf)
    # stdout carries the command's result (JSON for scripts); logs go to
    # stderr, even with --debug.
    conf.set_default('use_stderr', True)
    defaults = [USER_CONFIG] if os.path.exists(USER_CONFIG) else []
    conf(oslo_argv, project='chunkbackup', prog=PROG,
         default_config_files=defaults, default_config_dirs=[])
    # A command's output is its result; log lines only say what went wrong,
    # unless --debug asks for everything.
    # castellan and barbicanclient log ERROR for what CastellanKeys turns
    # into the command's one-line error (a missing key, an unreachable
    # Barbican): shown with --debug only.
    quiet = [] if conf.debug else ['chunkbackup=WARNING',
                                   'castellan=CRITICAL',
                                   'barbicanclient=CRITICAL']
    logging.set_defaults(default_log_levels=logging.get_default_log_levels()
                         + ['alembic=WARNING', 'stevedore=ERROR',
                            'botocore=WARNING', 'swiftclient=WARNING',
                            'google=WARNING'] + quiet)
    logging.setup(conf, 'chunkbackup')
    if conf.debug:
        # Secret options are masked by oslo.config.
        conf.log_opt_values(LOG, logging.DEBUG)
    return args


def _run(args: argparse.Namespace) -> None:
    opts.validate(CONF)
    if not args.needs_catalog:
        args.func(args, None)
        return
    if getattr(args, 'replace', False):
        api.move_aside()
    catalog = api.Catalog()
    session = catalog.session()
    try:
        args.func(args, session)
    finally:
        session.close()
        catalog.dispose()


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_args(argv)
    except cfg.Error as e:
        sys.stderr.write('%s: error: %s\n' % (PROG, e))
        return EXIT_USAGE
    # A SIGTERM'd command cleans up like an interrupted one: its backup
    # ends error with its objects removed, not creating until cleanup.
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        _run(args)
    except KeyboardInterrupt as e:
        terminated = isinstance(e, Terminated)
        word = 'terminated' if terminated else 'interrupted'
        sys.stderr.write('%s: %s\n' % (PROG, word))
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)
    except BrokenPipeError:
        # The reader (head, less) went away: not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (exception.ChunkBackupError, OSError,
            sa.exc.SQLAlchemyError) as e:
        if CONF.debug:
            LOG.exception('%s failed', args.command)
        if isinstance(e, sa.exc.SQLAlchemyError):
            e = api.explain(e)
        message = getattr(e, 'msg', None) or str(e)
        sys.stderr.write('%s: error: %s\n' % (PROG, message))
        return EXIT_FAILURE
    except Exception as e:
        if CONF.debug:
            LOG.exception('%s failed', args.command)
        sys.stderr.write('%s: error: unexpected %s: %s (run again with '
                         '--debug for details)\n'
                         % (PROG, type(e).__name__, e))
        return EXIT_FAILURE
    return 0


if __name__ == '__main__':
    sys.exit(main())
