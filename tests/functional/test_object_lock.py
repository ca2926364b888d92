"""Object lock against real servers on 127.0.0.1.

S3: moto, which implements Object Lock (buckets created with it, retention
on PutObject, PutObjectRetention, GetObjectLockConfiguration, and
DeleteObject of a locked version refused). Two gaps of moto 5, which the
driver works around, so that the tests check the result (each object's
retention, as head_object reports it) rather than the request: it
ignores the retention given to CreateMultipartUpload, and it refuses a
CopyObject with a retention date for want of a Content-MD5 (of a body a
copy does not have); the driver then sets the retention with
PutObjectRetention after the upload or copy.

GCS: gcp-storage-emulator implements neither buckets with object
retention nor object retention nor holds (it drops the ``retention``
field of an upload). What can be tested against it is that the driver
refuses its bucket, with one line, before writing anything; what the
driver sends for a retained upload is tested in tests/unit.

The commands run as a user runs them (the installed ``chunkbackup``).
"""
import datetime
import json
import re
import uuid

import boto3
from botocore import config as boto_config
from botocore import exceptions as boto_exc
import pytest

from chunkbackup.testing import volumes
from tests.functional.clitool import Cli

KiB = 1024
MiB = 1024 * KiB
DAYS = 2
LINE = re.compile(
    r'^backup (?P<id>[0-9a-f-]{36}) is locked \(S3 object lock, '
    r'(?P<mode>compliance|governance)\) until (?P<until>\d{4}-\d\d-\d\d '
    r'\d\d:\d\d:\d\d) UTC; it can be deleted after that$')


def s3_client(server):
    return boto3.session.Session().client(
        's3', endpoint_url=server.endpoint, region_name=server.region,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        config=boto_config.Config(
            s3={'addressing_style': 'path'},
            retries={'total_max_attempts': 1},
            request_checksum_calculation='when_required',
            response_checksum_validation='when_required'))


def lock_bucket(client, lock: bool = True) -> str:
    name = 'cblock-%s' % uuid.uuid4().hex[:16]
    client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=lock)
    return name


class S3Cli(Cli):
    """The command with [chunkbackup] driver = s3 and [backup_s3] set."""

    def __init__(self, tmp_path, server, bucket, **s3_options):
        super().__init__(tmp_path)
        self.server = server
        self.bucket = bucket
        self.configure(**s3_options)

    def configure(self, **s3_options):
        values = {
            'endpoint_url': self.server.endpoint,
            'access_key': self.server.access_key,
            'secret_key': self.server.secret_key,
            'region': self.server.region,
            'addressing_style': 'path',
            'bucket': self.bucket,
            'create_bucket': 'False',
            'object_size': str(6 * MiB),
        }
        values.update({k: str(v) for k, v in s3_options.items()})
        lines = ['[chunkbackup]', 'driver = s3', 'sha_block_size = 65536',
                 '[backup_s3]'] + ['%s = %s' % kv for kv in values.items()]
        self.config.write_text('\n'.join(lines) + '\n')

    def json(self, *args):
        return json.loads(self.run(*(args + ('--format', 'json'))).stdout)


def versions(client, bucket, prefix=''):
    """(key, version id, is delete marker) of everything under prefix."""
    found = []
    for page in client.get_paginator('list_object_versions').paginate(
            Bucket=bucket, Prefix=prefix):
        for v in page.get('Versions', []):
            found.append((v['Key'], v['VersionId'], False))
        for m in page.get('DeleteMarkers', []):
            found.append((m['Key'], m['VersionId'], True))
    return sorted(found)


def utc(text: str) -> datetime.datetime:
    return datetime.datetime.strptime(
        text, '%Y-%m-%dT%H:%M:%SZ').replace(tzinfo=datetime.timezone.utc)


@pytest.fixture
def client(moto_server):
    return s3_client(moto_server)


@pytest.fixture
def volume(tmp_path):
    path = tmp_path / 'volume.img'
    # Random bytes: a 6 MiB object stays above the 5 MiB part size
    # compressed, so it goes up as a multipart upload.
    volumes.write_volume(str(path), 7 * MiB, kind='random', seed=3)
    return path


def test_every_object_of_a_full_and_an_incremental_is_locked(
        tmp_path, moto_server, client, volume):
    bucket = lock_bucket(client)
    cli = S3Cli(tmp_path, moto_server, bucket, object_lock_mode='compliance',
                object_lock_days=DAYS, multipart_chunksize=5 * MiB)
    before = datetime.datetime.now(datetime.timezone.utc).replace(
        microsecond=0)
    full = cli.json('backup-create', str(volume))
    volumes.change_blocks(str(volume), 0.01, 65536, seed=5)
    incr = cli.json('backup-create', str(volume), '--incremental')
    after = datetime.datetime.now(datetime.timezone.utc)
    assert incr['parent_id'] == full['id']

    keys = [key for key, _v, marker in versions(client, bucket)
            if not marker]
    for record in (full, incr):
        names = [k for k in keys if k.startswith(record['object_prefix'])]
        # data objects, _sha256file and _metadata
        assert len(names) >= 3, names
        assert record['object_prefix'] + '_metadata' in names
        assert record['object_prefix'] + '_sha256file' in names
    multipart = 0
    dates = {}
    for key in keys:
        head = client.head_object(Bucket=bucket, Key=key)
        assert head.get('ObjectLockMode') == 'COMPLIANCE', key
        until = head['ObjectLockRetainUntilDate']
        assert before + datetime.timedelta(days=DAYS) <= until <= \
            after + datetime.timedelta(days=DAYS), (key, until)
        dates[key] = until
        multipart += '-' in head['ETag']
    assert multipart >= 1, 'no object of the test went up as multipart'

    # The catalog records the lock of the _metadata, the latest date.
    for record in (full, incr):
        shown = cli.json('backup-show', record['id'])
        lock = shown['object_lock']
        assert lock['mechanism'] == 'S3 object lock'
        assert lock['mode'] == 'compliance'
        assert utc(lock['until']) == dates[record['object_prefix']
                                           + '_metadata']
        assert utc(lock['until']) == max(
            d for k, d in dates.items()
            if k.startswith(record['object_prefix']))
    table = cli.run('backup-show', incr['id']).stdout
    assert re.search(r'Object lock\s+compliance until \d{4}-\d\d-\d\d '
                     r'\d\d:\d\d:\d\d UTC \(S3 object lock\)', table), table


def test_delete_of_a_locked_backup_is_refused_and_removes_nothing(
        tmp_path, moto_server, client, volume):
    bucket = lock_bucket(client)
    cli = S3Cli(tmp_path, moto_server, bucket, object_lock_mode='compliance',
                object_lock_days=DAYS)
    full = cli.json('backup-create', str(volume))
    incr = cli.json('backup-create', str(volume), '--incremental')
    stored = versions(client, bucket)

    # A backup without children (a plain delete) and one with a child
    # (a fold into it): both refused before anything changes.
    for record in (incr, full):
        result = cli.run('backup-delete', record['id'], check=False)
        assert result.returncode == 1, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        message = re.sub(r'^chunkbackup: (error: )?', '', lines[0])
        match = LINE.match(message)
        assert match, lines[0]
        assert match.group('id') == record['id']
        shown = cli.json('backup-show', record['id'])
        assert shown['status'] == 'available'
        assert match.group('until') == utc(
            shown['object_lock']['until']).strftime('%Y-%m-%d %H:%M:%S')
    assert versions(client, bucket) == stored  # no delete marker either
    cli.run('backup-verify', incr['id'])

    # The lock is the server's, not only ours: it refuses the delete of
    # a version as well.
    key, version_id, _ = stored[0]
    with pytest.raises(boto_exc.ClientError) as refused:
        client.delete_object(Bucket=bucket, Key=key, VersionId=version_id)
    assert refused.value.response['Error']['Code'] == 'AccessDenied'


def test_forget_keeps_locked_backups_and_deletes_every_version_of_others(
        tmp_path, moto_server, client, volume):
    bucket = lock_bucket(client)
    cli = S3Cli(tmp_path, moto_server, bucket)
    unlocked = cli.json('backup-create', str(volume))
    cli.configure(object_lock_mode='governance', object_lock_days=DAYS)
    locked = cli.json('backup-create', str(volume))
    newest = cli.json('backup-create', str(volume))
    assert 'object_lock' not in (unlocked['stats'] or {})

    rows = cli.json('forget', '--keep-last', '1')
    by_id = {row['id']: row for row in rows}
    assert by_id[newest['id']]['action'] == 'keep'
    assert by_id[locked['id']]['action'] == 'keep'
    assert re.fullmatch(r'locked until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC',
                        by_id[locked['id']]['reason']), by_id[locked['id']]
    assert by_id[unlocked['id']]['action'] == 'remove'
    assert by_id[unlocked['id']]['result'] == 'deleted'

    # The bucket is versioned: the unlocked backup's versions are gone,
    # not hidden behind delete markers; the locked ones are all there.
    assert versions(client, bucket, unlocked['object_prefix']) == []
    assert len(versions(client, bucket, locked['object_prefix'])) >= 3
    listed = cli.json('backup-list')
    assert sorted(b['id'] for b in listed) == sorted(
        [locked['id'], newest['id']])

    table = cli.run('forget', '--keep-last', '1', '--dry-run').stdout
    assert 'locked until' in table, table


def test_a_bucket_without_object_lock_is_refused(
        tmp_path, moto_server, client, volume):
    bucket = lock_bucket(client, lock=False)
    cli = S3Cli(tmp_path, moto_server, bucket, object_lock_mode='compliance')
    result = cli.run('backup-create', str(volume), check=False)
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].endswith(
        'bucket %s has no Object Lock; create it with object lock enabled, '
        'or unset [backup_s3] object_lock_mode' % bucket), lines[0]
    assert versions(client, bucket) == []
    assert cli.json('backup-list') == []


def test_the_driver_creates_its_bucket_with_object_lock(
        tmp_path, moto_server, client, volume):
    bucket = 'cblock-%s' % uuid.uuid4().hex[:16]
    cli = S3Cli(tmp_path, moto_server, bucket, create_bucket='True',
                object_lock_mode='governance', object_lock_days=1)
    made = cli.json('backup-create', str(volume))
    config = client.get_object_lock_configuration(Bucket=bucket)
    assert config['ObjectLockConfiguration']['ObjectLockEnabled'] == \
        'Enabled'
    head = client.head_object(Bucket=bucket,
                              Key=made['object_prefix'] + '_metadata')
    assert head['ObjectLockMode'] == 'GOVERNANCE'


def test_gcs_emulator_bucket_without_object_retention_is_refused(
        tmp_path, gcs_server, volume):
    """The emulator has no object retention: the driver refuses it."""
    from google.auth import credentials as auth_credentials
    from google.cloud import storage as gcs

    bucket = 'cblock-%s' % uuid.uuid4().hex[:16]
    raw = gcs.Client(project=gcs_server.project,
                     credentials=auth_credentials.AnonymousCredentials(),
                     client_options={'api_endpoint': gcs_server.endpoint})
    raw.create_bucket(bucket)
    cli = Cli(tmp_path)
    cli.config.write_text('\n'.join([
        '[chunkbackup]', 'driver = google', 'sha_block_size = 65536',
        '[backup_google]', 'endpoint = %s' % gcs_server.endpoint,
        'anonymous = True', 'project_id = %s' % gcs_server.project,
        'bucket = %s' % bucket, 'create_bucket = False',
        'object_retention_mode = locked']) + '\n')
    result = cli.run('backup-create', str(volume), check=False)
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].endswith(
        'bucket %s has no object retention; create it with object '
        'retention enabled (gcloud storage buckets create '
        '--enable-per-object-retention), or unset [backup_google] '
        'object_retention_mode' % bucket), lines[0]
    assert list(raw.list_blobs(bucket)) == []


def test_a_fold_into_a_locked_child_locks_its_copies(
        tmp_path, moto_server, client, volume):
    bucket = lock_bucket(client)
    cli = S3Cli(tmp_path, moto_server, bucket)
    parent = cli.json('backup-create', str(volume))
    cli.configure(object_lock_mode='compliance', object_lock_days=DAYS)
    volumes.change_blocks(str(volume), 0.01, 65536, seed=7)
    child = cli.json('backup-create', str(volume), '--incremental')
    assert child['parent_id'] == parent['id']
    own = {k for k, _v, m in versions(client, bucket,
                                      child['object_prefix']) if not m}

    result = cli.json('backup-delete', parent['id'])
    assert result['folded_into'] == child['id']
    assert versions(client, bucket, parent['object_prefix']) == []
    current = {}
    for page in client.get_paginator('list_objects_v2').paginate(
            Bucket=bucket, Prefix=child['object_prefix']):
        for obj in page.get('Contents', ()):
            head = client.head_object(Bucket=bucket, Key=obj['Key'])
            current[obj['Key']] = head
    copies = set(current) - own
    assert copies, 'the fold copied nothing: the test proves nothing'
    for key, head in current.items():
        assert head.get('ObjectLockMode') == 'COMPLIANCE', key
    shown = cli.json('backup-show', child['id'])
    assert shown['parent_id'] is None
    assert utc(shown['object_lock']['until']) == current[
        child['object_prefix'] + '_metadata']['ObjectLockRetainUntilDate']
    cli.run('backup-verify', child['id'])


def test_require_object_lock_refuses_a_posix_backup_in_one_line(
        tmp_path, volume):
    cli = Cli(tmp_path)
    cli.config.write_text(cli.config.read_text()
                          + 'require_object_lock = true\n')
    result = cli.run('backup-create', str(volume), check=False)
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].endswith(
        '[chunkbackup] require_object_lock is set but the posix driver '
        'cannot lock objects (its store has no object lock): use the s3 '
        'driver with [backup_s3] object_lock_mode or the google driver with '
        '[backup_google] object_retention_mode; or unset '
        'require_object_lock'), lines[0]
    assert cli.run('backup-list', '--format', 'json').stdout.strip() == '[]'
    store = tmp_path / 'store'
    assert not store.exists() or not any(store.rglob('*'))
