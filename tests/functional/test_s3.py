"""The S3 driver against two real S3 servers on 127.0.0.1.

Every test runs twice: against moto (lenient, with IAM authentication
switched on by its fixture) and against Swift's s3api (the stricter one:
SigV4, Content-MD5 and multipart rules as a real S3 applies them). Buckets
are DNS-compliant and addressed path-style, which both accept.
"""
import dataclasses
import filecmp
import os
import re
import uuid

import boto3
from botocore import config as boto_config
from botocore import exceptions as boto_exc
from oslo_config import cfg
import pytest

from chunkbackup import backupformat as fmt
from chunkbackup import checksums
from chunkbackup.drivers import posix
from chunkbackup.drivers import s3
from chunkbackup import exception
from chunkbackup import storage
from chunkbackup.testing import conformance
from chunkbackup.testing.record import BackupRecord
from chunkbackup.testing import volumes
from tests.functional import streaming

CONF = cfg.CONF
KiB = 1024
MiB = 1024 * KiB
BLOCK = 4096
OBJECT_SIZE = 128 * KiB
ENGINE_OPTS = {'sha_block_size': BLOCK, 'cancel_check_interval': 0,
               'storage_retry_backoff': 0.001,
               'storage_retry_max_delay': 0.01}
PREFIX_RE = re.compile(r'^volume_(?P<volume>[^/]+)/(?P<ts>\d{14})/'
                       r'az_(?P<az>[^/]+)_backup_(?P<backup>[^/]+)$')


@dataclasses.dataclass
class Endpoint:
    """One S3 server, whichever fixture started it."""

    name: str
    url: str
    access_key: str
    secret_key: str
    region: str
    server: object

    def logs(self) -> str:
        if hasattr(self.server, 'logs'):
            return self.server.logs()
        from tests.functional import servers
        return servers.tail(self.server.log_path)


@pytest.fixture(params=['moto', 'swift-s3api'])
def endpoint(request):
    if request.param == 'moto':
        server = request.getfixturevalue('moto_server')
        return Endpoint('moto', server.endpoint, server.access_key,
                        server.secret_key, server.region, server)
    server = request.getfixturevalue('swift_server')
    return Endpoint('swift-s3api', server.s3_endpoint, server.s3_access_key,
                    server.s3_secret_key, server.s3_region, server)


def raw_client(endpoint: Endpoint):
    """A plain boto3 client, to see and tamper with what the driver stored."""
    return boto3.session.Session().client(
        's3', endpoint_url=endpoint.url, region_name=endpoint.region,
        aws_access_key_id=endpoint.access_key,
        aws_secret_access_key=endpoint.secret_key,
        config=boto_config.Config(
            s3={'addressing_style': 'path'},
            retries={'total_max_attempts': 1},
            request_checksum_calculation='when_required',
            response_checksum_validation='when_required'))


def _empty_bucket(client, bucket):
    try:
        for page in client.get_paginator('list_objects_v2').paginate(
                Bucket=bucket):
            for obj in page.get('Contents', ()):
                client.delete_object(Bucket=bucket, Key=obj['Key'])
        client.delete_bucket(Bucket=bucket)
    except boto_exc.ClientError as e:
        if e.response['Error']['Code'] not in ('NoSuchBucket', '404'):
            raise


@pytest.fixture
def overrides():
    """Set options for one test; every override is cleared afterwards."""
    groups = {}

    def set_(name, value, group=s3.GROUP):
        CONF.set_override(name, value, group)
        groups.setdefault(group, set()).add(name)

    yield set_
    for group, opts in groups.items():
        for name in opts:
            CONF.clear_override(name, group)


def _point_at(set_, endpoint: Endpoint) -> None:
    for name, value in ENGINE_OPTS.items():
        set_(name, value, 'chunkbackup')
    set_('endpoint_url', endpoint.url)
    set_('access_key', endpoint.access_key)
    set_('secret_key', endpoint.secret_key)
    set_('region', endpoint.region)
    set_('addressing_style', 'path')
    set_('object_size', OBJECT_SIZE)


@pytest.fixture
def s3_conf(overrides, endpoint):
    """[backup_s3] pointing at the server; returns a setter for more."""
    _point_at(overrides, endpoint)
    return overrides


@pytest.fixture
def bucket(endpoint):
    name = 'cbtest-%s' % uuid.uuid4().hex[:16]
    yield name
    _empty_bucket(raw_client(endpoint), name)


class TestS3Conformance(conformance.DriverConformance):
    """The suite every driver passes, on both servers."""

    @pytest.fixture
    def make_driver(self, s3_conf, endpoint):
        self.endpoint = endpoint
        # The smallest part S3 allows: the suite's 9 MiB streams go up as
        # multipart uploads of two parts.
        s3_conf('multipart_chunksize', 5 * MiB)
        return lambda: s3.S3BackupDriver(None)

    @pytest.fixture
    def container(self, bucket):
        return bucket

    def corrupt(self, driver, container, name, body):
        raw_client(self.endpoint).put_object(Bucket=container, Key=name,
                                             Body=body)


def _volume(tmp_path, name, size, kind='mixed', seed=0):
    path = str(tmp_path / name)
    volumes.write_volume(path, size, kind, seed=seed, region_size=8 * KiB)
    return path


def _backup(driver, record, path):
    with open(path, 'rb') as f:
        driver.backup(record, f)
    record.status = 'available'
    return record


def _restore(driver, record, tmp_path, base=None):
    out = str(tmp_path / ('restored-%s' % uuid.uuid4().hex[:8]))
    with open(out, 'wb') as f:
        if base is not None:
            with open(base, 'rb') as src:
                f.write(src.read())
    with open(out, 'r+b') as f:
        driver.restore(record, record.volume_id, f,
                       volume_is_new=base is None)
    return out


def _snapshot(path, tmp_path, name):
    dst = str(tmp_path / name)
    with open(path, 'rb') as s, open(dst, 'wb') as d:
        d.write(s.read())
    return dst


def _keys(client, bucket, prefix=''):
    return sorted(obj['Key'] for page in
                  client.get_paginator('list_objects_v2').paginate(
                      Bucket=bucket, Prefix=prefix)
                  for obj in page.get('Contents', ()))


def _data_bytes(client, record):
    """Bytes stored in a backup's data objects."""
    prefix = record.service_metadata
    return sum(obj['Size'] for obj in client.list_objects_v2(
        Bucket=record.container, Prefix=prefix + '-')['Contents'])


def test_full_incremental_chain_restore_verify_delete(s3_conf, endpoint,
                                                      bucket, tmp_path):
    s3_conf('bucket', bucket)
    driver = s3.S3BackupDriver(None)
    client = raw_client(endpoint)
    size = OBJECT_SIZE * 4 + 5000  # the last object is short
    vol = _volume(tmp_path, 'vol', size)
    full = _backup(driver, BackupRecord('vol-1'), vol)

    # Cinder's S3 naming, in the configured default bucket.
    assert full.container == bucket
    match = PREFIX_RE.match(full.service_metadata)
    assert match, full.service_metadata
    assert match.group('volume') == 'vol-1'
    assert match.group('az') == 'nova'
    assert match.group('backup') == full.id
    data_names = [fmt.data_object_name(full.service_metadata, n)
                  for n in range(1, 6)]
    assert _keys(client, bucket) == sorted(
        data_names + [fmt.sha256file_name(full.service_metadata),
                      fmt.metadata_name(full.service_metadata)])
    assert full.object_count == 5  # data objects, as Cinder counts

    chain = [full]
    snapshots = [_snapshot(vol, tmp_path, 'snap0')]
    for depth in range(1, 4):
        volumes.change_blocks(vol, 0.04, BLOCK, seed=depth, max_run=2)
        if depth == 2:  # data turns into zeros
            with open(vol, 'r+b') as f:
                f.seek(BLOCK * 2)
                f.write(bytes(BLOCK * 6))
        chain.append(_backup(driver, BackupRecord('vol-1', parent=chain[-1]),
                             vol))
        snapshots.append(_snapshot(vol, tmp_path, 'snap%d' % depth))
    full_bytes = _data_bytes(client, full)
    for record in chain[1:]:
        # An incremental stores only the changed runs.
        assert 0 < _data_bytes(client, record) < full_bytes / 2

    for record, snap in zip(chain, snapshots):
        driver.verify(record)
        assert filecmp.cmp(_restore(driver, record, tmp_path), snap,
                           shallow=False), record
    # Onto an existing volume full of other data.
    junk = _volume(tmp_path, 'junk', size, 'random', seed=42)
    out = _restore(driver, chain[2], tmp_path, base=junk)
    assert filecmp.cmp(out, snapshots[2], shallow=False)

    # Delete newest first; the others stay restorable.
    with pytest.raises(exception.BackupInUse):
        driver.delete_backup(chain[0])
    driver.delete_backup(chain[3])
    chain[3].status = 'deleted'
    assert _keys(client, bucket, chain[3].service_metadata) == []
    assert filecmp.cmp(_restore(driver, chain[2], tmp_path), snapshots[2],
                       shallow=False)
    for record in reversed(chain[:3]):
        driver.delete_backup(record)
        record.status = 'deleted'
    assert _keys(client, bucket) == []


def test_wrong_secret_key_is_a_clear_auth_error(s3_conf, endpoint, bucket,
                                                tmp_path):
    s3_conf('bucket', bucket)
    vol = _volume(tmp_path, 'vol', OBJECT_SIZE * 2)
    good = _backup(s3.S3BackupDriver(None), BackupRecord('vol-1'), vol)
    wrong = 'not-the-secret-%s' % uuid.uuid4().hex
    s3_conf('secret_key', wrong)
    driver = s3.S3BackupDriver(None)
    for attempt in (lambda: _backup(driver, BackupRecord('vol-1'), vol),
                    driver.check_for_setup_error):
        with pytest.raises(exception.StorageAuthError) as info:
            attempt()
        message = str(info.value)
        assert '[backup_s3] access_key/secret_key' in message
        assert endpoint.access_key in message
        assert wrong not in message and endpoint.secret_key not in message
    with pytest.raises(exception.StorageAuthError):
        driver.verify(good)
    with pytest.raises(exception.StorageAuthError):
        _restore(driver, good, tmp_path)


def test_missing_bucket_without_create_bucket(s3_conf, endpoint, bucket,
                                              tmp_path):
    s3_conf('bucket', bucket)
    s3_conf('create_bucket', False)
    driver = s3.S3BackupDriver(None)
    vol = _volume(tmp_path, 'vol', OBJECT_SIZE)
    for attempt in (lambda: _backup(driver, BackupRecord('vol-1'), vol),
                    driver.check_for_setup_error):
        with pytest.raises(exception.StorageContainerNotFound) as info:
            attempt()
        assert bucket in str(info.value)
        assert 'create_bucket' in str(info.value)
    client = raw_client(endpoint)
    with pytest.raises(boto_exc.ClientError):
        client.head_bucket(Bucket=bucket)
    # Once the bucket exists, the same configuration backs up into it.
    client.create_bucket(Bucket=bucket)
    driver.check_for_setup_error()
    record = _backup(driver, BackupRecord('vol-1'), vol)
    assert filecmp.cmp(_restore(driver, record, tmp_path), vol,
                       shallow=False)


@pytest.mark.parametrize('compression', ['none', 'zstd'])
def test_object_overwritten_behind_our_back_is_detected(
        s3_conf, endpoint, bucket, tmp_path, compression):
    s3_conf('compression_algorithm', compression, 'chunkbackup')
    s3_conf('bucket', bucket)
    driver = s3.S3BackupDriver(None)
    vol = _volume(tmp_path, 'vol', OBJECT_SIZE * 3, 'text')
    record = _backup(driver, BackupRecord('vol-1'), vol)
    name = fmt.data_object_name(record.service_metadata, 2)
    client = raw_client(endpoint)
    body = client.get_object(Bucket=bucket, Key=name)['Body'].read()
    # Same length, other bytes: only the content checks can tell.
    damaged = bytearray(body)
    damaged[len(damaged) // 3] ^= 0x01
    client.put_object(Bucket=bucket, Key=name, Body=bytes(damaged))
    with pytest.raises(exception.BackupCorrupted) as info:
        driver.verify(record)
    assert name in str(info.value) and record.id in str(info.value)
    with pytest.raises(exception.BackupCorrupted):
        _restore(driver, record, tmp_path)
    with pytest.raises(exception.BackupCorrupted):
        _restore(driver, record, tmp_path, base=vol)


def _multipart_conf(s3_conf, bucket):
    s3_conf('bucket', bucket)
    s3_conf('compression_algorithm', 'none', 'chunkbackup')
    s3_conf('object_size', 6 * MiB)
    s3_conf('multipart_threshold', 5 * MiB)
    s3_conf('multipart_chunksize', 5 * MiB)


def test_multipart_objects_round_trip(s3_conf, endpoint, bucket, tmp_path):
    _multipart_conf(s3_conf, bucket)
    driver = s3.S3BackupDriver(None)
    vol = _volume(tmp_path, 'vol', 12 * MiB + 3 * BLOCK, 'random')
    record = _backup(driver, BackupRecord('vol-1'), vol)
    client = raw_client(endpoint)
    etags = [client.head_object(
        Bucket=bucket, Key=fmt.data_object_name(record.service_metadata, n)
    )['ETag'].strip('"') for n in (1, 2, 3)]
    # A multipart object's ETag is "<md5 of the part md5s>-<parts>".
    assert etags[0].endswith('-2') and etags[1].endswith('-2'), etags
    assert '-' not in etags[2], etags
    driver.verify(record)
    assert filecmp.cmp(_restore(driver, record, tmp_path), vol,
                       shallow=False)


def test_failed_multipart_upload_leaves_nothing(s3_conf, endpoint, bucket):
    _multipart_conf(s3_conf, bucket)
    driver = s3.S3BackupDriver(None)
    driver.put_container(bucket)
    real_upload_part = driver.client.upload_part

    def upload_part(**kwargs):
        if kwargs['PartNumber'] == 2:
            raise boto_exc.EndpointConnectionError(
                endpoint_url=endpoint.url)
        return real_upload_part(**kwargs)

    driver.client.upload_part = upload_part
    with pytest.raises(exception.TransientStorageError):
        # The seam's adapter classifies the failure; no retries.
        storage.DriverStore(driver).put(bucket, 'big-object',
                                        os.urandom(7 * MiB))
    client = raw_client(endpoint)
    assert _keys(client, bucket) == []
    uploads = client.list_multipart_uploads(Bucket=bucket)
    assert uploads.get('Uploads', []) == []


def test_streamed_multipart_is_byte_identical(s3_conf, endpoint, bucket):
    s3_conf('multipart_chunksize', 5 * MiB)
    driver = s3.S3BackupDriver(None)
    driver.store.ensure_container(bucket)
    body = os.urandom(12 * MiB + 77)
    driver.store.put_stream(bucket, 'streamed', streaming.uneven(body))
    driver.store.put(bucket, 'whole', body)
    small = body[:5 * MiB]
    driver.store.put_stream(bucket, 'small', streaming.uneven(small))
    client = raw_client(endpoint)
    streamed = client.get_object(Bucket=bucket, Key='streamed')
    assert streamed['Body'].read() == body
    # Three parts of 5, 5 and 2 MiB; the one-part stream is one PUT.
    assert streamed['ETag'].strip('"').endswith('-3'), streamed['ETag']
    assert client.get_object(Bucket=bucket, Key='whole')['Body'].read() == \
        body
    small_etag = client.head_object(Bucket=bucket, Key='small')['ETag']
    assert small_etag.strip('"') == checksums.md5_hex(small)
    assert driver.store.get_range(bucket, 'streamed', 5 * MiB - 3, 6) == \
        body[5 * MiB - 3:5 * MiB + 3]
    assert driver.store.object_size(bucket, 'streamed') == len(body)
    assert client.list_multipart_uploads(Bucket=bucket).get(
        'Uploads', []) == []


def test_streamed_upload_failing_half_way_leaves_nothing(s3_conf, endpoint,
                                                         bucket):
    s3_conf('multipart_chunksize', 5 * MiB)
    s3_conf('storage_retries', 0, 'chunkbackup')
    driver = s3.S3BackupDriver(None)
    driver.store.ensure_container(bucket)
    # Twelve MiB sent (two parts and the third begun), then the producer fails.
    producer_fails = streaming.failing_after(12)
    chunk = os.urandom(MiB)

    with pytest.raises(RuntimeError):
        driver.store.put_stream(bucket, 'cut-by-producer', producer_fails)

    real_upload_part = driver.client.upload_part

    def upload_part(**kwargs):
        if kwargs['PartNumber'] == 2:
            raise boto_exc.EndpointConnectionError(endpoint_url=endpoint.url)
        return real_upload_part(**kwargs)

    driver.client.upload_part = upload_part
    with pytest.raises(exception.TransientStorageError):
        driver.store.put_stream(bucket, 'cut-by-store',
                                lambda: [chunk] * 12)
    client = raw_client(endpoint)
    assert _keys(client, bucket) == []
    assert client.list_multipart_uploads(Bucket=bucket).get(
        'Uploads', []) == []


def test_backup_written_by_posix_restores_from_s3(s3_conf, endpoint, bucket,
                                                  tmp_path):
    """A posix backup copied key for key into a bucket is an S3 backup.

    Objects are objects: the format is the same whatever stores them.
    """
    s3_conf('object_size', 64 * KiB, posix.GROUP)
    s3_conf('path', str(tmp_path / 'posix'), posix.GROUP)
    posix_driver = posix.PosixBackupDriver(None)
    size = 64 * KiB * 5 + 777
    vol = _volume(tmp_path, 'vol', size)
    p_full = _backup(posix_driver, BackupRecord('vol-9'), vol)
    volumes.change_blocks(vol, 0.05, BLOCK, seed=4)
    p_inc = _backup(posix_driver, BackupRecord('vol-9', parent=p_full), vol)
    snap = _snapshot(vol, tmp_path, 'snap')

    client = raw_client(endpoint)
    client.create_bucket(Bucket=bucket)
    copies = {}
    for record in (p_full, p_inc):
        names = posix_driver.get_container_entries(record.container,
                                                   record.service_metadata)
        assert len(names) > 2
        for name in names:
            client.put_object(Bucket=bucket, Key=name, Body=posix_driver.store
                              .get(record.container, name))
        parent = copies.get(record.parent_id)
        copies[record.id] = BackupRecord(
            record.volume_id, id=record.id, parent=parent, container=bucket,
            service_metadata=record.service_metadata, status='available')

    s3_conf('object_size', OBJECT_SIZE)
    driver = s3.S3BackupDriver(None)
    driver.verify(copies[p_inc.id])
    assert filecmp.cmp(_restore(driver, copies[p_inc.id], tmp_path), snap,
                       shallow=False)
    # The copied chain is a parent like any other for an S3 incremental.
    volumes.change_blocks(vol, 0.05, BLOCK, seed=5)
    s3_inc = _backup(driver, BackupRecord('vol-9', parent=copies[p_inc.id],
                                          container=bucket), vol)
    assert PREFIX_RE.match(s3_inc.service_metadata)
    assert filecmp.cmp(_restore(driver, s3_inc, tmp_path), vol,
                       shallow=False)


def test_swift_s3api_refuses_a_body_that_does_not_match_content_md5(
        swift_server, overrides, monkeypatch):
    """What Content-MD5 buys on a server that checks it (moto does not).

    The MD5 we send is made to disagree with the body, as if the body had
    been damaged on the way: the server refuses it, nothing is stored, and
    the error is one the seam retries.
    """
    endpoint = Endpoint('swift-s3api', swift_server.s3_endpoint,
                        swift_server.s3_access_key,
                        swift_server.s3_secret_key, swift_server.s3_region,
                        swift_server)
    _point_at(overrides, endpoint)
    bucket = 'cbtest-md5-%s' % uuid.uuid4().hex[:12]
    driver = s3.S3BackupDriver(None)
    driver.put_container(bucket)
    real_md5 = checksums.md5_base64
    monkeypatch.setattr(checksums, 'md5_base64',
                        lambda data: real_md5(bytes(data) + b'!'))
    with pytest.raises(exception.TransientStorageError) as info:
        storage.DriverStore(driver).put(bucket, 'damaged',
                                        os.urandom(100 * KiB))
    assert 'BadDigest' in str(info.value)
    client = raw_client(endpoint)
    assert _keys(client, bucket) == []
    _empty_bucket(client, bucket)


def test_a_big_object_is_never_held_whole(s3_conf, bucket):
    s3_conf('multipart_chunksize', 5 * MiB)
    driver = s3.S3BackupDriver(None)
    driver.store.ensure_container(bucket)
    streaming.assert_bounded(driver.store, bucket, 'big')


def test_folds_and_synthetic_full(s3_conf, bucket, tmp_path):
    """Middle backups of chains of 5 forgotten in every order (CopyObject),
    a synthetic full; every result restored byte-exact and verified.
    """
    from chunkbackup.testing import folds
    s3_conf('bucket', bucket)
    driver = s3.S3BackupDriver(None)
    assert folds.fold_chain_checks(driver, str(tmp_path)) == 20
