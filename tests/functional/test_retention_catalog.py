"""Retention's catalog parts on every database engine (SQLite, PostgreSQL,
MariaDB): migration 0006 (with the backfill of which schedule made a
backup), and folds refused, with one line, while the chain is read.
"""
import os

from alembic import command as alembic_command
from alembic import config as alembic_config
import pytest
import sqlalchemy as sa

from chunkbackup.catalog import api
from chunkbackup.catalog import folds
from chunkbackup.catalog import states
from chunkbackup import folding
from chunkbackup import operations
from chunkbackup.testing import volumes
from tests.functional import databases
from tests.functional.test_status_race import catalog  # noqa: F401
from tests.functional.test_status_race import posix_store  # noqa: F401

MiB = 2 ** 20


@pytest.fixture(params=databases.CATALOG_KINDS)
def old_catalog_url(request, tmp_path):
    if request.param == 'sqlite':
        yield 'sqlite:///%s' % (tmp_path / 'old.sqlite')
        return
    with databases.scratch_database(request.param, 'cbmig') as url:
        yield url


def test_migration_0006_backfills_schedule_names(old_catalog_url):
    engine = sa.create_engine(old_catalog_url)
    config = alembic_config.Config()
    config.set_main_option('script_location', os.path.join(
        os.path.dirname(api.__file__), 'migrations'))
    with engine.begin() as connection:
        config.attributes['connection'] = connection
        alembic_command.upgrade(config, '0005')
    with engine.begin() as connection:
        for backup_id, name in (('a' * 36, 'schedule:nightly'),
                                ('b' * 36, 'by hand')):
            connection.execute(sa.text(
                "INSERT INTO backups (id, volume_id, size, size_bytes, "
                "object_count, status, created_at, driver, display_name) "
                "VALUES (:id, 'v', 0, 0, 0, 'available', "
                "'2026-01-01 00:00:00', 'posix', :name)"),
                {'id': backup_id, 'name': name})
    engine.dispose()
    cat = api.Catalog(old_catalog_url)
    try:
        session = cat.session()
        got = {b.id: (b.schedule_name, b.pinned, b.fold_target)
               for b in api.list_backups(session)}
        assert got == {'a' * 36: ('nightly', False, None),
                       'b' * 36: (None, False, None)}
        session.close()
    finally:
        cat.dispose()


def test_fold_refused_while_the_chain_is_read(catalog,  # noqa: F811
                                              posix_store,  # noqa: F811
                                              tmp_path):
    session = catalog.session()
    vol = str(tmp_path / 'disk.img')
    volumes.write_volume(vol, 2 * MiB, 'mixed', seed=4)
    made = []
    for i in range(3):
        if i:
            volumes.change_blocks(vol, 0.1, 16384, seed=i, max_run=4)
        made.append(operations.create_backup(session, vol,
                                             incremental=bool(i)))
    full, inc1, inc2 = made
    # A restore of the newest holds it: folding the full (below it) is
    # refused, one line, and nothing changed.
    states.begin_restore(session, inc2)
    with pytest.raises(states.StatusConflict) as info:
        folding.delete_or_fold(session, full.id)
    message = str(info.value)
    assert '\n' not in message and inc2.id in message, message
    states.end_restore(session, inc2)
    for record in made:
        session.refresh(record)
        assert record.status == 'available' and record.owner is None
    # While a fold holds the full and inc1, a restore of inc2 and an
    # incremental are refused with one line naming the fold.
    folds.begin_fold(session, full, inc1)
    other = catalog.session()
    with pytest.raises(states.StatusConflict) as info:
        operations.restore_backup(other, inc2.id, str(tmp_path / 'out'))
    assert 'folding' in str(info.value) and '\n' not in str(info.value)
    with pytest.raises(states.StatusConflict):
        operations.create_backup(other, vol, incremental=True)
    with pytest.raises(states.StatusConflict):
        folding.delete_or_fold(other, full.id)
    assert len(api.list_backups(other)) == 3   # nothing left behind
    folds.undo_fold(session, full, inc1)
    folding.delete_or_fold(other, full.id)
    operations.verify_backup(other, inc2.id)
    other.close()
    session.close()
