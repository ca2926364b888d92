"""Opening the catalog, migrating it, and the queries the tools need.

SQLite in the user's data directory is the default; any SQLAlchemy URL
(PostgreSQL, MySQL/MariaDB) works through ``[database] connection``.
"""
import datetime
import os
from typing import Any, Dict, List, Optional

from alembic import command as alembic_command
from alembic import config as alembic_config
from oslo_config import cfg
from oslo_log import log as logging
import sqlalchemy as sa
from sqlalchemy import orm

from chunkbackup.catalog import models
from chunkbackup.catalog import states
from chunkbackup import exception

CONF = cfg.CONF
LOG = logging.getLogger(__name__)

GROUP = 'database'
OPTS = [
    cfg.StrOpt('connection',
               secret=True,
               help='SQLAlchemy URL of the standalone catalog, e.g. '
                    'postgresql+psycopg2://user@host/db or '
                    'mysql+pymysql://root@127.0.0.1/db. Unset means an '
                    'SQLite file, $XDG_DATA_HOME/chunkbackup/catalog.sqlite '
                    '(~/.local/share/chunkbackup/catalog.sqlite), created '
                    'with mode 0600.'),
]
CONF.register_opts(OPTS, group=GROUP)


class NotFound(exception.ChunkBackupError):
    msg_fmt = ("No backup %(id)s in the catalog; 'chunkbackup backup-list' "
               "shows the backups it knows.")


class CatalogError(exception.ChunkBackupError):
    msg_fmt = "the catalog %(where)s %(problem)s; %(advice)s"


REBUILD_ADVICE = ("move the file aside and run 'chunkbackup catalog-rebuild', "
                  "or run 'chunkbackup catalog-rebuild --replace', which "
                  "does both")
# What SQLite says, and what to do about it.
_ADVICE = (
    (('malformed', 'not a database', 'file is encrypted'),
     'is damaged', REBUILD_ADVICE),
    (('readonly database', 'read-only'),
     'cannot be written',
     'make the file and its directory writable by this user (a catalog '
     'deleted or moved while in use cannot be written either: run the '
     'command again)'),
    (('unable to open database file',),
     'cannot be opened',
     'check that its directory exists and is writable by this user'),
    (('no such table', 'no such column'),
     'is missing tables or columns',
     'it may be damaged or another program\'s database: ' + REBUILD_ADVICE),
)


def catalog_url() -> str:
    return CONF.database.connection or default_url()


def describe_location(url: Optional[str] = None) -> str:
    """The catalog's file (SQLite) or its URL without a password."""
    try:
        parsed = sa.engine.make_url(url or catalog_url())
    except sa.exc.ArgumentError:
        return 'at [database] connection (not a database URL)'
    if parsed.get_backend_name() == 'sqlite' and parsed.database:
        return parsed.database
    return parsed.render_as_string(hide_password=True)


def explain(error: sa.exc.SQLAlchemyError,
            url: Optional[str] = None) -> CatalogError:
    """One line for a database failure: the catalog, what, what to do.

    SQLAlchemy's own message carries the SQL statement and a link over
    several lines; the driver's first line is what matters.
    """
    cause = getattr(error, 'orig', None) or error
    text = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    lowered = text.lower()
    for needles, problem, advice in _ADVICE:
        if any(n in lowered for n in needles):
            break
    else:
        problem, advice = 'failed', ('check [database] connection and that '
                                     'the database server is reachable')
    return CatalogError(where=describe_location(url),
                        problem='%s (%s)' % (problem, text), advice=advice)


def move_aside(url: Optional[str] = None) -> Optional[str]:
    """Rename an SQLite catalog file out of the way; return its new name.

    None when there is no file. Refused for database servers: their
    catalogs are not files to move.
    """
    parsed = sa.engine.make_url(url or catalog_url())
    if parsed.get_backend_name() != 'sqlite':
        raise CatalogError(
            where=describe_location(url), problem='is not an SQLite file',
            advice='--replace moves SQLite catalogs only; drop and recreate '
                   'the database yourself, then run catalog-rebuild')
    path = parsed.database
    if not path or path == ':memory:' or not os.path.exists(path):
        return None
    stamp = datetime.datetime.now().strftime('%Y%m%d%H%M%S')
    aside = '%s.damaged-%s' % (path, stamp)
    os.replace(path, aside)
    for suffix in ('-wal', '-shm', '-journal'):
        if os.path.exists(path + suffix):
            os.replace(path + suffix, aside + suffix)
    LOG.warning('Moved the catalog %(path)s aside to %(aside)s; rebuilding '
                'it from the store.', {'path': path, 'aside': aside})
    return aside


def data_dir() -> str:
    home = os.environ.get('XDG_DATA_HOME') or os.path.join(
        os.path.expanduser('~'), '.local', 'share')
    return os.path.join(home, 'chunkbackup')


def default_url() -> str:
    return 'sqlite:///' + os.path.join(data_dir(), 'catalog.sqlite')


def _prepare_sqlite_file(url: sa.engine.URL) -> None:
    path = url.database
    if not path or path == ':memory:' or (
            path.startswith('file:') and url.query.get('uri')):
        return  # in memory, or an SQLite URI (file:PATH?mode=ro) as is
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if not os.path.exists(path):
        # The catalog names every backup and where it lives: owner only.
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)


class Catalog:
    """A migrated catalog database and a session factory."""

    def __init__(self, url: Optional[str] = None):
        self.url = url or CONF.database.connection or default_url()
        parsed = sa.engine.make_url(self.url)
        kwargs: Dict[str, Any] = {'pool_pre_ping': True}
        if parsed.get_backend_name() == 'sqlite':
            _prepare_sqlite_file(parsed)
            # Several processes (CLI, service) share the file.
            kwargs['connect_args'] = {'timeout': 30}
        try:
            self.engine = sa.create_engine(parsed, **kwargs)
            self._migrate()
        except sa.exc.SQLAlchemyError as e:
            raise explain(e, self.url)
        self.Session = orm.sessionmaker(self.engine, expire_on_commit=False)

    def _migrate(self) -> None:
        config = alembic_config.Config()
        config.set_main_option(
            'script_location',
            os.path.join(os.path.dirname(__file__), 'migrations'))
        with self.engine.begin() as connection:
            config.attributes['connection'] = connection
            alembic_command.upgrade(config, 'head')

    def session(self) -> orm.Session:
        return self.Session()

    def dispose(self) -> None:
        self.engine.dispose()


def get_backup(session: orm.Session, backup_id: str) -> models.Backup:
    record = session.get(models.Backup, backup_id)
    if record is None:
        raise NotFound(id=backup_id)
    return record


def list_backups(session: orm.Session,
                 volume_id: Optional[str] = None) -> List[models.Backup]:
    query = sa.select(models.Backup).order_by(models.Backup.created_at,
                                              models.Backup.id)
    if volume_id:
        query = query.where(models.Backup.volume_id == volume_id)
    return list(session.scalars(query))


def latest_available(session: orm.Session, volume_id: str,
                     driver: str) -> Optional[models.Backup]:
    """The newest complete backup of a volume: Cinder's parent choice.

    A backup being restored is complete and unchanged by the restore, so
    it can be a parent while the restore runs.
    """
    query = (sa.select(models.Backup)
             .where(models.Backup.volume_id == volume_id,
                    models.Backup.driver == driver,
                    models.Backup.status.in_((states.AVAILABLE,
                                              states.RESTORING)))
             .order_by(models.Backup.created_at.desc(),
                       models.Backup.updated_at.desc())
             .limit(1))
    return session.scalars(query).first()
