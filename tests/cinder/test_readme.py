"""The README's "Using chunkbackup from cinder-backup" section, checked.

Each cinder.conf snippet there is the configuration of a test: it is written
to a file and parsed after the test's own cinder.conf (database, messaging),
then an overlay that may only change the values of options the snippet
shows, to name this machine's servers and directories (the GCS emulator
also gets the two options the README names for emulators). cinder-backup's
manager then loads the driver from it and runs a backup, an incremental, a
restore and deletes against the real server. The SQL the README gives for
switching drivers runs on Cinder's database.
    """
import configparser
import os
import re
import urllib.request
import uuid

from cinder import exception as cinder_exception
from oslo_config import cfg
import pytest
import sqlalchemy as sa

from tests.cinder import conftest

CONF = cfg.CONF
MiB = conftest.MiB
KiB = conftest.KiB
README = os.path.join(os.path.dirname(__file__), '..', '..', 'README.md')
SECTION = '## Using chunkbackup from cinder-backup'
DRIVERS = {
    'posix': 'chunkbackup.drivers.posix.PosixBackupDriver',
    'swift': 'chunkbackup.drivers.swift.SwiftBackupDriver',
    'google': 'chunkbackup.drivers.gcs.GoogleBackupDriver',
    's3': 'chunkbackup.drivers.s3.S3BackupDriver',
}
# Options an overlay may add: the README names them for emulators.
EMULATOR_ONLY = {'google': {('backup_google', 'endpoint'),
                            ('backup_google', 'anonymous')}}


def section() -> str:
    with open(README) as f:
        text = f.read()
    start = text.index(SECTION)
    end = text.index('\n## ', start + len(SECTION))
    return text[start:end]


def fenced(lang: str):
    return re.findall(r'^```%s\n(.*?)^```' % lang, section(), re.S | re.M)


def snippets() -> dict:
    """{driver class path: (snippet text, {(group, option): value})}."""
    found = {}
    for text in fenced('ini'):
        # DEFAULT as a section like the others, as oslo.config reads it.
        parser = configparser.RawConfigParser(default_section='\0')
        parser.optionxform = str
        parser.read_string(text)
        options = {(group, name): value
                   for group in parser.sections()
                   for name, value in parser.items(group)}
        found[options[('DEFAULT', 'backup_driver')]] = (text, options)
    return found


def opt_of(group: str, name: str):
    return CONF._get_opt_info(name, None if group == 'DEFAULT'
                              else group)['opt']


def test_section_shows_every_driver():
    assert sorted(snippets()) == sorted(DRIVERS.values())


def test_every_option_shown_exists(cinder_setup):
    # oslo.config ignores unknown options in files: a typo would pass
    # silently in cinder.conf, so every name and value is checked here.
    for path, (text, options) in snippets().items():
        for (group, name), value in options.items():
            try:
                opt = opt_of(group, name)
            except (cfg.NoSuchOptError, cfg.NoSuchGroupError):
                pytest.fail('%s: [%s] %s is no option' % (path, group, name))
            opt.type(value)   # a valid value of its type (and choices)


class Overlay:
    """The overlay file: values for options the snippet shows."""

    def __init__(self, driver, options, tmp_path):
        self.driver = driver
        self.shown = options
        self.values = {}
        self.path = str(tmp_path / ('overlay-%s.conf' % driver))

    def set(self, group, name, value):
        assert (group, name) in self.shown or (group, name) in \
            EMULATOR_ONLY.get(self.driver, ()), (group, name)
        self.values.setdefault(group, {})[name] = value

    def write(self):
        return conftest.write_conf(self.path, self.values)


def swift_token(server):
    request = urllib.request.Request(server.auth_url, headers={
        'X-Auth-User': server.user, 'X-Auth-Key': server.key})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return (answer.headers['X-Auth-Token'],
                answer.headers['X-Storage-Url'])


def point_at_servers(driver, overlay, request, tmp_path):
    """Overlay values for this machine; returns the request context."""
    name = 'cbreadme-%s' % uuid.uuid4().hex[:12]
    if driver == 'posix':
        overlay.set('backup_posix', 'path', str(tmp_path / 'backups'))
        return conftest.request_context()
    if driver == 'swift':
        server = request.getfixturevalue('swift_server')
        token, storage_url = swift_token(server)
        prefix, account = storage_url.rsplit('/AUTH_', 1)
        overlay.set('backup_swift', 'url', prefix + '/AUTH_')
        overlay.set('backup_swift', 'container', name)
        # per_user: the request's own token and project (its account).
        return conftest.request_context(project_id=account,
                                        auth_token=token)
    if driver == 'google':
        server = request.getfixturevalue('gcs_server')
        overlay.set('backup_google', 'project_id', server.project)
        overlay.set('backup_google', 'bucket', name)
        overlay.set('backup_google', 'endpoint', server.endpoint)
        overlay.set('backup_google', 'anonymous', 'true')
        return conftest.request_context()
    server = request.getfixturevalue('moto_server')
    overlay.set('backup_s3', 'endpoint_url', server.endpoint)
    overlay.set('backup_s3', 'access_key', server.access_key)
    overlay.set('backup_s3', 'secret_key', server.secret_key)
    overlay.set('backup_s3', 'bucket', name)
    return conftest.request_context()


@pytest.fixture
def readme_conf(cinder_setup):
    """Load config files for one test; back to cinder.conf alone after."""
    yield cinder_setup.load
    cinder_setup.load()


def test_emulator_options_are_named_in_the_readme():
    text = section()
    for group, name in EMULATOR_ONLY['google']:
        assert '`%s' % name in text


@pytest.mark.parametrize('driver', sorted(DRIVERS))
def test_readme_configuration_runs_in_cinder_backup(
        driver, cinder_setup, readme_conf, request, tmp_path, monkeypatch):
    path = DRIVERS[driver]
    text, options = snippets()[path]
    snippet = tmp_path / 'readme-cinder.conf'
    snippet.write_text(text)
    overlay = Overlay(driver, options, tmp_path)
    ctxt = point_at_servers(driver, overlay, request, tmp_path)
    readme_conf(str(snippet), overlay.write())

    # What cinder-backup reads is what the README shows (or the overlay).
    for (group, name), shown in options.items():
        value = overlay.values.get(group, {}).get(name, shown)
        opt = opt_of(group, name)
        got = getattr(CONF, name) if group == 'DEFAULT' else \
            getattr(CONF[group], name)
        assert got == opt.type(value), (group, name)

    cloud = conftest.Cloud(cinder_setup, tmp_path, monkeypatch)
    cloud.ctxt = ctxt
    manager = cloud.start()           # backup_driver from the snippet
    assert manager.driver_name == path
    v0 = conftest.random_volume(3 * MiB + 5 * KiB, seed=30)
    volume = cloud.volume(v0, name='readme', metadata={'from': 'readme'})
    full = cloud.create_backup(volume)
    v1 = bytearray(v0)
    v1[MiB:MiB + 100 * KiB] = bytes(100 * KiB)
    cloud.write(volume, bytes(v1))
    incr = cloud.create_backup(volume, parent=full)
    assert (full.status, incr.status) == ('available', 'available')
    assert full.service == incr.service == path

    restored = cloud.restore(incr)
    assert cloud.data_of(restored) == bytes(v1)
    assert restored.display_name == 'readme'
    assert restored.metadata['from'] == 'readme'
    assert cloud.data_of(cloud.restore(full)) == v0

    store = manager.service(ctxt).store
    cloud.delete(incr)
    cloud.delete(full)
    for backup in (full, incr):
        assert store.list(backup.container, backup.service_metadata) == []


def test_switching_drivers_with_the_readme_sql(cloud, posix_paths,
                                               overrides):
    """A backup made with Cinder's driver, restored with ours after the
    README's UPDATE.
    """
    (statement,) = fenced('sql')
    overrides('backup_posix_path', posix_paths['ours'])
    cloud.start(conftest.CINDER_POSIX)
    data = conftest.random_volume(MiB, seed=31)
    backup = cloud.create_backup(cloud.volume(data))
    cloud.start(conftest.OUR_POSIX)
    with pytest.raises(cinder_exception.InvalidBackup,
                       match='not the backup service'):
        cloud.restore(backup)
    engine = sa.create_engine(CONF.database.connection)
    with engine.begin() as connection:
        changed = connection.execute(sa.text(statement)).rowcount
    engine.dispose()
    assert changed >= 1
    backup.refresh()
    assert backup.service == conftest.OUR_POSIX
    assert cloud.data_of(cloud.restore(backup)) == data
