"""Real servers on 127.0.0.1 for the functional tests.

Each server is installed into its own virtualenv (its dependencies, such as
Swift's eventlet, never enter the test process) under
``$CHUNKBACKUP_SERVERS_DIR`` (tox sets it to .tox/servers), reused while its
package list is unchanged. A server that cannot be installed or started
fails the tests that need it: it never makes them skip.
"""
import contextlib
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import venv

SERVERS_DIR = os.environ.get('CHUNKBACKUP_SERVERS_DIR') or os.path.join(
    tempfile.gettempdir(), 'chunkbackup-servers')


class ServerError(RuntimeError):
    """A test server could not be installed or started."""


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def server_venv(name: str, packages: list) -> str:
    """A virtualenv with ``packages`` installed; returns its bin directory.

    Reused when it was built from the same package list; rebuilt otherwise.
    """
    key = hashlib.sha256(repr(sorted(packages)).encode()).hexdigest()[:12]
    root = os.path.join(SERVERS_DIR, '%s-%s' % (name, key))
    bindir = os.path.join(root, 'bin')
    marker = os.path.join(root, '.installed')
    if os.path.exists(marker):
        return bindir
    os.makedirs(SERVERS_DIR, exist_ok=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(root)
    cmd = [os.path.join(bindir, 'python'), '-m', 'pip', 'install', '-q',
           '--disable-pip-version-check'] + list(packages)
    result = subprocess.run(cmd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if result.returncode:
        raise ServerError('installing %s for the %s test server failed:\n%s'
                          % (' '.join(packages), name, result.stdout[-4000:]))
    open(marker, 'w').close()
    return bindir


def wait_for_port(port: int, proc: subprocess.Popen, log_path: str,
                  timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError('server exited with %s before listening on '
                              '%d; its log:\n%s' % (proc.returncode, port,
                                                    tail(log_path)))
        with contextlib.closing(socket.socket()) as s:
            s.settimeout(0.5)
            if s.connect_ex(('127.0.0.1', port)) == 0:
                return
        time.sleep(0.1)
    raise ServerError('server did not listen on %d within %ss; its log:\n%s'
                      % (port, timeout, tail(log_path)))


def tail(path: str, limit: int = 4000) -> str:
    try:
        with open(path, 'rb') as f:
            return f.read()[-limit:].decode('utf-8', 'replace')
    except OSError as e:
        return '(no log: %s)' % e


def start(cmd: list, log_path: str, env: dict = None) -> subprocess.Popen:
    """Start a server process in its own process group, logging to a file."""
    log = open(log_path, 'ab')
    try:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    finally:
        log.close()


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop exactly the process group we started."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, 15)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait(timeout)
    except ProcessLookupError:
        pass


PYTHON = sys.executable
