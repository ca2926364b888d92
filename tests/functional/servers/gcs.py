"""The Google Cloud Storage JSON API emulator (pip gcp-storage-emulator).

It runs from its own virtualenv on 127.0.0.1 with a data directory of its
own, so nothing it stores outlives the test session. It is pure Python and
single-threaded; the google-cloud-storage client talks to it with
AnonymousCredentials and ``client_options={'api_endpoint': endpoint}``.
"""
import contextlib
import dataclasses
import os
import shutil
import tempfile
import time
import urllib.request

from tests.functional import servers

PACKAGES = ['gcp-storage-emulator']
PROJECT = 'test-project'


@dataclasses.dataclass
class GcsServer:
    endpoint: str
    project: str
    log_path: str
    data_dir: str
    port: int


def _wait_for_http(endpoint: str, proc, log_path: str,
                   timeout: float = 30.0) -> None:
    """The port is open before the app answers: wait for its 'OK'."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(endpoint + '/', timeout=2) as r:
                if r.read() == b'OK':
                    return
        except OSError as e:
            last = e
        time.sleep(0.1)
    raise servers.ServerError(
        'the GCS emulator at %s did not answer (%s; exit status %s); its '
        'log:\n%s' % (endpoint, last, proc.poll(), servers.tail(log_path)))


@contextlib.contextmanager
def running_gcs():
    """Start gcp-storage-emulator; yield a GcsServer; stop it."""
    bindir = servers.server_venv('gcs', PACKAGES)
    root = tempfile.mkdtemp(prefix='chunkbackup-gcs-')
    data_dir = os.path.join(root, 'data')
    log_path = os.path.join(root, 'emulator.log')
    port = servers.free_port()
    endpoint = 'http://127.0.0.1:%d' % port
    # --data-dir is a global option (before the subcommand), and absolute.
    cmd = [os.path.join(bindir, 'gcp-storage-emulator'),
           '--data-dir', data_dir, 'start',
           '--host', '127.0.0.1', '--port', str(port), '--quiet']
    env = dict(os.environ)
    # The emulator must not see an emulator setting meant for clients.
    env.pop('STORAGE_EMULATOR_HOST', None)
    proc = servers.start(cmd, log_path, env=env)
    try:
        servers.wait_for_port(port, proc, log_path, timeout=30)
        _wait_for_http(endpoint, proc, log_path)
        yield GcsServer(endpoint=endpoint, project=PROJECT,
                        log_path=log_path, data_dir=data_dir, port=port)
    finally:
        servers.stop(proc)
        shutil.rmtree(root, ignore_errors=True)
