"""The ``chunkbackup`` command: backups of files and block devices.

    chunkbackup backup-create /path/to/disk.img
    chunkbackup backup-create /path/to/disk.img --incremental
    chunkbackup backup-list
    chunkbackup backup-restore BACKUP_ID /path/to/restored.img

Every command prints a table (or JSON with ``--format json``), exits 0 on
success, and on failure prints one line to stderr and exits non-zero (the
traceback only with ``--debug``).
"""
import argparse
import json
import os
import signal
import sys
from typing import Any, List, Optional, Sequence, TextIO, Tuple, Union

from oslo_config import cfg
from oslo_log import log as logging
import sqlalchemy as sa
from sqlalchemy import orm

from chunkbackup.catalog import api
from chunkbackup.catalog import models
from chunkbackup import exception
from chunkbackup import extents
from chunkbackup import operations
from chunkbackup import opts  # noqa: F401  (registers [chunkbackup])
from chunkbackup import progress
from chunkbackup.records import BackupLike

CONF = cfg.CONF
LOG = logging.getLogger(__name__)
PROG = 'chunkbackup'
USER_CONFIG = os.path.join(os.path.expanduser('~'), '.config', 'chunkbackup',
                           'chunkbackup.conf')
EXIT_FAILURE = 1
EXIT_USAGE = 2
# A command's parsed arguments: oslo.config's SubCommandAttr, whose
# attributes (as on argparse's Namespace) differ from command to command.
CommandArgs = Any
Columns = Sequence[Tuple[str, str]]  # (key, title) of each column


class Terminated(KeyboardInterrupt):
    """SIGTERM: stop and clean up exactly as on Ctrl-C (SIGINT)."""


def _on_sigterm(signum, frame):
    raise Terminated()


# Output ------------------------------------------------------------------

def _text(value) -> str:
    if value is None:
        return ''
    return str(value)


def print_table(rows: Sequence[dict], columns: Columns,
                out: TextIO = sys.stdout) -> None:
    """A plain table: one header line, one line a row."""
    cells = [[_text(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max([len(title)] + [len(r[i]) for r in cells])
              for i, (_, title) in enumerate(columns)]
    line = '  '.join(title.ljust(w) for (_, title), w in zip(columns, widths))
    out.write(line.rstrip() + '\n')
    for r in cells:
        out.write('  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
                  + '\n')


def print_fields(record: dict, out: TextIO = sys.stdout) -> None:
    print_table([{'field': k, 'value': v} for k, v in record.items()],
                [('field', 'Field'), ('value', 'Value')], out)


def emit(args: CommandArgs, data: Union[dict, List[dict]],
         columns: Optional[Columns] = None) -> None:
    if args.format == 'json':
        json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write('\n')
    elif isinstance(data, list):
        assert columns is not None  # every list comes with its columns
        print_table(data, columns)
    else:
        print_fields(data)


def backup_view(record: models.Backup) -> dict:
    return {
        'id': record.id,
        'volume_id': record.volume_id,
        'volume_path': record.volume_path,
        'status': record.status,
        'name': record.display_name,
        'description': record.display_description,
        'incremental': record.is_incremental,
        'parent_id': record.parent_id,
        'size_gib': record.size,
        'size_bytes': record.size_bytes,
        'object_count': record.object_count,
        'driver': record.driver,
        'container': record.container,
        'object_prefix': record.service_metadata,
        'created_at': str(record.created_at) if record.created_at else None,
        'data_timestamp': (str(record.data_timestamp)
                           if record.data_timestamp else None),
        'fail_reason': record.fail_reason,
        'stats': record.stats,
        'verify_status': record.verify_status,
        'verify_reason': record.verify_reason,
        'verified_at': (str(record.verified_at) if record.verified_at
                        else None),
        # The process (service worker: host:pid) working on it now.
        'worker': record.owner,
    }


LIST_COLUMNS = [('id', 'ID'), ('volume_id', 'Volume ID'),
                ('status', 'Status'), ('name', 'Name'),
                ('size_bytes', 'Size (bytes)'), ('incremental', 'Incremental'),
                ('created_at', 'Created At'), ('verify_status', 'Verify')]


class TerminalProgress(progress.ProgressListener):
    """A progress bar with throughput and ETA, on a terminal only."""

    def __init__(self) -> None:
        self.bar: Any = None  # a tqdm.tqdm while an operation runs

    def started(self, operation: str, backup: BackupLike,
                total_bytes: int) -> None:
        import shutil

        import tqdm
        # A terminal that reports no size (some ptys, serial consoles)
        # gets 80x24: tqdm would otherwise draw nothing at all.
        size = shutil.get_terminal_size()
        self.bar = tqdm.tqdm(total=total_bytes, unit='B', unit_scale=True,
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


# Commands ----------------------------------------------------------------

def cmd_backup_create(args: CommandArgs, session: orm.Session) -> None:
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
            'incremental': args.incremental, 'name': args.display_name,
            'description': args.display_description,
            'volume_id': args.volume_id,
            'container': args.container,
            'changed_extents': changed,
            'dirty_bitmap': args.dirty_bitmap})
        emit(args, {'job_id': job.id, 'status': job.status,
                    'kind': job.kind})
        return
    record = operations.create_backup(
        session, args.volume, incremental=args.incremental,
        name=args.display_name, description=args.display_description,
        volume_id=args.volume_id, container=args.container,
        changed_extents=args.changed_extents, dirty_bitmap=args.dirty_bitmap,
        listeners=listeners())
    emit(args, backup_view(record))


def cmd_backup_restore(args: CommandArgs, session: orm.Session) -> None:
    record = operations.restore_backup(session, args.backup_id, args.target,
                                       force=args.force,
                                       listeners=listeners())
    emit(args, {'backup_id': record.id, 'target': args.target,
                'size_bytes': record.size_bytes, 'status': 'restored'})


def cmd_backup_list(args: CommandArgs, session: orm.Session) -> None:
    rows = [backup_view(r) for r in api.list_backups(session,
                                                     args.volume_id)]
    emit(args, rows, LIST_COLUMNS)


def cmd_backup_show(args: CommandArgs, session: orm.Session) -> None:
    emit(args, backup_view(api.get_backup(session, args.backup_id)))


def cmd_backup_delete(args: CommandArgs, session: orm.Session) -> None:
    record = operations.delete_backup(session, args.backup_id)
    emit(args, {'backup_id': record.id, 'status': 'deleted'})


def cmd_backup_verify(args: CommandArgs, session: orm.Session) -> None:
    record, plan = operations.verify_backup(session, args.backup_id,
                                            listeners=listeners())
    emit(args, {'backup_id': record.id, 'status': 'verified',
                'size_bytes': plan.size, 'objects_checked':
                len(plan.fetches), 'chain_length': len(plan.chain)})


def cmd_backup_export(args: CommandArgs, session: orm.Session) -> None:
    emit(args, operations.export_backup(session, args.backup_id))


def cmd_backup_import(args: CommandArgs, session: orm.Session) -> None:
    record = operations.import_backup(session, args.exporter_service,
                                      args.backup_url)
    emit(args, backup_view(record))


def cmd_catalog_rebuild(args: CommandArgs, session: orm.Session) -> None:
    added = operations.rebuild_catalog(session, args.container)
    emit(args, [{'id': i, 'status': 'recorded'} for i in added],
         [('id', 'ID'), ('status', 'Status')])


def schedule_view(row: models.Schedule) -> dict:
    return {
        'name': row.name,
        'volume_path': row.volume_path,
        'volume_id': row.volume_id,
        'container': row.container,
        'interval_seconds': row.interval_seconds,
        'full_every': row.full_every,
        'retain_full': row.retain_full,
        'enabled': row.enabled,
        'last_run_at': str(row.last_run_at) if row.last_run_at else None,
    }


SCHEDULE_COLUMNS = [('name', 'Name'), ('volume_path', 'Volume'),
                    ('interval_seconds', 'Interval (s)'),
                    ('full_every', 'Full Every'),
                    ('retain_full', 'Retain Full'), ('enabled', 'Enabled'),
                    ('last_run_at', 'Last Run At')]


def cmd_schedule_set(args: CommandArgs, session: orm.Session) -> None:
    from chunkbackup.service import schedules
    row = schedules.set_schedule(
        session, args.schedule_name, args.volume, args.interval,
        full_every=args.full_every, retain_full=args.retain_full,
        container=args.container, volume_id=args.volume_id,
        enabled=not args.disabled)
    emit(args, schedule_view(row))


def cmd_schedule_list(args: CommandArgs, session: orm.Session) -> None:
    from chunkbackup.service import schedules
    emit(args, [schedule_view(r) for r in schedules.list_schedules(session)],
         SCHEDULE_COLUMNS)


def cmd_service_list(args: CommandArgs, session: orm.Session) -> None:
    from chunkbackup.catalog import workers
    emit(args, [{'name': w.name, 'host': w.host, 'started_at':
                 str(w.started_at), 'heartbeat_at': str(w.heartbeat_at),
                 'running': w.running_operations, 'state': w.state}
                for w in workers.list_workers(session)],
         [('name', 'Name'), ('host', 'Host'), ('started_at', 'Started'),
          ('heartbeat_at', 'Last Heartbeat'), ('running', 'Running'),
          ('state', 'State')])


def cmd_job_list(args: CommandArgs, session: orm.Session) -> None:
    import sqlalchemy as sa
    rows = session.scalars(sa.select(models.Job).order_by(models.Job.id))
    emit(args, [{'id': j.id, 'kind': j.kind, 'status': j.status,
                 'worker': j.owner, 'attempts': j.attempts,
                 'backup_id': j.backup_id, 'error': j.error,
                 'volume': (j.params or {}).get('volume'),
                 'created_at': str(j.created_at),
                 'finished_at': str(j.finished_at) if j.finished_at
                 else None} for j in rows],
         [('id', 'ID'), ('kind', 'Kind'), ('status', 'Status'),
          ('worker', 'Worker'), ('attempts', 'Runs'),
          ('backup_id', 'Backup ID'), ('error', 'Error')])


def cmd_cleanup(args: CommandArgs, session: orm.Session) -> None:
    cleaned = operations.cleanup_interrupted(session)
    emit(args, [{'id': i, 'status': 'error', 'objects': 'removed'}
                for i in cleaned],
         [('id', 'ID'), ('status', 'Status'), ('objects', 'Objects')])


def cmd_cinder_options(args: CommandArgs, session: orm.Session) -> None:
    from chunkbackup import cinder_options

    with open(args.cinder_conf) as f:
        text = f.read()
    try:
        sys.stdout.write(cinder_options.convert(text))
    except ValueError as e:
        raise exception.InvalidConfiguration(reason=str(e))


def _add_format(parser):
    parser.add_argument('--format', choices=('table', 'json'),
                        default='table',
                        help='table for people (default), json for scripts')


def add_command_parsers(
        subparsers: 'argparse._SubParsersAction[argparse.ArgumentParser]'
) -> None:
    def command(name, func, help_text):
        parser = subparsers.add_parser(name, help=help_text,
                                       description=help_text)
        parser.set_defaults(func=func)
        _add_format(parser)
        return parser

    p = command('backup-create', cmd_backup_create,
                'Back up a file, block device or NBD export (full, or '
                '--incremental).')
    p.add_argument('volume', help='file, block device, or NBD export '
                                  '(nbd://HOST:PORT/EXPORT, '
                                  'nbd+unix:///EXPORT?socket=PATH) to back '
                                  'up')
    p.add_argument('--incremental', action='store_true',
                   help='store only what changed since the newest available '
                        'backup of this volume')
    p.add_argument('--name', dest='display_name',
                   help='a name for the backup')
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
    p.add_argument('--async', dest='async_', action='store_true',
                   help='queue the backup for chunkbackup-backup to run')

    p = command('backup-restore', cmd_backup_restore,
                'Restore a backup (and its chain) to a file or device.')
    p.add_argument('backup_id')
    p.add_argument('target', help='file (created if missing), block '
                                  'device or NBD export URL')
    p.add_argument('--force', action='store_true',
                   help='overwrite a target that is not empty')

    p = command('backup-list', cmd_backup_list, 'List backups.')
    p.add_argument('--volume-id', dest='volume_id',
                   help='only the backups of this volume')

    for name, func, text in (
            ('backup-show', cmd_backup_show, 'Show one backup.'),
            ('backup-delete', cmd_backup_delete,
             'Delete a backup (not one that incrementals depend on).'),
            ('backup-verify', cmd_backup_verify,
             'Check every object and block of a backup, writing nothing.'),
            ('backup-export', cmd_backup_export,
             'Print the backup record as a Cinder backup_url.')):
        command(name, func, text).add_argument('backup_id')

    p = command('backup-import', cmd_backup_import,
                'Record a backup exported by chunkbackup or cinder.')
    # dest differs from the [backup_service] group: oslo.config keeps
    # sub-command arguments and groups in one namespace.
    p.add_argument('exporter_service', metavar='backup_service',
                   help='the exporter\'s backup_service, e.g. '
                        'cinder.backup.drivers.posix.PosixBackupDriver')
    p.add_argument('backup_url')

    command('cleanup', cmd_cleanup,
            'Finish what interrupted processes left: backups they were '
            'making end error with their objects removed, restores they '
            'ran release their backup.')

    p = command('catalog-rebuild', cmd_catalog_rebuild,
                'Record the backups the store holds that the catalog lacks.')
    p.add_argument('--container', help='only this container')
    p.add_argument('--replace', action='store_true',
                   help='first move the SQLite catalog file aside (kept as '
                        'FILE.damaged-TIME) and start a new one: for a '
                        'damaged catalog. Failed backups, jobs and '
                        'schedules are not in the store and are not '
                        'rebuilt')

    p = command('schedule-set', cmd_schedule_set,
                'Create or change a schedule that chunkbackup-backup runs.')
    # (args.name is the command's own name.)
    p.add_argument('schedule_name', metavar='name')
    p.add_argument('volume', help='file or block device to back up')
    p.add_argument('--interval', type=int, required=True,
                   help='seconds between backups')
    p.add_argument('--full-every', dest='full_every', type=int, default=7,
                   help='every Nth backup of a chain is full (default 7)')
    p.add_argument('--retain-full', dest='retain_full', type=int,
                   default=2,
                   help='chains to keep, counted by full backups (default '
                        '2); older ones are deleted after each run')
    p.add_argument('--container', help='container (bucket, directory) to '
                                       'store the backups in')
    p.add_argument('--volume-id', dest='volume_id',
                   help='volume id (default: a stable id of the path)')
    p.add_argument('--disabled', action='store_true',
                   help='keep the schedule but do not run it')

    p = command('cinder-options', cmd_cinder_options,
                'Print the [chunkbackup] and [backup_*] sections (and '
                'backup_driver) equivalent to the backup options of a '
                'cinder.conf.')
    p.add_argument('cinder_conf', help='path of the cinder.conf')

    command('service-list', cmd_service_list,
            'List the chunkbackup-backup workers sharing the catalog: '
            'last heartbeat, running operations, up or down.')
    command('job-list', cmd_job_list,
            'List the queued and finished jobs, with the worker that runs '
            'or ran each.')

    command('schedule-list', cmd_schedule_list,
            'List the schedules kept in the catalog (the [schedule:NAME] '
            'sections of the configuration are not listed).')


def register_cli_opts(conf: cfg.ConfigOpts = CONF) -> None:
    conf.register_cli_opt(cfg.SubCommandOpt(
        'command', title='Commands', handler=add_command_parsers,
        help='run "chunkbackup COMMAND --help" for a command\'s options'))
    logging.register_options(conf)
    # stdout carries the command's result (JSON for scripts); logs go to
    # stderr, even with --debug.
    conf.set_default('use_stderr', True)


def _one_line_errors():
    """argparse errors as one line on stderr (no usage block)."""
    def error(parser, message):
        sys.stderr.write('%s: error: %s (see %s --help)\n'
                         % (parser.prog, message, parser.prog))
        raise SystemExit(EXIT_USAGE)
    argparse.ArgumentParser.error = error


def parse_args(argv: List[str], conf: cfg.ConfigOpts = CONF) -> None:
    register_cli_opts(conf)
    defaults = [USER_CONFIG] if os.path.exists(USER_CONFIG) else []
    conf(argv, project='chunkbackup', prog=PROG,
         default_config_files=defaults, default_config_dirs=[])
    # A command's output is its result; log lines only say what went wrong,
    # unless --debug asks for everything.
    quiet = [] if conf.debug else ['chunkbackup=WARNING']
    logging.set_defaults(default_log_levels=logging.get_default_log_levels()
                         + ['alembic=WARNING', 'stevedore=ERROR',
                            'botocore=WARNING', 'swiftclient=WARNING',
                            'google=WARNING'] + quiet)
    logging.setup(conf, 'chunkbackup')
    if conf.debug:
        # Secret options are masked by oslo.config.
        conf.log_opt_values(LOG, logging.DEBUG)


def main(argv: Optional[List[str]] = None) -> int:
    _one_line_errors()
    argv = sys.argv[1:] if argv is None else argv
    try:
        parse_args(argv)
    except cfg.Error as e:
        sys.stderr.write('%s: error: %s\n' % (PROG, e))
        return EXIT_USAGE
    args = CONF.command
    # A SIGTERM'd command cleans up like an interrupted one: its backup
    # ends error with its objects removed, not creating until cleanup.
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        opts.validate(CONF)
        if getattr(args, 'replace', False):
            api.move_aside()
        catalog = api.Catalog()
        session = catalog.session()
        try:
            args.func(args, session)
        finally:
            session.close()
            catalog.dispose()
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
            LOG.exception('%s failed', args.name)
        if isinstance(e, sa.exc.SQLAlchemyError):
            e = api.explain(e)
        message = getattr(e, 'msg', None) or str(e)
        sys.stderr.write('%s: error: %s\n' % (PROG, message))
        return EXIT_FAILURE
    except Exception as e:
        if CONF.debug:
            LOG.exception('%s failed', args.name)
        sys.stderr.write('%s: error: unexpected %s: %s (run again with '
                         '--debug for details)\n'
                         % (PROG, type(e).__name__, e))
        return EXIT_FAILURE
    return 0


if __name__ == '__main__':
    sys.exit(main())
