"""The ``chunkbackup-backup`` service: runs queued and scheduled backups.

    chunkbackup-backup --config-file /etc/chunkbackup/chunkbackup.conf

SIGTERM stops it gracefully (see chunkbackup.service.runner), SIGHUP
re-reads the configuration (the schedules). The oslo.service backend is
chosen by ``[backup_service] backend``: threading (the default: native
threads, the backend oslo.service is moving its users to, away from the
deprecated eventlet) or eventlet.
"""
import os
import sys
from typing import List, Optional

from oslo_config import cfg

PROG = 'chunkbackup-backup'
PROJECT = 'chunkbackup'
USER_CONFIG = os.path.join(os.path.expanduser('~'), '.config', 'chunkbackup',
                           'chunkbackup.conf')
EXIT_FAILURE = 1
EXIT_USAGE = 2
# chunkbackup.service defines this option (with its choices and help); it
# is read here first, alone, because eventlet must patch the process before
# the rest of chunkbackup (SQLAlchemy, oslo.log) is imported.
_BACKEND_GROUP = 'backup_service'
_BACKEND_OPT = 'backend'
# oslo.service's own default is still eventlet, which eventlet itself
# deprecates (its import prints a 9-line EventletDeprecationWarning) and
# oslo.service's backend documentation moves services away from.
DEFAULT_BACKEND = 'threading'


def _default_config_files() -> List[str]:
    files = cfg.find_config_files(project=PROJECT, prog=PROG)
    if os.path.exists(USER_CONFIG) and USER_CONFIG not in files:
        files.append(USER_CONFIG)
    return files


def _config_arguments(argv: List[str]) -> List[str]:
    """Only the --config-file/--config-dir arguments of argv."""
    found = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        for flag in ('--config-file', '--config-dir'):
            if arg == flag and i + 1 < len(argv):
                found += [arg, argv[i + 1]]
                i += 1
            elif arg.startswith(flag + '='):
                found.append(arg)
        i += 1
    return found


def chosen_backend(argv: List[str]) -> str:
    """The backend the configuration asks for, read before anything else."""
    conf = cfg.ConfigOpts()
    conf.register_opt(cfg.StrOpt(_BACKEND_OPT, default=DEFAULT_BACKEND),
                      group=_BACKEND_GROUP)
    try:
        conf(_config_arguments(argv), project=PROJECT, prog=PROG,
             default_config_files=_default_config_files(),
             default_config_dirs=[])
        return (conf[_BACKEND_GROUP][_BACKEND_OPT] or
                DEFAULT_BACKEND).lower()
    except (cfg.Error, SystemExit):
        # The full parse below reports what is wrong.
        return DEFAULT_BACKEND


def _init_backend(name: str) -> None:
    """Choose oslo.service's backend before oslo_service.service loads."""
    try:
        from oslo_service import backend
    except ImportError:  # oslo.service < 4: eventlet only
        if name != 'eventlet':
            raise RuntimeError('[backup_service] backend = %s needs '
                               'oslo.service >= 4.1' % name)
        return
    if name == 'threading':
        # futurist imports eventlet whenever it is installed (only to
        # recognise green threads), and eventlet's import prints its
        # deprecation for a backend that is not used here.
        import warnings
        warnings.filterwarnings('ignore', message=r'\s*Eventlet is '
                                                  r'deprecated')
        import importlib.util
        missing = [m for m in ('cotyledon', 'futurist')
                   if importlib.util.find_spec(m) is None]
        if missing:
            raise RuntimeError(
                '[backup_service] backend = threading needs %s; install '
                'them with pip install "oslo.service[threading]"'
                % ' and '.join(missing))
        backend.init_backend(backend.BackendType.THREADING)
    else:
        backend.init_backend(backend.BackendType.EVENTLET)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    backend_name = chosen_backend(argv)
    if backend_name == 'eventlet':
        # As every eventlet-based OpenStack service does, before the other
        # imports: their locks and thread-locals must be green ones.
        import eventlet
        eventlet.monkey_patch()
    try:
        _init_backend(backend_name)
    except RuntimeError as e:
        sys.stderr.write('%s: error: %s\n' % (PROG, e))
        return EXIT_USAGE
    return _run(argv)


def _run(argv: List[str]) -> int:
    import logging as std_logging

    from oslo_log import log as logging
    from oslo_service import opts as service_opts

    from chunkbackup.catalog import api
    from chunkbackup import exception
    from chunkbackup import operations
    from chunkbackup import opts
    from chunkbackup import service as backup_service
    from chunkbackup.service import runner

    conf = cfg.CONF
    logging.register_options(conf)
    service_opts.register_service_opts(conf)
    try:
        conf(argv, project=PROJECT, prog=PROG,
             default_config_files=_default_config_files(),
             default_config_dirs=[])
    except cfg.Error as e:
        sys.stderr.write('%s: error: %s\n' % (PROG, e))
        return EXIT_USAGE
    logging.set_defaults(default_log_levels=logging.get_default_log_levels()
                         + ['alembic=WARNING', 'stevedore=ERROR'])
    logging.setup(conf, PROJECT)
    log = logging.getLogger(PROG)
    backup_service.ensure_shutdown_timeout(conf)

    # Fail at once, in one line, on a catalog or driver that cannot work;
    # nothing stays open (the threading backend forks a worker).
    try:
        opts.validate(conf)
        api.Catalog().dispose()
        # A wrong endpoint or credentials: one line now, not a failed
        # backup at the first schedule.
        operations.load_driver().check_for_setup_error()
    except exception.ChunkBackupError as e:
        sys.stderr.write('%s: error: %s\n' % (PROG, e.msg))
        return EXIT_FAILURE

    from oslo_service import service

    server = runner.BackupService(conf)
    launcher = service.launch(conf, server, workers=1,
                              restart_method='mutate')
    status = launcher.wait()
    if server.stragglers:
        # Their threads may be blocked in storage I/O, and the engine's
        # pools would be joined at interpreter exit: leave now, as the
        # shutdown has already recorded everything.
        log.warning('Exiting with %d operation(s) still unwinding.',
                    len(server.stragglers))
        std_logging.shutdown()
        os._exit(0)
    return int(status or 0)


if __name__ == '__main__':
    sys.exit(main())
