"""Deadlines and a minimum rate for every storage request, for every driver.

Client libraries only time out single socket reads: a server that sends a
byte a second, or never finishes reading an upload, keeps a request going
for ever. ``DeadlineStore`` (built once, by ``build_store``) watches each
attempt of each operation as a ``Transfer``:

- ``[chunkbackup] storage_request_timeout``: the whole request, from its
  first byte on the network to the last byte of the answer;
- ``[chunkbackup] storage_min_rate`` / ``storage_min_rate_time``: as curl's
  --speed-limit/--speed-time, a transfer that moves fewer than
  ``min_rate * min_rate_time`` bytes in any ``min_rate_time`` seconds has
  stalled (a slow but steady link is not stopped);
- ``[chunkbackup] operation_timeout``: everything one driver (one backup,
  restore, delete, verify) asks of storage, from its first request. Once
  it is spent the requests in progress fail and no put or get starts;
  the clean-up (list, delete) of what the failed operation wrote gets one
  more ``operation_timeout``.

How: a process-wide audit hook (``sys.addaudithook``) sees every HTTP
request the calling thread sends (``http.client.send``, under requests,
botocore, swiftclient and google's clients alike), and adds the request's
socket to the thread's current transfer (only HTTP sockets: a volume read
from an NBD export in the same thread is never touched). The transfer's
clock starts with its first request; connecting is bounded by the
client library's connect timeout. One watchdog thread
measures their progress (bytes acknowledged and received, from the
kernel's TCP_INFO, so TLS is no obstacle) and, when a transfer is out of
time, shuts its sockets down: the blocked call fails at once, and the
transfer turns that failure into ``StorageTimedOut``, one line naming the
store, the object and the option. A stall is not retried: it has already
cost the time the options allow.

A store without sockets (posix) is held to ``operation_timeout`` only,
checked between requests: a file-system call cannot be interrupted.
"""
import os
import socket
import struct
import sys
import threading
import time
from typing import Callable, Generator, Iterator, List, Optional, Union

from oslo_config import cfg
from oslo_log import log as logging

from chunkbackup import exception
from chunkbackup.storage import base

LOG = logging.getLogger(__name__)

OPTION_GROUP = 'chunkbackup'
# struct tcp_info (linux/tcp.h): tcpi_bytes_acked, tcpi_bytes_received.
_TCP_INFO = getattr(socket, 'TCP_INFO', None)
_TCP_INFO_BYTES = struct.Struct('=QQ')
_TCP_INFO_BYTES_OFFSET = 120
_TCP_INFO_SIZE = _TCP_INFO_BYTES_OFFSET + _TCP_INFO_BYTES.size
# How often the watchdog looks; a transfer ends at most this late.
TICK = 0.2
# What a failed operation still does once its deadline is spent.
CLEAN_UP = ('list', 'delete')


class StorageTimedOut(exception.StorageError):
    """A request or an operation ran out of the time the options give."""


def _tcp_bytes(sock: socket.socket) -> Optional[int]:
    """Bytes this socket has had acknowledged and received, or None."""
    if _TCP_INFO is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_SIZE)
    except (OSError, ValueError):
        return None
    if len(info) < _TCP_INFO_SIZE:
        return None
    acked, received = _TCP_INFO_BYTES.unpack_from(info,
                                                  _TCP_INFO_BYTES_OFFSET)
    return acked + received


def _break(sock) -> None:
    """Shut a connection down under the thread blocked on it.

    Through a duplicate of its descriptor: the same connection, whatever
    wraps it (an SSLSocket's own shutdown would drop its TLS state under
    the reader; eventlet's GreenSocket has no class-level shutdown).
    """
    try:
        fd = sock.fileno()
        if fd < 0:
            return
        duplicate = socket.socket(fileno=os.dup(fd))
    except (OSError, ValueError):
        return
    try:
        duplicate.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        duplicate.close()


def _raw_socket(sock) -> Optional[socket.socket]:
    # urllib3's SSLTransport (TLS in TLS) keeps the real socket inside.
    while sock is not None and not isinstance(sock, socket.socket):
        sock = getattr(sock, 'socket', None)
    return sock


class Limits:
    """The options, in seconds and bytes per second; 0 turns one off."""

    def __init__(self, request_timeout: float = 0.0, min_rate: int = 0,
                 min_rate_time: float = 0.0,
                 operation_timeout: float = 0.0):
        self.request_timeout = request_timeout
        self.min_rate = min_rate
        self.min_rate_time = min_rate_time
        self.operation_timeout = operation_timeout

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts.GroupAttr) -> 'Limits':
        return cls(conf.storage_request_timeout, conf.storage_min_rate,
                   conf.storage_min_rate_time, conf.operation_timeout)

    @property
    def active(self) -> bool:
        return bool(self.request_timeout or self.operation_timeout or
                    (self.min_rate and self.min_rate_time))


class Transfer:
    """One attempt of one storage operation, as the watchdog sees it.

    Its clock starts with its first HTTP request and runs only while the
    caller is inside the store (not while a consumer of a stream works on
    a chunk).
    """

    def __init__(self, store_name: str, operation: str, target: str,
                 limits: Limits, operation_deadline: Optional[float],
                 clock: Callable[[], float] = time.monotonic):
        self.store_name = store_name
        self.operation = operation
        self.target = target
        self.limits = limits
        self.operation_deadline = operation_deadline
        self.clock = clock
        self.lock = threading.Lock()
        self.sockets: List[socket.socket] = []
        self._baselines: List[Optional[int]] = []
        self.started: Optional[float] = None   # first network event
        self.inside = False
        self._left: Optional[float] = None     # when the caller last left
        self._outside = 0.0                    # seconds spent outside
        self.reason: Optional[str] = None      # why it was stopped
        self._window_start = 0.0
        self._window_bytes = 0

    # Called by the audit hook, in the transfer's own thread, for every
    # HTTP send.
    def add_socket(self, sock: object) -> None:
        sock = _raw_socket(sock)
        if sock is None:
            return
        with self.lock:
            if any(s is sock for s in self.sockets):
                return
            if self.started is None:
                self.started = self._window_start = self.clock()
                self._window_bytes = 0
            self.sockets.append(sock)
            self._baselines.append(_tcp_bytes(sock))
            if self.reason is not None:
                # Out of time before its connection was made: break it too.
                self.stop(self.reason)

    def moved(self) -> int:
        """Bytes moved on this transfer's sockets since they joined it."""
        total = 0
        for sock, baseline in zip(self.sockets, self._baselines):
            now = _tcp_bytes(sock)
            if now is not None and baseline is not None:
                total += max(0, now - baseline)
        return total

    def enter(self) -> None:
        with self.lock:
            self.inside = True
            if self.started is not None:
                # The consumer's time was not the link's: not counted, and
                # a fresh window for the rate.
                now = self.clock()
                if self._left is not None:
                    self._outside += now - self._left
                self._window_start = now
                self._window_bytes = self.moved()

    def leave(self) -> None:
        with self.lock:
            self.inside = False
            self._left = self.clock()

    def _option(self, name: str) -> str:
        return '[%s] %s' % (OPTION_GROUP, name)

    def overdue(self, now: float) -> Optional[str]:
        """Why this transfer must stop now, or None."""
        limits = self.limits
        if self.operation_deadline is not None and \
                now >= self.operation_deadline:
            return ('%s did not answer before the operation ran out of %s '
                    '= %gs; raise it for longer operations'
                    % (self.store_name, self._option('operation_timeout'),
                       limits.operation_timeout))
        if self.started is None or not self.inside:
            return None
        if limits.request_timeout and \
                now - self.started - self._outside >= \
                limits.request_timeout:
            return ('%s did not finish the request within %s = %gs; raise '
                    'it for large objects on slow links'
                    % (self.store_name,
                       self._option('storage_request_timeout'),
                       limits.request_timeout))
        if limits.min_rate and limits.min_rate_time and self.sockets and \
                now - self._window_start >= limits.min_rate_time:
            moved = self.moved()
            if moved - self._window_bytes < \
                    limits.min_rate * limits.min_rate_time:
                return ('%s stalled: %d bytes in %.1fs, below %s = %d '
                        'bytes/s over %s = %gs; check the store and the '
                        'network, or lower %s'
                        % (self.store_name, moved - self._window_bytes,
                           now - self._window_start,
                           self._option('storage_min_rate'),
                           limits.min_rate,
                           self._option('storage_min_rate_time'),
                           limits.min_rate_time,
                           self._option('storage_min_rate')))
            self._window_start = now
            self._window_bytes = moved
        return None

    def stop(self, reason: str) -> None:
        """Record why and break the transfer's connections."""
        self.reason = reason
        for sock in self.sockets:
            _break(sock)

    def error(self) -> StorageTimedOut:
        return StorageTimedOut(operation=self.operation, target=self.target,
                               reason=self.reason)


class _Watchdog:
    """One daemon thread that checks every transfer in progress."""

    def __init__(self):
        self._transfers: List[Transfer] = []
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None

    def add(self, transfer: Transfer) -> None:
        with self._lock:
            self._transfers.append(transfer)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name='chunkbackup-storage-watchdog',
                    daemon=True)
                self._thread.start()

    def remove(self, transfer: Transfer) -> None:
        with self._lock:
            try:
                self._transfers.remove(transfer)
            except ValueError:
                pass

    def _run(self) -> None:
        while True:
            time.sleep(TICK)
            with self._lock:
                transfers = list(self._transfers)
            for transfer in transfers:
                try:
                    with transfer.lock:
                        if transfer.reason is not None:
                            continue
                        reason = transfer.overdue(transfer.clock())
                        if reason is not None:
                            transfer.stop(reason)
                except Exception:
                    # The watchdog must outlive any one transfer.
                    LOG.exception('Could not check the storage request '
                                  '%s of %s.', transfer.operation,
                                  transfer.target)


_watchdog = _Watchdog()
_local = threading.local()
_hook_installed = False
_hook_lock = threading.Lock()


def _audit(event: str, args: tuple) -> None:
    # Called for every audit event of the process: be quick, never raise.
    if event != 'http.client.send':
        return
    transfer = getattr(_local, 'transfer', None)
    if transfer is None:
        return
    try:
        transfer.add_socket(args[0].sock)
    except Exception:  # nosec: an audit hook must not break the caller
        pass


def install_hook() -> None:
    """Watch this process's sockets (once; audit hooks stay for good)."""
    global _hook_installed
    with _hook_lock:
        if not _hook_installed:
            sys.addaudithook(_audit)
            _hook_installed = True


class DeadlineStore(base.ForwardingStore):
    """Holds every request of ``inner`` to ``limits``."""

    def __init__(self, inner: base.ObjectStore, store_name: str,
                 limits: Limits,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__(inner)
        self.store_name = store_name
        self.limits = limits
        self.clock = clock
        self.operation_deadline: Optional[float] = None
        # Set once the deadline has failed the operation: what follows is
        # its clean-up, which gets a deadline of its own.
        self.operation_spent = False
        install_hook()

    def _transfer(self, operation: str, target: str) -> Transfer:
        now = self.clock()
        if self.limits.operation_timeout and self.operation_deadline is None:
            self.operation_deadline = now + self.limits.operation_timeout
        transfer = Transfer(self.store_name, operation, target, self.limits,
                            self.operation_deadline, self.clock)
        if self.operation_spent and operation not in CLEAN_UP:
            transfer.operation_deadline = now  # the operation has failed
        reason = transfer.overdue(now)
        if reason is not None:
            transfer.reason = reason
            self._spent(transfer)
            raise transfer.error()
        return transfer

    def _spent(self, transfer: Transfer) -> None:
        """After the operation's deadline failed it: one for its clean-up.
        """
        if transfer.operation_deadline is not None and \
                not self.operation_spent and \
                transfer.clock() >= transfer.operation_deadline:
            self.operation_spent = True
            self.operation_deadline = (transfer.clock() +
                                       self.limits.operation_timeout)

    def _inside(self, transfer: Transfer, fn, *args):
        """Run ``fn`` with ``transfer`` watched; its timeout if it fired."""
        outer = getattr(_local, 'transfer', None)
        _local.transfer = transfer
        transfer.enter()
        try:
            result = fn(*args)
        except Exception as e:
            if transfer.reason is not None:
                self._spent(transfer)
                raise transfer.error() from e
            raise
        finally:
            transfer.leave()
            _local.transfer = outer
        if transfer.reason is None and \
                transfer.operation_deadline is not None and \
                self.clock() >= transfer.operation_deadline:
            # Finished past the operation's deadline, before the watchdog
            # looked (or with no socket to break: a file system).
            transfer.reason = transfer.overdue(self.clock())
        if transfer.reason is not None:
            self._spent(transfer)
            raise transfer.error()
        return result

    def _call(self, operation: str, target: str, fn, *args):
        transfer = self._transfer(operation, target)
        _watchdog.add(transfer)
        try:
            return self._inside(transfer, fn, *args)
        finally:
            _watchdog.remove(transfer)

    def ensure_container(self, container: str) -> None:
        self._call('put_container', container, self.inner.ensure_container,
                   container)

    def put(self, container: str, name: str, body: bytes,
            extra_metadata: Optional[dict] = None) -> None:
        self._call('put', base.target_of(container, name), self.inner.put,
                   container, name, body, extra_metadata)

    def put_stream(self, container: str, name: str, produce: base.Produce,
                   extra_metadata: Optional[dict] = None) -> None:
        transfer = self._transfer('put', base.target_of(container, name))

        def outside() -> Iterator[Union[bytes, memoryview]]:
            # The producer's time (reading, compressing, waiting for a
            # rate limit) is not the link's: a driver sending chunks as
            # they come must not look stalled while it waits for one.
            chunks = iter(produce())
            while True:
                transfer.leave()
                try:
                    chunk = next(chunks)
                except StopIteration:
                    return
                finally:
                    transfer.enter()
                yield chunk

        _watchdog.add(transfer)
        try:
            self._inside(transfer, self.inner.put_stream, container, name,
                         lambda: outside(), extra_metadata)
        finally:
            _watchdog.remove(transfer)

    def get(self, container: str, name: str,
            extra_metadata: Optional[dict] = None) -> bytes:
        return self._call('get', base.target_of(container, name),
                          self.inner.get, container, name, extra_metadata)

    def get_stream(self, container: str, name: str,
                   extra_metadata: Optional[dict] = None,
                   chunk_size: int = base.DEFAULT_CHUNK_SIZE
                   ) -> Generator[bytes, None, None]:
        transfer = self._transfer('get', base.target_of(container, name))
        chunks = self.inner.get_stream(container, name, extra_metadata,
                                       chunk_size)
        _watchdog.add(transfer)
        try:
            while True:
                try:
                    chunk = self._inside(transfer, next, chunks)
                except StopIteration:
                    return
                yield chunk
        finally:
            _watchdog.remove(transfer)
            chunks.close()

    def get_range(self, container: str, name: str, offset: int,
                  length: int, extra_metadata: Optional[dict] = None
                  ) -> bytes:
        return self._call('get', base.target_of(container, name),
                          self.inner.get_range, container, name, offset,
                          length, extra_metadata)

    def object_size(self, container: str, name: str,
                    extra_metadata: Optional[dict] = None) -> int:
        return self._call('head', base.target_of(container, name),
                          self.inner.object_size, container, name,
                          extra_metadata)

    def list(self, container: str, prefix: str) -> List[str]:
        return self._call('list', '%s/%s*' % (container, prefix),
                          self.inner.list, container, prefix)

    def delete(self, container: str, name: str) -> None:
        self._call('delete', base.target_of(container, name),
                   self.inner.delete, container, name)
