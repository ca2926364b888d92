"""Scratch databases on the machine's PostgreSQL and MariaDB servers."""
import contextlib
from typing import Iterator
import uuid

import sqlalchemy as sa

DATABASES = {
    'postgresql': 'postgresql+psycopg2://postgres@127.0.0.1:5432/test',
    'mariadb': 'mysql+pymysql://root@127.0.0.1:3306/test',
}
# Every catalog engine: the embedded default and the two servers.
CATALOG_KINDS = ['sqlite'] + sorted(DATABASES)


@contextlib.contextmanager
def scratch_database(kind: str, prefix: str = 'cbtest') -> Iterator[str]:
    """A new, empty database of ``kind`` (a DATABASES key): its URL.

    Dropped afterwards, every connection to it ended first: a process the
    test left holding a lock must not stall the drop (MariaDB's DROP
    DATABASE waits on metadata locks for up to a day).
    """
    admin = sa.create_engine(DATABASES[kind], isolation_level='AUTOCOMMIT')
    name = '%s_%s' % (prefix, uuid.uuid4().hex[:12])
    with admin.connect() as conn:
        conn.execute(sa.text('CREATE DATABASE %s' % name))
    try:
        yield DATABASES[kind].rsplit('/', 1)[0] + '/' + name
    finally:
        with admin.connect() as conn:
            # Should a lock outlive its connection, fail, don't wait.
            conn.execute(sa.text("SET lock_timeout = '60s'"
                                 if kind == 'postgresql' else
                                 'SET SESSION lock_wait_timeout = 60'))
            _end_connections(conn, kind, name)
            conn.execute(sa.text('DROP DATABASE %s' % name))
        admin.dispose()


def _end_connections(conn, kind: str, name: str) -> None:
    if kind == 'postgresql':
        conn.execute(sa.text('SELECT pg_terminate_backend(pid) FROM '
                             'pg_stat_activity WHERE datname = :n'),
                     {'n': name})
        return
    ids = conn.execute(sa.text(
        'SELECT id FROM information_schema.processlist WHERE db = :n '
        'AND id <> CONNECTION_ID()'), {'n': name}).scalars().all()
    for thread_id in ids:
        try:
            conn.execute(sa.text('KILL %d' % thread_id))
        except sa.exc.DBAPIError:
            pass  # it ended meanwhile
