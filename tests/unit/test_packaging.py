"""What an install brings and what the README points at (issue 17)."""
import configparser
import os
import re

ROOT = os.path.join(os.path.dirname(__file__), '..', '..')


def _read(*path):
    with open(os.path.join(ROOT, *path)) as f:
        return f.read()


def _setup_cfg():
    parser = configparser.ConfigParser(inline_comment_prefixes=('#',))
    parser.read(os.path.join(ROOT, 'setup.cfg'))
    return parser


def test_database_extras_bring_the_catalog_drivers():
    extras = _setup_cfg()['extras']
    assert 'psycopg2-binary' in extras['postgresql']
    assert 'PyMySQL' in extras['mysql']
    # The messages of chunkbackup.catalog.api name these extras.
    from chunkbackup.catalog import api
    assert set(api.EXTRAS.values()) == {'postgresql', 'mysql'}


def test_the_unit_and_sample_config_are_shipped():
    data_files = _setup_cfg()['files']['data_files']
    for path in ('etc/chunkbackup/chunkbackup.conf.sample',
                 'etc/systemd/chunkbackup-backup.service'):
        assert path in data_files
        assert os.path.exists(os.path.join(ROOT, path))


def test_the_systemd_unit_runs_the_service_and_waits_for_its_shutdown():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read_string(_read('etc', 'systemd', 'chunkbackup-backup.service'))
    service = unit['Service']
    assert re.search(r'/chunkbackup-backup --config-file /etc/chunkbackup/',
                     service['ExecStart'])
    assert 'HUP' in service['ExecReload']
    from chunkbackup import service as backup_service
    # The default grace period, then the cancellation, then the margin.
    needed = 60 + backup_service.CANCEL_WAIT + backup_service.SHUTDOWN_MARGIN
    assert int(service['TimeoutStopSec']) >= needed
    assert unit['Install']['WantedBy'] == 'multi-user.target'


def test_readme_links_stay_inside_the_repository():
    readme = _read('README.md')
    targets = re.findall(r'\]\(([^)]+)\)', readme)
    local = [t for t in targets if not re.match(r'^[a-z]+://', t)]
    assert 'doc/format.md' in local
    assert 'etc/systemd/chunkbackup-backup.service' in local
    assert 'etc/chunkbackup/chunkbackup.conf.sample' in local
    for target in local:
        path = target.split('#')[0]
        assert not path.startswith(('/', '..')), target
        resolved = os.path.realpath(os.path.join(ROOT, path))
        assert resolved.startswith(os.path.realpath(ROOT) + os.sep), target
        assert os.path.exists(resolved), target
    assert '../shared' not in readme and 'shared/' not in readme


def test_the_quick_start_volume_is_ignored():
    quickstart = _read('README.md').split('<!-- quickstart -->')[1]
    assert 'disk.img' in quickstart
    ignored = _read('.gitignore').split()
    assert '/disk.img' in ignored or 'disk.img' in ignored


def test_format_docstrings_cite_doc_format():
    for module in ('backupformat.py', 'chunked.py', 'compression.py'):
        assert 'doc/format.md' in _read('chunkbackup', module), module
