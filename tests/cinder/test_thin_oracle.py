"""Thin volumes and changed-block maps, with Cinder's posix driver as oracle.

Our driver skips the holes of a sparse volume (SEEK_DATA/SEEK_HOLE, or an
NBD export's base:allocation) and reads only what a changed-block map names.
Whatever it skipped, the backups must stay ordinary Cinder backups: stock
Cinder 29 restores them byte for byte onto new volumes, and Cinder's own
backups of thin volumes (Cinder reads every byte) are parents of ours.
Every image is compared with the source bytes.
"""
import hashlib
import json
import os
import random

from cinder.objects import fields
from oslo_utils import importutils
import pytest

from chunkbackup.engine import backup as engine_backup
from chunkbackup.engine import sources
from tests.cinder import conftest
from tests.functional.servers import qemu_nbd

KiB = conftest.KiB
MiB = conftest.MiB
BLOCK = 32 * KiB
PAGE = 4 * KiB
# Not a multiple of the SHA block: the last block is 12345 bytes.
SIZE = 6 * MiB + 12345
# Longer than the engine's hole merge gap (1 MiB), so left out of a full
# backup; the first data starts after this many bytes of hole.
START_HOLE = 48 * BLOCK
MIDDLE_HOLE = (2 * MiB, 3 * MiB)     # inside the middle hole, whatever
END_HOLE = (3 * MiB + 512 * KiB, SIZE - BLOCK)  # the allocation unit


@pytest.fixture
def shared(posix_paths, overrides):
    """Both drivers on one directory, as after switching backup_driver."""
    overrides('backup_posix_path', posix_paths['ours'])
    return posix_paths['ours']


class Thin:
    """Both posix drivers, and sparse volume files to back up and restore."""

    def __init__(self, cloud, tmp_path, root):
        self.cloud = cloud
        self.tmp = tmp_path
        self.root = root
        ctxt = cloud.ctxt
        self.ours = importutils.import_class(conftest.OUR_POSIX)(ctxt)
        self.cinder = importutils.import_class(conftest.CINDER_POSIX)(ctxt)
        self.volume = cloud.volume(name='thin')
        self.n = 0

    def path(self) -> str:
        self.n += 1
        return str(self.tmp / ('vol-%d' % self.n))

    def sparse_file(self, image: bytes) -> str:
        """A file of ``image``: every all-zero page of it is a hole."""
        path = self.path()
        zero_page = bytes(PAGE)
        with open(path, 'wb') as f:
            f.truncate(len(image))
            for offset in range(0, len(image), PAGE):
                page = image[offset:offset + PAGE]
                if page != zero_page[:len(page)]:
                    f.seek(offset)
                    f.write(page)
        # The file system kept it thin (else nothing here tests holes).
        allocated = os.stat(path).st_blocks * 512
        nonzero = sum(PAGE for offset in range(0, len(image), PAGE)
                      if any(image[offset:offset + PAGE]))
        assert allocated <= nonzero + 64 * KiB, (allocated, nonzero)
        return path

    def _record(self, driver, record):
        record.status = fields.BackupStatus.AVAILABLE
        record.service = (conftest.OUR_POSIX if driver is self.ours
                          else conftest.CINDER_POSIX)
        record.save()
        return self.cloud.backup_object(record.id)

    def backup(self, driver, image, parent=None, **kwargs):
        """Back up a sparse file of ``image``; kwargs go to our driver."""
        record = self.cloud.backup_record(self.volume, parent=parent)
        with open(self.sparse_file(image), 'rb') as f:
            driver.backup(record, f, **kwargs)  # as the manager calls it
        return self._record(driver, record)

    def backup_source(self, source, parent=None, **kwargs):
        """Our backup of a VolumeSource (an NBD export)."""
        record = self.cloud.backup_record(self.volume, parent=parent)
        self.ours.backup(record, source, **kwargs)
        return self._record(self.ours, record)

    def restore(self, driver, backup, volume: bytes = None, size=None):
        """The restored bytes, restoring with ``driver``.

        Onto a new volume of ``size`` bytes (a zero-filled file, as a new
        volume reads) or, given ``volume``, onto an existing one holding
        those bytes.
        """
        path = self.path()
        with open(path, 'wb') as f:
            if volume is None:
                f.truncate(size)
            else:
                f.write(volume)
        backup.status = fields.BackupStatus.RESTORING
        backup.save()
        with open(path, 'r+b') as f:
            driver.restore(backup, self.volume.id, f, volume is None)
        backup.status = fields.BackupStatus.AVAILABLE
        backup.save()
        with open(path, 'rb') as f:
            return f.read()

    def objects(self, backup):
        """[(offset, length)] of the data objects of one backup."""
        with open(os.path.join(self.root, backup.container,
                               backup.service_metadata + '_metadata')) as f:
            document = json.load(f)
        return [(entry['offset'], entry['length'])
                for item in document['objects'] for entry in item.values()]

    def sha256s(self, backup):
        with open(os.path.join(self.root, backup.container,
                               backup.service_metadata + '_sha256file')) as f:
            return json.load(f)['sha256s']

    def check_restores(self, backup, image):
        """Cinder and ours give ``image`` on a new volume of its size."""
        assert self.restore(self.cinder, backup, size=len(image)) == image
        assert self.restore(self.ours, backup, size=len(image)) == image
        assert self.ours.verify(backup).size == len(image)


@pytest.fixture
def thin(cloud, shared, tmp_path):
    cloud.start(conftest.OUR_POSIX)
    return Thin(cloud, tmp_path, shared)


def put(image: bytearray, offset: int, data: bytes, changed=None) -> None:
    image[offset:offset + len(data)] = data
    if changed is not None:
        changed.append((offset, len(data)))


def thin_image() -> bytearray:
    """Data at odd offsets; holes at the start, the middle and the end."""
    rng = random.Random(61)
    image = bytearray(SIZE)
    put(image, START_HOLE + 4096 + 777, rng.randbytes(300 * KiB + 11))
    put(image, 3 * MiB + 200 * KiB + 5, rng.randbytes(40 * KiB))
    # ~100 KiB of hole before this: short, so stored as zeros.
    put(image, 3 * MiB + 340 * KiB + 3, b'thin volume ' * (70 * KiB // 12))
    return image


def edited(image: bytearray, changed: list) -> bytearray:
    """Hole to data, data overwritten, data to hole, the short last block."""
    rng = random.Random(62)
    image = bytearray(image)
    put(image, 100 * KiB + 3, rng.randbytes(20 * KiB), changed)
    put(image, START_HOLE + 4096 + 1777, rng.randbytes(5000), changed)
    put(image, 3 * MiB + 352 * KiB, bytes(BLOCK), changed)  # a hole now
    put(image, SIZE - 100, b'\xee' * 50, changed)
    return image


# The blocks ``edited`` changes: three whole ones and the short last one.
EDITED_BYTES = 3 * BLOCK + SIZE % BLOCK


def overlaps(objects, start, end):
    return [(o, n) for o, n in objects if o < end and start < o + n]


def test_thin_full_and_map_incremental_restored_by_cinder(thin):
    v0 = bytes(thin_image())
    stats = engine_backup.BackupStats()
    full = thin.backup(thin.ours, v0, stats=stats)
    objects = thin.objects(full)
    # Holes were not read, and no object stores them, except the one
    # reaching the volume's end that readers take the size from.
    assert stats.hole_bytes >= START_HOLE + MiB + (END_HOLE[1] - END_HOLE[0])
    assert stats.bytes_read <= SIZE - stats.hole_bytes
    assert min(o for o, _ in objects) >= START_HOLE
    assert overlaps(objects, *MIDDLE_HOLE) == []
    assert overlaps(objects, *END_HOLE) == []
    assert max(o + n for o, n in objects) == SIZE
    assert thin.sha256s(full)[0] == hashlib.sha256(bytes(BLOCK)).hexdigest()
    thin.check_restores(full, v0)

    changed = []
    v1 = bytes(edited(v0, changed))
    stats = engine_backup.BackupStats()
    incr = thin.backup(thin.ours, v1, parent=full, changed_extents=changed,
                       stats=stats)
    assert stats.changed_map == 'used', stats.map_mismatch
    assert stats.known_bytes > 0
    assert stats.bytes_read < SIZE // 4
    assert sum(n for _, n in thin.objects(incr)) == EDITED_BYTES
    # The data-to-hole block is an object of zeros, which Cinder writes
    # (an incremental is never restored as onto a new volume).
    thin.check_restores(incr, v1)
    assert thin.restore(thin.cinder, full, size=SIZE) == v0


@pytest.fixture(scope='module')
def qemu_tools():
    missing = qemu_nbd.missing_tools()
    if missing:
        pytest.fail('%s not installed; run: %s' % (
            ', '.join(missing), qemu_nbd.INSTALL), pytrace=False)


def _raw_bytes(image: str, tmp_path) -> bytes:
    raw = str(tmp_path / 'image.raw')
    qemu_nbd.run('qemu-img', 'convert', '-f', 'qcow2', '-O', 'raw', image,
                 raw)
    with open(raw, 'rb') as f:
        return f.read()


def test_nbd_full_and_dirty_bitmap_incremental_restored_by_cinder(
        thin, tmp_path, qemu_tools):
    size = 6 * MiB + 1536   # qcow2 sizes are in sectors; not in blocks
    image = str(tmp_path / 'disk.qcow2')
    qemu_nbd.run('qemu-img', 'create', '-q', '-f', 'qcow2', image, str(size))
    qemu_nbd.qemu_io(image, 'qcow2',
                     'write -P 0x41 %d 300011' % (START_HOLE + 4097),
                     'write -P 0x42 %d 40960' % (3 * MiB + 200 * KiB + 5),
                     'write -P 0x43 %d 900' % (size - 1000))
    qemu_nbd.run('qemu-img', 'bitmap', '--add', image, 'b1')
    v0 = _raw_bytes(image, tmp_path)
    assert len(v0) == size
    with qemu_nbd.serving(image, 'qcow2', bitmaps=['b1']) as server:
        source = sources.NbdSource(server.url)
        try:
            stats = engine_backup.BackupStats()
            full = thin.backup_source(source, stats=stats)
        finally:
            source.close()
    assert stats.hole_bytes >= START_HOLE + MiB
    assert min(o for o, _ in thin.objects(full)) >= START_HOLE
    assert overlaps(thin.objects(full), *MIDDLE_HOLE) == []
    thin.check_restores(full, v0)

    # Tracked by b1: hole to data, an overwrite, data to zeros (a zero
    # cluster) and data to a hole (discarded), the last sector.
    qemu_nbd.qemu_io(image, 'qcow2',
                     'write -P 0x51 %d 20000' % (100 * KiB + 3),
                     'write -P 0x52 %d 5000' % (START_HOLE + 70000),
                     'write -z %d 65536' % (START_HOLE + 128 * KiB),
                     'discard %d 65536' % (3 * MiB + 192 * KiB),
                     'write -P 0x53 %d 512' % (size - 512))
    v1 = _raw_bytes(image, tmp_path)
    assert v1 != v0
    with qemu_nbd.serving(image, 'qcow2', bitmaps=['b1']) as server:
        source = sources.NbdSource(server.url, dirty_bitmap='b1')
        try:
            changed = source.changed_extents()
            stats = engine_backup.BackupStats()
            incr = thin.backup_source(source, parent=full,
                                      changed_extents=changed, stats=stats)
        finally:
            source.close()
    assert changed and sum(n for _, n in changed) < size // 4
    assert stats.changed_map == 'used', stats.map_mismatch
    assert stats.known_bytes > 0
    assert stats.bytes_read < size // 4
    thin.check_restores(incr, v1)


def test_cinder_backups_of_thin_volumes_are_parents_of_ours(thin):
    v0 = bytes(thin_image())
    theirs = thin.backup(thin.cinder, v0)
    # Cinder reads everything: every byte of the volume is in an object.
    assert sum(n for _, n in thin.objects(theirs)) == SIZE
    assert thin.restore(thin.ours, theirs, size=SIZE) == v0

    changed = []
    v1 = bytes(edited(v0, changed))
    stats = engine_backup.BackupStats()
    by_digest = thin.backup(thin.ours, v1, parent=theirs, stats=stats)
    assert stats.changed_map is None
    stats = engine_backup.BackupStats()
    by_map = thin.backup(thin.ours, v1, parent=theirs,
                         changed_extents=changed, stats=stats)
    assert stats.changed_map == 'used', stats.map_mismatch
    # Cinder's digests of the holes are the zero digests ours expects, so
    # the map and the digests find the same changes.
    assert thin.objects(by_map) == thin.objects(by_digest)
    assert sum(n for _, n in thin.objects(by_map)) == EDITED_BYTES
    thin.check_restores(by_digest, v1)
    thin.check_restores(by_map, v1)

    # Grown by 1 MiB and a bit: data in the new range, a hole at its end.
    grown = []
    v2 = bytearray(v1) + bytearray(MiB + 4321)
    put(v2, 2 * MiB + 11, b'x' * 4000, grown)              # middle hole
    put(v2, SIZE + 64 * KiB + 11, os.urandom(10 * KiB), grown)
    v2 = bytes(v2)
    stats = engine_backup.BackupStats()
    bigger = thin.backup(thin.ours, v2, parent=by_map, changed_extents=grown,
                         stats=stats)
    assert stats.changed_map == 'used', stats.map_mismatch
    assert stats.hole_bytes > MiB // 2
    assert max(o + n for o, n in thin.objects(bigger)) == len(v2)
    thin.check_restores(bigger, v2)

    # And Cinder continues the mixed chain.
    v3 = bytearray(v2)
    put(v3, 5 * BLOCK, b'\x07' * BLOCK)
    v3 = bytes(v3)
    last = thin.backup(thin.cinder, v3, parent=bigger)
    thin.check_restores(last, v3)


def test_thin_backup_restored_by_cinder_onto_an_existing_volume(thin):
    """What stock Cinder 29 does with a thin backup over old data.

    Onto an existing volume (``cinder backup-restore --volume``: the
    manager passes volume_is_new False) Cinder's _restore_v1 writes each
    object at its offset and nothing else. Ranges our thin backup left out
    (holes: no object) therefore keep the volume's old bytes, so the
    restored volume is NOT the backed-up image there. A known difference
    from our restore, which makes those ranges zeros (punched out of a
    regular file). Cinder restores a thin backup exactly onto a new
    volume, and restores its own full backups (which store every range)
    exactly anywhere. If this test fails, Cinder's behaviour changed:
    update the README's Cinder section with it.
    """
    v0 = bytes(thin_image())
    full = thin.backup(thin.ours, v0)
    old = os.urandom(SIZE)
    by_cinder = thin.restore(thin.cinder, full, volume=old)
    covered = bytearray(SIZE)
    for offset, length in thin.objects(full):
        covered[offset:offset + length] = b'\x01' * length
    left_out = bytes(covered).count(0)
    assert left_out >= START_HOLE + MiB
    stale = [i for i in range(0, SIZE, PAGE) if not covered[i]]
    written = [i for i in range(0, SIZE, PAGE) if covered[i]]
    # Where an object is, Cinder wrote it; everywhere else the old bytes
    # are still there (no zeros, no punching).
    assert all(by_cinder[i:i + PAGE] == v0[i:i + PAGE] for i in written)
    assert all(by_cinder[i:i + PAGE] == old[i:i + PAGE] for i in stale)
    assert by_cinder != v0
    # Ours gives the image, over the same old bytes.
    assert thin.restore(thin.ours, full, volume=old) == v0
    # Cinder's own full backup stores every range: exact over old data.
    theirs = thin.backup(thin.cinder, v0)
    assert thin.restore(thin.cinder, theirs, volume=old) == v0

    # The same through cinder-backup's manager with Cinder's driver (the
    # record pointed at it, as after switching backup_driver). A device
    # handed over as an object (os-brick's RBD connector) keeps the stale
    # ranges, as a block device would.
    full.service = conftest.CINDER_POSIX
    full.save()
    cloud = thin.cloud
    cloud.start(conftest.CINDER_POSIX)
    device = cloud.volume(device=conftest.Device(old))
    cloud.restore(full, volume=device)
    assert device.status == 'available'
    assert cloud.data_of(device) == by_cinder
    # But a device that is a path is opened with open(path, 'wb'): a
    # regular file (a file-backed volume) is truncated to nothing first,
    # so its holes read as zeros and the image comes out exact; the
    # object reaching the volume's end gives the file its size back.
    volume_file = cloud.volume(data=old)
    cloud.restore(full, volume=volume_file)
    assert volume_file.status == 'available'
    assert cloud.data_of(volume_file) == v0
    # A new volume that is a path is truncated the same way, and onto a
    # new volume Cinder skips the all-zero MiB of a full backup, so the
    # file ends after the last MiB holding data: short, for Cinder's own
    # backups as for ours (Cinder's matter; a block device keeps its size).
    restored = cloud.data_of(cloud.restore(full))
    assert len(restored) < SIZE and restored == v0[:len(restored)]
