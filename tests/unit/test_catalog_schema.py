"""The catalog's schema: the recorded head and the fast path that uses it."""
import os
import subprocess
import sys

from alembic import config as alembic_config
from alembic import script as alembic_script
import sqlalchemy as sa

from chunkbackup.catalog import api
from chunkbackup.catalog import migrations


def test_head_constant_is_the_newest_migration():
    config = alembic_config.Config()
    config.set_main_option('script_location',
                           os.path.dirname(migrations.__file__))
    heads = alembic_script.ScriptDirectory.from_config(config).get_heads()
    assert heads == [migrations.HEAD], (
        'set chunkbackup.catalog.migrations.HEAD to %s' % heads)


def test_a_current_catalog_opens_without_alembic(tmp_path):
    url = 'sqlite:///%s' % (tmp_path / 'c.sqlite')
    catalog = api.Catalog(url)
    assert catalog.at_head()
    assert {'backups', 'alembic_version'} <= set(
        sa.inspect(catalog.engine).get_table_names())
    opened = subprocess.run(
        [sys.executable, '-c',
         'import sys; from chunkbackup.catalog import api; '
         'api.Catalog(sys.argv[1]); print("alembic" in sys.modules)', url],
        check=True, capture_output=True, text=True)
    assert opened.stdout.strip() == 'False', opened
    # An older schema is not taken for current.
    with catalog.engine.begin() as connection:
        connection.execute(sa.text(
            "UPDATE alembic_version SET version_num = '0005'"))
    assert not catalog.at_head()
    catalog.dispose()
