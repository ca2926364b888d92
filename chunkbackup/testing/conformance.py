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
test; the default is a unique DNS-safe name) and ``corrupt`` (how to damage
a stored object out of band; the default rewrites it through the driver).

The suite covers naming rules, writer/reader round trips of empty, small
and object-size bodies, listing by prefix across pages, deletes of missing
objects, full and incremental backups, cmp-exact restores, verify,
corruption detection, names that would escape, and behaviour under the
fault-injecting wrapper (transient faults recovered, permanent ones
reported and cleaned up).
"""
import filecmp
import os
import pathlib
from typing import Callable, TYPE_CHECKING, Union
import uuid

from oslo_config import cfg
import pytest

from chunkbackup import backupformat as fmt
from chunkbackup import exception
from chunkbackup.testing import faults
from chunkbackup.testing.record import BackupRecord
from chunkbackup.testing import volumes

if TYPE_CHECKING:
    from chunkbackup.chunked import ChunkedBackupDriver

CONF = cfg.CONF
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
