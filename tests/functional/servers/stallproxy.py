"""A TCP proxy on 127.0.0.1 that forwards to a real server, and can stall.

It stands between a driver and a real Swift or S3 server to make the link
misbehave the way a sick network or server does:

- ``pass``: forward everything (the default);
- ``stall``: once a connection sends a request matching ``trigger``, stop
  forwarding on it in both directions, for ever (the connection stays
  open: neither a reset nor an end of file);
- ``trickle``: once triggered, forward that request, then give the client
  the answer at ``rate`` bytes per second (1: a byte a second);
- ``throttle``: forward every connection in both directions at ``rate``
  bytes per second: a slow but steady link.

``trigger`` is a regular expression searched in what a client sends (a
request line such as ``PUT /.../az_nova_backup_<id>-00001 HTTP/1.1``); by
default every connection matches. Modes apply to connections made after
they are set. Stopped with ``close()`` or as a context manager.
"""
import re
import select
import socket
import threading
import time
from typing import List, Optional

PASS = 'pass'
STALL = 'stall'
TRICKLE = 'trickle'
THROTTLE = 'throttle'
MODES = (PASS, STALL, TRICKLE, THROTTLE)
BUFFER = 65536


class _Pacer:
    """Lets bytes through at ``rate`` per second (0: no limit)."""

    def __init__(self, rate: int):
        self.rate = rate
        self.start = time.monotonic()
        self.sent = 0

    def pieces(self, data: bytes):
        if not self.rate:
            yield data
            return
        step = max(1, self.rate // 10)  # ten sends a second
        for offset in range(0, len(data), step):
            piece = data[offset:offset + step]
            due = self.start + (self.sent + len(piece)) / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.sent += len(piece)
            yield piece


class StallProxy:
    """Listens on 127.0.0.1 and forwards to ``upstream`` (host, port)."""

    def __init__(self, upstream_host: str, upstream_port: int):
        self.upstream = (upstream_host, upstream_port)
        self.mode = PASS
        self.rate = 0
        self.trigger: Optional[re.Pattern] = None
        self.triggered = threading.Event()
        self._listener = socket.create_server(('127.0.0.1', 0))
        self.port = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._sockets: List[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True,
                                        name='stallproxy-accept')
        self._thread.start()

    @property
    def url(self) -> str:
        return 'http://127.0.0.1:%d' % self.port

    def set(self, mode: str, rate: int = 0,
            trigger: Optional[bytes] = None) -> None:
        """Misbehave so from the next connection on."""
        assert mode in MODES, mode
        self.mode, self.rate = mode, rate
        self.trigger = re.compile(trigger) if trigger else None
        self.triggered.clear()

    # Plumbing ---------------------------------------------------------------

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _addr = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            self._track(client)
            self._track(server)
            threading.Thread(target=self._serve, daemon=True,
                             args=(client, server, self.mode, self.rate,
                                   self.trigger),
                             name='stallproxy-conn').start()

    def _serve(self, client, server, mode, rate, trigger) -> None:
        triggered = trigger is None
        up = _Pacer(rate if mode == THROTTLE else 0)
        down = _Pacer(rate if mode in (THROTTLE, TRICKLE) else 0)
        seen = b''
        try:
            while not self._closed.is_set():
                ready, _, _ = select.select([client, server], [], [], 0.5)
                if triggered and mode == STALL:
                    self.triggered.set()
                    self._closed.wait()  # hold everything, for ever
                    return
                for sock in ready:
                    data = sock.recv(BUFFER)
                    if not data:
                        return
                    if sock is client:
                        if not triggered:
                            seen += data
                            triggered = bool(trigger.search(seen))
                            seen = seen[-4096:]  # a request line's length
                            if triggered and mode == STALL:
                                break  # this request never arrives
                        for piece in up.pieces(data):
                            server.sendall(piece)
                    else:
                        slow = triggered and mode in (TRICKLE, THROTTLE)
                        if slow:
                            self.triggered.set()
                        for piece in (down.pieces(data) if slow
                                      else (data,)):
                            client.sendall(piece)
        except OSError:
            return  # either side went away
        finally:
            for sock in (client, server):
                try:
                    sock.close()
                except OSError:
                    pass

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.close()
                except OSError:
                    pass
        self._thread.join(5)

    def __enter__(self) -> 'StallProxy':
        return self

    def __exit__(self, *exc) -> None:
        self.close()
