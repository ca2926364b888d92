"""A catalog that fails is explained in one line, and a backup it
interrupts ends consistent: nothing left in the store that the catalog
does not record (issue 15, item 8)."""
import os

from oslo_config import cfg
import pytest
import sqlalchemy as sa

from chunkbackup.catalog import api
from chunkbackup.catalog import models
from chunkbackup import operations
from chunkbackup import progress

CONF = cfg.CONF


class DeleteCatalogWhenStarted(progress.ProgressListener):
    def __init__(self, path):
        self.path = path

    def started(self, operation, backup, total_bytes):
        os.unlink(self.path)


def _files(path):
    return [f for _, _, files in os.walk(path) for f in files]


def test_a_catalog_deleted_during_a_backup(catalog, tmp_path):
    volume = tmp_path / 'disk.img'
    volume.write_bytes(os.urandom(256 * 1024))
    session = catalog.session()
    with pytest.raises(sa.exc.SQLAlchemyError) as info:
        operations.create_backup(
            session, str(volume),
            listeners=[DeleteCatalogWhenStarted(tmp_path / 'catalog.sqlite')])
    session.close()
    # The store holds nothing the catalog could not record.
    assert _files(tmp_path / 'store') == []
    line = api.explain(info.value).msg
    assert line.startswith('the catalog %s cannot be written (attempt to '
                           'write a readonly database)'
                           % (tmp_path / 'catalog.sqlite')), line
    assert '\n' not in line


@pytest.mark.parametrize('message,problem,advice', [
    ('database disk image is malformed', 'is damaged',
     'catalog-rebuild --replace'),
    ('file is not a database', 'is damaged', 'move the file aside'),
    ('attempt to write a readonly database', 'cannot be written',
     'writable'),
    ('unable to open database file', 'cannot be opened', 'directory'),
    ('connection refused', 'failed', '[database] connection'),
])
def test_explain_names_the_file_and_what_to_do(message, problem, advice):
    error = sa.exc.OperationalError(
        'INSERT INTO backups (id) VALUES (?)', ('x',), Exception(message))
    line = api.explain(error, 'sqlite:////var/lib/cb/catalog.sqlite').msg
    assert line.startswith('the catalog /var/lib/cb/catalog.sqlite %s (%s)'
                           % (problem, message)), line
    assert advice in line and 'INSERT' not in line and '\n' not in line


def test_move_aside_keeps_the_damaged_file(tmp_path):
    path = tmp_path / 'catalog.sqlite'
    path.write_bytes(b'garbage')
    aside = api.move_aside('sqlite:///%s' % path)
    assert not path.exists() and open(aside, 'rb').read() == b'garbage'
    assert api.move_aside('sqlite:///%s' % path) is None
    with pytest.raises(api.CatalogError, match='SQLite'):
        api.move_aside('postgresql://u:secret@db/cb')
    assert models.Backup.verify_status is not None
