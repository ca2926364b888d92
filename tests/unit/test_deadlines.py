"""DeadlineStore (chunkbackup.storage.deadline) against real HTTP on
127.0.0.1: a trickling or silent server is cut off in bounded time, a slow
steady one is not; the operation deadline, and the clean-up it still allows.
"""
import http.client
import http.server
import re
import threading
import time

import pytest

from chunkbackup.storage import base
from chunkbackup.storage import deadline


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


def _serving(body_size, pace, stop):
    """An HTTP server answering GET with ``body_size`` bytes in 40 pieces.

    ``pace`` seconds apart; None: it never answers.
    """

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if pace is None:
                stop.wait(30)
                return
            self.send_response(200)
            self.send_header('Content-Length', str(body_size))
            self.end_headers()
            step = max(1, body_size // 40)
            for offset in range(0, body_size, step):
                if stop.is_set():
                    return
                self.wfile.write(b'x' * min(step, body_size - offset))
                self.wfile.flush()
                time.sleep(pace)

        def do_PUT(self):
            # A chunked body, read as it comes.
            while True:
                size = int(self.rfile.readline().strip() or b'0', 16)
                self.rfile.read(size + 2)
                if size == 0:
                    break
            self.send_response(201)
            self.send_header('Content-Length', '0')
            self.end_headers()

        def log_message(self, *args):
            pass

    server = _Server(('127.0.0.1', 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class HttpStore(base.ObjectStore):
    """get over plain http.client, as the drivers' libraries do."""

    def __init__(self, port):
        self.port = port

    def get(self, container, name, extra_metadata=None):
        conn = http.client.HTTPConnection('127.0.0.1', self.port, timeout=30)
        try:
            conn.request('GET', '/%s/%s' % (container, name))
            return conn.getresponse().read()
        finally:
            conn.close()

    def get_stream(self, container, name, extra_metadata=None,
                   chunk_size=base.DEFAULT_CHUNK_SIZE):
        conn = http.client.HTTPConnection('127.0.0.1', self.port, timeout=30)
        try:
            conn.request('GET', '/%s/%s' % (container, name))
            response = conn.getresponse()
            while True:
                chunk = response.read(chunk_size)
                if not chunk:
                    return
                yield chunk
        finally:
            conn.close()


@pytest.fixture
def server():
    servers, stop = [], threading.Event()

    def start(body_size=0, pace=None):
        servers.append(_serving(body_size, pace, stop))
        return servers[-1].server_address[1]
    yield start
    stop.set()
    for s in servers:
        s.shutdown()
        s.server_close()


def _timed_get(store):
    start = time.monotonic()
    with pytest.raises(deadline.StorageTimedOut) as raised:
        store.get('c', 'volume_1/az_nova_backup_2-00001')
    return str(raised.value), time.monotonic() - start


def test_a_trickling_answer_is_cut_at_the_request_deadline(server):
    # 40 pieces 0.5 s apart: every read succeeds, the whole takes 20 s.
    port = server(40, 0.5)
    store = deadline.DeadlineStore(HttpStore(port), 'teststore',
                                   deadline.Limits(request_timeout=1.0))
    message, took = _timed_get(store)
    assert took < 5
    assert message == (
        'Storage operation get on c/volume_1/az_nova_backup_2-00001 failed: '
        'teststore did not finish the request within [chunkbackup] '
        'storage_request_timeout = 1s; raise it for large objects on slow '
        'links')


def test_a_silent_server_fails_the_minimum_rate(server):
    port = server(pace=None)
    store = deadline.DeadlineStore(
        HttpStore(port), 'teststore',
        deadline.Limits(min_rate=1000, min_rate_time=1.0))
    message, took = _timed_get(store)
    assert took < 5
    # Only the request moved: fewer bytes than a second's worth.
    assert re.search(r'teststore stalled: \d+ bytes in \d+\.\ds, below',
                     message), message
    assert '[chunkbackup] storage_min_rate = 1000 bytes/s over ' \
        '[chunkbackup] storage_min_rate_time = 1s' in message


def test_a_slow_steady_answer_finishes(server):
    # 400 KB in 40 pieces over about 2 s: 200 KB/s, well above 50 KB/s.
    port = server(400 * 1000, 0.05)
    store = deadline.DeadlineStore(
        HttpStore(port), 'teststore',
        deadline.Limits(request_timeout=30, min_rate=50 * 1000,
                        min_rate_time=0.5))
    assert len(store.get('c', 'o')) == 400 * 1000


def test_a_slow_consumer_of_a_stream_is_not_the_links_fault(server):
    # The answer arrives at once; the consumer takes 2.4 s over it.
    port = server(40 * 1000, 0)
    store = deadline.DeadlineStore(
        HttpStore(port), 'teststore',
        deadline.Limits(request_timeout=1.0, min_rate=50 * 1000,
                        min_rate_time=0.5))
    received = 0
    for chunk in store.get_stream('c', 'o', chunk_size=10 * 1000):
        received += len(chunk)
        time.sleep(0.6)
    assert received == 40 * 1000


class ChunkedPutStore(HttpStore):
    """put_stream with chunked transfer encoding, chunk by chunk."""

    def put_stream(self, container, name, produce, extra_metadata=None):
        conn = http.client.HTTPConnection('127.0.0.1', self.port, timeout=30)
        try:
            conn.request('PUT', '/%s/%s' % (container, name),
                         body=iter(produce()), encode_chunked=True)
            assert conn.getresponse().status == 201
        finally:
            conn.close()


def test_a_slow_producer_of_a_stream_is_not_the_links_fault(server):
    # Each chunk takes the producer (a compressor, a rate limit) 0.3 s:
    # 3 s in all, over the request timeout, idle for whole windows.
    port = server()
    store = deadline.DeadlineStore(
        ChunkedPutStore(port), 'teststore',
        deadline.Limits(request_timeout=1.0, min_rate=50 * 1000,
                        min_rate_time=0.5))
    seen = []

    def produce():
        for _ in range(10):
            time.sleep(0.3)
            seen.append(deadline._local.transfer.inside)
            yield b'x' * 10000

    store.put_stream('c', 'o', produce)
    assert seen == [False] * 10


class SlowLocalStore(base.ObjectStore):
    """No sockets: a file system that takes its time."""

    def __init__(self, delay):
        self.delay = delay
        self.deleted = []

    def put(self, container, name, body, extra_metadata=None):
        time.sleep(self.delay)

    def get(self, container, name, extra_metadata=None):
        return b''

    def delete(self, container, name):
        self.deleted.append(name)


def test_the_operation_deadline_leaves_room_for_the_clean_up():
    inner = SlowLocalStore(0.4)
    store = deadline.DeadlineStore(inner, 'posix',
                                   deadline.Limits(operation_timeout=0.3))
    with pytest.raises(deadline.StorageTimedOut) as raised:
        store.put('c', 'o-00001', b'x')
    assert str(raised.value) == (
        'Storage operation put on c/o-00001 failed: posix did not answer '
        'before the operation ran out of [chunkbackup] operation_timeout = '
        '0.3s; raise it for longer operations')
    # The operation has failed: nothing more of it starts...
    with pytest.raises(deadline.StorageTimedOut):
        store.get('c', 'o-00002')
    # ...but what it wrote can still be removed.
    store.delete('c', 'o-00001')
    assert inner.deleted == ['o-00001']
