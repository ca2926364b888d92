"""A real OpenStack Barbican API on 127.0.0.1 for the functional tests.

pip ``barbican`` is installed into its own virtualenv. One process serves
the API (wsgiref, single-threaded) with an SQLite database created at start
(``db_auto_create``) and the ``simple_crypto`` plugin under a random KEK.
No keystone: /v1 is Barbican's own ``barbican_api`` paste pipeline, whose
``unauthenticated-context`` filter takes the project from ``X-Project-Id``
(what chunkbackup's standalone key manager credentials send).

Use ``running_barbican()``; it yields a ``BarbicanServer`` and stops
exactly the process it started.
"""
import base64
import contextlib
import os
import tempfile
import time
import urllib.error
import urllib.request

from tests.functional import servers

PACKAGES = ['barbican>=23.0.0,<24']
START_TIMEOUT = 90.0

BARBICAN_CONF = """\
[DEFAULT]
host_href = http://127.0.0.1:{port}
db_auto_create = true
debug = false
log_file = {data}/barbican-oslo.log

[database]
connection = sqlite:///{data}/barbican.sqlite

[secretstore]
enabled_secretstore_plugins = store_crypto

[crypto]
enabled_crypto_plugins = simple_crypto

[simple_crypto_plugin]
kek = {kek}

[oslo_policy]
enforce_scope = false
enforce_new_defaults = false
"""

# Barbican's shipped paste file sends /v1 through keystonemiddleware; this
# one uses its unauthenticated pipeline instead.
PASTE_INI = """\
[composite:main]
use = egg:Paste#urlmap
/: barbican_version
/v1: barbican_api

[pipeline:barbican_version]
pipeline = request_id versionapp

[pipeline:barbican_api]
pipeline = request_id unauthenticated-context microversion apiapp

[app:apiapp]
paste.app_factory = barbican.api.app:create_main_app

[app:versionapp]
paste.app_factory = barbican.api.app:create_version_app

[filter:request_id]
paste.filter_factory = oslo_middleware.request_id:RequestId.factory

[filter:unauthenticated-context]
paste.filter_factory = \
barbican.api.middleware.context:UnauthenticatedContextMiddleware.factory

[filter:microversion]
paste.filter_factory = \
barbican.api.middleware.microversion:MicroversionMiddleware.factory
"""

# Run inside Barbican's virtualenv: parse our config (barbican parses
# the default locations on import), load the paste app, serve it.
SERVE = """
import sys
from wsgiref import simple_server
from barbican.common import config
config.parse_args(config.CONF, args=['--config-file', sys.argv[1]])
from paste import deploy
import uuid
paste_app = deploy.loadapp('config:' + sys.argv[2])


def app(environ, start_response):
    # Barbican 23's unauthenticated-context filter reads req.request_id,
    # which only keystonemiddleware's pipeline sets (else every request is
    # a 500): give each request one, as a webob ad hoc attribute.
    environ.setdefault('webob.adhoc_attrs', {}).setdefault(
        'request_id', 'req-' + str(uuid.uuid4()))
    return paste_app(environ, start_response)


class Quiet(simple_server.WSGIRequestHandler):
    def log_message(self, fmt, *args):
        sys.stderr.write(fmt % args + '\\n')

server = simple_server.make_server('127.0.0.1', int(sys.argv[3]), app,
                                   handler_class=Quiet)
sys.stderr.write('listening\\n')
server.serve_forever()
"""


class BarbicanServer:
    def __init__(self, bindir: str, data_dir: str) -> None:
        self.bindir = bindir
        self.data = data_dir
        self.port = servers.free_port()
        self.proc = None
        self.log_path = os.path.join(data_dir, 'barbican.log')

    @property
    def endpoint(self) -> str:
        return 'http://127.0.0.1:%d' % self.port

    def start(self) -> None:
        conf = os.path.join(self.data, 'barbican.conf')
        paste = os.path.join(self.data, 'barbican-api-paste.ini')
        with open(conf, 'w') as f:
            f.write(BARBICAN_CONF.format(
                port=self.port, data=self.data,
                kek=base64.b64encode(os.urandom(32)).decode()))
        with open(paste, 'w') as f:
            f.write(PASTE_INI)
        env = dict(os.environ, HOME=self.data)  # no ~/.barbican of the user
        self.proc = servers.start(
            [os.path.join(self.bindir, 'python'), '-c', SERVE, conf, paste,
             str(self.port)], self.log_path, env=env)
        servers.wait_for_port(self.port, self.proc, self.log_path,
                              START_TIMEOUT)
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Listening is not enough: ask /v1 until it answers."""
        deadline = time.monotonic() + START_TIMEOUT
        last = None
        while time.monotonic() < deadline:
            request = urllib.request.Request(
                self.endpoint + '/v1/secrets',
                headers={'X-Project-Id': 'probe', 'Accept':
                         'application/json'})
            try:
                with urllib.request.urlopen(request, timeout=5) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError) as e:
                last = e
            time.sleep(0.2)
        raise servers.ServerError('Barbican did not answer within %ss (last '
                                  'error %s); its log:\n%s'
                                  % (START_TIMEOUT, last,
                                     servers.tail(self.log_path)))

    def stop(self) -> None:
        if self.proc is not None:
            servers.stop(self.proc)


@contextlib.contextmanager
def running_barbican():
    """Install (cached), configure and start Barbican; yield the server."""
    bindir = servers.server_venv('barbican', PACKAGES)
    with tempfile.TemporaryDirectory(prefix='chunkbackup-barbican-') as data:
        server = BarbicanServer(bindir, data)
        try:
            server.start()
            yield server
        finally:
            server.stop()
