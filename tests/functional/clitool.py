"""Running the real ``chunkbackup`` command in tests."""
import json
import os
import subprocess
import sys


class Cli:
    """Runs ``chunkbackup`` in a subprocess with its own config file."""

    def __init__(self, tmp_path, database_url=None):
        self.tmp = tmp_path
        self.home = tmp_path / 'home'
        self.home.mkdir(exist_ok=True)
        self.config = tmp_path / 'chunkbackup.conf'
        lines = ['[backup_posix]', 'path = %s' % (tmp_path / 'store'),
                 'object_size = 262144', '[chunkbackup]',
                 'sha_block_size = 16384']
        if database_url:
            lines += ['[database]', 'connection = %s' % database_url]
        self.config.write_text('\n'.join(lines) + '\n')

    def env(self):
        env = dict(os.environ)
        env['HOME'] = str(self.home)
        env['XDG_DATA_HOME'] = str(self.home / 'data')
        return env

    def command(self, *args, config=True):
        cmd = [sys.executable, '-m', 'chunkbackup.cmd.cli']
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

    def json(self, *args):
        return json.loads(self.run(*(args + ('--format', 'json'))).stdout)

    def fails(self, *args, config=True):
        result = self.run(*args, config=config, check=False)
        assert result.returncode != 0, result.stdout
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr  # one clear line, no traceback
        assert 'Traceback' not in result.stderr
        return lines[0]
