"""The Google Cloud Storage driver against a real GCS emulator.

gcp-storage-emulator runs on 127.0.0.1 (the session fixture ``gcs_server``);
the driver talks to it with anonymous credentials through its endpoint
option. Volumes are a few MiB and objects 256 KiB, so the whole module runs
in seconds.
"""
import filecmp
import os
import random
import re
import uuid

from google.auth.credentials import AnonymousCredentials
from google.cloud import storage as gcs
from oslo_config import cfg
import pytest
import requests

from chunkbackup import checksums
from chunkbackup.drivers import google
from chunkbackup.drivers import posix
from chunkbackup import exception
from chunkbackup.testing import conformance
from chunkbackup.testing.record import BackupRecord
from tests.functional import streaming

CONF = cfg.CONF
KiB = 1024
MiB = 1024 * KiB
OBJECT_SIZE = 256 * KiB


@pytest.fixture
def gcs_client(gcs_server):
    """A client of our own, to look at (and damage) what the driver wrote."""
    client = gcs.Client(project=gcs_server.project,
                        credentials=AnonymousCredentials(),
                        client_options={'api_endpoint': gcs_server.endpoint})
    yield client
    client.close()


@pytest.fixture
def bucket_name():
    return 'cb-test-%s' % uuid.uuid4().hex[:12]


@pytest.fixture
def configured(gcs_server, overrides, bucket_name):
    overrides('anonymous', True, google.GROUP)
    overrides('endpoint', gcs_server.endpoint, google.GROUP)
    overrides('project_id', gcs_server.project, google.GROUP)
    overrides('bucket', bucket_name, google.GROUP)
    overrides('object_size', OBJECT_SIZE, google.GROUP)
    overrides('storage_class', 'STANDARD', google.GROUP)
    overrides('timeout', 30.0, google.GROUP)
    # A failing test should fail fast rather than back off for a minute.
    overrides('storage_retry_backoff', 0.05, 'chunkbackup')
    overrides('storage_retry_max_delay', 0.2, 'chunkbackup')
    return overrides


@pytest.fixture
def driver(configured):
    return google.GoogleBackupDriver(context=None)


def make_volume(path, size, seed):
    """Random, compressible and zero regions, so every body kind occurs."""
    rng = random.Random(seed)
    data = bytearray(size)
    pos = 0
    while pos < size:
        n = min(size - pos, rng.choice((20, 48, 100, 300)) * KiB)
        kind = rng.choice(('random', 'text', 'zero'))
        if kind == 'random':
            data[pos:pos + n] = rng.randbytes(n)
        elif kind == 'text':
            data[pos:pos + n] = (b'chunkbackup %d ' % seed * n)[:n]
        pos += n
    with open(path, 'wb') as f:
        f.write(data)
    return bytes(data)


def mutate(path, seed, changes=5):
    """Change a few ranges in place; one of them turns data into zeros."""
    rng = random.Random(seed)
    size = os.path.getsize(path)
    with open(path, 'r+b') as f:
        for i in range(changes):
            offset = rng.randrange(0, size - 40 * KiB)
            length = rng.randrange(1, 40 * KiB)
            f.seek(offset)
            f.write(bytes(length) if i == 0 else rng.randbytes(length))


def backup_file(driver, record, path):
    with open(path, 'rb') as f:
        driver.backup(record, f)
    return record


def restore_new(driver, record, path):
    with open(path, 'wb+') as f:
        driver.restore(record, record.volume_id, f, volume_is_new=True)


def restore_existing(driver, record, path):
    # The target holds other data of the same size: every byte must be
    # rewritten, the zero ranges included.
    size = os.path.getsize(path)
    with open(path, 'r+b') as f:
        f.write(random.Random(size).randbytes(size))
    with open(path, 'r+b') as f:
        driver.restore(record, record.volume_id, f, volume_is_new=False)


def names_in(client, bucket, prefix=''):
    return sorted(b.name for b in client.list_blobs(bucket, prefix=prefix))


def test_full_backup_restore_verify_delete(driver, gcs_client, bucket_name,
                                           tmp_path):
    volume = tmp_path / 'volume'
    make_volume(volume, 2 * MiB + 5000, seed=1)   # a short last block
    record = backup_file(driver, BackupRecord(volume_id=str(uuid.uuid4())),
                         volume)

    assert record.container == bucket_name
    assert re.fullmatch(r'volume_%s/\d{14}/az_nova_backup_%s'
                        % (record.volume_id, record.id),
                        record.service_metadata)
    stored = names_in(gcs_client, bucket_name, record.service_metadata)
    data_objects = ['%s-%05d' % (record.service_metadata, n)
                    for n in range(1, 10)]
    assert stored == sorted(data_objects + [
        record.service_metadata + '_metadata',
        record.service_metadata + '_sha256file'])
    assert record.object_count == len(stored) - 2  # data objects
    bucket = gcs_client.get_bucket(bucket_name)
    assert bucket.storage_class == 'STANDARD'

    new = tmp_path / 'new'
    restore_new(driver, record, new)
    assert filecmp.cmp(volume, new, shallow=False)
    existing = tmp_path / 'existing'
    existing.write_bytes(b'x' * os.path.getsize(volume))
    restore_existing(driver, record, existing)
    assert filecmp.cmp(volume, existing, shallow=False)

    plan = driver.verify(record)
    assert plan.size == os.path.getsize(volume)

    driver.delete_backup(record)
    assert names_in(gcs_client, bucket_name, record.service_metadata) == []
    with pytest.raises(exception.BackupIncomplete):
        driver.verify(record)


def test_incremental_chain(driver, gcs_client, bucket_name, tmp_path):
    volume = tmp_path / 'volume'
    make_volume(volume, 3 * MiB, seed=2)
    snapshots = [volume.read_bytes()]
    records = [backup_file(driver, BackupRecord(volume_id='vol-chain'),
                           volume)]
    for depth in range(1, 4):
        mutate(volume, seed=100 + depth)
        snapshots.append(volume.read_bytes())
        records.append(backup_file(
            driver, BackupRecord(volume_id='vol-chain',
                                 parent=records[-1]), volume))
        # Only the changed blocks were stored.
        assert records[-1].object_count < records[0].object_count

    assert len({r.service_metadata for r in records}) == 4
    for record, expected in zip(records, snapshots):
        new = tmp_path / ('new-%s' % record.id)
        restore_new(driver, record, new)
        assert new.read_bytes() == expected, record
        existing = tmp_path / ('existing-%s' % record.id)
        existing.write_bytes(snapshots[0])
        restore_existing(driver, record, existing)
        assert existing.read_bytes() == expected, record
        driver.verify(record)

    with pytest.raises(exception.BackupInUse):
        driver.delete_backup(records[0])
    for record in reversed(records):
        driver.delete_backup(record)
        record.status = 'deleted'
    assert names_in(gcs_client, bucket_name, 'volume_vol-chain/') == []


def test_missing_bucket_with_creation_disabled(configured, gcs_client,
                                               bucket_name, tmp_path):
    configured('create_bucket', False, google.GROUP)
    driver = google.GoogleBackupDriver(context=None)
    volume = tmp_path / 'volume'
    make_volume(volume, 512 * KiB, seed=3)
    with pytest.raises(exception.StorageContainerNotFound) as err:
        backup_file(driver, BackupRecord(volume_id='vol-nobucket'), volume)
    assert bucket_name in str(err.value)
    assert 'create_bucket' in str(err.value)
    assert gcs_client.lookup_bucket(bucket_name) is None

    # Once the bucket exists, the same configuration works.
    gcs_client.create_bucket(bucket_name)
    record = backup_file(driver, BackupRecord(volume_id='vol-nobucket'),
                         volume)
    driver.verify(record)


def test_missing_bucket_of_an_existing_record(driver, bucket_name):
    record = BackupRecord(volume_id='vol-gone', container=bucket_name,
                          service_metadata='volume_vol-gone/x/az_nova_'
                                           'backup_y', status='available')
    with pytest.raises(exception.StorageContainerNotFound) as err:
        driver.verify(record)
    assert bucket_name in str(err.value)


def test_missing_metadata_says_incomplete(driver, gcs_client, bucket_name,
                                          tmp_path):
    volume = tmp_path / 'volume'
    make_volume(volume, 512 * KiB, seed=4)
    record = backup_file(driver, BackupRecord(volume_id='vol-inc'), volume)
    gcs_client.bucket(bucket_name).delete_blob(
        record.service_metadata + '_metadata')
    with pytest.raises(exception.BackupIncomplete) as err:
        restore_new(driver, record, tmp_path / 'new')
    assert '_metadata' in str(err.value)


@pytest.mark.parametrize('algorithm', ['zstd', 'none'])
def test_corrupted_object_is_detected(configured, gcs_client, bucket_name,
                                      tmp_path, algorithm):
    configured('compression_algorithm', algorithm, 'chunkbackup')
    driver = google.GoogleBackupDriver(context=None)
    volume = tmp_path / 'volume'
    make_volume(volume, 1 * MiB, seed=5)
    record = backup_file(driver, BackupRecord(volume_id='vol-bad'), volume)
    # The service accepts it: the object really is stored with these bytes.
    victim = gcs_client.bucket(bucket_name).blob(
        record.service_metadata + '-00002')
    body = bytearray(victim.download_as_bytes())
    body[len(body) // 2] ^= 0xFF
    victim.upload_from_string(bytes(body))

    with pytest.raises(exception.BackupCorrupted) as err:
        restore_new(driver, record, tmp_path / 'new')
    assert err.value.kwargs['object'] == victim.name
    with pytest.raises(exception.BackupCorrupted) as err:
        driver.verify(record)
    assert err.value.kwargs['object'] == victim.name


def test_large_objects_use_resumable_uploads(configured, gcs_client,
                                             bucket_name, tmp_path):
    # Objects over 8 MiB go as resumable uploads in 256 KiB pieces.
    configured('object_size', 9 * MiB, google.GROUP)
    configured('upload_chunk_size', 256 * KiB, google.GROUP)
    configured('compression_algorithm', 'none', 'chunkbackup')
    driver = google.GoogleBackupDriver(context=None)
    volume = tmp_path / 'volume'
    volume.write_bytes(random.Random(6).randbytes(9 * MiB + 100 * KiB))
    record = backup_file(driver, BackupRecord(volume_id='vol-big'), volume)
    blob = gcs_client.bucket(bucket_name).get_blob(
        record.service_metadata + '-00001')
    assert blob.size == 9 * MiB
    assert blob.md5_hash == checksums.md5_base64(
        volume.read_bytes()[:9 * MiB])
    new = tmp_path / 'new'
    restore_new(driver, record, new)
    assert filecmp.cmp(volume, new, shallow=False)


@pytest.mark.parametrize('size', [9 * MiB, 9 * MiB + 12345])
def test_streamed_resumable_upload_is_byte_identical(configured, gcs_client,
                                                     bucket_name, size):
    # A multiple of upload_chunk_size ends with an empty final request.
    configured('upload_chunk_size', 1 * MiB, google.GROUP)
    driver = google.GoogleBackupDriver(context=None)
    driver.store.ensure_container(bucket_name)
    body = os.urandom(size)
    driver.store.put_stream(bucket_name, 'streamed', streaming.uneven(body))
    driver.store.put(bucket_name, 'whole', body)
    bucket = gcs_client.bucket(bucket_name)
    streamed = bucket.get_blob('streamed')
    assert streamed.size == size
    assert streamed.md5_hash == checksums.md5_base64(body)
    assert bucket.blob('streamed').download_as_bytes() == body
    assert bucket.blob('whole').download_as_bytes() == body


def test_streamed_upload_failing_half_way_leaves_nothing(configured,
                                                         gcs_client,
                                                         bucket_name):
    configured('upload_chunk_size', 1 * MiB, google.GROUP)
    configured('storage_retries', 0, 'chunkbackup')
    driver = google.GoogleBackupDriver(context=None)
    driver.store.ensure_container(bucket_name)
    # Twelve MiB sent, then the producer fails.
    producer_fails = streaming.failing_after(12)
    chunk = os.urandom(MiB)

    with pytest.raises(RuntimeError):
        driver.store.put_stream(bucket_name, 'cut-by-producer',
                                producer_fails)

    session = driver.client._http
    real_request = session.request
    puts = []

    def request(method, url, *args, **kwargs):
        if method == 'PUT':
            puts.append(url)
            if len(puts) == 4:
                raise requests.ConnectionError('connection reset')
        return real_request(method, url, *args, **kwargs)

    session.request = request
    with pytest.raises(exception.TransientStorageError):
        driver.store.put_stream(bucket_name, 'cut-by-store',
                                lambda: [chunk] * 12)
    assert len(puts) == 4
    assert names_in(gcs_client, bucket_name) == []


def test_restore_of_a_posix_backup_copied_into_the_bucket(
        configured, driver, gcs_client, bucket_name, tmp_path):
    configured('object_size', OBJECT_SIZE, posix.GROUP)
    posix_driver = posix.PosixBackupDriver(
        context=None, backup_path=str(tmp_path / 'posix'))
    volume = tmp_path / 'volume'
    make_volume(volume, 2 * MiB, seed=7)
    full = backup_file(posix_driver, BackupRecord(volume_id='vol-copy'),
                       volume)
    mutate(volume, seed=8)
    incr = backup_file(posix_driver,
                       BackupRecord(volume_id='vol-copy', parent=full),
                       volume)

    bucket = gcs_client.create_bucket(bucket_name)
    copies = {}
    for record in (full, incr):
        directory = tmp_path / 'posix' / record.container
        names = sorted(n for n in os.listdir(directory)
                       if n.startswith(record.service_metadata))
        assert names
        for name in names:
            bucket.blob(name).upload_from_filename(str(directory / name))
        copies[record.id] = BackupRecord(
            volume_id=record.volume_id, id=record.id,
            parent=copies.get(record.parent_id), container=bucket_name,
            service_metadata=record.service_metadata, status='available')

    new = tmp_path / 'new'
    restore_new(driver, copies[incr.id], new)
    assert filecmp.cmp(volume, new, shallow=False)
    driver.verify(copies[full.id])
    driver.verify(copies[incr.id])


def test_unreachable_endpoint_is_transient(configured):
    configured('endpoint', 'http://127.0.0.1:%d' % _closed_port(),
               google.GROUP)
    configured('storage_retries', 1, 'chunkbackup')
    driver = google.GoogleBackupDriver(context=None)
    with pytest.raises(exception.TransientStorageError):
        driver.store.get('some-bucket', 'some-object')


def _closed_port():
    from tests.functional import servers
    return servers.free_port()


class TestGoogleConformance(conformance.DriverConformance):
    """The suite every driver runs, against the emulator."""

    @pytest.fixture
    def make_driver(self, configured):
        configured('object_size', 64 * KiB, google.GROUP)
        return lambda: google.GoogleBackupDriver(context=None)

    @pytest.fixture
    def container(self, bucket_name):
        return bucket_name


def test_a_big_object_is_never_held_whole(driver, bucket_name):
    driver.store.ensure_container(bucket_name)
    streaming.assert_bounded(driver.store, bucket_name, 'big')


def test_folds_and_synthetic_full(driver, tmp_path):
    """Middle backups of chains of 5 forgotten in every order (GCS
    rewrite), a synthetic full; every result restored byte-exact and
    verified.
    """
    from chunkbackup.testing import folds
    assert folds.fold_chain_checks(driver, str(tmp_path)) == 20
