"""A TCP proxy on 127.0.0.1 that behaves like a wide-area link.

A real Swift or S3 on 127.0.0.1 answers in microseconds at gigabytes per
second, so it says nothing about how a driver does across a WAN, where
users keep most backups. ``LinkProxy`` stands in front of such a server and
gives every connection through it, in each direction:

- **a one-way delay** (``LinkModel.delay``): a delay line. Each piece of
  data is handed on ``delay`` seconds after the proxy received it, however
  much else is in flight, so a connection carries up to rate x delay bytes
  at once, as a wire does; throughput is not bound by the round trip (no
  sleep per recv). A new connection's first data waits one more round
  trip, as TCP's handshake costs on a real link (the client's ``connect``
  returns at once on 127.0.0.1);
- **a per-connection rate cap** and **an optional total cap** shared by all
  connections in that direction (token buckets, in bytes per second). Data
  is paced at the cap before it enters the delay line: serialisation, then
  propagation, as on a link. While it waits, the proxy reads no more, so
  the sender feels back-pressure through TCP as it would from a slow link.

It counts connections (and the most open at once) and the bytes each way,
so a benchmark can compare what moved with what the link allows. Both
directions of the link are independent (full duplex): a cap applies to
each direction on its own.
"""
import collections
import dataclasses
import socket
import threading
import time
from typing import Deque, Dict, List, Optional, Tuple

BUFFER = 65536
# The delay line holds what is "on the wire": about rate x delay. A cap on
# it keeps a stalled receiver from making the proxy buffer without bound.
MIN_LINE_BYTES = 4 * 2 ** 20


@dataclasses.dataclass(frozen=True)
class LinkModel:
    """One direction's behaviour, the same both ways.

    ``delay`` in seconds (one way); rates in bytes per second, 0 meaning
    no cap. ``handshake``: hold a new connection's first data one round
    trip, as a TCP connect costs on a real link.
    """

    delay: float = 0.0
    per_connection_rate: float = 0.0
    total_rate: float = 0.0
    handshake: bool = True

    @property
    def rtt(self) -> float:
        return 2 * self.delay

    def describe(self) -> str:
        parts = ['%g ms one-way' % (self.delay * 1000)]
        if self.per_connection_rate:
            parts.append('%g MB/s per connection'
                         % (self.per_connection_rate / 1e6))
        if self.total_rate:
            parts.append('%g MB/s shared by all connections'
                         % (self.total_rate / 1e6))
        if not (self.per_connection_rate or self.total_rate):
            parts.append('no rate cap')
        return ', '.join(parts)


class TokenBucket:
    """Lets bytes pass at ``rate`` per second; safe to share by threads.

    A taker may overdraw: it takes what it needs at once and sleeps off
    the debt, so the long-run rate is exact whatever the piece sizes, and
    several takers share the rate (each one's debt includes the others').
    ``burst`` bytes may pass at once after the bucket was idle.
    """

    def __init__(self, rate: float, burst: float = BUFFER):
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = self.burst
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> None:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens
                               + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= nbytes
            debt = -self._tokens
        if debt > 0:
            time.sleep(debt / self.rate)


class _DelayLine:
    """Data in flight one way: each piece with the time it is due."""

    def __init__(self, limit: int):
        self.limit = limit
        self._items: Deque[Tuple[float, Optional[bytes]]] = \
            collections.deque()
        self._bytes = 0
        self._closed = False
        self._cond = threading.Condition()

    def put(self, due: float, data: Optional[bytes]) -> bool:
        """Queue ``data`` (None: end of stream); False once closed."""
        with self._cond:
            while (not self._closed and data is not None
                   and self._bytes > self.limit):
                self._cond.wait(0.5)
            if self._closed:
                return False
            self._items.append((due, data))
            self._bytes += len(data) if data else 0
            self._cond.notify_all()
            return True

    def get(self) -> Tuple[float, Optional[bytes]]:
        """The next piece, waiting for one; (0, None) once closed."""
        with self._cond:
            while not self._items and not self._closed:
                self._cond.wait(0.5)
            if self._closed:
                return 0.0, None
            due, data = self._items.popleft()
            self._bytes -= len(data) if data else 0
            self._cond.notify_all()
            return due, data

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


@dataclasses.dataclass
class LinkStats:
    """What went through the proxy; subtract two to get one operation's."""

    connections: int = 0
    bytes_up: int = 0      # client to server
    bytes_down: int = 0    # server to client
    max_open: int = 0      # the most connections open at once (since reset)

    def __sub__(self, earlier: 'LinkStats') -> 'LinkStats':
        return LinkStats(self.connections - earlier.connections,
                         self.bytes_up - earlier.bytes_up,
                         self.bytes_down - earlier.bytes_down,
                         self.max_open)


class LinkProxy:
    """Listens on 127.0.0.1 and forwards to ``upstream`` through the model.

    Use as a context manager, or call ``close()``. ``url`` is what a client
    is pointed at instead of the server.
    """

    def __init__(self, upstream_host: str, upstream_port: int,
                 model: LinkModel):
        self.upstream = (upstream_host, upstream_port)
        self.model = model
        self._total: Dict[str, Optional[TokenBucket]] = {
            direction: (TokenBucket(model.total_rate)
                        if model.total_rate else None)
            for direction in ('up', 'down')}
        self._stats = LinkStats()
        self._open = 0
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._sockets: List[socket.socket] = []
        self._lines: List[_DelayLine] = []
        self._listener = socket.create_server(('127.0.0.1', 0), backlog=128)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True,
                                        name='linkproxy-accept')
        self._thread.start()

    @property
    def url(self) -> str:
        return 'http://127.0.0.1:%d' % self.port

    def stats(self) -> LinkStats:
        """A snapshot of the counters."""
        with self._lock:
            return dataclasses.replace(self._stats)

    def reset_max_open(self) -> None:
        """Start counting the most connections open at once afresh."""
        with self._lock:
            self._stats.max_open = self._open

    # Plumbing -----------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _addr = self._listener.accept()
            except OSError:
                return
            accepted = time.monotonic()
            with self._lock:
                self._stats.connections += 1
                self._open += 1
                self._stats.max_open = max(self._stats.max_open, self._open)
            threading.Thread(target=self._connect, args=(client, accepted),
                             daemon=True, name='linkproxy-conn').start()

    def _connect(self, client: socket.socket, accepted: float) -> None:
        try:
            server = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            client.close()
            self._gone()
            return
        server.settimeout(None)
        for sock in (client, server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        model = self.model
        limit = max(MIN_LINE_BYTES,
                    int(2 * model.delay * max(model.per_connection_rate,
                                              model.total_rate)))
        up, down = _DelayLine(limit), _DelayLine(limit)
        with self._lock:
            self._sockets += [client, server]
            self._lines += [up, down]
        # The first data a client sends waits a round trip, as if the
        # handshake had cost one.
        gate = accepted + (model.rtt if model.handshake else 0.0)
        done = threading.Barrier(4, action=lambda: self._finish(
            client, server, up, down))
        for src, dst, line, direction, start in (
                (client, server, up, 'up', gate),
                (server, client, down, 'down', 0.0)):
            threading.Thread(target=self._pump, daemon=True,
                             args=(src, line, direction, start, done),
                             name='linkproxy-pump-' + direction).start()
            threading.Thread(target=self._deliver, daemon=True,
                             args=(dst, line, (client, server), done),
                             name='linkproxy-deliver-' + direction).start()

    def _pump(self, src: socket.socket, line: _DelayLine, direction: str,
              not_before: float, done: threading.Barrier) -> None:
        """Read one direction, pace it at the caps, put it on the line."""
        model = self.model
        own = (TokenBucket(model.per_connection_rate)
               if model.per_connection_rate else None)
        total = self._total[direction]
        try:
            while True:
                try:
                    data = src.recv(BUFFER)
                except OSError:
                    data = b''
                if not data:
                    line.put(max(time.monotonic(), not_before) + model.delay,
                             None)
                    return
                with self._lock:
                    if direction == 'up':
                        self._stats.bytes_up += len(data)
                    else:
                        self._stats.bytes_down += len(data)
                if own is not None:
                    own.take(len(data))
                if total is not None:
                    total.take(len(data))
                due = max(time.monotonic(), not_before) + model.delay
                if not line.put(due, data):
                    return
        finally:
            self._wait(done)

    def _deliver(self, dst: socket.socket, line: _DelayLine,
                 pair: Tuple[socket.socket, socket.socket],
                 done: threading.Barrier) -> None:
        """Hand on each piece when it is due; end of stream as a FIN."""
        try:
            while True:
                due, data = line.get()
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if data is None:
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    return
                try:
                    dst.sendall(data)
                except OSError:
                    # The receiver is gone: so is the connection, both ways
                    # (a pump waiting for room on this line gives up too).
                    line.close()
                    for sock in pair:
                        _close(sock)
                    return
        finally:
            self._wait(done)

    @staticmethod
    def _wait(done: threading.Barrier) -> None:
        try:
            done.wait()
        except threading.BrokenBarrierError:
            pass

    def _finish(self, client: socket.socket, server: socket.socket,
                up: _DelayLine, down: _DelayLine) -> None:
        for sock in (client, server):
            _close(sock)
        with self._lock:
            for item in (client, server):
                if item in self._sockets:
                    self._sockets.remove(item)
            for line in (up, down):
                if line in self._lines:
                    self._lines.remove(line)
        self._gone()

    def _gone(self) -> None:
        with self._lock:
            self._open -= 1

    def close(self) -> None:
        self._closed.set()
        _close(self._listener)
        with self._lock:
            sockets, lines = list(self._sockets), list(self._lines)
        for line in lines:
            line.close()
        for sock in sockets:
            _close(sock)
        self._thread.join(5)

    def __enter__(self) -> 'LinkProxy':
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
