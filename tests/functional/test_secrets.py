"""Secrets never reach the logs: a debug run of every store is grepped."""
import os

import pytest

from chunkbackup.testing import volumes
from tests.functional.clitool import Cli

MiB = 2 ** 20
DB_PASSWORD = 'db-Pa55word-never-logged'  # trust auth ignores it


def _config(tmp_path, store, swift_server, moto_server):
    sections = {
        'posix': [],
        'swift': ['[backup_swift]', 'auth_url = %s' % swift_server.auth_url,
                  'auth_version = 1', 'user = %s' % swift_server.user,
                  'key = %s' % swift_server.key,
                  'container = secrets-test'],
        's3': ['[backup_s3]', 'endpoint_url = %s' % moto_server.endpoint,
               'access_key = %s' % moto_server.access_key,
               'secret_key = %s' % moto_server.secret_key,
               'bucket = secrets-test', 'addressing_style = path'],
    }[store]
    lines = ['[DEFAULT]', 'debug = true',
             '[chunkbackup]', 'driver = %s' % store,
             'sha_block_size = 16384', '[backup_posix]',
             'path = %s' % (tmp_path / 'store'), 'object_size = 262144',
             '[database]',
             'connection = postgresql+psycopg2://postgres:%s@127.0.0.1:5432/'
             'test' % DB_PASSWORD] + sections
    secrets = [DB_PASSWORD]
    if store == 'swift':
        secrets.append(swift_server.key)
        lines += ['object_size = 262144']
    if store == 's3':
        secrets += [moto_server.secret_key]
        lines += ['object_size = 5242880']
    return '\n'.join(lines) + '\n', secrets


@pytest.mark.parametrize('store', ['posix', 'swift', 's3'])
def test_debug_log_of_a_full_run_holds_no_secret(tmp_path, store,
                                                 swift_server, moto_server):
    cli = Cli(tmp_path)
    text, secrets = _config(tmp_path, store, swift_server, moto_server)
    cli.config.write_text(text)
    vol = str(tmp_path / 'disk.img')
    volumes.write_volume(vol, 2 * MiB, 'mixed', seed=1, region_size=65536)
    log = []
    for args in (['backup-create', vol], ['backup-list']):
        result = cli.run(*args, '--format', 'json')
        log.append(result.stderr + result.stdout)
    backup_id = cli.json('backup-list')[0]['id']
    for args in (['backup-verify', backup_id],
                 ['backup-restore', backup_id, str(tmp_path / 'out')],
                 ['backup-export', backup_id],
                 ['backup-delete', backup_id]):
        result = cli.run(*args)
        log.append(result.stderr + result.stdout)
    # A failing run logs too: a wrong option value must not echo secrets.
    failing = cli.run('backup-show', 'no-such-backup', check=False)
    log.append(failing.stderr + failing.stdout)
    everything = '\n'.join(log)
    assert 'DEBUG' in everything  # the run really logged at debug level
    for secret in secrets:
        assert secret not in everything, 'a secret reached the log'
    with open(os.path.join(tmp_path, 'out'), 'rb') as got, \
            open(vol, 'rb') as want:
        assert got.read() == want.read()
