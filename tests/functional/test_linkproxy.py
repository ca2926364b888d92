"""The link-model proxy does what the remote-store benchmark relies on.

bench/bench_remote.py divides each operation's time by a floor computed
from the proxy's caps and delay, so the proxy must deliver them: a
connection's throughput within 10% of its cap (each way), a total cap
shared by connections, and the one-way delay on every exchange (plus one
round trip for a new connection's handshake). A plain socket server on
127.0.0.1 stands upstream; no store is needed.
"""
import contextlib
import socket
import threading
import time

import pytest

from tests.functional.servers import linkproxy

MB = 10 ** 6


class _Upstream:
    """Per connection: reads a one-line command and acts on it.

    ``sink N``: read N bytes, then answer the seconds between the first
    and the last byte; ``send N``: send N bytes; ``echo``: echo each
    line until the client closes.
    """

    def __init__(self):
        self.listener = socket.create_server(('127.0.0.1', 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,),
                             daemon=True).start()

    def _serve(self, conn):
        with conn, conn.makefile('rb') as reader:
            command = reader.readline().split()
            if command[0] == b'sink':
                left = int(command[1])
                first = last = None
                while left:
                    data = reader.read1(min(left, 65536))
                    if not data:
                        return
                    last = time.monotonic()
                    first = first or last
                    left -= len(data)
                conn.sendall(b'%.6f\n' % (last - first))
            elif command[0] == b'send':
                conn.sendall(b'x' * int(command[1]))
            elif command[0] == b'echo':
                conn.sendall(b'ready\n')
                for line in reader:
                    conn.sendall(line)

    def close(self):
        self.listener.close()


@pytest.fixture
def upstream():
    server = _Upstream()
    yield server
    server.close()


@contextlib.contextmanager
def _proxy(upstream, **model):
    with linkproxy.LinkProxy('127.0.0.1', upstream.port,
                             linkproxy.LinkModel(**model)) as proxy:
        yield proxy


def _connect(proxy):
    return socket.create_connection(('127.0.0.1', proxy.port))


def _upload_rate(proxy, nbytes):
    """Bytes per second the upstream saw arrive, first to last byte."""
    with _connect(proxy) as sock:
        sock.sendall(b'sink %d\n' % nbytes)
        sock.sendall(b'y' * nbytes)
        seconds = float(sock.makefile('rb').readline())
    return nbytes / seconds


def _download_rate(proxy, nbytes):
    with _connect(proxy) as sock:
        sock.sendall(b'send %d\n' % nbytes)
        got, first = 0, None
        while got < nbytes:
            data = sock.recv(65536)
            assert data, 'the proxy ended the stream early'
            first = first or time.monotonic()
            got += len(data)
        return nbytes / (time.monotonic() - first)


def test_one_connection_runs_within_10_percent_of_its_cap(upstream):
    rate = 5 * MB
    with _proxy(upstream, delay=0.025, per_connection_rate=rate) as proxy:
        up = _upload_rate(proxy, 10 * MB)
        down = _download_rate(proxy, 10 * MB)
        stats = proxy.stats()
    assert 0.9 * rate <= up <= 1.1 * rate, up
    assert 0.9 * rate <= down <= 1.1 * rate, down
    assert stats.connections == 2
    assert stats.bytes_up >= 10 * MB and stats.bytes_down >= 10 * MB


def test_total_cap_is_shared_by_connections(upstream):
    rate, each = 6 * MB, 6 * MB
    with _proxy(upstream, delay=0.01, total_rate=rate) as proxy:
        results = []
        threads = [threading.Thread(
            target=lambda: results.append(_upload_rate(proxy, each)))
            for _ in range(3)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.monotonic() - t0
    # Together they cannot beat the cap; alone each would have taken 1 s.
    assert seconds >= 0.9 * 3 * each / rate, seconds
    assert seconds <= 1.15 * 3 * each / rate + 0.5, seconds


def test_delay_is_applied_each_way_and_once_more_on_connect(upstream):
    delay = 0.05
    with _proxy(upstream, delay=delay, per_connection_rate=20 * MB) as proxy:
        t0 = time.monotonic()
        with _connect(proxy) as sock:
            reader = sock.makefile('rb')
            sock.sendall(b'echo\n')
            assert reader.readline() == b'ready\n'
            first = time.monotonic() - t0
            round_trips = []
            for _ in range(5):
                t1 = time.monotonic()
                sock.sendall(b'ping\n')
                assert reader.readline() == b'ping\n'
                round_trips.append(time.monotonic() - t1)
    # Handshake (one round trip) and the request's own round trip. The
    # slack, for a loaded machine, is less than one more one-way delay.
    slack = 0.8 * delay
    assert 4 * delay <= first <= 4 * delay + slack, first
    for rtt in round_trips:
        assert 2 * delay <= rtt <= 2 * delay + slack, round_trips


def test_bytes_are_forwarded_unchanged(upstream):
    with _proxy(upstream, delay=0.001) as proxy, _connect(proxy) as sock:
        reader = sock.makefile('rb')
        sock.sendall(b'echo\n')
        assert reader.readline() == b'ready\n'
        lines = [b'%d %s\n' % (i, b'z' * i) for i in range(0, 20000, 997)]
        sock.sendall(b''.join(lines))
        assert [reader.readline() for _ in lines] == lines
