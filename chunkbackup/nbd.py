"""A small NBD client: read, write and query block status of an NBD export.

Enough of the NBD protocol (the NBD project's doc/proto.md) to back up from
and restore to exports served by qemu-nbd or a libvirt pull-mode backup:
fixed newstyle negotiation, structured replies, metadata contexts
(``base:allocation``, ``qemu:dirty-bitmap:NAME``) and ``NBD_OPT_GO``. No TLS.

One request is on the wire at a time: a lock serialises the request and
reply of each call, so threads may share a client (they take turns). For
parallel I/O open one client per thread; qemu-nbd then needs ``--shared=N``
(it serves one connection at a time by default).
"""
import dataclasses
import itertools
import os
import socket
import struct
import threading
from typing import (Dict, Iterator, List, Optional, Sequence, Tuple,
                    Union)
import urllib.parse

from chunkbackup import exception

DEFAULT_PORT = 10809
BASE_ALLOCATION = 'base:allocation'
DIRTY_BITMAP_PREFIX = 'qemu:dirty-bitmap:'

# Handshake (fixed newstyle).
NBDMAGIC = 0x4e42444d41474943
IHAVEOPT = 0x49484156454f5054
OLDSTYLE_MAGIC = 0x00420281861253
OPTION_REPLY_MAGIC = 0x3e889045565a9
NBD_FLAG_FIXED_NEWSTYLE = 1 << 0
NBD_FLAG_NO_ZEROES = 1 << 1
NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0
NBD_FLAG_C_NO_ZEROES = 1 << 1
NBD_OPT_GO = 7
NBD_OPT_STRUCTURED_REPLY = 8
NBD_OPT_SET_META_CONTEXT = 10
NBD_REP_ACK = 1
NBD_REP_INFO = 3
NBD_REP_META_CONTEXT = 4
NBD_REP_FLAG_ERROR = 1 << 31
NBD_REP_ERRORS = {
    NBD_REP_FLAG_ERROR + 1: 'option not supported by this server',
    NBD_REP_FLAG_ERROR + 2: 'forbidden by server policy',
    NBD_REP_FLAG_ERROR + 3: 'invalid option',
    NBD_REP_FLAG_ERROR + 4: 'not supported on this platform',
    NBD_REP_FLAG_ERROR + 5: 'the server requires TLS, which this client '
                            'does not speak',
    NBD_REP_FLAG_ERROR + 6: 'no such export on this server',
    NBD_REP_FLAG_ERROR + 7: 'the server is shutting down',
    NBD_REP_FLAG_ERROR + 8: 'the server requires block size negotiation',
    NBD_REP_FLAG_ERROR + 9: 'request too big',
}
NBD_INFO_EXPORT = 0
NBD_INFO_BLOCK_SIZE = 3

# Transmission flags, sent with the export size.
NBD_FLAG_HAS_FLAGS = 1 << 0
NBD_FLAG_READ_ONLY = 1 << 1
NBD_FLAG_SEND_FLUSH = 1 << 2
NBD_FLAG_SEND_TRIM = 1 << 5
NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6

# Transmission phase.
NBD_REQUEST_MAGIC = 0x25609513
NBD_SIMPLE_REPLY_MAGIC = 0x67446698
NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef
NBD_CMD_READ = 0
NBD_CMD_WRITE = 1
NBD_CMD_DISC = 2
NBD_CMD_FLUSH = 3
NBD_CMD_TRIM = 4
NBD_CMD_WRITE_ZEROES = 6
NBD_CMD_BLOCK_STATUS = 7
COMMAND_NAMES = {NBD_CMD_READ: 'read', NBD_CMD_WRITE: 'write',
                 NBD_CMD_FLUSH: 'flush', NBD_CMD_TRIM: 'trim',
                 NBD_CMD_WRITE_ZEROES: 'write zeroes',
                 NBD_CMD_BLOCK_STATUS: 'block status'}
NBD_CMD_FLAG_NO_HOLE = 1 << 1
NBD_REPLY_FLAG_DONE = 1 << 0
NBD_REPLY_TYPE_NONE = 0
NBD_REPLY_TYPE_OFFSET_DATA = 1
NBD_REPLY_TYPE_OFFSET_HOLE = 2
NBD_REPLY_TYPE_BLOCK_STATUS = 5
NBD_REPLY_TYPE_ERROR_BIT = 1 << 15
NBD_ESHUTDOWN = 108
NBD_STATE_HOLE = 1 << 0      # base:allocation: not allocated
NBD_STATE_ZERO = 1 << 1      # base:allocation: reads as zeroes
NBD_STATE_DIRTY = 1 << 0     # qemu:dirty-bitmap:NAME: changed

# Payload limit when the server does not say (the spec's safe maximum), and
# the span of one trim / write-zeroes / block-status request (32-bit length).
DEFAULT_MAX_PAYLOAD = 32 << 20
MAX_EFFECT_LENGTH = 1 << 30
MAX_OPTION_REPLY = 1 << 20

_OPTION_HEADER = struct.Struct('>QIII')     # magic, option, type, length
_REQUEST = struct.Struct('>IHHQQI')     # magic, flags, type, cookie, off, len
_SIMPLE_REPLY = struct.Struct('>IQ')         # error, cookie (after magic)
_CHUNK = struct.Struct('>HHQI')              # flags, type, cookie, length
_URL_HELP = ('use nbd://HOST[:PORT]/EXPORT or '
             'nbd+unix:///EXPORT?socket=PATH (no TLS)')


@dataclasses.dataclass(frozen=True)
class NbdAddress:
    export: str
    host: Optional[str] = None
    port: int = DEFAULT_PORT
    socket_path: Optional[str] = None

    def __str__(self) -> str:
        export = urllib.parse.quote(self.export)
        if self.socket_path is not None:
            return 'nbd+unix:///%s?socket=%s' % (export, self.socket_path)
        host = self.host or ''
        host = '[%s]' % host if ':' in host else host
        return 'nbd://%s:%d/%s' % (host, self.port, export)


def parse_url(url: str) -> NbdAddress:
    """``nbd://HOST[:PORT]/EXPORT`` or ``nbd+unix:///EXPORT?socket=PATH``."""
    def invalid(why):
        return exception.InvalidConfiguration(
            reason='NBD URL %r: %s; %s' % (url, why, _URL_HELP))
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    export = urllib.parse.unquote(parts.path[1:])
    if parts.fragment:
        raise invalid('a fragment is not allowed')
    if parts.scheme == 'nbd':
        if not parts.hostname or query:
            raise invalid('a host is required and no query is allowed')
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError:
            raise invalid('the port is not a number')
        return NbdAddress(export, host=parts.hostname, port=port)
    if parts.scheme == 'nbd+unix':
        if parts.netloc or set(query) != {'socket'} or not query['socket'][0]:
            raise invalid('no host, and exactly one socket=PATH')
        return NbdAddress(export, socket_path=query['socket'][0])
    raise invalid('unsupported scheme %r' % parts.scheme)


class NbdClient:
    """One connection to one export. Use ``NbdClient.connect(url)``."""

    size: int
    read_only: bool     # True when writes are refused (by us or the server)
    contexts: Tuple[str, ...]   # meta contexts the server agreed to

    def __init__(self, sock: socket.socket, address: NbdAddress) -> None:
        self._sock = sock
        self._url = str(address)
        self._lock = threading.Lock()
        self._cookies = itertools.count(1)
        self._closed_because = None
        self._structured = False
        self._context_ids: Dict[str, int] = {}
        self.min_block = 1
        self.max_payload = DEFAULT_MAX_PAYLOAD
        self.size = 0
        self.read_only = True
        self.contexts = ()
        self._flags = 0

    @classmethod
    def connect(cls, url: Union[str, NbdAddress],
                meta_contexts: Sequence[str] = (), writable: bool = False,
                timeout: float = 60.0) -> 'NbdClient':
        address = url if isinstance(url, NbdAddress) else parse_url(url)
        try:
            if address.socket_path is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                sock.connect(address.socket_path)
            else:
                sock = socket.create_connection(
                    (address.host, address.port), timeout=timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as e:
            raise exception.NbdError(
                url=str(address), reason='cannot connect (%s); is the NBD '
                'server (qemu-nbd) running and serving it?' % e)
        client = cls(sock, address)
        try:
            client._handshake(address.export, tuple(meta_contexts), writable)
        except BaseException:
            client._drop('the handshake failed')
            raise
        return client

    # -- handshake ---------------------------------------------------------

    def _handshake(self, export, meta_contexts, writable):
        magic, second, hflags = struct.unpack('>QQH', self._recv(18))
        if magic != NBDMAGIC or second == OLDSTYLE_MAGIC:
            self._fail('not a newstyle NBD server (magic %#x, %#x)'
                       % (magic, second))
        if second != IHAVEOPT or not hflags & NBD_FLAG_FIXED_NEWSTYLE:
            self._fail('the server does not speak fixed newstyle NBD')
        cflags = NBD_FLAG_C_FIXED_NEWSTYLE | (
            hflags & NBD_FLAG_NO_ZEROES and NBD_FLAG_C_NO_ZEROES)
        self._send(struct.pack('>I', cflags))
        name = export.encode()
        reply, _ = self._option(NBD_OPT_STRUCTURED_REPLY, b'',
                                'asking for structured replies',
                                errors_ok=True)
        self._structured = reply == NBD_REP_ACK
        if meta_contexts:
            if not self._structured:
                self._fail('the server has no structured replies, so no '
                           'block status (%s)' % ', '.join(meta_contexts))
            self._negotiate_contexts(export, name, meta_contexts)
        self._option(NBD_OPT_GO, struct.pack('>I', len(name)) + name +
                     struct.pack('>HH', 1, NBD_INFO_BLOCK_SIZE),
                     'opening export %r' % export, on_reply=self._export_info)
        if not self._flags & NBD_FLAG_HAS_FLAGS:
            self._fail('the server sent no size for export %r' % export)
        self.read_only = bool(self._flags & NBD_FLAG_READ_ONLY) or not writable
        if writable and self._flags & NBD_FLAG_READ_ONLY:
            self._fail('export %r is read-only; serve it writable (qemu-nbd '
                       'without -r) to write to it' % export)

    def _negotiate_contexts(self, export, name, meta_contexts):
        queries = b''.join(struct.pack('>I', len(q.encode())) + q.encode()
                           for q in meta_contexts)
        self._option(NBD_OPT_SET_META_CONTEXT,
                     struct.pack('>I', len(name)) + name +
                     struct.pack('>I', len(meta_contexts)) + queries,
                     'selecting meta contexts %s of export %r' % (
                         ', '.join(meta_contexts), export),
                     on_reply=self._meta_context)
        self.contexts = tuple(self._context_ids)
        for wanted in meta_contexts:
            if wanted in self._context_ids:
                continue
            if wanted.startswith(DIRTY_BITMAP_PREFIX):
                bitmap = wanted[len(DIRTY_BITMAP_PREFIX):]
                self._fail('export %r has no dirty bitmap %r (meta context '
                           '%s not offered); export it, e.g. qemu-nbd -B %s, '
                           'or name the checkpoint libvirt serves'
                           % (export, bitmap, wanted, bitmap))
            self._fail('export %r does not offer meta context %s'
                       % (export, wanted))

    def _meta_context(self, reply, data):
        if reply == NBD_REP_META_CONTEXT and len(data) >= 4:
            self._context_ids[data[4:].decode()] = struct.unpack(
                '>I', data[:4])[0]

    def _export_info(self, reply, data):
        if reply != NBD_REP_INFO or len(data) < 2:
            return
        info = struct.unpack('>H', data[:2])[0]
        if info == NBD_INFO_EXPORT and len(data) == 12:
            self.size, self._flags = struct.unpack('>QH', data[2:])
        elif info == NBD_INFO_BLOCK_SIZE and len(data) == 14:
            minimum, _, maximum = struct.unpack('>III', data[2:])
            self.min_block = max(minimum, 1)
            limit = min(maximum, DEFAULT_MAX_PAYLOAD)
            self.max_payload = max(limit - limit % self.min_block,
                                   self.min_block)

    def _option(self, option, data, what, on_reply=None, errors_ok=False):
        """Send one option; read replies up to the final ACK or error."""
        self._send(struct.pack('>QII', IHAVEOPT, option, len(data)) + data)
        while True:
            magic, opt, reply, length = _OPTION_HEADER.unpack(
                self._recv(_OPTION_HEADER.size))
            if magic != OPTION_REPLY_MAGIC or opt != option or \
                    length > MAX_OPTION_REPLY:
                self._fail('malformed reply when %s' % what)
            payload = self._recv(length)
            if reply & NBD_REP_FLAG_ERROR:
                if errors_ok:
                    return reply, payload
                why = NBD_REP_ERRORS.get(reply, 'error %#x' % reply)
                self._fail('%s: %s%s' % (
                    what, why, payload and ' (%s)' % payload.decode(
                        'utf-8', 'replace') or ''))
            if reply == NBD_REP_ACK:
                return reply, payload
            if on_reply:
                on_reply(reply, payload)

    # -- transmission ------------------------------------------------------

    @property
    def can_flush(self) -> bool:
        return bool(self._flags & NBD_FLAG_SEND_FLUSH)

    @property
    def can_trim(self) -> bool:
        return bool(self._flags & NBD_FLAG_SEND_TRIM)

    @property
    def can_zero(self) -> bool:
        return bool(self._flags & NBD_FLAG_SEND_WRITE_ZEROES)

    def pread(self, length: int, offset: int) -> bytes:
        buffer = bytearray(length)
        self.preadinto(buffer, offset)
        return bytes(buffer)

    def preadinto(self, buffer: Union[bytearray, memoryview],
                  offset: int) -> int:
        """Fill ``buffer`` (bytearray, memoryview) from ``offset``."""
        view = memoryview(buffer).cast('B')
        self._check_range(offset, len(view))
        if not view:
            return 0
        start = offset - offset % self.min_block
        end = min(-(-(offset + len(view)) // self.min_block) * self.min_block,
                  self.size)
        # Unaligned reads go through a bounce buffer of whole blocks.
        target = view if (start, end) == (offset, offset + len(view)) else \
            memoryview(bytearray(end - start))
        for pos in range(0, end - start, self.max_payload):
            piece = target[pos:pos + self.max_payload]
            self._transact(NBD_CMD_READ, start + pos, len(piece), into=piece)
        if target is not view:
            view[:] = target[offset - start:offset - start + len(view)]
        return len(view)

    def pwrite(self, data: Union[bytes, bytearray, memoryview],
               offset: int) -> None:
        view = memoryview(data).cast('B')
        self._check_write(offset, len(view))
        for pos in range(0, len(view), self.max_payload):
            piece = view[pos:pos + self.max_payload]
            self._transact(NBD_CMD_WRITE, offset + pos, len(piece),
                           payload=piece)

    def write_zeroes(self, offset: int, length: int,
                     punch: bool = True) -> None:
        """Zero a range; ``punch`` lets the server deallocate it."""
        self._check_write(offset, length)
        if not self.can_zero:
            zeroes = bytes(min(length, self.max_payload))
            for pos in range(0, length, len(zeroes)):
                self.pwrite(zeroes[:length - pos], offset + pos)
            return
        flags = 0 if punch else NBD_CMD_FLAG_NO_HOLE
        for pos in range(0, length, MAX_EFFECT_LENGTH):
            self._transact(NBD_CMD_WRITE_ZEROES, offset + pos,
                           min(MAX_EFFECT_LENGTH, length - pos), flags=flags)

    def trim(self, offset: int, length: int) -> None:
        """Discard a range; its contents are then undefined.

        A no-op when the server cannot trim. Use write_zeroes for zeroes.
        """
        self._check_write(offset, length)
        if self.can_trim:
            for pos in range(0, length, MAX_EFFECT_LENGTH):
                self._transact(NBD_CMD_TRIM, offset + pos,
                               min(MAX_EFFECT_LENGTH, length - pos))

    def flush(self) -> None:
        if self.can_flush:
            self._transact(NBD_CMD_FLUSH, 0, 0)

    def block_status(self, offset: int, length: int,
                     context: str) -> List[Tuple[int, int, int]]:
        """(offset, length, flags) extents covering exactly the range."""
        self._check_range(offset, length)
        if context not in self._context_ids:
            raise exception.NbdError(url=self._url, reason='meta context %s '
                                     'was not negotiated; connect with '
                                     'meta_contexts=[%r]' % (context, context))
        extents: List[Tuple[int, int, int]] = []
        pos, end = offset, offset + length
        aligned_end = min(-(-end // self.min_block) * self.min_block,
                          self.size)
        while pos < end:
            start, before = pos - pos % self.min_block, pos
            ask = min(aligned_end - start, MAX_EFFECT_LENGTH)
            reply = self._transact(NBD_CMD_BLOCK_STATUS, start, ask)
            wanted = self._context_ids[context]
            descriptors = [d for ctx, d in reply if ctx == wanted]
            if len(descriptors) != 1:
                self._fail('block status reply without one %s chunk'
                           % context)
            for ext_len, flags in struct.iter_unpack('>II', descriptors[0]):
                if not ext_len:
                    self._fail('block status extent of length 0')
                ext_end = min(start + ext_len, end)
                if ext_end > pos:
                    if extents and extents[-1][2] == flags and \
                            sum(extents[-1][:2]) == pos:
                        extents[-1] = (extents[-1][0],
                                       ext_end - extents[-1][0], flags)
                    else:
                        extents.append((pos, ext_end - pos, flags))
                    pos = ext_end
                start += ext_len
                if start >= end:
                    break
            if pos == before:
                self._fail('block status reply made no progress at offset %d'
                           % pos)
        return extents

    def close(self) -> None:
        with self._lock:
            if self._closed_because is None:
                try:
                    self._sock.sendall(_REQUEST.pack(
                        NBD_REQUEST_MAGIC, 0, NBD_CMD_DISC,
                        next(self._cookies), 0, 0))
                except OSError:
                    pass    # gone already: closing is all that is left
                self._drop('the client closed it')

    def __enter__(self) -> 'NbdClient':
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- internals ---------------------------------------------------------

    def _check_range(self, offset, length):
        if offset < 0 or length < 0 or offset + length > self.size:
            raise exception.NbdError(
                url=self._url, reason='range %d+%d is outside the export '
                '(size %d)' % (offset, length, self.size))

    def _check_write(self, offset, length):
        self._check_range(offset, length)
        if self.read_only:
            raise exception.NbdError(
                url=self._url, reason='connected read-only; connect with '
                'writable=True to a writable export to write')
        if offset % self.min_block or length % self.min_block:
            raise exception.NbdError(
                url=self._url, reason='write %d+%d is not aligned to the '
                'server\'s %d-byte blocks' % (offset, length, self.min_block))

    def _transact(self, command, offset, length, flags=0, payload=None,
                  into=None):
        """One request and its whole reply; block status descriptors out."""
        with self._lock:
            if self._closed_because is not None:
                raise exception.NbdError(url=self._url, reason='connection '
                                         'closed: %s' % self._closed_because)
            cookie = next(self._cookies)
            self._send(_REQUEST.pack(NBD_REQUEST_MAGIC, flags, command,
                                     cookie, offset, length))
            if payload is not None:
                self._send(payload)
            error, status = self._read_reply(command, cookie, offset, length,
                                             into)
        if error:
            code, message = error
            if code == NBD_ESHUTDOWN:
                self.close()
            raise exception.NbdError(url=self._url, reason='%s of %d bytes at '
                                     'offset %d failed: %s%s' % (
                                         COMMAND_NAMES[command], length,
                                         offset, os.strerror(code),
                                         message and ' (%s)' % message))
        return status

    def _read_reply(self, command, cookie, offset, length, into):
        error, status, covered, done = None, [], 0, False
        while not done:
            magic = struct.unpack('>I', self._recv(4))[0]
            if magic == NBD_SIMPLE_REPLY_MAGIC:
                code, got = _SIMPLE_REPLY.unpack(
                    self._recv(_SIMPLE_REPLY.size))
                self._check_cookie(got, cookie)
                if command == NBD_CMD_READ and self._structured:
                    self._fail('simple reply to a structured read')
                if code:
                    return (code, ''), status
                if command == NBD_CMD_READ:
                    self._recv_into(into)
                return None, status
            if magic != NBD_STRUCTURED_REPLY_MAGIC or not self._structured:
                self._fail('bad reply magic %#x' % magic)
            chunk_flags, kind, got, size = _CHUNK.unpack(
                self._recv(_CHUNK.size))
            self._check_cookie(got, cookie)
            done = chunk_flags & NBD_REPLY_FLAG_DONE
            if kind & NBD_REPLY_TYPE_ERROR_BIT and size >= 6:
                body = self._recv(size)
                code, text_len = struct.unpack('>IH', body[:6])
                error = error or (code or 5, body[6:6 + text_len].decode(
                    'utf-8', 'replace'))
            elif kind in (NBD_REPLY_TYPE_OFFSET_DATA,
                          NBD_REPLY_TYPE_OFFSET_HOLE) and \
                    command == NBD_CMD_READ and size >= 9:
                at = struct.unpack('>Q', self._recv(8))[0] - offset
                if kind == NBD_REPLY_TYPE_OFFSET_HOLE:
                    if size != 12:
                        self._fail('bad hole chunk length %d' % size)
                    span = struct.unpack('>I', self._recv(4))[0]
                else:
                    span = size - 8
                if at < 0 or at + span > length:
                    self._fail('read chunk outside the request')
                if kind == NBD_REPLY_TYPE_OFFSET_HOLE:
                    into[at:at + span] = bytes(span)
                else:
                    self._recv_into(into[at:at + span])
                covered += span
            elif kind == NBD_REPLY_TYPE_BLOCK_STATUS and \
                    command == NBD_CMD_BLOCK_STATUS and size >= 12 and \
                    (size - 4) % 8 == 0:
                body = self._recv(size)
                status.append((struct.unpack('>I', body[:4])[0], body[4:]))
            elif kind != NBD_REPLY_TYPE_NONE or size:
                self._fail('unexpected reply chunk type %d (length %d) to %s'
                           % (kind, size, COMMAND_NAMES[command]))
        if not error and command == NBD_CMD_READ and covered != length:
            self._fail('read reply covered %d of %d bytes' % (covered, length))
        return error, status

    def _check_cookie(self, got, cookie):
        if got != cookie:
            self._fail('reply for request %d while waiting for %d'
                       % (got, cookie))

    def _fail(self, reason):
        """The stream can no longer be trusted: drop it and say why."""
        self._drop(reason)
        raise exception.NbdError(url=self._url, reason=reason)

    def _drop(self, reason):
        if self._closed_because is None:
            self._closed_because = reason
            self._sock.close()

    def _io_error(self, e):
        if isinstance(e, socket.timeout):
            self._fail('no answer within %ss' % self._sock.gettimeout())
        self._fail('connection lost (%s)' % e)

    def _send(self, data):
        try:
            self._sock.sendall(data)
        except OSError as e:
            self._io_error(e)

    def _recv(self, length):
        buffer = bytearray(length)
        self._recv_into(memoryview(buffer))
        return bytes(buffer)

    def _recv_into(self, view):
        pos = 0
        while pos < len(view):
            try:
                got = self._sock.recv_into(view[pos:])
            except OSError as e:
                self._io_error(e)
            if not got:
                self._fail('the server closed the connection')
            pos += got


def _merged(extents):
    """Join touching (offset, length, key) extents with equal keys."""
    current = None
    for offset, length, key in extents:
        if current and sum(current[:2]) == offset and current[2] == key:
            current = (current[0], current[1] + length, key)
            continue
        if current:
            yield current
        current = (offset, length, key)
    if current:
        yield current


def _whole_export(client, context):
    """Block status of the whole export, a bounded span per call."""
    for pos in range(0, client.size, MAX_EFFECT_LENGTH):
        yield from client.block_status(
            pos, min(MAX_EFFECT_LENGTH, client.size - pos), context)


def data_extents(client: NbdClient) -> Iterator[Tuple[int, int, bool]]:
    """(offset, length, is_zero) of every range a backup must account for.

    Needs ``base:allocation`` among the client's meta contexts. Holes that
    read as zeroes are left out. A hole the server does not promise reads
    as zeroes is reported as data: only reading it says what a restore must
    reproduce. ``is_zero`` ranges (allocated zeroes) need no read.
    """
    yield from _merged(
        (offset, length, bool(flags & NBD_STATE_ZERO))
        for offset, length, flags in _whole_export(client, BASE_ALLOCATION)
        if not (flags & NBD_STATE_HOLE and flags & NBD_STATE_ZERO))


def allocated_extents(client: NbdClient) -> Iterator[Tuple[int, int]]:
    """(offset, length) of the ranges that are not zero holes, merged."""
    for offset, length, _ in _merged(
            (offset, length, None)
            for offset, length, _ in data_extents(client)):
        yield offset, length


def dirty_bitmap_context(bitmap: str) -> str:
    """The meta context name qemu gives a dirty bitmap it exports."""
    return DIRTY_BITMAP_PREFIX + bitmap


def dirty_extents(client: NbdClient, bitmap: str) -> Iterator[Tuple[int, int]]:
    """(offset, length) of the ranges the dirty bitmap marks as changed.

    Needs ``dirty_bitmap_context(bitmap)`` among the client's contexts.
    """
    context = dirty_bitmap_context(bitmap)
    for offset, length, _ in _merged(
            (offset, length, None)
            for offset, length, flags in _whole_export(client, context)
            if flags & NBD_STATE_DIRTY):
        yield offset, length
