"""Objects flow through the engine in pieces: what is stored, how many
transfers run at once, retries in the middle of an object, ranged restore.
"""
import os
import threading
import time

import pytest

from chunkbackup import compression
from chunkbackup.engine import backup as backup_writer
from chunkbackup.engine import restore as restore_executor
from chunkbackup import exception
from chunkbackup import storage
from chunkbackup.testing import volumes

KiB = 1024


@pytest.fixture
def small_pieces(monkeypatch):
    """Pieces, chunks and ranges of a few KiB, so small objects have many."""
    monkeypatch.setattr(backup_writer, 'PIECE_SIZE', 16 * KiB)
    monkeypatch.setattr(restore_executor, 'PIECE_SIZE', 16 * KiB)
    monkeypatch.setattr(restore_executor, 'CHUNK_SIZE', 5 * KiB)
    monkeypatch.setattr(restore_executor, 'RANGE_SIZE', 12 * KiB)


def _volume(tmp_path, size, kind='mixed', seed=0, name='vol'):
    path = str(tmp_path / name)
    volumes.write_volume(path, size, kind, seed=seed, region_size=8192)
    return path


def _bodies(driver, record):
    """(entry, stored body) of every object of the backup."""
    layer = driver.plan_restore(record).chain[-1]
    out = []
    for entry in layer.metadata.objects:
        out.append((entry, driver.store.get(layer.container, entry.name)))
    return out


@pytest.mark.parametrize('algorithm', ['zstd', 'zlib', 'bz2', 'none'])
def test_a_streamed_object_is_what_a_whole_object_write_stores(
        make_posix, ops, tmp_path, small_pieces, algorithm):
    driver = make_posix(object_size=96 * KiB,
                        compression_algorithm=algorithm)
    vol = _volume(tmp_path, 1000 * KiB)
    record = ops.backup(driver, vol)
    whole = compression.Compressor(algorithm)
    with open(vol, 'rb') as f:
        data = f.read()
    bodies = _bodies(driver, record)
    assert len(bodies) == 11  # ten objects of six pieces, and the rest
    for entry, body in bodies:
        piece = data[entry.offset:entry.offset + entry.length]
        label, expected = whole.compress(piece)
        if label == 'none' and entry.compression != 'none':
            # Sampled as compressible, stored compressed: the same stream.
            expected = whole._compress(piece)
        assert body == bytes(expected), entry.name
    assert ops.same(ops.restore(driver, record), vol)


class _Concurrency(storage.ForwardingStore):
    """Counts transfers at once; each waits a little so they overlap."""

    def __init__(self, inner=None):
        if inner is not None:
            super().__init__(inner)
        self.now = self.most = 0
        self._lock = threading.Lock()

    def _enter(self):
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
        time.sleep(0.01)

    def _leave(self):
        with self._lock:
            self.now -= 1

    def put_stream(self, container, name, produce, extra_metadata=None):
        self._enter()
        try:
            self.inner.put_stream(container, name, produce, extra_metadata)
        finally:
            self._leave()

    def get_stream(self, container, name, extra_metadata=None,
                   chunk_size=storage.DEFAULT_CHUNK_SIZE):
        self._enter()
        try:
            yield from self.inner.get_stream(container, name,
                                             extra_metadata, chunk_size)
        finally:
            self._leave()

    def __call__(self, inner):
        storage.ForwardingStore.__init__(self, inner)
        return self


@pytest.mark.parametrize('uploads,downloads', [(1, 1), (3, 5)])
def test_in_flight_options_bound_transfers(make_posix, ops, tmp_path,
                                           uploads, downloads):
    driver = make_posix(object_size=32 * KiB, objects_in_flight=uploads,
                        restore_objects_in_flight=downloads,
                        compression_algorithm='none')
    counter = _Concurrency()
    storage.add_wrapper(driver, counter)
    vol = _volume(tmp_path, 1024 * KiB, 'random')
    record = ops.backup(driver, vol)
    assert counter.most == uploads
    counter.most = 0
    assert ops.same(ops.restore(driver, record), vol)
    assert counter.most == downloads


class _BreaksMidStream(storage.ForwardingStore):
    """The first attempt of every put sends half its chunks, then fails."""

    def __init__(self):
        self.failed = set()
        self.attempts = 0

    def __call__(self, inner):
        storage.ForwardingStore.__init__(self, inner)
        return self

    def put_stream(self, container, name, produce, extra_metadata=None):
        self.attempts += 1
        if name in self.failed:
            return self.inner.put_stream(container, name, produce,
                                         extra_metadata)
        self.failed.add(name)
        chunks = list(produce())

        def half():
            yield from chunks[:max(1, len(chunks) // 2)]
            raise exception.TransientStorageError(
                operation='put', target=name, reason='connection reset')
        self.inner.put_stream(container, name, half, extra_metadata)


def test_a_retry_streams_the_object_again_from_the_volume(
        make_posix, ops, tmp_path, small_pieces, conf):
    conf('storage_retry_backoff', 0.0)
    driver = make_posix(object_size=64 * KiB)
    breaker = _BreaksMidStream()
    storage.add_wrapper(driver, breaker)
    vol = _volume(tmp_path, 512 * KiB)
    record = ops.backup(driver, vol)
    data_objects = [n for n in breaker.failed if n[-6] == '-']
    assert len(data_objects) == 8
    assert breaker.attempts == 2 * len(breaker.failed)
    driver.verify(record)
    assert ops.same(ops.restore(driver, record), vol)
    # Nothing half-written stayed behind: every object is whole.
    names = driver.store.list(record.container, record.service_metadata)
    assert len([n for n in names if n[-6] == '-']) == 8


class _FailingVolume:
    """A volume file whose reads fail past ``fail_at``."""

    def __init__(self, path, fail_at):
        self._file = open(path, 'rb')
        self.fail_at = fail_at

    def __getattr__(self, name):
        return getattr(self._file, name)

    def fileno(self):
        raise OSError('no descriptor')  # read through read(), in order

    def readinto(self, buffer):
        if self._file.tell() >= self.fail_at:
            raise OSError(5, 'Input/output error')
        return self._file.readinto(buffer)


def test_a_read_error_mid_object_stores_nothing(make_posix, tmp_path,
                                                small_pieces):
    from chunkbackup.testing.record import BackupRecord
    driver = make_posix(object_size=256 * KiB)
    vol = _volume(tmp_path, 512 * KiB)
    record = BackupRecord('vol-1')
    volume_file = _FailingVolume(vol, 300 * KiB)
    with pytest.raises(OSError, match='Input/output'):
        driver.backup(record, volume_file)
    names = driver.store.list(record.container, record.service_metadata) \
        if os.path.isdir(os.path.join(str(tmp_path / 'backups'),
                                      record.container)) else []
    assert names == []


class _Ranged(storage.ForwardingStore):
    """Serves ranges (from whole gets) and counts them."""

    def __init__(self):
        self.ranges = []

    def __call__(self, inner):
        storage.ForwardingStore.__init__(self, inner)
        return self

    @property
    def supports_ranges(self):
        return True

    def object_size(self, container, name, extra_metadata=None):
        return len(self.inner.get(container, name, extra_metadata))

    def get_range(self, container, name, offset, length,
                  extra_metadata=None):
        self.ranges.append((name, offset, length))
        return self.inner.get(container, name,
                              extra_metadata)[offset:offset + length]


@pytest.mark.parametrize('algorithm', ['zstd', 'none'])
def test_large_objects_are_restored_in_ranges(make_posix, ops, tmp_path,
                                              small_pieces, algorithm):
    # Eight slots: four objects leave half of them free, so each large
    # object goes in ranges (one that would fill the slots streams).
    driver = make_posix(object_size=256 * KiB, restore_objects_in_flight=8,
                        compression_algorithm=algorithm)
    ranged = _Ranged()
    storage.add_wrapper(driver, ranged)
    vol = _volume(tmp_path, 1024 * KiB, 'random')
    record = ops.backup(driver, vol)
    assert ops.same(ops.restore(driver, record), vol)
    objects = {name for name, _, _ in ranged.ranges}
    assert len(objects) == 4  # each 256 KiB object, in 12 KiB ranges
    assert len(ranged.ranges) == 4 * 22
    for name in objects:
        offsets = sorted(o for n, o, _ in ranged.ranges if n == name)
        assert offsets == list(range(0, 22 * 12 * KiB, 12 * KiB))


class _AbandonsMidStream(storage.ForwardingStore):
    """The first attempt of every put reads two chunks, then fails.

    It leaves the stream half-read and keeps it (as a traceback might),
    so only the engine closing it gives its piece buffers back.
    """

    def __init__(self):
        self.kept = []
        self.failed = set()

    def __call__(self, inner):
        storage.ForwardingStore.__init__(self, inner)
        return self

    def put_stream(self, container, name, produce, extra_metadata=None):
        if name in self.failed:
            return self.inner.put_stream(container, name, produce,
                                         extra_metadata)
        self.failed.add(name)
        stream = produce()
        self.kept.append(stream)
        next(stream, None)
        next(stream, None)
        raise exception.TransientStorageError(
            operation='put', target=name, reason='connection reset')


def test_a_stream_abandoned_by_a_failed_attempt_gives_its_buffers_back(
        make_posix, ops, tmp_path, small_pieces, conf):
    conf('storage_retry_backoff', 0.0)
    # One upload at a time: its pool is three piece buffers, so two
    # abandoned streams holding theirs would leave a retry none.
    driver = make_posix(object_size=128 * KiB, objects_in_flight=1,
                        cpu_workers=1, compression_algorithm='none')
    abandoner = _AbandonsMidStream()
    storage.add_wrapper(driver, abandoner)
    vol = _volume(tmp_path, 1024 * KiB, 'random')
    done = []
    worker = threading.Thread(
        target=lambda: done.append(ops.backup(driver, vol)), daemon=True)
    worker.start()
    worker.join(120)
    assert not worker.is_alive(), 'the backup waits for piece buffers'
    assert len([n for n in abandoner.failed if n[-6] == '-']) == 8
    assert ops.same(ops.restore(driver, done[0]), vol)
