"""Opening the catalog, migrating it, and the queries the tools need.

SQLite in the user's data directory is the default; any SQLAlchemy URL
(PostgreSQL, MySQL/MariaDB) works through ``[database] connection``.
"""
import datetime
import math
import os
from typing import Any, Dict, List, Optional, Sequence

from oslo_config import cfg
from oslo_log import log as logging
import sqlalchemy as sa
from sqlalchemy import orm

from chunkbackup.catalog import leases
from chunkbackup.catalog import migrations
from chunkbackup.catalog import models
from chunkbackup.catalog import refs
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


# A reference that names no backup (chunkbackup.catalog.refs).
NotFound = refs.NotFound


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


# The drivers that the package extras (setup.cfg [extras]) bring, and
# the pip packages of other drivers SQLAlchemy may ask for.
EXTRAS = {'psycopg2': 'postgresql', 'pymysql': 'mysql'}
PACKAGES = {'psycopg2': 'psycopg2-binary', 'pymysql': 'PyMySQL',
            'MySQLdb': 'mysqlclient', 'psycopg': 'psycopg[binary]'}


def missing_driver(url: sa.engine.URL, error: ImportError) -> CatalogError:
    """One line for a database driver that is not installed."""
    module = (getattr(error, 'name', None) or str(error)).split('.')[0]
    package = PACKAGES.get(module, module)
    extra = EXTRAS.get(module)
    if extra:
        advice = ('install it with pip install "chunkbackup[%s]"' % extra)
    elif url.get_backend_name() in ('mysql', 'mariadb'):
        advice = ('pip install %s, or use mysql+pymysql:// with pip '
                  'install "chunkbackup[mysql]"' % package)
    else:
        advice = 'pip install %s' % package
    return CatalogError(
        where=describe_location(url.render_as_string(hide_password=False)),
        problem='needs the database driver %s, which is not installed'
                % module, advice=advice)


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


def _end_idle_writes_past_the_lease(dbapi_connection, record) -> None:
    """MariaDB: the server ends a write transaction idle past the lease.

    A worker paused between a statement and its commit (SIGSTOP, a frozen
    VM) keeps the rows it wrote locked, and the worker taking its work
    over would wait on them for as long as it stays paused. Idle past the
    lease, that worker has lost its work anyway: the server closes its
    connection, the locks go, and the paused worker finds out when it
    resumes. Only leased processes (the service) set it; MySQL has no
    such variable, and PostgreSQL's kills idle readers too.
    """
    seconds = leases.lease_seconds()
    if seconds is None or 'mariadb' not in str(
            dbapi_connection.get_server_info()).lower():
        return
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute('SET SESSION idle_write_transaction_timeout = %d'
                       % max(1, math.ceil(seconds)))
    finally:
        cursor.close()


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
            if parsed.get_backend_name() in ('mysql', 'mariadb'):
                sa.event.listen(self.engine, 'connect',
                                _end_idle_writes_past_the_lease)
            self._migrate()
        except sa.exc.SQLAlchemyError as e:
            raise explain(e, self.url)
        except ImportError as e:
            raise missing_driver(parsed, e)
        self.Session = orm.sessionmaker(self.engine, expire_on_commit=False)

    def _migrate(self) -> None:
        if self.at_head():
            return
        # Imported here: most commands find the schema current.
        from alembic import command as alembic_command
        from alembic import config as alembic_config

        config = alembic_config.Config()
        config.set_main_option(
            'script_location',
            os.path.join(os.path.dirname(__file__), 'migrations'))
        with self.engine.begin() as connection:
            config.attributes['connection'] = connection
            alembic_command.upgrade(config, 'head')

    def at_head(self) -> bool:
        """Whether the schema is at the newest migration."""
        try:
            with self.engine.connect() as connection:
                versions = connection.execute(sa.text(
                    'SELECT version_num FROM alembic_version')).scalars().all()
        except sa.exc.DBAPIError:
            # No table yet, or no server: alembic says which.
            return False
        return list(versions) == [migrations.HEAD]

    def session(self) -> orm.Session:
        return self.Session()

    def dispose(self) -> None:
        self.engine.dispose()


def get_backup(session: orm.Session, backup_id: str) -> models.Backup:
    """The backup a reference names.

    An id, a unique id prefix, a name, ``latest`` or ``latest:VOLUME``
    (see chunkbackup.catalog.refs).
    """
    return refs.resolve(session, backup_id)


def list_backups(session: orm.Session,
                 volume_id: Optional[str] = None, *,
                 volume: Optional[str] = None,
                 statuses: Sequence[str] = (),
                 since: Optional[datetime.datetime] = None,
                 before: Optional[datetime.datetime] = None,
                 limit: Optional[int] = None) -> List[models.Backup]:
    """Backups, oldest first; filters combine.

    ``volume_id`` is an exact volume id; ``volume`` a path, NBD URL or id
    (chunkbackup.catalog.refs.volume_filter); ``since``/``before`` bound
    the creation time (naive UTC); ``limit`` keeps the newest N.
    """
    query = sa.select(models.Backup)
    if volume_id:
        query = query.where(models.Backup.volume_id == volume_id)
    if volume:
        query = query.where(refs.volume_filter(volume))
    if statuses:
        query = query.where(models.Backup.status.in_(list(statuses)))
    if since is not None:
        query = query.where(models.Backup.created_at >= since)
    if before is not None:
        query = query.where(models.Backup.created_at < before)
    if limit:
        newest = query.order_by(models.Backup.created_at.desc(),
                                models.Backup.id.desc()).limit(limit)
        return list(reversed(list(session.scalars(newest))))
    return list(session.scalars(query.order_by(models.Backup.created_at,
                                               models.Backup.id)))


def latest_available(session: orm.Session, volume_id: str,
                     driver: str) -> Optional[models.Backup]:
    """The newest complete backup of a volume: Cinder's parent choice.

    A backup being restored or verified is complete and unchanged by it,
    so it can be a parent meanwhile. One being folded stays the newest:
    an incremental of it is refused until the fold ends.
    """
    query = (sa.select(models.Backup)
             .where(models.Backup.volume_id == volume_id,
                    models.Backup.driver == driver,
                    models.Backup.status.in_((states.AVAILABLE,
                                              states.RESTORING,
                                              states.VERIFYING,
                                              states.FOLDING)))
             .order_by(models.Backup.created_at.desc(),
                       models.Backup.updated_at.desc())
             .limit(1))
    return session.scalars(query).first()
