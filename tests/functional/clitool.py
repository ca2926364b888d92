"""Running the real ``chunkbackup`` command in tests."""
import contextlib
import json
import os
import subprocess
import sys

COMMAND = os.path.join(os.path.dirname(sys.executable), 'chunkbackup')


KiB = 1024

# Runs a command and writes the peak RSS of its process tree (what
# getrusage(RUSAGE_CHILDREN) says once it was waited for) to argv[1].
_MEASURE = '''
import json, resource, subprocess, sys
rc = subprocess.call(sys.argv[2:])
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], 'w') as f:
    json.dump({'rc': rc, 'maxrss_kib': usage.ru_maxrss}, f)
sys.exit(rc)
'''


# The settings of every Cli's config file (small objects and blocks, so
# tests stay quick), also applied by in_process().
SETTINGS = [('backup_posix', 'object_size', 262144),
            ('chunkbackup', 'sha_block_size', 16384)]


class Cli:
    """Runs ``chunkbackup`` in a subprocess with its own config file."""

    def __init__(self, tmp_path, database_url=None):
        self.tmp = tmp_path
        self.home = tmp_path / 'home'
        self.home.mkdir(exist_ok=True)
        self.config = tmp_path / 'chunkbackup.conf'
        lines = ['[backup_posix]', 'path = %s' % (tmp_path / 'store')]
        for group, name, value in SETTINGS:
            lines += ['[%s]' % group, '%s = %s' % (name, value)]
        if database_url:
            lines += ['[database]', 'connection = %s' % database_url]
        self.config.write_text('\n'.join(lines) + '\n')
        # More environment for the command (TZ, PYTHONPATH...).
        self.extra_env = {}

    def env(self):
        env = dict(os.environ)
        env['HOME'] = str(self.home)
        env['XDG_DATA_HOME'] = str(self.home / 'data')
        env.update(self.extra_env)
        return env

    def command(self, *args, config=True):
        # The installed console script, as a user runs it.
        cmd = [COMMAND] if os.path.exists(COMMAND) else [
            sys.executable, '-m', 'chunkbackup.cmd.cli']
        if config:
            cmd += ['--config-file', str(self.config)]
        return cmd + list(args)

    def popen(self, *args):
        return subprocess.Popen(self.command(*args), env=self.env(),
                                stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    def run(self, *args, config=True, check=True):
        result = subprocess.run(self.command(*args, config=config),
                                capture_output=True, text=True,
                                env=self.env(), timeout=300)
        if check and result.returncode != 0:
            raise AssertionError('chunkbackup %s failed (%d): %s%s' % (
                ' '.join(args), result.returncode, result.stdout,
                result.stderr))
        return result

    def measured(self, *args, limit):
        """Run a command (JSON output); its output and peak RSS in bytes.

        Fails when the command fails or its peak RSS reaches ``limit``.
        """
        report = self.tmp / 'rss.json'
        cmd = [sys.executable, '-c', _MEASURE, str(report)] + self.command(
            *(args + ('--format', 'json')))
        result = subprocess.run(cmd, capture_output=True, text=True,
                                env=self.env(), timeout=1800)
        assert result.returncode == 0, 'chunkbackup %s failed: %s' % (
            ' '.join(args), result.stderr)
        rss = json.loads(report.read_text())['maxrss_kib'] * KiB
        assert rss < limit, 'chunkbackup %s peaked at %.0f MiB RSS' % (
            args[0], rss / 2 ** 20)
        return json.loads(result.stdout), rss

    def json(self, *args):
        return json.loads(self.run(*(args + ('--format', 'json'))).stdout)

    def fails(self, *args, config=True):
        result = self.run(*args, config=config, check=False)
        assert result.returncode != 0, result.stdout
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr  # one clear line, no traceback
        assert 'Traceback' not in result.stderr
        return lines[0]


@contextlib.contextmanager
def in_process(tmp_path, driver=None):
    """The catalog and configuration a ``Cli(tmp_path)`` uses, opened in
    this process: for the checks around the commands under test, which
    would otherwise each pay a process start.
    """
    from oslo_config import cfg

    from chunkbackup.catalog import api
    from chunkbackup.drivers import posix  # noqa: F401 (its options)

    conf = cfg.CONF
    overrides = SETTINGS + [('backup_posix', 'path', str(tmp_path / 'store'))]
    if driver:
        overrides.append(('chunkbackup', 'driver', driver))
    for group, name, value in overrides:
        conf.set_override(name, value, group)
    catalog = api.Catalog('sqlite:///%s' % (
        tmp_path / 'home' / 'data' / 'chunkbackup' / 'catalog.sqlite'))
    try:
        yield catalog
    finally:
        catalog.dispose()
        for group, name, _value in overrides:
            conf.clear_override(name, group)


def records(catalog) -> list:
    """The catalog's backups, oldest first, as the checks read them."""
    from chunkbackup.catalog import api

    with catalog.session() as session:
        return [{'id': b.id, 'status': b.status, 'parent_id': b.parent_id,
                 'created_at': b.created_at, 'container': b.container,
                 'object_prefix': b.service_metadata}
                for b in api.list_backups(session)]
