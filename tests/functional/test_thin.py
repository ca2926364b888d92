"""Thin (sparse) files and changed-block maps through the real CLI.

A sparse file with data at its holes' edges and an odd size is backed up,
changed with qemu-io, and backed up again with a map of the changes in
each accepted format. The qemu-img and nbdinfo maps are made by those
tools from a qcow2 twin that got the same writes after a persistent
bitmap was added, served by qemu-nbd; rbd diff and plain lists are written
by hand. The expected statistics are worked out here, independently of the
engine, from SEEK_DATA/SEEK_HOLE and the map itself.
"""
import json
import os
import random
import subprocess
import urllib.parse

import pytest

from chunkbackup.testing import volumes
from tests.functional.clitool import Cli
from tests.functional.servers import qemu_nbd

KiB = 1 << 10
MiB = 1 << 20
BS = 16384  # the Cli's [chunkbackup] sha_block_size
SIZE = 64 * MiB + 12345  # not a multiple of a block, nor of 512


@pytest.fixture(scope='module', autouse=True)
def qemu_tools():
    missing = qemu_nbd.missing_tools()
    if missing:
        pytest.fail('%s not installed; run: %s' % (
            ', '.join(missing), qemu_nbd.INSTALL), pytrace=False)


# The thin volume and its changes. ------------------------------------------

def _pieces():
    rng = random.Random(20261201)
    return [
        (0, volumes.random_bytes(rng, 3000)),          # a hole follows
        (MiB - 100, volumes.random_bytes(rng, 8292)),  # across 1 MiB
        (5 * MiB + BS - 1, b'\x01\x02'),               # across a block edge
        (20 * MiB, volumes.random_bytes(rng, 6 * MiB)),
        (30 * MiB, bytes(MiB)),                        # allocated zeros
        (40 * MiB + 12345, volumes.text_bytes(rng, 3 * MiB)),
        (SIZE - 777, volumes.random_bytes(rng, 777)),  # the very end
    ]


def _make_thin(path):
    with open(path, 'wb') as f:
        f.truncate(SIZE)
        for offset, data in _pieces():
            f.seek(offset)
            f.write(data)
    assert os.stat(path).st_blocks * 512 < 16 * MiB, 'not sparse here'


# qemu-io commands applied to the volume and to its qcow2 twin alike.
CHANGES = [
    'write -P 0x51 4097 3000',                  # in the hole after byte 3000
    'write -P 0x52 %d 70000' % (20 * MiB + 12345),   # inside data
    'write -P 0x53 %d 10' % (33 * MiB - 5),    # a block edge, in a hole
    'write -P 0x54 %d 100' % (SIZE - 100),      # the last bytes
    'discard %d %d' % (22 * MiB, MiB),          # data punched out: zeros now
]
# The byte ranges CHANGES touch, for the hand-written maps.
CHANGED_RANGES = [(4097, 3000), (20 * MiB + 12345, 70000), (33 * MiB - 5, 10),
                  (SIZE - 100, 100), (22 * MiB, MiB)]


def _qemu_io(image, fmt, *commands):
    args = ['qemu-io', '-f', fmt, '-d', 'unmap']  # discard punches holes
    for command in commands:
        args += ['-c', command]
    qemu_nbd.run(*(args + [image]))


def _data_ranges(path):
    """(offset, length) of the allocated ranges (SEEK_DATA/SEEK_HOLE)."""
    out, pos = [], 0
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            pos = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            out.append((start, pos - start))
    finally:
        os.close(fd)
    return out


def _blocks(ranges, size=SIZE):
    """The SHA blocks (numbers) that (offset, length) ranges touch."""
    count = -(-size // BS)
    out = set()
    for offset, length in ranges:
        if length > 0 and offset < size:
            out.update(range(offset // BS,
                             min(-(-(offset + length) // BS), count)))
    return out


def _bytes(blocks, size=SIZE):
    return sum(min((b + 1) * BS, size) - b * BS for b in blocks)


def _read(path):
    with open(path, 'rb') as f:
        return f.read()


def _stats(cli, backup_id):
    return cli.json('backup-show', backup_id)['stats']


def _restore_and_compare(cli, backup_id, expected_path, out, verify=False):
    cli.json('backup-restore', backup_id, str(out))
    assert _read(out) == _read(expected_path)
    if verify:
        assert cli.json('backup-verify', backup_id)['status'] == 'verified'
    return out


def _assert_read(stats, exact, size=SIZE):
    """bytes_read is ``exact`` plus each sampled block's length."""
    sampled = stats['blocks_sampled'] * BS
    # Only the volume's last block may be short, and be sampled.
    short = BS - (size % BS or BS)
    assert stats['bytes_read'] in (exact + sampled,
                                   exact + sampled - short), (stats, exact)


# Maps in each format. -------------------------------------------------------

def _twin(tmp_path):
    """A qcow2 as large as the volume with bitmap b1, then CHANGES."""
    twin = str(tmp_path / 'twin.qcow2')
    qemu_nbd.run('qemu-img', 'create', '-q', '-f', 'qcow2', twin, str(SIZE))
    qemu_nbd.run('qemu-img', 'bitmap', '--add', twin, 'b1')
    _qemu_io(twin, 'qcow2', *CHANGES)
    return twin


def _qemu_img_map(tmp_path):
    with qemu_nbd.serving(_twin(tmp_path), 'qcow2', bitmaps=['b1']) as srv:
        socket_path = urllib.parse.parse_qs(
            urllib.parse.urlsplit(srv.url).query)['socket'][0]
        text = qemu_nbd.run(
            'qemu-img', 'map', '--output=json', '--image-opts',
            'driver=nbd,server.type=unix,server.path=%s,export=%s,'
            'x-dirty-bitmap=qemu:dirty-bitmap:b1' % (socket_path, srv.export))
    entries = json.loads(text)
    # The tool's own shape, as the parser expects it.
    assert {'start', 'length', 'data', 'present', 'zero'} <= set(entries[0])
    dirty = [(e['start'], e['length']) for e in entries if not e['data']]
    return text, dirty


def _nbdinfo_map(tmp_path):
    with qemu_nbd.serving(_twin(tmp_path), 'qcow2', bitmaps=['b1']) as srv:
        text = qemu_nbd.run('nbdinfo', '--json',
                            '--map=qemu:dirty-bitmap:b1', srv.url)
    entries = json.loads(text)
    assert {'offset', 'length', 'type', 'description'} <= set(entries[0])
    dirty = [(e['offset'], e['length']) for e in entries if e['type'] & 1]
    return text, dirty


def _rbd_map(tmp_path):
    entries = [{'offset': o, 'length': n, 'exists': 'true'}
               for o, n in CHANGED_RANGES[:-1]]
    # rbd diff reports a discard as a range that no longer exists.
    entries.append({'offset': 22 * MiB, 'length': MiB, 'exists': 'false'})
    return json.dumps(entries), list(CHANGED_RANGES)


def _pairs_map(tmp_path):
    # Any order, overlaps allowed.
    pairs = [list(r) for r in reversed(CHANGED_RANGES)] + [[4097, 100]]
    return json.dumps(pairs), list(CHANGED_RANGES)


def _extents_object_map(tmp_path):
    return (json.dumps({'extents': [list(r) for r in CHANGED_RANGES]}),
            list(CHANGED_RANGES))


MAPS = {'qemu-img': _qemu_img_map, 'nbdinfo': _nbdinfo_map,
        'rbd-diff': _rbd_map, 'pairs': _pairs_map,
        'extents-object': _extents_object_map}


def _full_backup(cli, vol):
    _make_thin(vol)
    full = cli.json('backup-create', vol)
    return full, _data_ranges(vol)


def _run_with_stdin(cli, text, *args):
    result = subprocess.run(cli.command(*args), input=text,
                            capture_output=True, text=True, env=cli.env(),
                            timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# Tests. --------------------------------------------------------------------

def test_full_backup_skips_holes_and_restores_sparse(tmp_path):
    cli = Cli(tmp_path)
    vol = str(tmp_path / 'thin.img')
    full, data = _full_backup(cli, vol)
    assert full['size_bytes'] == SIZE
    stats = full['stats']
    assert stats == _stats(cli, full['id'])  # recorded, not just printed
    data_blocks = _blocks(data)
    written = sum(len(d) for _, d in _pieces())
    assert stats['bytes_read'] == _bytes(data_blocks)
    assert written <= stats['bytes_read'] <= written + 2 * BS * len(
        _pieces())
    assert stats['hole_bytes'] == SIZE - stats['bytes_read'] > 40 * MiB
    assert stats['volume_size'] == SIZE
    assert stats['known_bytes'] == 0
    assert stats['changed_map'] is None and stats['blocks_sampled'] == 0
    assert stats['map_mismatch'] is None
    assert stats['objects'] >= 1 and stats['stored_bytes'] > 0

    out = _restore_and_compare(cli, full['id'], vol, tmp_path / 'restored',
                               verify=True)
    # Zero blocks are not written: the restored file is as thin as the
    # volume, to the block.
    allocated = os.stat(out).st_blocks * 512
    assert allocated <= stats['bytes_read'] + 64 * KiB, allocated
    assert os.path.getsize(out) == SIZE

    # Over a file full of other bytes (--force): the holes are punched.
    with open(out, 'wb') as f:
        for _ in range(SIZE // MiB):
            f.write(b'\xff' * MiB)
        f.write(b'\xff' * (SIZE % MiB))
    assert os.stat(out).st_blocks * 512 >= SIZE
    cli.json('backup-restore', full['id'], str(out), '--force')
    assert _read(out) == _read(vol)
    allocated = os.stat(out).st_blocks * 512
    assert allocated <= stats['bytes_read'] + 64 * KiB, allocated


def test_skip_holes_false_reads_everything(tmp_path):
    cli = Cli(tmp_path)
    with open(cli.config, 'a') as f:
        f.write('skip_holes = false\n')   # [chunkbackup] is the last group
    vol = str(tmp_path / 'thin.img')
    full, _ = _full_backup(cli, vol)
    stats = full['stats']
    assert stats['bytes_read'] == SIZE and stats['hole_bytes'] == 0
    _restore_and_compare(cli, full['id'], vol, tmp_path / 'restored')


@pytest.mark.parametrize('map_format', sorted(MAPS) + ['pairs-on-stdin'])
def test_incremental_with_a_changed_block_map(tmp_path, map_format):
    cli = Cli(tmp_path)
    vol = str(tmp_path / 'thin.img')
    full, _ = _full_backup(cli, vol)
    _qemu_io(vol, 'raw', *CHANGES)
    data_after = _data_ranges(vol)
    assert not any(o < 22 * MiB + MiB and 22 * MiB < o + n
                   for o, n in data_after), 'discard did not punch a hole'
    text, changed = MAPS[map_format.replace('-on-stdin', '')](tmp_path)
    if map_format.endswith('-on-stdin'):
        inc = _run_with_stdin(cli, text, 'backup-create', vol,
                              '--incremental', '--changed-extents', '-',
                              '--format', 'json')
    else:
        map_path = tmp_path / 'changes.json'
        map_path.write_text(text)
        inc = cli.json('backup-create', vol, '--incremental',
                       '--changed-extents', str(map_path))
    assert inc['incremental'] and inc['parent_id'] == full['id']
    stats = inc['stats']
    assert stats['changed_map'] == 'used', stats
    assert stats['map_mismatch'] is None
    # Read: the changed blocks that hold data; the rest of the data comes
    # from the parent (part of it sampled), the holes are zeros.
    changed_blocks = _blocks(changed)
    data_blocks = _blocks(data_after)
    _assert_read(stats, _bytes(changed_blocks & data_blocks))
    assert stats['known_bytes'] == _bytes(data_blocks - changed_blocks)
    assert stats['hole_bytes'] == _bytes(set(range(-(-SIZE // BS)))
                                         - data_blocks)
    assert stats['bytes_read'] < 2 * MiB  # of ~11 MiB of data
    assert 0 < stats['blocks_sampled'] < len(data_blocks - changed_blocks)
    # Only what changed is stored (the discard as zeros).
    assert stats['stored_logical_bytes'] <= _bytes(changed_blocks)
    _restore_and_compare(cli, inc['id'], vol, tmp_path / 'restored',
                         verify=map_format == 'qemu-img')


def _assert_rejected(cli, tmp_path, vol, inc, data_after):
    stats = inc['stats']
    assert stats['changed_map'] == 'rejected', stats
    assert stats['map_mismatch']
    # The whole volume was read instead (its holes still skipped).
    _assert_read(stats, _bytes(_blocks(data_after)))
    assert stats['known_bytes'] == 0
    _restore_and_compare(cli, inc['id'], vol, tmp_path / 'restored')
    return stats


def test_map_missing_a_write_is_rejected(tmp_path):
    cli = Cli(tmp_path)
    # Every allocated block the map calls unchanged is read and compared:
    # the first missed block is found, whichever it is.
    with open(cli.config, 'a') as f:
        f.write('changed_extents_sample = 1.0\n')
    vol = str(tmp_path / 'thin.img')
    _full_backup(cli, vol)
    _qemu_io(vol, 'raw', *CHANGES)
    missed = CHANGED_RANGES[1]  # the 70000 bytes inside the data
    pairs = [list(r) for r in CHANGED_RANGES if r != missed]
    map_path = tmp_path / 'changes.json'
    map_path.write_text(json.dumps(pairs))
    inc = cli.json('backup-create', vol, '--incremental',
                   '--changed-extents', str(map_path))
    stats = _assert_rejected(cli, tmp_path, vol, inc, _data_ranges(vol))
    first = missed[0] // BS
    assert 'block %d (offset %d)' % (first, first * BS) in \
        stats['map_mismatch'], stats['map_mismatch']
    assert stats['blocks_sampled'] > 0


def test_map_missing_a_discard_is_rejected(tmp_path):
    """Data punched out that the map calls unchanged is found unread.

    The parent's digests there are not zeros: nothing needs reading.
    """
    cli = Cli(tmp_path)
    vol = str(tmp_path / 'thin.img')
    _full_backup(cli, vol)
    _qemu_io(vol, 'raw', *CHANGES)
    map_path = tmp_path / 'changes.json'
    map_path.write_text(json.dumps([list(r) for r in CHANGED_RANGES[:-1]]))
    inc = cli.json('backup-create', vol, '--incremental',
                   '--changed-extents', str(map_path))
    stats = _assert_rejected(cli, tmp_path, vol, inc, _data_ranges(vol))
    assert 'unallocated' in stats['map_mismatch'], stats['map_mismatch']


def test_empty_map_when_a_tenth_changed_is_rejected(tmp_path):
    cli = Cli(tmp_path)
    vol = str(tmp_path / 'thin.img')
    _full_backup(cli, vol)
    # 10% of the blocks get new random bytes, in data and in holes alike.
    # At the default 3% sample, 410 changed blocks all go unseen with
    # probability 0.97 ** 410 = 4e-6.
    rng = random.Random(7)
    block_count = -(-SIZE // BS)
    changed = rng.sample(range(block_count), block_count // 10)
    with open(vol, 'r+b') as f:
        for block in changed:
            f.seek(block * BS)
            f.write(volumes.random_bytes(rng, min(BS, SIZE - block * BS)))
    map_path = tmp_path / 'changes.json'
    map_path.write_text('[]')
    inc = cli.json('backup-create', vol, '--incremental',
                   '--changed-extents', str(map_path))
    stats = _assert_rejected(cli, tmp_path, vol, inc, _data_ranges(vol))
    assert 'changed although the map says it did not' in \
        stats['map_mismatch']


def test_map_errors_are_one_line(tmp_path):
    cli = Cli(tmp_path)
    vol = str(tmp_path / 'thin.img')
    _make_thin(vol)
    good = tmp_path / 'good.json'
    good.write_text(json.dumps([[0, 4096]]))
    line = cli.fails('backup-create', vol, '--changed-extents', str(good))
    assert '--incremental' in line, line
    full = cli.json('backup-create', vol)

    past_end = tmp_path / 'past-end.json'
    past_end.write_text(json.dumps([[0, 4096], [SIZE + 10, 5]]))
    line = cli.fails('backup-create', vol, '--incremental',
                     '--changed-extents', str(past_end))
    assert str(past_end) in line and 'past the end' in line, line
    assert str(SIZE) in line, line

    garbage = tmp_path / 'garbage.json'
    garbage.write_text('[[0, 4096], {oops')
    line = cli.fails('backup-create', vol, '--incremental',
                     '--changed-extents', str(garbage))
    assert str(garbage) in line and 'not JSON' in line, line

    line = cli.fails('backup-create', vol, '--incremental',
                     '--changed-extents', str(tmp_path / 'missing.json'))
    assert 'missing.json' in line and 'cannot be read' in line, line

    line = cli.fails('backup-create', vol, '--incremental',
                     '--dirty-bitmap', 'b1')
    assert '--dirty-bitmap' in line and 'NBD' in line, line

    # None of them left a record behind.
    assert [b['id'] for b in cli.json('backup-list')] == [full['id']]


def test_grown_volume_with_a_map(tmp_path):
    """Blocks past the parent's end are read whatever the map says.

    The parent's short last block among them.
    """
    cli = Cli(tmp_path)
    vol = str(tmp_path / 'thin.img')
    _full_backup(cli, vol)
    grown = SIZE + MiB + 7
    with open(vol, 'r+b') as f:
        f.truncate(grown)
        f.seek(SIZE + 4096)
        f.write(b'new tail' * 1000)
    map_path = tmp_path / 'changes.json'
    map_path.write_text(json.dumps([[SIZE + 4096, 8000]]))
    inc = cli.json('backup-create', vol, '--incremental',
                   '--changed-extents', str(map_path))
    assert inc['size_bytes'] == grown
    assert inc['stats']['changed_map'] == 'used', inc['stats']
    _restore_and_compare(cli, inc['id'], vol, tmp_path / 'restored')


def test_sampled_bytes_are_counted_as_read_exactly(tmp_path):
    cli = Cli(tmp_path)
    with open(cli.config, 'a') as f:
        f.write('changed_extents_sample = 1.0\n')
    vol = str(tmp_path / 'thin.img')
    _full_backup(cli, vol)
    map_path = tmp_path / 'changes.json'
    map_path.write_text('[]')   # true: nothing changed
    inc = cli.json('backup-create', vol, '--incremental',
                   '--changed-extents', str(map_path))
    stats = inc['stats']
    assert stats['changed_map'] == 'used', stats
    # Every allocated block was sampled, the volume's 12345-byte last
    # block among them: exactly the known bytes were read.
    assert stats['blocks_sampled'] == len(_blocks(_data_ranges(vol)))
    assert stats['bytes_read'] == stats['known_bytes'], stats


def test_allocation_maps_and_cut_maps_are_refused(tmp_path):
    """Allocation maps (from the real tools) and cut maps are refused.

    They say what is allocated, not what changed, or cover a smaller
    volume.
    """
    cli = Cli(tmp_path)
    vol = str(tmp_path / 'thin.img')
    _make_thin(vol)
    cli.json('backup-create', vol)
    maps = {}
    maps['qemu-img-allocation'] = qemu_nbd.run(
        'qemu-img', 'map', '--output=json', '-f', 'raw', vol)
    with qemu_nbd.serving(vol, 'raw') as server:
        maps['nbdinfo-allocation'] = qemu_nbd.run(
            'nbdinfo', '--json', '--map', server.url)
    maps['qemu-img-cut'] = json.dumps([
        {'start': 0, 'length': MiB, 'depth': 0, 'present': True,
         'zero': False, 'data': True},
        {'start': MiB, 'length': MiB, 'depth': 0, 'present': False,
         'zero': False, 'data': False}])
    hints = {'qemu-img-allocation': 'x-dirty-bitmap',
             'nbdinfo-allocation': 'base:allocation',
             'qemu-img-cut': 'map the whole volume'}
    for name, text in sorted(maps.items()):
        map_path = tmp_path / (name + '.json')
        map_path.write_text(text)
        line = cli.fails('backup-create', vol, '--incremental',
                         '--changed-extents', str(map_path))
        assert str(map_path) in line and hints[name] in line, line
    assert len(cli.json('backup-list')) == 1

    line = cli.fails('backup-create', vol, '--incremental', '--async',
                     '--changed-extents', '-')
    assert 'standard input' in line, line
