"""Opening the catalog, migrating it, and the queries the tools need.

SQLite in the user's data directory is the default; any SQLAlchemy URL
(PostgreSQL, MySQL/MariaDB) works through ``[database] connection``.
"""
import os
from typing import List, Optional

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


def data_dir() -> str:
    home = os.environ.get('XDG_DATA_HOME') or os.path.join(
        os.path.expanduser('~'), '.local', 'share')
    return os.path.join(home, 'chunkbackup')


def default_url() -> str:
    return 'sqlite:///' + os.path.join(data_dir(), 'catalog.sqlite')


def _prepare_sqlite_file(url: sa.engine.URL) -> None:
    path = url.database
    if not path or path == ':memory:':
        return
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
        kwargs = {'pool_pre_ping': True}
        if parsed.get_backend_name() == 'sqlite':
            _prepare_sqlite_file(parsed)
            # Several processes (CLI, service) share the file.
            kwargs['connect_args'] = {'timeout': 30}
        try:
            self.engine = sa.create_engine(parsed, **kwargs)
            self._migrate()
        except sa.exc.SQLAlchemyError as e:
            raise exception.InvalidConfiguration(
                reason='the catalog at [database] connection = %s cannot be '
                       'opened: %s' % (parsed.render_as_string(
                           hide_password=True), e.__class__.__name__ + ': ' +
                           str(e.orig if hasattr(e, 'orig') else e)))
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
