"""A real OpenStack Swift "all in one" on 127.0.0.1 for the functional tests.

pip ``swift`` is installed into its own virtualenv (its eventlet never enters
the test process). Four servers run, one process each (``workers = 0``):
proxy, account, container and object, with one-replica rings on one device
under a temporary data directory. Auth is tempauth v1 with fernet tokens (no
memcached); the proxy also serves the S3 API (s3api middleware) on the same
port, so the S3 driver's tests use this server too.

Use ``running_swift()``; it yields a ``SwiftServer`` and stops exactly the
processes it started.
"""
import base64
import contextlib
import getpass
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

from tests.functional import servers

PACKAGES = ['swift>=2.38.0,<2.39']
SERVER_NAMES = ('account', 'container', 'object', 'proxy')
START_TIMEOUT = 60.0

# One python call builds the three rings (~0.3 s; nine swift-ring-builder
# calls take ~3 s). Part power 8, one replica, one device. Ports are baked
# into the rings, so they are built after the ports are chosen.
RING_SCRIPT = """
import os, sys
from swift.common.ring import RingBuilder
etc = sys.argv[1]
for name, port in zip(('account', 'container', 'object'), sys.argv[2:]):
    b = RingBuilder(8, 1, 1)
    b.add_dev({'id': 0, 'region': 1, 'zone': 1, 'ip': '127.0.0.1',
               'port': int(port), 'device': 'd1', 'weight': 1.0})
    b.rebalance()
    b.get_ring().save(os.path.join(etc, name + '.ring.gz'))
"""

COMMON_CONF = """\
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {port}
swift_dir = {etc}
devices = {devices}
mount_check = false
disable_fallocate = true
workers = 0
user = {user}
# No /dev/log here: syslog goes to a UDP port nobody reads, and the servers
# run with -v so that everything is also written to their log files.
log_udp_host = 127.0.0.1
log_udp_port = {udp_port}
log_level = INFO
"""

BACKEND_CONF = """
[pipeline:main]
pipeline = healthcheck {name}-server

[app:{name}-server]
use = egg:swift#{name}

[filter:healthcheck]
use = egg:swift#healthcheck
"""

PROXY_CONF = """
[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging listing_formats \
bulk tempurl s3api tempauth copy slo dlo versioned_writes proxy-logging \
proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
allow_account_management = true
node_timeout = 20
conn_timeout = 2

[filter:tempauth]
use = egg:swift#tempauth
fernet_key_k1 = {fernet_key}
active_fernet_key_id = k1
token_life = 86400
user_admin_admin = admin .admin .reseller_admin
user_test_tester = testing .admin
user_test2_tester2 = testing2 .admin

[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:bulk]
use = egg:swift#bulk
[filter:tempurl]
use = egg:swift#tempurl
[filter:s3api]
use = egg:swift#s3api
location = us-east-1
[filter:slo]
use = egg:swift#slo
[filter:dlo]
use = egg:swift#dlo
[filter:copy]
use = egg:swift#copy
[filter:versioned_writes]
use = egg:swift#versioned_writes
"""

# The servers read the hash settings from swift_dir, but the storage
# policies from /etc/swift/swift.conf, at import time (swift 2.38's wsgi
# does not reload them after set_swift_dir). Without that file there is
# exactly one policy, Policy-0; extra policies here would be ignored.
SWIFT_CONF = """\
[swift-hash]
swift_hash_path_prefix = chunkbackuptest
swift_hash_path_suffix = chunkbackuptest

[storage-policy:0]
name = Policy-0
default = yes
"""


def _distinct_ports(count: int) -> list:
    ports = set()
    while len(ports) < count:
        ports.add(servers.free_port())
    return list(ports)


class SwiftServer:
    """A running Swift all-in-one; credentials and proxy control."""

    user = 'test:tester'
    key = 'testing'
    account = 'AUTH_test'
    s3_access_key = 'test:tester'
    s3_secret_key = 'testing'
    s3_region = 'us-east-1'

    def __init__(self, bindir: str, data_dir: str):
        self.bindir = bindir
        self.data_dir = data_dir
        self.etc_dir = os.path.join(data_dir, 'etc')
        self.log_dir = os.path.join(data_dir, 'log')
        self.devices_dir = os.path.join(data_dir, 'node')
        (self.port, self.account_port, self.container_port,
         self.object_port, self.udp_port) = _distinct_ports(5)
        self.procs = {}

    # Addresses ----------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return 'http://127.0.0.1:%d' % self.port

    @property
    def auth_url(self) -> str:
        return self.endpoint + '/auth/v1.0'

    @property
    def storage_url(self) -> str:
        return '%s/v1/%s' % (self.endpoint, self.account)

    @property
    def s3_endpoint(self) -> str:
        return self.endpoint

    def _ports(self):
        return {'account': self.account_port,
                'container': self.container_port,
                'object': self.object_port, 'proxy': self.port}

    def conf_path(self, name: str) -> str:
        return os.path.join(self.etc_dir, '%s-server.conf' % name)

    def log_path(self, name: str) -> str:
        return os.path.join(self.log_dir, '%s.log' % name)

    def logs(self) -> str:
        """The tail of every server's log, for failure messages."""
        return '\n'.join('--- %s-server log:\n%s' % (
            name, servers.tail(self.log_path(name), 3000))
            for name in SERVER_NAMES)

    # Setup --------------------------------------------------------------

    def configure(self) -> None:
        for d in (self.etc_dir, self.log_dir,
                  os.path.join(self.devices_dir, 'd1')):
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(self.etc_dir, 'swift.conf'), 'w') as f:
            f.write(SWIFT_CONF)
        fernet_key = base64.urlsafe_b64encode(os.urandom(32)).decode()
        for name, port in self._ports().items():
            text = COMMON_CONF.format(port=port, etc=self.etc_dir,
                                      devices=self.devices_dir,
                                      user=getpass.getuser(),
                                      udp_port=self.udp_port)
            if name == 'proxy':
                text += PROXY_CONF.format(fernet_key=fernet_key)
            else:
                text += BACKEND_CONF.format(name=name)
            with open(self.conf_path(name), 'w') as f:
                f.write(text)
        result = subprocess.run(
            [os.path.join(self.bindir, 'python'), '-c', RING_SCRIPT,
             self.etc_dir, str(self.account_port), str(self.container_port),
             str(self.object_port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if result.returncode:
            raise servers.ServerError('building the Swift rings failed:\n%s'
                                      % result.stdout[-4000:])

    # Processes ----------------------------------------------------------

    def _start_one(self, name: str) -> None:
        cmd = [os.path.join(self.bindir, 'swift-%s-server' % name),
               self.conf_path(name), '-v']
        self.procs[name] = servers.start(cmd, self.log_path(name))

    def _wait_ready(self, names) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        try:
            for name in names:
                servers.wait_for_port(self._ports()[name], self.procs[name],
                                      self.log_path(name),
                                      max(1.0, deadline - time.monotonic()))
        except servers.ServerError as e:
            raise servers.ServerError('%s\n%s' % (e, self.logs()))
        last = None
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise servers.ServerError(
                        'swift-%s-server exited with %s\n%s'
                        % (name, proc.returncode, self.logs()))
            last = self.probe()
            if last is None:
                return
            time.sleep(0.2)
        raise servers.ServerError('Swift did not answer within %ss (last '
                                  'probe: %s)\n%s'
                                  % (START_TIMEOUT, last, self.logs()))

    def probe(self):
        """None when auth, account, container and object paths work."""
        try:
            resp = urllib.request.urlopen(urllib.request.Request(
                self.auth_url, headers={'X-Auth-User': self.user,
                                        'X-Auth-Key': self.key}), timeout=5)
            token = resp.headers['X-Auth-Token']
            url = resp.headers['X-Storage-Url']
            probe = url + '/.probe'
            for method, target, body in (('PUT', probe, None),
                                         ('PUT', probe + '/o', b'x'),
                                         ('DELETE', probe + '/o', None),
                                         ('DELETE', probe, None)):
                urllib.request.urlopen(urllib.request.Request(
                    target, data=body, method=method,
                    headers={'X-Auth-Token': token}), timeout=5).close()
        except (OSError, urllib.error.URLError) as e:
            return e
        return None

    def start(self) -> None:
        self.configure()
        for name in SERVER_NAMES:
            self._start_one(name)
        self._wait_ready(SERVER_NAMES)

    def stop(self) -> None:
        for name in reversed(SERVER_NAMES):
            proc = self.procs.pop(name, None)
            if proc is not None:
                servers.stop(proc)

    def stop_proxy(self) -> None:
        """Stop only the proxy: clients then meet refused connections."""
        proc = self.procs.pop('proxy', None)
        if proc is not None:
            servers.stop(proc)

    def start_proxy(self) -> None:
        """Start the proxy again on the same port and wait for it."""
        if 'proxy' in self.procs and self.procs['proxy'].poll() is None:
            return
        self._start_one('proxy')
        self._wait_ready(['proxy'])


@contextlib.contextmanager
def running_swift():
    """Install (cached), configure and start Swift; yield a SwiftServer."""
    bindir = servers.server_venv('swift', PACKAGES)
    with tempfile.TemporaryDirectory(prefix='chunkbackup-swift-') as data:
        server = SwiftServer(bindir, data)
        try:
            server.start()
            yield server
        finally:
            server.stop()
