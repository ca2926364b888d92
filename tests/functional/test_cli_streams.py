"""Streams through the installed command: a volume from standard input,
a restore to standard output, a part of a volume (--offset/--length).
"""
import hashlib
import json
import os
import pty
import subprocess
import sys

import pytest

from chunkbackup.testing import volumes
from tests.functional import clitool
from tests.functional.clitool import Cli
from tests.functional import stores

KiB = 1024
MiB = 2 ** 20
BS = 16384


def _volume(tmp_path, size, seed, name='vol.img'):
    path = str(tmp_path / name)
    volumes.write_volume(path, size, 'mixed', seed=seed)
    with open(path, 'rb') as f:
        return path, f.read()


def _pipe_in(cli, data, *args):
    done = subprocess.run(cli.command(*args), input=data, env=cli.env(),
                          capture_output=True)
    return done.returncode, done.stdout, done.stderr.decode()


def _pipe_out(cli, *args):
    done = subprocess.run(cli.command(*args), env=cli.env(),
                          capture_output=True)
    return done.returncode, done.stdout, done.stderr.decode()


def _json_in(cli, data, *args):
    rc, out, err = _pipe_in(cli, data, '--format', 'json', *args)
    assert rc == 0, err
    return json.loads(out)


@pytest.mark.parametrize('driver', ['posix', 's3'])
def test_stdin_backups_and_stdout_restores_round_trip(tmp_path, request,
                                                      driver):
    cli = Cli(tmp_path)
    cli.spool_dir = tmp_path / 'spool'
    cli.spool_dir.mkdir()
    if driver != 'posix':
        lines = ['[chunkbackup]', 'driver = %s' % driver,
                 'sha_block_size = %d' % BS]
        lines += stores.store_lines(driver, request, tmp_path)
        lines.append('object_size = 262144')
        cli.config.write_text('\n'.join(lines) + '\n')
    cli.config.write_text(cli.config.read_text().replace(
        '[chunkbackup]\n', '[chunkbackup]\ntemp_dir = %s\n' % cli.spool_dir))
    path, v0 = _volume(tmp_path, 3 * MiB + 5 * KiB, seed=1)
    full = _json_in(cli, v0, 'backup-create', '-', '--size', str(len(v0)),
                    '--volume-id', 'piped')
    assert full['volume_id'] == 'piped' and full['status'] == 'available'
    assert full['stats']['volume_size'] == len(v0)
    v1 = bytearray(v0)
    v1[MiB:MiB + 3 * BS] = os.urandom(3 * BS)
    incr = _json_in(cli, bytes(v1), 'backup-create', '-', '--size',
                    str(len(v1)), '--volume-id', 'piped', '--incremental')
    assert incr['parent_id'] == full['id']
    # Little stored: the spool's zeros were holes, the parent compared.
    assert incr['stats']['stored_logical_bytes'] < MiB
    for backup, data in ((full, v0), (incr, bytes(v1))):
        rc, out, err = _pipe_out(cli, 'backup-restore', backup['id'], '-')
        assert rc == 0, err
        assert out == data, 'standard output is not the volume'
        assert 'standard output' in err
    # Parts: to standard output and to a file.
    rc, out, err = _pipe_out(cli, 'backup-restore', incr['id'], '-',
                             '--offset', '1M', '--length', '100000')
    assert rc == 0, err
    assert out == bytes(v1[MiB:MiB + 100000])
    part = str(tmp_path / 'part.img')
    cli.json('backup-restore', incr['id'], part, '--offset', '12345',
             '--length', '2M')
    with open(part, 'rb') as f:
        assert f.read() == bytes(v1[12345:12345 + 2 * MiB])
    # No spool or restore file is left behind.
    assert not [n for n in os.listdir(cli.spool_dir)
                if n.startswith('chunkbackup-')]


def test_stream_mistakes_are_one_line_and_record_nothing(tmp_path):
    cli = Cli(tmp_path)
    path, v0 = _volume(tmp_path, MiB, seed=2)
    cases = [
        (v0, ('backup-create', '-', '--volume-id', 'v'), 'needs --size'),
        (v0, ('backup-create', '-', '--size', '1M'), 'needs --volume-id'),
        (v0[:1000], ('backup-create', '-', '--size', '1M', '--volume-id',
                     'v'), 'ended after 1000 bytes'),
        (v0 + b'x', ('backup-create', '-', '--size', '1M', '--volume-id',
                     'v'), 'holds more than the --size'),
        (v0, ('backup-create', '-', '--size', '1Q', '--volume-id', 'v'),
         'is not a size'),
        (b'', ('backup-create', path, '--size', '1M'), '--size is for'),
    ]
    for data, args, expected in cases:
        rc, out, err = _pipe_in(cli, data, *args)
        assert rc != 0, args
        lines = err.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (args, err)
    assert cli.json('backup-list') == []
    backup = cli.json('backup-create', path)
    rc, out, err = _pipe_out(cli, 'backup-restore', backup['id'], '-',
                             '--offset', '512K', '--length', '1M')
    assert rc != 0 and out == b''
    assert 'not inside the volume of %d bytes' % MiB in err, err
    rc, out, err = _pipe_out(cli, 'backup-restore', backup['id'], '-',
                             '--offset', '4K')
    assert rc != 0 and '--offset needs --length' in err, err


def test_restore_to_a_terminal_is_refused(tmp_path):
    cli = Cli(tmp_path)
    path, v0 = _volume(tmp_path, 256 * KiB, seed=3)
    backup = cli.json('backup-create', path)
    controller, terminal = pty.openpty()
    try:
        done = subprocess.run(cli.command('backup-restore', backup['id'],
                                          '-'), env=cli.env(),
                              stdout=terminal, stderr=subprocess.PIPE)
    finally:
        os.close(terminal)
        os.close(controller)
    assert done.returncode != 0
    assert b'standard output is a terminal' in done.stderr


def _measured(cli, args, stdin, stdout):
    """Peak RSS (bytes) of the command, stdin and stdout redirected."""
    report = cli.tmp / 'rss-stream.json'
    cmd = [sys.executable, '-c', clitool._MEASURE, str(report)] + \
        cli.command(*args)
    with open(stdin, 'rb') as source, open(stdout, 'wb') as target:
        rc = subprocess.call(cmd, stdin=source, stdout=target,
                             env=cli.env(), timeout=1800)
    assert rc == 0, args
    return json.loads(report.read_text())['maxrss_kib'] * KiB


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(MiB), b''):
            digest.update(chunk)
    return digest.hexdigest()


def test_stream_memory_is_bounded(tmp_path):
    """A 320 MiB volume through both pipes, each child under 256 MiB."""
    cli = Cli(tmp_path)
    size = 320 * MiB
    path = str(tmp_path / 'big.img')
    volumes.write_volume(path, size, 'random', seed=4)
    peak_in = _measured(cli, ('backup-create', '-', '--size', str(size),
                              '--volume-id', 'big'), path, os.devnull)
    [backup] = cli.json('backup-list')
    out = str(tmp_path / 'out.img')
    peak_out = _measured(cli, ('backup-restore', backup['id'], '-'),
                         os.devnull, out)
    assert _sha256(out) == _sha256(path)
    for what, peak in (('stdin backup', peak_in),
                       ('stdout restore', peak_out)):
        assert peak < 256 * MiB, '%s peaked at %.0f MiB' % (what,
                                                            peak / MiB)
