"""chunkbackup.nbd against the real qemu-nbd, checked with qemu's own tools.

Reads are compared with the image bytes (qemu-img convert for qcow2),
allocation with SEEK_DATA/SEEK_HOLE on the raw file and with nbdinfo --map,
dirty extents with what qemu-io wrote after the bitmap was added and with
nbdinfo --map=qemu:dirty-bitmap:NAME.
"""
import os
import re

import pytest

from chunkbackup import exception
from chunkbackup import nbd
from tests.functional.servers import qemu_nbd

MiB = 1 << 20
KiB = 1 << 10
TRANSPORTS = ['unix', 'tcp']


@pytest.fixture(scope='module', autouse=True)
def qemu_tools():
    missing = qemu_nbd.missing_tools()
    if missing:
        pytest.fail('%s not installed; run: %s' % (
            ', '.join(missing), qemu_nbd.INSTALL), pytrace=False)


def _file_data_ranges(path):
    """Allocated ranges of a sparse file, as the kernel reports them."""
    ranges, pos, size = [], 0, os.path.getsize(path)
    with open(path, 'rb') as f:
        while pos < size:
            try:
                start = os.lseek(f.fileno(), pos, os.SEEK_DATA)
            except OSError:
                break
            pos = os.lseek(f.fileno(), start, os.SEEK_HOLE)
            ranges.append((start, pos - start))
    return ranges


def _merge(ranges):
    merged = []
    for offset, length in ranges:
        if merged and sum(merged[-1]) == offset:
            merged[-1] = (merged[-1][0], merged[-1][1] + length)
        else:
            merged.append((offset, length))
    return merged


def _nbdinfo_not_zero_holes(url):
    """nbdinfo's base:allocation, read by the rule data_extents uses."""
    hole_zero = nbd.NBD_STATE_HOLE | nbd.NBD_STATE_ZERO
    return _merge((o, n) for o, n, t in qemu_nbd.nbdinfo_map(url)
                  if t & hole_zero != hole_zero)


def _make_sparse_raw(path):
    """80 MiB, mostly holes; one data run longer than 32 MiB."""
    pieces = {0: os.urandom(64 * KiB), 5 * MiB + 4096: os.urandom(MiB),
              40 * MiB: os.urandom(33 * MiB), 80 * MiB - 4096: b'z' * 4096}
    with open(path, 'wb') as f:
        f.truncate(80 * MiB)
        for offset, data in pieces.items():
            f.seek(offset)
            f.write(data)
    with open(path, 'rb') as f:
        return f.read()


def _check_reads(client, image_bytes):
    assert client.pread(client.size, 0) == image_bytes
    odd = 12345
    assert client.pread(40 * MiB + 7, odd) == image_bytes[odd:odd + 40 * MiB
                                                          + 7]
    # A reused buffer: holes the server skips must still be zeroed.
    view = memoryview(bytearray(b'\xff' * (3 * MiB + 3)))
    assert client.preadinto(view, 5 * MiB + 1) == len(view)
    assert bytes(view) == image_bytes[5 * MiB + 1:8 * MiB + 4]
    assert client.pread(0, client.size) == b''


@pytest.mark.parametrize('transport', TRANSPORTS)
def test_sparse_raw_reads_and_allocation(tmp_path, transport):
    image = str(tmp_path / 'disk.raw')
    image_bytes = _make_sparse_raw(image)
    truth = _merge(_file_data_ranges(image))
    assert len(truth) >= 4     # the file system kept it sparse
    with qemu_nbd.serving(image, 'raw', tcp=transport == 'tcp') as server:
        with nbd.NbdClient.connect(server.url,
                                   meta_contexts=[nbd.BASE_ALLOCATION]) as c:
            assert (c.size, c.read_only) == (80 * MiB, True)
            assert c.contexts == (nbd.BASE_ALLOCATION,)
            _check_reads(c, image_bytes)
            assert list(nbd.allocated_extents(c)) == truth
            assert list(nbd.allocated_extents(c)) == \
                _nbdinfo_not_zero_holes(server.url)
            assert all(not is_zero for _, _, is_zero in nbd.data_extents(c))
            # An unaligned query is answered exactly, with no gaps.
            extents = c.block_status(4097, 41 * MiB + 3, nbd.BASE_ALLOCATION)
            assert extents[0][0] == 4097
            assert sum(n for _, n, _ in extents) == 41 * MiB + 3
            assert all(sum(a[:2]) == b[0] for a, b in zip(extents,
                                                          extents[1:]))


@pytest.mark.parametrize('transport', TRANSPORTS)
def test_qcow2_allocation_and_dirty_bitmap(tmp_path, transport):
    image = str(tmp_path / 'disk.qcow2')
    qemu_nbd.run('qemu-img', 'create', '-q', '-f', 'qcow2', image, '96M')
    qemu_nbd.qemu_io(image, 'qcow2', 'write -P 0x41 0 1M',
                     'write -P 0x42 50M 2M')
    qemu_nbd.run('qemu-img', 'bitmap', '--add', image, 'b1')
    # After the bitmap (64 KiB granularity): these become dirty.
    qemu_nbd.qemu_io(image, 'qcow2',
                     'write -P 0x43 %d 8192' % (3 * MiB + 4097),
                     'write -P 0x44 40M 33M', 'write -z 80M 1M',
                     'write -P 0x45 %d 512' % (95 * MiB + 65536))
    dirty = [(3 * MiB, 64 * KiB), (40 * MiB, 33 * MiB), (80 * MiB, MiB),
             (95 * MiB + 64 * KiB, 64 * KiB)]
    raw = str(tmp_path / 'disk.raw')
    qemu_nbd.run('qemu-img', 'convert', '-f', 'qcow2', '-O', 'raw', image, raw)
    with open(raw, 'rb') as f:
        image_bytes = f.read()
    context = nbd.dirty_bitmap_context('b1')
    assert context == 'qemu:dirty-bitmap:b1'
    with qemu_nbd.serving(image, 'qcow2', tcp=transport == 'tcp',
                          bitmaps=['b1']) as server:
        with nbd.NbdClient.connect(
                server.url, meta_contexts=[nbd.BASE_ALLOCATION, context]) as c:
            assert c.size == 96 * MiB
            assert sorted(c.contexts) == [nbd.BASE_ALLOCATION, context]
            _check_reads(c, image_bytes)
            assert list(nbd.dirty_extents(c, 'b1')) == dirty
            assert list(nbd.dirty_extents(c, 'b1')) == _merge(
                (o, n) for o, n, t in qemu_nbd.nbdinfo_map(server.url, context)
                if t & 1)
            allocated = list(nbd.allocated_extents(c))
            assert allocated == _nbdinfo_not_zero_holes(server.url)
            data = [(o, n) for o, n, is_zero in nbd.data_extents(c)
                    if not is_zero]
            for written in [(0, MiB), (50 * MiB, 2 * MiB),
                            (3 * MiB, 64 * KiB), (40 * MiB, 33 * MiB)]:
                assert any(o <= written[0] and sum(written) <= o + n
                           for o, n in data), (written, data)
            never_written = (MiB, 2 * MiB)
            assert not any(o < sum(never_written) and never_written[0] < o + n
                           for o, n in allocated)


def test_writes_zeroes_trim_flush(tmp_path):
    image = str(tmp_path / 'disk.raw')
    original = os.urandom(48 * MiB)
    with open(image, 'wb') as f:
        f.write(original)
    expected = bytearray(original)
    big = os.urandom(40 * MiB + 3)
    punched, kept, trimmed = (44 * MiB, MiB), (46 * MiB, MiB), (47 * MiB,
                                                                64 * KiB)
    with qemu_nbd.serving(image, 'raw', writable=True,
                          extra=['--discard=unmap']) as server:
        with nbd.NbdClient.connect(server.url, writable=True) as c:
            assert not c.read_only
            assert (c.can_zero, c.can_trim, c.can_flush) == (True,) * 3
            c.pwrite(big, 1001)
            expected[1001:1001 + len(big)] = big
            blocks = os.stat(image).st_blocks
            c.write_zeroes(*punched)
            c.write_zeroes(*kept, punch=False)
            c.trim(*trimmed)
            c.flush()
            freed = (blocks - os.stat(image).st_blocks) * 512
            for offset, length in (punched, kept):
                expected[offset:offset + length] = bytes(length)
            assert c.pread(len(big) + 2, 1000) == bytes(
                expected[1000:1002 + len(big)])
    # The punched and trimmed ranges were given back; the kept one was not
    # (a few KiB either way for the file system's own extent blocks).
    assert abs(freed - (punched[1] + trimmed[1])) <= 64 * KiB, freed
    with open(image, 'rb') as f:
        written = f.read()
    start, length = trimmed     # its contents are undefined after a trim
    assert written[:start] == expected[:start]
    assert written[start + length:] == expected[start + length:]


def test_missing_bitmap_is_one_clear_line(tmp_path):
    image = str(tmp_path / 'disk.qcow2')
    qemu_nbd.run('qemu-img', 'create', '-q', '-f', 'qcow2', image, '8M')
    qemu_nbd.run('qemu-img', 'bitmap', '--add', image, 'b1')
    # b1 is in the image, but qemu-nbd exports only the bitmaps given -B.
    with qemu_nbd.serving(image, 'qcow2', export='disk1') as server:
        with pytest.raises(exception.NbdError) as info:
            nbd.NbdClient.connect(server.url, meta_contexts=[
                nbd.BASE_ALLOCATION, nbd.dirty_bitmap_context('b1')])
        message = str(info.value)
        assert "export 'disk1' has no dirty bitmap 'b1'" in message
        assert 'qemu-nbd -B b1' in message and '\n' not in message
        # The refusal left the server able to serve the next client.
        with nbd.NbdClient.connect(server.url,
                                   meta_contexts=[nbd.BASE_ALLOCATION]) as c:
            assert list(nbd.allocated_extents(c)) == []
            with pytest.raises(exception.NbdError, match='was not '
                               'negotiated'):
                list(nbd.dirty_extents(c, 'b1'))


def test_refusals(tmp_path):
    image = str(tmp_path / 'disk.raw')
    with open(image, 'wb') as f:
        f.truncate(MiB)
    with qemu_nbd.serving(image, 'raw', tcp=True) as server:
        other = re.sub(r'/vol$', '/nope', server.url)
        with pytest.raises(exception.NbdError,
                           match="export 'nope': no such export"):
            nbd.NbdClient.connect(other)
        with pytest.raises(exception.NbdError, match='is read-only; serve '
                           'it writable'):
            nbd.NbdClient.connect(server.url, writable=True)
        with nbd.NbdClient.connect(server.url) as c:
            with pytest.raises(exception.NbdError, match='connected '
                               'read-only'):
                c.pwrite(b'x', 0)
            with pytest.raises(exception.NbdError, match='outside the '
                               'export'):
                c.pread(2, MiB - 1)
            assert c.pread(1, MiB - 1) == b'\0'


@pytest.mark.parametrize('transport', TRANSPORTS)
def test_dead_server(tmp_path, transport):
    image = str(tmp_path / 'disk.raw')
    with open(image, 'wb') as f:
        f.truncate(MiB)
    with qemu_nbd.serving(image, 'raw', tcp=transport == 'tcp') as server:
        client = nbd.NbdClient.connect(server.url, timeout=10)
        assert client.pread(4096, 0) == bytes(4096)
        server.stop()
        with pytest.raises(exception.NbdError) as info:
            client.pread(4096, 0)
        assert re.search('server closed the connection|connection lost',
                         str(info.value)), info.value
        with pytest.raises(exception.NbdError, match='connection closed'):
            client.pread(4096, 0)
        client.close()
        with pytest.raises(exception.NbdError) as info:
            nbd.NbdClient.connect(server.url, timeout=10)
        assert 'cannot connect' in str(info.value)
        assert 'is the NBD server (qemu-nbd) running' in str(info.value)
