"""Backups of NBD exports and restores into them, through the real CLI.

qemu-nbd serves a sparse raw file and a qcow2 with a persistent dirty
bitmap. The expected statistics are worked out here from nbdinfo's maps
(base:allocation and qemu:dirty-bitmap:b1), the expected images from
``qemu-img convert -O raw``.
"""
import json
import os

import pytest

from tests.functional.clitool import Cli
from tests.functional.servers import qemu_nbd

KiB = 1 << 10
MiB = 1 << 20
BS = 16384  # the Cli's [chunkbackup] sha_block_size
# qemu sizes images in 512-byte sectors: a multiple of 512, not of a block.
RAW_SIZE = 48 * MiB + 7 * 512
QCOW2_SIZE = 96 * MiB + 3 * 512
VOLUME_ID = 'vm1-disk0'  # the socket path (so the URL) changes per server

# Written before the bitmap is added: the full backup's data.
BEFORE = ['write -P 0x41 0 1M', 'write -P 0x42 50M 8M',
          'write -z 70M 1M',  # zeros qcow2 records as such: nothing to read
          'write -P 0x43 %d 4096' % (QCOW2_SIZE - 4096)]
# Written after the full backup: what the bitmap marks dirty.
AFTER = ['write -P 0x51 %d 8192' % (3 * MiB + 4097),   # in a hole
         'write -P 0x52 %d 70000' % (50 * MiB + 12345),  # inside data
         'write -z 0 64K',                              # data now zeros
         'discard 52M 512K',                            # data punched out
         'write -P 0x53 %d 100' % (QCOW2_SIZE - 100)]   # the last bytes


@pytest.fixture(scope='module', autouse=True)
def qemu_tools():
    missing = qemu_nbd.missing_tools()
    if missing:
        pytest.fail('%s not installed; run: %s' % (
            ', '.join(missing), qemu_nbd.INSTALL), pytrace=False)


def _qemu_io(image, fmt, *commands):
    args = ['qemu-io', '-f', fmt, '-d', 'unmap']  # discard punches holes
    for command in commands:
        args += ['-c', command]
    qemu_nbd.run(*(args + [image]))


def _blocks(ranges, size):
    count = -(-size // BS)
    out = set()
    for offset, length in ranges:
        if length > 0 and offset < size:
            out.update(range(offset // BS,
                             min(-(-(offset + length) // BS), count)))
    return out


def _bytes(blocks, size):
    return sum(min((b + 1) * BS, size) - b * BS for b in blocks)


def _to_read(url):
    """What base:allocation says must be read: neither zero nor a zero hole.

    (nbdinfo's type bit 1 is NBD_STATE_ZERO.)
    """
    return [(o, n) for o, n, t in qemu_nbd.nbdinfo_map(url) if not t & 2]


def _dirty(url, bitmap='b1'):
    return [(o, n) for o, n, t in qemu_nbd.nbdinfo_map(
        url, 'qemu:dirty-bitmap:' + bitmap) if t & 1]


def _read(path):
    with open(path, 'rb') as f:
        return f.read()


def _raw_of(image, fmt, out):
    qemu_nbd.run('qemu-img', 'convert', '-f', fmt, '-O', 'raw', image,
                 str(out))
    return _read(out)


def _assert_read(stats, exact, size=QCOW2_SIZE):
    """bytes_read is ``exact`` plus each sampled block's length."""
    sampled = stats['blocks_sampled'] * BS
    # Only the volume's last block may be short, and be sampled.
    short = BS - (size % BS or BS)
    assert stats['bytes_read'] in (exact + sampled,
                                   exact + sampled - short), (stats, exact)


def _make_sparse_raw(path):
    pieces = {0: os.urandom(3000), 5 * MiB + BS - 1: b'\x01\x02',
              20 * MiB: os.urandom(6 * MiB), RAW_SIZE - 777: b'z' * 777}
    with open(path, 'wb') as f:
        f.truncate(RAW_SIZE)
        for offset, data in pieces.items():
            f.seek(offset)
            f.write(data)
    return sum(len(d) for d in pieces.values())


@pytest.mark.parametrize('transport', ['unix', 'tcp'])
def test_full_backup_of_a_sparse_raw_export(tmp_path, transport):
    cli = Cli(tmp_path)
    image = str(tmp_path / 'disk.raw')
    written = _make_sparse_raw(image)
    with qemu_nbd.serving(image, 'raw', tcp=transport == 'tcp') as server:
        assert server.url.startswith(
            'nbd://127.0.0.1:' if transport == 'tcp' else 'nbd+unix:///')
        to_read = _to_read(server.url)
        full = cli.json('backup-create', server.url)
    assert full['size_bytes'] == RAW_SIZE
    assert full['volume_path'] == server.url
    stats = full['stats']
    data_blocks = _blocks(to_read, RAW_SIZE)
    assert stats['bytes_read'] == _bytes(data_blocks, RAW_SIZE)
    assert written <= stats['bytes_read'] < written + 8 * BS
    assert stats['hole_bytes'] == RAW_SIZE - stats['bytes_read']
    assert stats['changed_map'] is None

    out = tmp_path / 'restored.raw'
    cli.json('backup-restore', full['id'], str(out))
    assert _read(out) == _read(image)
    assert os.stat(out).st_blocks * 512 <= stats['bytes_read'] + 64 * KiB


def test_qcow2_dirty_bitmap_incremental_and_restores(tmp_path):
    cli = Cli(tmp_path)
    image = str(tmp_path / 'disk.qcow2')
    qemu_nbd.run('qemu-img', 'create', '-q', '-f', 'qcow2', image,
                 str(QCOW2_SIZE))
    _qemu_io(image, 'qcow2', *BEFORE)
    qemu_nbd.run('qemu-img', 'bitmap', '--add', image, 'b1')
    before = _raw_of(image, 'qcow2', tmp_path / 'before.raw')

    with qemu_nbd.serving(image, 'qcow2', bitmaps=['b1']) as server:
        to_read = _to_read(server.url)
        assert _dirty(server.url) == []
        full = cli.json('backup-create', server.url, '--volume-id',
                        VOLUME_ID)
    stats = full['stats']
    assert stats['bytes_read'] == _bytes(_blocks(to_read, QCOW2_SIZE),
                                         QCOW2_SIZE)
    # qcow2 allocates 64 KiB clusters: the last 4 KiB cost two.
    assert 9 * MiB <= stats['bytes_read'] <= 9 * MiB + 128 * KiB
    assert stats['hole_bytes'] > 80 * MiB

    _qemu_io(image, 'qcow2', *AFTER)
    after = _raw_of(image, 'qcow2', tmp_path / 'after.raw')
    assert after != before
    with qemu_nbd.serving(image, 'qcow2', bitmaps=['b1']) as server:
        to_read = _to_read(server.url)
        dirty = _dirty(server.url)
        assert dirty, 'qemu-io wrote nothing the bitmap saw'
        inc = cli.json('backup-create', server.url, '--volume-id', VOLUME_ID,
                       '--incremental', '--dirty-bitmap', 'b1')
    assert inc['parent_id'] == full['id']
    stats = inc['stats']
    assert stats['changed_map'] == 'used', stats
    assert stats['map_mismatch'] is None and stats['blocks_sampled'] > 0
    data_blocks = _blocks(to_read, QCOW2_SIZE)
    dirty_blocks = _blocks(dirty, QCOW2_SIZE)
    _assert_read(stats, _bytes(dirty_blocks & data_blocks, QCOW2_SIZE))
    assert stats['bytes_read'] < 2 * MiB  # of 9 MiB of data
    assert stats['known_bytes'] == _bytes(data_blocks - dirty_blocks,
                                          QCOW2_SIZE)

    # To a file: the image's bytes, as qemu-img convert gives them.
    for record, expected in ((full, before), (inc, after)):
        out = tmp_path / ('restored-%s.raw' % record['id'])
        cli.json('backup-restore', record['id'], str(out))
        assert _read(out) == expected

    # To a writable export whose old contents must all be replaced: the
    # zeros too (written as punched WRITE_ZEROES).
    target = str(tmp_path / 'target.qcow2')
    qemu_nbd.run('qemu-img', 'create', '-q', '-f', 'qcow2', target,
                 str(QCOW2_SIZE))
    _qemu_io(target, 'qcow2', 'write -P 0xee 0 %d' % QCOW2_SIZE)
    with qemu_nbd.serving(target, 'qcow2', writable=True,
                          extra=['--discard=unmap']) as server:
        line = cli.fails('backup-restore', inc['id'], server.url)
        assert '--force' in line and server.url in line, line
        restored = cli.json('backup-restore', inc['id'], server.url,
                            '--force')
        assert restored['status'] == 'restored'
    assert _raw_of(target, 'qcow2', tmp_path / 'target.raw') == after
    # The old data under the holes was punched out, not overwritten.
    assert os.stat(target).st_blocks * 512 < 16 * MiB


def test_nbd_errors_are_one_line(tmp_path):
    cli = Cli(tmp_path)
    image = str(tmp_path / 'disk.qcow2')
    qemu_nbd.run('qemu-img', 'create', '-q', '-f', 'qcow2', image, '8M')
    _qemu_io(image, 'qcow2', 'write -P 0x41 0 1M')
    qemu_nbd.run('qemu-img', 'bitmap', '--add', image, 'b1')
    with qemu_nbd.serving(image, 'qcow2', bitmaps=['b1']) as server:
        line = cli.fails('backup-create', server.url, '--dirty-bitmap', 'b1')
        assert '--incremental' in line, line
        full = cli.json('backup-create', server.url)
        line = cli.fails('backup-create', server.url, '--incremental',
                         '--dirty-bitmap', 'nosuch')
        assert 'nosuch' in line and 'bitmap' in line, line
        changes = tmp_path / 'changes.json'
        changes.write_text(json.dumps([[0, 4096]]))
        line = cli.fails('backup-create', server.url, '--incremental',
                         '--dirty-bitmap', 'b1', '--changed-extents',
                         str(changes))
        assert 'not both' in line, line
    assert [b['id'] for b in cli.json('backup-list')] == [full['id']]

    # A target export smaller than the backup is refused before writing.
    small = str(tmp_path / 'small.qcow2')
    qemu_nbd.run('qemu-img', 'create', '-q', '-f', 'qcow2', small, '4M')
    _qemu_io(small, 'qcow2', 'write -P 0xee 0 4M')
    with qemu_nbd.serving(small, 'qcow2', writable=True) as server:
        line = cli.fails('backup-restore', full['id'], server.url, '--force')
        assert 'smaller' in line and str(8 * MiB) in line, line
    assert _raw_of(small, 'qcow2', tmp_path / 'small.raw') == \
        b'\xee' * (4 * MiB)

    # Nothing listening.
    gone = 'nbd+unix:///vol?socket=%s' % (tmp_path / 'no.sock')
    line = cli.fails('backup-create', gone)
    assert 'no.sock' in line, line
