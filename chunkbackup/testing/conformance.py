"""The driver conformance suite: one way to prove a driver right.

Every driver chunkbackup ships runs it against its real server, and so can
yours. Subclass ``DriverConformance`` in a pytest module and provide the
``make_driver`` fixture::

    import pytest
    from chunkbackup.testing import conformance

    class TestMyStore(conformance.DriverConformance):
        @pytest.fixture
        def make_driver(self, my_server):
            def make():
                # Configure your [backup_mystore] options here, with a small
                # object size (64 KiB - 1 MiB) so volumes span many objects.
                return MyStoreBackupDriver(context=None)
            return make

Optionally override ``container`` (a fresh container or bucket name for each
test; the default is a unique DNS-safe name), ``corrupt`` (how to damage
a stored object out of band; the default rewrites it through the driver)
and ``stream_size`` (the size of the streamed objects: larger than what
your driver sends in one request, so its streaming path is the one tested;
the default, a little over 9 MiB, is above the 8 MiB that the shipped
drivers send whole).

The suite covers naming rules, writer/reader round trips of empty, small
and object-size bodies, listing by prefix across pages, deletes of missing
objects, full and incremental backups, cmp-exact restores, verify,
corruption detection, names that would escape, behaviour under the
fault-injecting wrapper (transient faults recovered, permanent ones
reported and cleaned up), and streams: a streamed put of uneven chunks
stores the bytes a whole-body write stores, ``get_stream`` delivers pieces
of the size asked for, ``get_range`` and ``object_size`` answer at the
edges and for missing objects, and a producer that fails half-way leaves
no object.
"""
import filecmp
import os
import pathlib
from typing import Callable, cast, Iterator, TYPE_CHECKING, Union
import uuid

from oslo_config import cfg
import pytest

from chunkbackup import backupformat as fmt
from chunkbackup import exception
from chunkbackup import storage
from chunkbackup.storage import driverstore
from chunkbackup.testing import faults
from chunkbackup.testing.record import BackupRecord
from chunkbackup.testing import volumes

if TYPE_CHECKING:
    from chunkbackup.chunked import ChunkedBackupDriver

CONF = cfg.CONF
MiB = 1024 * 1024
# The fixture a test module provides: a fresh, configured driver each call.
MakeDriver = Callable[[], 'ChunkedBackupDriver']


class DriverConformance:
    """The suite; see the module docstring for how to run it."""

    @pytest.fixture(autouse=True)
    def _engine_conf(self):
        # Fast, deterministic engine settings for the suite; reset after.
        CONF.set_override('sha_block_size', 4096, 'chunkbackup')
        CONF.set_override('cancel_check_interval', 0, 'chunkbackup')
        CONF.set_override('storage_retry_backoff', 0.001, 'chunkbackup')
        CONF.set_override('storage_retry_max_delay', 0.01, 'chunkbackup')
        yield
        for name in ('sha_block_size', 'cancel_check_interval',
                     'storage_retry_backoff', 'storage_retry_max_delay',
                     'compression_algorithm', 'storage_retries'):
            CONF.clear_override(name, 'chunkbackup')

    # Bytes of the streamed objects; see the module docstring.
    stream_size = 9 * MiB + 12345

    @pytest.fixture
    def container(self) -> str:
        return 'cbtest-%s' % uuid.uuid4().hex[:16]

    @pytest.fixture
    def driver(self, make_driver: MakeDriver) -> 'ChunkedBackupDriver':
        return make_driver()

    def corrupt(self, driver: 'ChunkedBackupDriver', container: str,
                name: str, body: bytes) -> None:
        """Replace a stored object's body behind the engine's back."""
        with driver.get_object_writer(container, name) as writer:
            writer.write(body)

    # Helpers -------------------------------------------------------------

    @staticmethod
    def _volume(tmp_path, name, size, kind='mixed', seed=0):
        path = str(tmp_path / name)
        volumes.write_volume(path, size, kind, seed=seed, region_size=8192)
        return path

    @staticmethod
    def _backup(driver, record, path):
        with open(path, 'rb') as f:
            driver.backup(record, f)
        record.status = 'available'
        return record

    @staticmethod
    def _restore(driver, record, tmp_path, new=True, base=None):
        out = str(tmp_path / ('restored-%s' % uuid.uuid4().hex[:8]))
        if base is None:
            open(out, 'wb').close()
        else:
            with open(base, 'rb') as src, open(out, 'wb') as dst:
                dst.write(src.read())
        with open(out, 'r+b') as f:
            driver.restore(record, record.volume_id, f, volume_is_new=new)
        return out

    @staticmethod
    def _data_objects(driver, record):
        names = driver.get_container_entries(record.container,
                                             record.service_metadata)
        return [n for n in names if n not in (
            fmt.metadata_name(record.service_metadata),
            fmt.sha256file_name(record.service_metadata))]

    # Naming --------------------------------------------------------------

    def test_naming(self, driver: 'ChunkedBackupDriver',
                    container: str) -> None:
        record = BackupRecord('vol-1')
        prefix = driver._generate_object_name_prefix(record)
        assert prefix.startswith('volume_vol-1')
        assert prefix.endswith('backup_%s' % record.id)
        assert driver.update_container_name(record, container) == container
        default = driver.update_container_name(record, None)
        assert isinstance(default, str) and default

    # Object I/O ----------------------------------------------------------

    @pytest.mark.parametrize('size', [0, 1, 'object'])
    def test_writer_reader_round_trip(self, driver: 'ChunkedBackupDriver',
                                      container: str,
                                      size: Union[int, str]) -> None:
        length = driver.object_size if size == 'object' else size
        assert isinstance(length, int)
        body = os.urandom(length)
        driver.put_container(container)
        with driver.get_object_writer(container, 'obj-a') as writer:
            writer.write(body)
        with driver.get_object_reader(container, 'obj-a') as reader:
            assert reader.read() == body

    def test_streams_round_trip(self, driver: 'ChunkedBackupDriver',
                                container: str) -> None:
        # The seam writes a stream chunk by chunk into one writer, and
        # reads it back in chunks (or whole, from a reader without a size).
        body = os.urandom(driver.object_size + 12345)
        pieces = [body[i:i + 10000] for i in range(0, len(body), 10000)]
        driver.store.ensure_container(container)
        driver.store.put_stream(container, 'obj-s', lambda: iter(pieces))
        chunks = list(driver.store.get_stream(container, 'obj-s',
                                              chunk_size=4096))
        assert b''.join(chunks) == body

    @staticmethod
    def _uneven(body: bytes) -> 'storage.Produce':
        """A producer of ``body`` in uneven chunks from one reused buffer.

        The engine reuses its buffers too: a store must copy or send a
        chunk before it asks for the next.
        """
        sizes = (1, 65536, 3 * MiB + 7, 4093, MiB - 1, 2 * MiB + 3)

        def produce() -> Iterator[memoryview]:
            buffer = bytearray(max(sizes))
            position = 0
            n = 0
            while position < len(body):
                size = min(sizes[n % len(sizes)], len(body) - position)
                buffer[:size] = body[position:position + size]
                yield memoryview(buffer)[:size]
                position += size
                n += 1
        # Views of a reused buffer: harder on a store than fresh bytes.
        return cast('storage.Produce', produce)

    def test_streamed_put_is_byte_identical(self,
                                            driver: 'ChunkedBackupDriver',
                                            container: str) -> None:
        body = os.urandom(self.stream_size)
        store = driver.store
        store.ensure_container(container)
        store.put_stream(container, 'obj-streamed', self._uneven(body))
        # The same bytes as a whole body, through Cinder's writer.
        with driver.get_object_writer(container, 'obj-whole') as writer:
            writer.write(body)
        assert store.get(container, 'obj-streamed') == body
        assert store.get(container, 'obj-whole') == body
        assert store.object_size(container, 'obj-streamed') == len(body)
        # Small streams too (one request on every shipped driver).
        for size in (0, 1, 70000):
            store.put_stream(container, 'obj-%d' % size,
                             self._uneven(body[:size]))
            assert store.get(container, 'obj-%d' % size) == body[:size]

    def test_get_stream_in_pieces(self, driver: 'ChunkedBackupDriver',
                                  container: str) -> None:
        body = os.urandom(3 * MiB + 99)
        store = driver.store
        store.ensure_container(container)
        store.put(container, 'obj-p', body)
        piece = 256 * 1024
        chunks = list(store.get_stream(container, 'obj-p',
                                       chunk_size=piece))
        assert b''.join(chunks) == body
        with driver.get_object_reader(container, 'obj-p') as reader:
            streams = driverstore.reads_in_pieces(reader.read)
        if streams:  # (a reader without read(size) gives one chunk)
            assert len(chunks) >= len(body) // piece
            assert max(len(c) for c in chunks) <= piece
        stream = store.get_stream(container, 'never-was')
        with pytest.raises(exception.StorageObjectNotFound):
            next(stream)

    def test_ranges_and_sizes(self, driver: 'ChunkedBackupDriver',
                              container: str) -> None:
        body = os.urandom(MiB + 4321)
        size = len(body)
        store = driver.store
        store.ensure_container(container)
        store.put(container, 'obj-r', body)
        store.put(container, 'obj-empty', b'')
        assert store.object_size(container, 'obj-r') == size
        assert store.object_size(container, 'obj-empty') == 0
        for offset, length in ((0, 10), (0, size), (size // 3, 65536),
                               (size - 5, 100), (size - 1, 1),
                               (size, 10), (size + 1000, 10), (77, 0)):
            assert store.get_range(container, 'obj-r', offset, length) == \
                body[offset:offset + length], (offset, length)
        assert store.get_range(container, 'obj-empty', 0, 10) == b''
        for call in (lambda: store.get_range(container, 'never-was', 0, 9),
                     lambda: store.object_size(container, 'never-was')):
            with pytest.raises(exception.StorageObjectNotFound):
                call()

    def test_failed_producer_leaves_nothing(self,
                                            driver: 'ChunkedBackupDriver',
                                            container: str) -> None:
        store = driver.store
        store.ensure_container(container)
        chunk = os.urandom(MiB)
        for cut in (self.stream_size // 2, 1000):  # streamed and small

            def produce() -> Iterator[bytes]:
                sent = 0
                while sent < cut:
                    yield chunk[:min(len(chunk), cut - sent)]
                    sent += min(len(chunk), cut - sent)
                raise RuntimeError('the volume went away')

            with pytest.raises(RuntimeError):
                store.put_stream(container, 'obj-cut', produce)
            assert store.list(container, 'obj-cut') == []
            with pytest.raises(exception.StorageObjectNotFound):
                store.get(container, 'obj-cut')

    def test_failed_write_leaves_nothing(self, driver: 'ChunkedBackupDriver',
                                         container: str) -> None:
        driver.put_container(container)
        with pytest.raises(RuntimeError):
            with driver.get_object_writer(container, 'obj-partial') as w:
                w.write(b'x' * 1000)
                raise RuntimeError('interrupted')
        assert driver.get_container_entries(container, 'obj-partial') == []

    def test_listing_by_prefix_across_pages(self,
                                            driver: 'ChunkedBackupDriver',
                                            container: str) -> None:
        driver.put_container(container)
        wanted = ['pfx-%02d' % i for i in range(7)]
        for name in wanted + ['other-1', 'pf']:
            driver.store.put(container, name, b'1')
        if hasattr(driver, 'listing_page_size'):
            driver.listing_page_size = 3  # several pages for 7 entries
        assert sorted(driver.get_container_entries(container, 'pfx-')) == \
            wanted

    def test_missing_objects(self, driver: 'ChunkedBackupDriver',
                             container: str) -> None:
        driver.put_container(container)
        driver.store.delete(container, 'never-was')  # succeeds quietly
        with pytest.raises(exception.StorageObjectNotFound):
            driver.store.get(container, 'never-was')

    # Backups -------------------------------------------------------------

    def test_full_incremental_chain_restore_verify(
            self, driver: 'ChunkedBackupDriver', container: str,
            tmp_path: pathlib.Path
    ) -> None:
        size = driver.object_size * 3 + 12345  # not block-aligned
        vol = self._volume(tmp_path, 'vol', size)
        full = self._backup(driver, BackupRecord('vol-1',
                                                 container=container), vol)
        assert full.container == container
        chain = [full]
        snapshots = [str(tmp_path / 'snap0')]
        with open(vol, 'rb') as f, open(snapshots[0], 'wb') as s:
            s.write(f.read())
        for depth in range(1, 4):
            volumes.change_blocks(vol, 0.05, 4096, seed=depth, max_run=3)
            if depth == 2:  # data turns to zeros in an incremental
                with open(vol, 'r+b') as f:
                    f.seek(4096 * 3)
                    f.write(bytes(4096 * 5))
            if depth == 3:  # the volume grows
                with open(vol, 'ab') as f:
                    f.write(os.urandom(driver.object_size // 2 + 7))
            inc = self._backup(driver, BackupRecord(
                'vol-1', parent=chain[-1], container=container), vol)
            chain.append(inc)
            snap = str(tmp_path / ('snap%d' % depth))
            with open(vol, 'rb') as f, open(snap, 'wb') as s:
                s.write(f.read())
            snapshots.append(snap)
        for record, snap in zip(chain, snapshots):
            driver.verify(record)
            out = self._restore(driver, record, tmp_path, new=True)
            assert filecmp.cmp(out, snap, shallow=False), record
        # Onto an existing volume holding other data.
        junk = self._volume(tmp_path, 'junk', size + driver.object_size,
                            'random', seed=9)
        out = self._restore(driver, chain[1], tmp_path, new=False, base=junk)
        with open(out, 'rb') as got, open(snapshots[1], 'rb') as want:
            expected = want.read()
            assert got.read(len(expected)) == expected

    def test_incremental_stores_only_changes(self,
                                             driver: 'ChunkedBackupDriver',
                                             container: str,
                                             tmp_path: pathlib.Path) -> None:
        vol = self._volume(tmp_path, 'vol', driver.object_size * 4, 'random')
        full = self._backup(driver, BackupRecord('v', container=container),
                            vol)
        with open(vol, 'r+b') as f:
            f.seek(driver.object_size + 4096)
            f.write(os.urandom(4096))
        inc = self._backup(driver, BackupRecord('v', parent=full,
                                                container=container), vol)
        assert len(self._data_objects(driver, inc)) == 1
        assert len(self._data_objects(driver, full)) == 4

    def test_delete(self, driver: 'ChunkedBackupDriver', container: str,
                    tmp_path: pathlib.Path) -> None:
        vol = self._volume(tmp_path, 'vol', driver.object_size * 2)
        full = self._backup(driver, BackupRecord('v', container=container),
                            vol)
        inc = self._backup(driver, BackupRecord('v', parent=full,
                                                container=container), vol)
        with pytest.raises(exception.BackupInUse):
            driver.delete_backup(full)
        driver.delete_backup(inc)
        inc.status = 'deleted'
        assert driver.get_container_entries(container,
                                            inc.service_metadata) == []
        driver.delete_backup(full)
        assert driver.get_container_entries(container,
                                            full.service_metadata) == []

    # Corruption ----------------------------------------------------------

    def test_corrupt_object_detected(self, make_driver: MakeDriver,
                                     container: str,
                                     tmp_path: pathlib.Path) -> None:
        # Stored raw, so the flipped byte reaches the SHA-256 check rather
        # than the decompressor (the decompressor path is tested too).
        CONF.set_override('compression_algorithm', 'none', 'chunkbackup')
        driver = make_driver()
        vol = self._volume(tmp_path, 'vol', driver.object_size * 2, 'random')
        record = self._backup(driver, BackupRecord('v', container=container),
                              vol)
        name = sorted(self._data_objects(driver, record))[1]
        body = driver.store.get(container, name)
        flipped = bytearray(body)
        flipped[len(flipped) // 2] ^= 0x40
        self.corrupt(driver, container, name, bytes(flipped))
        with pytest.raises(exception.BackupCorrupted) as info:
            driver.verify(record)
        assert name in str(info.value) and record.id in str(info.value)
        with pytest.raises(exception.BackupCorrupted):
            self._restore(driver, record, tmp_path)

    def test_missing_object_detected(self, driver: 'ChunkedBackupDriver',
                                     container: str,
                                     tmp_path: pathlib.Path) -> None:
        vol = self._volume(tmp_path, 'vol', driver.object_size * 2, 'random')
        record = self._backup(driver, BackupRecord('v', container=container),
                              vol)
        name = sorted(self._data_objects(driver, record))[0]
        driver.delete_object(container, name)
        with pytest.raises(exception.BackupIncomplete) as info:
            driver.verify(record)
        assert name in str(info.value)

    # Names ---------------------------------------------------------------

    @pytest.mark.parametrize('bad', ['../escape', '/abs/path', 'a/../../b',
                                     'nul\0byte', 'new\nline', 'x' * 2000])
    def test_escaping_container_refused(self, driver: 'ChunkedBackupDriver',
                                        bad: str,
                                        tmp_path: pathlib.Path) -> None:
        vol = self._volume(tmp_path, 'vol', 8192)
        with pytest.raises(exception.InvalidName):
            self._backup(driver, BackupRecord('v', container=bad), vol)

    @pytest.mark.parametrize('field', ['id', 'volume_id'])
    @pytest.mark.parametrize('bad', ['../../etc', 'a/b', 'a\0b', ''])
    def test_escaping_ids_refused(self, driver: 'ChunkedBackupDriver',
                                  container: str, field: str, bad: str,
                                  tmp_path: pathlib.Path) -> None:
        vol = self._volume(tmp_path, 'vol', 8192)
        record = BackupRecord('v', container=container)
        setattr(record, field, bad)
        with pytest.raises(exception.InvalidName):
            self._backup(driver, record, vol)

    # Faults at the storage seam -----------------------------------------

    def test_transient_faults_recovered(self, make_driver: MakeDriver,
                                        container: str,
                                        tmp_path: pathlib.Path) -> None:
        CONF.set_override('storage_retries', 8, 'chunkbackup')
        driver = make_driver()
        injector = faults.install(driver, faults.FaultPlan(
            rate=0.2, kinds=faults.TRANSIENT_KINDS, seed=7))
        vol = self._volume(tmp_path, 'vol', driver.object_size * 4 + 999)
        full = self._backup(driver, BackupRecord('v', container=container),
                            vol)
        volumes.change_blocks(vol, 0.05, 4096, seed=3)
        inc = self._backup(driver, BackupRecord('v', parent=full,
                                                container=container), vol)
        out = self._restore(driver, inc, tmp_path)
        assert filecmp.cmp(out, vol, shallow=False)
        assert injector.injected > 0

    def test_permanent_fault_reported_and_cleaned(
            self, make_driver: MakeDriver, container: str,
            tmp_path: pathlib.Path
    ) -> None:
        driver = make_driver()
        vol = self._volume(tmp_path, 'vol', driver.object_size * 4)
        good = self._backup(driver, BackupRecord('v', container=container),
                            vol)
        injector = faults.install(driver, faults.FaultPlan(
            fail_on=frozenset({('put', 3)}), kinds=('permanent',)))
        record = BackupRecord('v', parent=good, container=container)
        volumes.change_blocks(vol, 0.5, 4096, seed=5)
        with pytest.raises(exception.StorageError) as info:
            self._backup(driver, record, vol)
        assert '-0000' in str(info.value)  # names the object
        assert injector.injected == 1
        injector.disable()
        assert record.service_metadata is not None  # named before the put
        assert driver.get_container_entries(
            container, record.service_metadata) == []
        driver.verify(good)
