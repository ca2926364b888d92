"""A store that stalls or trickles fails a backup in bounded time, with one
line naming the store, the object and the option; a slow but steady link
still finishes.

The real Swift and S3 (moto) servers sit behind a stalling proxy
(servers/stallproxy.py). The client libraries' own timeouts are per socket
read: without [chunkbackup] storage_request_timeout and storage_min_rate, a
server that answers a byte a second, or never, holds backup-create for
ever. The bounds asserted are generous multiples of the configured
deadlines: correctness, not speed.
"""
import hashlib
import subprocess
import time
import urllib.parse
import uuid

import pytest

from chunkbackup.testing import volumes
from tests.functional.clitool import Cli
from tests.functional.servers import stallproxy

MiB = 2 ** 20
KiB = 1024
DEADLINE = 5
BOUND = 60  # seconds a stalled backup-create may take at most
# The PUT of a data object (not a container, not _sha256file/_metadata).
DATA_PUT = rb'PUT /\S*_backup_\S*-\d{5} '


@pytest.fixture(params=['swift', 's3'])
def store(request):
    """(store name, upstream URL, config lines with {url} for the proxy)."""
    if request.param == 'swift':
        server = request.getfixturevalue('swift_server')
        lines = ['[backup_swift]', 'auth_mode = single_user',
                 'auth_url = {url}/auth/v1.0', 'auth_version = 1',
                 'user = %s' % server.user, 'key = %s' % server.key,
                 'container = cbstall-%s' % uuid.uuid4().hex[:10],
                 'object_size = 131072']
        return 'swift', server.endpoint, lines
    server = request.getfixturevalue('moto_server')
    lines = ['[backup_s3]', 'endpoint_url = {url}',
             'access_key = %s' % server.access_key,
             'secret_key = %s' % server.secret_key,
             'region = %s' % server.region, 'addressing_style = path',
             'bucket = cbstall-%s' % uuid.uuid4().hex[:10],
             'object_size = 131072']
    return 's3', server.endpoint, lines


@pytest.fixture
def proxy(store):
    upstream = urllib.parse.urlsplit(store[1])
    with stallproxy.StallProxy(upstream.hostname, upstream.port) as p:
        yield p


def _cli(tmp_path, store, proxy, **engine):
    name, _upstream, lines = store
    cli = Cli(tmp_path)
    # Four objects, all in flight at once: one round of stalled puts.
    engine = dict({'driver': name, 'sha_block_size': 16384,
                   'objects_in_flight': 4,
                   'storage_retry_backoff': 0.01,
                   'storage_retry_max_delay': 0.05,
                   'cancel_check_interval': 0}, **engine)
    config = ['[chunkbackup]'] + ['%s = %s' % item for item in
                                  engine.items()]
    config += [line.format(url=proxy.url) for line in lines]
    cli.config.write_text('\n'.join(config) + '\n')
    return cli


def _volume(tmp_path, size=4 * 131072):
    path = str(tmp_path / 'disk.img')
    volumes.write_volume(path, size, 'random', seed=7)
    return path


def _fails_in_bounded_time(cli, vol):
    start = time.monotonic()
    try:
        result = subprocess.run(cli.command('backup-create', vol),
                                capture_output=True, text=True,
                                env=cli.env(), timeout=BOUND)
    except subprocess.TimeoutExpired:
        pytest.fail('backup-create against a stalled store still ran after '
                    '%ds' % BOUND)
    took = time.monotonic() - start
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and 'Traceback' not in result.stderr, \
        result.stderr
    return lines[0], took


def _names_store_and_object(line, store_name):
    assert 'put' in line and store_name in line, line
    assert '_backup_' in line and 'volume_' in line, line  # the object


def test_a_trickling_answer_fails_on_the_request_deadline(
        tmp_path, store, proxy):
    # A byte a second: every read of the client library succeeds.
    cli = _cli(tmp_path, store, proxy, storage_request_timeout=DEADLINE,
               storage_min_rate=0)
    proxy.set(stallproxy.TRICKLE, rate=1, trigger=DATA_PUT)
    line, took = _fails_in_bounded_time(cli, _volume(tmp_path))
    assert proxy.triggered.is_set()
    _names_store_and_object(line, store[0])
    assert '[chunkbackup] storage_request_timeout = 5s' in line, line
    assert took < BOUND


def test_a_stalled_upload_fails_on_the_minimum_rate(tmp_path, store, proxy):
    # The server never sees the request: nothing moves either way.
    cli = _cli(tmp_path, store, proxy, storage_request_timeout=0,
               storage_min_rate=1024, storage_min_rate_time=DEADLINE)
    proxy.set(stallproxy.STALL, trigger=DATA_PUT)
    line, took = _fails_in_bounded_time(cli, _volume(tmp_path))
    assert proxy.triggered.is_set()
    _names_store_and_object(line, store[0])
    assert 'stalled' in line and '[chunkbackup] storage_min_rate' in line, \
        line
    assert took < BOUND


def test_an_operation_deadline_ends_a_stalled_backup(tmp_path, store,
                                                     proxy):
    cli = _cli(tmp_path, store, proxy, storage_request_timeout=0,
               storage_min_rate=0, operation_timeout=DEADLINE)
    proxy.set(stallproxy.STALL, trigger=DATA_PUT)
    line, took = _fails_in_bounded_time(cli, _volume(tmp_path))
    _names_store_and_object(line, store[0])
    assert '[chunkbackup] operation_timeout = 5s' in line, line
    assert took < BOUND


def test_a_slow_but_steady_link_finishes(tmp_path, store, proxy):
    # 96 KiB/s each way on every connection, with a minimum rate of
    # 16 KiB/s over 2 s and a 20 s request deadline: slow is not stalled.
    cli = _cli(tmp_path, store, proxy, storage_request_timeout=20,
               storage_min_rate=16 * KiB, storage_min_rate_time=2,
               objects_in_flight=2)
    proxy.set(stallproxy.THROTTLE, rate=96 * KiB)
    vol = _volume(tmp_path)
    backup = cli.json('backup-create', vol)
    assert backup['status'] == 'available'
    out = str(tmp_path / 'restored.img')
    cli.json('backup-restore', backup['id'], out)
    with open(vol, 'rb') as a, open(out, 'rb') as b:
        assert hashlib.sha256(a.read()).digest() == \
            hashlib.sha256(b.read()).digest()
