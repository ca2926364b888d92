"""qemu-nbd serving a disk image on a unix socket or on 127.0.0.1.

The tools come from Debian's packages (qemu-utils: qemu-nbd, qemu-img,
qemu-io; libnbd-bin: nbdinfo). When one is missing the tests that need it
fail with the command that installs it; they never skip.
"""
import contextlib
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time

from tests.functional import servers

INSTALL = 'apt-get update && apt-get install -y qemu-utils libnbd-bin'
TOOLS = ('qemu-nbd', 'qemu-img', 'qemu-io', 'nbdinfo')


@dataclasses.dataclass
class QemuNbd:
    url: str
    export: str
    image: str
    log_path: str
    proc: subprocess.Popen

    def stop(self) -> None:
        servers.stop(self.proc)


def missing_tools() -> list:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def run(*cmd: str) -> str:
    """Run a qemu/libnbd tool; its output, or ServerError with it."""
    result = subprocess.run(cmd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if result.returncode:
        raise servers.ServerError('%s exited %d:\n%s' % (
            ' '.join(cmd), result.returncode, result.stdout[-4000:]))
    return result.stdout


def qemu_io(image: str, fmt: str, *commands: str) -> None:
    """Run qemu-io commands, e.g. ``'write -P 0x41 0 1M'``, on an image."""
    args = ['qemu-io', '-f', fmt]
    for command in commands:
        args += ['-c', command]
    run(*(args + [image]))


def nbdinfo_map(url: str, context: str = 'base:allocation') -> list:
    """nbdinfo's extents of a meta context: [(offset, length, flags)]."""
    entries = json.loads(run('nbdinfo', '--json', '--map=' + context, url))
    return [(e['offset'], e['length'], e['type']) for e in entries]


def _wait_for_socket(path: str, proc, log_path: str,
                     timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        with contextlib.closing(socket.socket(socket.AF_UNIX)) as s:
            if s.connect_ex(path) == 0:
                return
        time.sleep(0.05)
    raise servers.ServerError(
        'qemu-nbd did not listen on %s (exit status %s); its log:\n%s'
        % (path, proc.poll(), servers.tail(log_path)))


@contextlib.contextmanager
def serving(image: str, fmt: str, export: str = 'vol', tcp: bool = False,
            writable: bool = False, bitmaps=(), extra=()):
    """Serve ``image`` with qemu-nbd; yield a QemuNbd; stop it."""
    if missing_tools():
        raise servers.ServerError('%s not installed: %s'
                                  % (', '.join(missing_tools()), INSTALL))
    root = tempfile.mkdtemp(prefix='chunkbackup-nbd-')
    log_path = os.path.join(root, 'qemu-nbd.log')
    # --persistent: serve connection after connection; --shared: several
    # at once (nbdinfo while a client is connected).
    cmd = ['qemu-nbd', '--persistent', '--shared=4', '-f', fmt, '-x', export]
    cmd += [] if writable else ['--read-only']
    for bitmap in bitmaps:
        cmd += ['-B', bitmap]
    if tcp:
        port = servers.free_port()
        cmd += ['--bind', '127.0.0.1', '--port', str(port)]
        url = 'nbd://127.0.0.1:%d/%s' % (port, export)
    else:
        path = os.path.join(root, 'nbd.sock')
        cmd += ['--socket', path]
        url = 'nbd+unix:///%s?socket=%s' % (export, path)
    proc = servers.start(cmd + list(extra) + [image], log_path)
    try:
        if tcp:
            servers.wait_for_port(port, proc, log_path, timeout=30)
        else:
            _wait_for_socket(path, proc, log_path)
        yield QemuNbd(url=url, export=export, image=image,
                      log_path=log_path, proc=proc)
    finally:
        servers.stop(proc)
        shutil.rmtree(root, ignore_errors=True)
