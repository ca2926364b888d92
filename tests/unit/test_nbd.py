"""chunkbackup.nbd: URL parsing, and protocol framing against a fake server.

The fake server speaks just enough NBD to drive the client through what
qemu-nbd rarely does on its own: chunks out of order, short block status
replies, error chunks, wrong cookies, a connection closed mid-reply. The
real server is exercised in tests/functional/test_nbd.py.
"""
import socket
import struct
import threading

import pytest

from chunkbackup import exception
from chunkbackup import nbd

KiB = 1 << 10


# -- URLs -----------------------------------------------------------------

@pytest.mark.parametrize('url, address', [
    ('nbd://example.org/vol', nbd.NbdAddress('vol', host='example.org')),
    ('nbd://10.0.0.1:1234/a%20b', nbd.NbdAddress('a b', host='10.0.0.1',
                                                 port=1234)),
    ('nbd://[::1]:5/x', nbd.NbdAddress('x', host='::1', port=5)),
    ('nbd://host', nbd.NbdAddress('', host='host')),
    ('nbd+unix:///vol?socket=/run/s.sock',
     nbd.NbdAddress('vol', socket_path='/run/s.sock')),
    ('nbd+unix:///?socket=relative.sock',
     nbd.NbdAddress('', socket_path='relative.sock')),
])
def test_parse_url(url, address):
    assert nbd.parse_url(url) == address
    assert nbd.parse_url(str(address)) == address


@pytest.mark.parametrize('url', [
    'nbds://host/vol', 'nbds+unix:///vol?socket=/s', 'nbd+unix:///vol',
    'nbd+unix:///vol?socket=', 'nbd+unix://host/vol?socket=/s',
    'nbd+unix:///vol?socket=/s&tls=on', 'nbd:///vol', 'nbd://h/vol?tls=on',
    'nbd://h:port/vol', 'http://h/vol', '/dev/sda', 'nbd://h/vol#frag',
])
def test_parse_url_refuses(url):
    with pytest.raises(exception.InvalidConfiguration) as info:
        nbd.parse_url(url)
    message = str(info.value)
    assert 'use nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH' \
        in message and repr(url) in message and '\n' not in message


# -- a fake server ----------------------------------------------------------

class FakeServer:
    """Serves one export over a unix socket, one connection at a time."""

    def __init__(self, path, size=256 * KiB, structured=True,
                 contexts=(nbd.BASE_ALLOCATION,), block_size=None,
                 flags=(nbd.NBD_FLAG_SEND_FLUSH | nbd.NBD_FLAG_SEND_TRIM |
                        nbd.NBD_FLAG_SEND_WRITE_ZEROES),
                 extents=None, max_extents=2, fault=None):
        self.path, self.size, self.structured = path, size, structured
        self.contexts = {name: i + 7 for i, name in enumerate(contexts)}
        self.block_size, self.flags = block_size, flags | 1
        self.data = bytearray(size)
        self.extents = extents or {}    # context -> [(length, flags)]
        self.max_extents = max_extents
        self.fault = fault              # (request) -> True when it answered
        self.requests = []
        # Set when NBD_CMD_DISC arrives: the client does not wait for it.
        self.disconnected = threading.Event()
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(path)
        self.listener.listen(4)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        self.url = 'nbd+unix:///vol?socket=%s' % path

    def close(self):
        self.listener.close()

    def _serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                self.conn = conn
                try:
                    if self._negotiate():
                        self._transmit()
                except (OSError, struct.error):
                    pass

    def _recv(self, n):
        data = b''
        while len(data) < n:
            got = self.conn.recv(n - len(data))
            if not got:
                raise OSError('client went away')
            data += got
        return data

    def _option_reply(self, option, reply, data=b''):
        self.conn.sendall(struct.pack('>QIII', nbd.OPTION_REPLY_MAGIC, option,
                                      reply, len(data)) + data)

    def _negotiate(self):
        self.conn.sendall(struct.pack('>QQH', nbd.NBDMAGIC, nbd.IHAVEOPT,
                                      nbd.NBD_FLAG_FIXED_NEWSTYLE))
        assert struct.unpack('>I', self._recv(4))[0] == \
            nbd.NBD_FLAG_C_FIXED_NEWSTYLE
        while True:
            magic, option, length = struct.unpack('>QII', self._recv(16))
            data = self._recv(length)
            if option == nbd.NBD_OPT_STRUCTURED_REPLY:
                self._option_reply(option, nbd.NBD_REP_ACK if self.structured
                                   else nbd.NBD_REP_FLAG_ERROR + 1)
            elif option == nbd.NBD_OPT_SET_META_CONTEXT:
                pos = 4 + struct.unpack('>I', data[:4])[0] + 4
                while pos < len(data):
                    n = struct.unpack('>I', data[pos:pos + 4])[0]
                    query = data[pos + 4:pos + 4 + n].decode()
                    pos += 4 + n
                    if query in self.contexts:
                        self._option_reply(option, nbd.NBD_REP_META_CONTEXT,
                                           struct.pack('>I', self.contexts[
                                               query]) + query.encode())
                self._option_reply(option, nbd.NBD_REP_ACK)
            elif option == nbd.NBD_OPT_GO:
                name = data[4:4 + struct.unpack('>I', data[:4])[0]]
                if name != b'vol':
                    self._option_reply(option, nbd.NBD_REP_FLAG_ERROR + 6,
                                       b'export unknown')
                    continue
                self._option_reply(option, nbd.NBD_REP_INFO, struct.pack(
                    '>HQH', nbd.NBD_INFO_EXPORT, self.size, self.flags))
                if self.block_size:
                    self._option_reply(option, nbd.NBD_REP_INFO, struct.pack(
                        '>HIII', nbd.NBD_INFO_BLOCK_SIZE, *self.block_size))
                self._option_reply(option, nbd.NBD_REP_ACK)
                return True

    def _simple(self, cookie, error=0, data=b''):
        self.conn.sendall(struct.pack('>IIQ', nbd.NBD_SIMPLE_REPLY_MAGIC,
                                      error, cookie) + data)

    def chunk(self, cookie, kind, payload=b'', done=False):
        self.conn.sendall(struct.pack(
            '>IHHQI', nbd.NBD_STRUCTURED_REPLY_MAGIC,
            nbd.NBD_REPLY_FLAG_DONE if done else 0, kind, cookie,
            len(payload)) + payload)

    def _transmit(self):
        while True:
            magic, flags, command, cookie, offset, length = struct.unpack(
                '>IHHQQI', self._recv(28))
            request = (command, flags, offset, length)
            self.requests.append(request)
            if command == nbd.NBD_CMD_DISC:
                self.disconnected.set()
                return
            payload = self._recv(length) if command == nbd.NBD_CMD_WRITE \
                else b''
            if self.fault and self.fault(self, cookie, request):
                continue
            end = offset + length
            if command == nbd.NBD_CMD_READ and self.structured:
                # Second half first, and zeroes as a hole: both allowed.
                half = offset + length // 2
                for start, stop in ((half, end), (offset, half)):
                    piece = bytes(self.data[start:stop])
                    if piece and not any(piece):
                        self.chunk(cookie, nbd.NBD_REPLY_TYPE_OFFSET_HOLE,
                                   struct.pack('>QI', start, len(piece)))
                    elif piece:
                        self.chunk(cookie, nbd.NBD_REPLY_TYPE_OFFSET_DATA,
                                   struct.pack('>Q', start) + piece)
                self.chunk(cookie, nbd.NBD_REPLY_TYPE_NONE, done=True)
            elif command == nbd.NBD_CMD_READ:
                self._simple(cookie, data=bytes(self.data[offset:end]))
            elif command == nbd.NBD_CMD_BLOCK_STATUS:
                for name, ident in self.contexts.items():
                    self.chunk(cookie, nbd.NBD_REPLY_TYPE_BLOCK_STATUS,
                               struct.pack('>I', ident) + self._status(
                                   name, offset, end))
                self.chunk(cookie, nbd.NBD_REPLY_TYPE_NONE, done=True)
            else:
                if command == nbd.NBD_CMD_WRITE:
                    self.data[offset:end] = payload
                elif command in (nbd.NBD_CMD_WRITE_ZEROES, nbd.NBD_CMD_TRIM):
                    self.data[offset:end] = bytes(length)
                self._simple(cookie)

    def _status(self, name, offset, end):
        """At most max_extents descriptors; the last may overrun ``end``."""
        out, pos = [], 0
        for length, flags in self.extents.get(name, [(self.size, 0)]):
            if pos + length > offset and pos < end and \
                    len(out) < self.max_extents:
                out.append(struct.pack('>II', pos + length - max(pos, offset),
                                       flags))
            pos += length
        return b''.join(out)


@pytest.fixture
def serve(tmp_path):
    started = []

    def serve_(**kwargs):
        server = FakeServer(str(tmp_path / ('s%d' % len(started))), **kwargs)
        started.append(server)
        return server
    yield serve_
    for server in started:
        server.close()


# -- transmission -------------------------------------------------------------

def test_reads_chunks_out_of_order_and_zeroes_holes(serve):
    server = serve()
    server.data[1000:3000] = b'x' * 2000
    with nbd.NbdClient.connect(server.url) as client:
        assert (client.size, client.read_only) == (256 * KiB, True)
        buffer = bytearray(b'\xff' * 8000)     # its second half is a hole
        assert client.preadinto(buffer, 0) == 8000
        assert buffer == server.data[:8000]
        assert client.pread(10, 2995) == b'xxxxx' + bytes(5)


def test_reads_split_by_the_advertised_maximum(serve):
    server = serve(block_size=(512, 4096, 64 * KiB))
    server.data[:] = bytes(range(256)) * KiB
    with nbd.NbdClient.connect(server.url) as client:
        # Unaligned: read whole 512-byte blocks, return the bytes asked for.
        assert client.pread(200 * KiB, 1001) == \
            bytes(server.data[1001:1001 + 200 * KiB])
    reads = [r for r in server.requests if r[0] == nbd.NBD_CMD_READ]
    assert [r[3] for r in reads] == [64 * KiB] * 3 + [8 * KiB + 512]
    assert all(offset % 512 == 0 for _, _, offset, _ in reads)


def test_simple_replies_when_structured_is_refused(serve):
    server = serve(structured=False)
    server.data[5:9] = b'abcd'
    with nbd.NbdClient.connect(server.url) as client:
        assert client.pread(6, 4) == b'\0abcd\0'
    with pytest.raises(exception.NbdError, match='no structured replies'):
        nbd.NbdClient.connect(server.url, meta_contexts=['base:allocation'])


def test_block_status_loops_over_short_replies(serve):
    hole_zero = nbd.NBD_STATE_HOLE | nbd.NBD_STATE_ZERO
    dirty = nbd.dirty_bitmap_context('b1')
    server = serve(contexts=(nbd.BASE_ALLOCATION, dirty), extents={
        nbd.BASE_ALLOCATION: [(64 * KiB, 0), (32 * KiB, hole_zero),
                              (32 * KiB, nbd.NBD_STATE_ZERO),
                              (32 * KiB, nbd.NBD_STATE_HOLE),
                              (96 * KiB, hole_zero)],
        dirty: [(16 * KiB, 1), (16 * KiB, 1), (64 * KiB, 0),
                (160 * KiB, 1)]}, max_extents=1)
    with nbd.NbdClient.connect(server.url,
                               meta_contexts=[nbd.BASE_ALLOCATION,
                                              dirty]) as client:
        assert client.contexts == (nbd.BASE_ALLOCATION, dirty)
        assert client.block_status(1000, 100 * KiB, nbd.BASE_ALLOCATION) == [
            (1000, 64 * KiB - 1000, 0), (64 * KiB, 32 * KiB, hole_zero),
            (96 * KiB, 1000 + 4 * KiB, nbd.NBD_STATE_ZERO)]
        # A hole not promised to read as zeroes is data; zeroes need no read.
        assert list(nbd.data_extents(client)) == [
            (0, 64 * KiB, False), (96 * KiB, 32 * KiB, True),
            (128 * KiB, 32 * KiB, False)]
        assert list(nbd.allocated_extents(client)) == [
            (0, 64 * KiB), (96 * KiB, 64 * KiB)]
        assert client.block_status(0, 128 * KiB, dirty) == [
            (0, 32 * KiB, 1), (32 * KiB, 64 * KiB, 0), (96 * KiB, 32 * KiB, 1)]
        assert list(nbd.dirty_extents(client, 'b1')) == [
            (0, 32 * KiB), (96 * KiB, 160 * KiB)]
    status = [r for r in server.requests if r[0] == nbd.NBD_CMD_BLOCK_STATUS]
    assert len(status) > 3     # one extent per reply, so several requests


def test_writes_zeroes_trim_flush(serve, monkeypatch):
    monkeypatch.setattr(nbd, 'MAX_EFFECT_LENGTH', 16 * KiB)
    server = serve()
    server.data[:] = b'\xaa' * server.size
    with nbd.NbdClient.connect(server.url, writable=True) as client:
        assert not client.read_only
        client.pwrite(b'hello', 7)
        client.write_zeroes(32 * KiB, 40 * KiB)
        client.write_zeroes(0, 4, punch=False)
        client.trim(128 * KiB, KiB)
        client.flush()
    assert server.data[:12] == b'\0\0\0\0\xaa\xaa\xaahello'
    assert server.data[32 * KiB:72 * KiB] == bytes(40 * KiB)
    assert server.data[72 * KiB] == 0xaa
    zeroes = [(flags, offset, length) for command, flags, offset, length
              in server.requests if command == nbd.NBD_CMD_WRITE_ZEROES]
    assert zeroes == [(0, 32 * KiB, 16 * KiB), (0, 48 * KiB, 16 * KiB),
                      (0, 64 * KiB, 8 * KiB),
                      (nbd.NBD_CMD_FLAG_NO_HOLE, 0, 4)]
    assert server.disconnected.wait(30)
    commands = [r[0] for r in server.requests]
    assert commands[-3:] == [nbd.NBD_CMD_TRIM, nbd.NBD_CMD_FLUSH,
                             nbd.NBD_CMD_DISC]


def test_without_server_support_zeroes_are_written_trim_and_flush_skipped(
        serve):
    server = serve(flags=0)
    server.data[:] = b'\xaa' * server.size
    with nbd.NbdClient.connect(server.url, writable=True) as client:
        assert not (client.can_zero or client.can_trim or client.can_flush)
        client.write_zeroes(10, 100)
        client.trim(0, 10)
        client.flush()
    assert server.data[:120] == b'\xaa' * 10 + bytes(100) + b'\xaa' * 10
    assert server.disconnected.wait(30)
    assert [r[0] for r in server.requests] == [nbd.NBD_CMD_WRITE,
                                               nbd.NBD_CMD_DISC]


def test_error_chunk_is_one_line_and_the_client_goes_on(serve):
    def fail_first_read(server, cookie, request):
        if request[0] == nbd.NBD_CMD_READ and len(server.requests) == 1:
            message = b'I/O error on the backing file'
            server.chunk(cookie, 0x8001, struct.pack('>IH', 5, len(message))
                         + message, done=True)
            return True
    server = serve(fault=fail_first_read)
    with nbd.NbdClient.connect(server.url) as client:
        with pytest.raises(exception.NbdError) as info:
            client.pread(512, 4096)
        assert str(info.value) == (
            'NBD %s: read of 512 bytes at offset 4096 failed: Input/output '
            'error (I/O error on the backing file)' % server.url)
        assert client.pread(4, 0) == bytes(4)


@pytest.mark.parametrize('fault, message', [
    (lambda s, cookie, r: s.chunk(cookie + 1, nbd.NBD_REPLY_TYPE_NONE,
                                  done=True) or True,
     'reply for request 2 while waiting for 1'),
    (lambda s, cookie, r: s.conn.sendall(struct.pack(
        '>IHHQI', nbd.NBD_STRUCTURED_REPLY_MAGIC, 0,
        nbd.NBD_REPLY_TYPE_OFFSET_DATA, cookie, 108)) or s.conn.close(),
     'the server closed the connection'),
    (lambda s, cookie, r: s.chunk(cookie, nbd.NBD_REPLY_TYPE_NONE,
                                  done=True) or True,
     'read reply covered 0 of 100 bytes'),
    (lambda s, cookie, r: s.chunk(cookie, 77, b'?', done=True) or True,
     'unexpected reply chunk type 77'),
    (lambda s, cookie, r: True, r'no answer within 0\.5s'),
])
def test_broken_replies_close_the_client(serve, fault, message):
    server = serve(fault=fault)
    client = nbd.NbdClient.connect(server.url, timeout=0.5)
    with pytest.raises(exception.NbdError, match=message):
        client.pread(100, 0)
    with pytest.raises(exception.NbdError, match='connection closed: '):
        client.pread(100, 0)
    client.close()


def test_threads_share_one_client(serve):
    server = serve(size=1024 * KiB)
    server.data[:] = bytes(range(256)) * (4 * KiB)
    errors = []

    def reader(client, start):
        try:
            for offset in range(start, server.size - 4 * KiB, 37 * KiB):
                if client.pread(3 * KiB, offset) != \
                        server.data[offset:offset + 3 * KiB]:
                    errors.append(offset)
        except exception.NbdError as e:
            errors.append(e)
    with nbd.NbdClient.connect(server.url) as client:
        threads = [threading.Thread(target=reader, args=(client, i * 1001))
                   for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []


def test_negotiation_refusals(serve, tmp_path):
    server = serve(flags=nbd.NBD_FLAG_READ_ONLY)
    with pytest.raises(exception.NbdError, match=r"export 'vol' does not "
                       r"offer meta context qemu:allocation-depth"):
        nbd.NbdClient.connect(server.url,
                              meta_contexts=['qemu:allocation-depth'])
    with pytest.raises(exception.NbdError, match=r"dirty bitmap 'b2' "
                       r".*qemu-nbd -B b2"):
        nbd.NbdClient.connect(server.url, meta_contexts=[
            nbd.dirty_bitmap_context('b2')])
    with pytest.raises(exception.NbdError, match="opening export 'other': no "
                       r"such export on this server \(export unknown\)"):
        nbd.NbdClient.connect(server.url.replace('/vol', '/other'))
    with pytest.raises(exception.NbdError, match='read-only'):
        nbd.NbdClient.connect(server.url, writable=True)
    with nbd.NbdClient.connect(server.url) as client:
        with pytest.raises(exception.NbdError, match='was not negotiated'):
            client.block_status(0, 1, nbd.BASE_ALLOCATION)
        with pytest.raises(exception.NbdError, match='outside the export'):
            client.pread(1, server.size)
    missing = 'nbd+unix:///vol?socket=%s' % (tmp_path / 'nobody')
    with pytest.raises(exception.NbdError, match='cannot connect'):
        nbd.NbdClient.connect(missing)
