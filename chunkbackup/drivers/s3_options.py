"""The options of the S3 driver: declared, read and validated once."""
import base64
import binascii
import dataclasses
import re
from typing import Optional

from oslo_config import cfg

from chunkbackup.drivers import options
from chunkbackup import exception
from chunkbackup import names

CONF = cfg.CONF

GROUP = 'backup_s3'
MiB = 2 ** 20
GiB = 2 ** 30
# S3's limits: parts are at least 5 MiB (but the last), at most 5 GiB, at
# most 10000 of them; a single PUT is at most 5 GiB.
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * GiB
# What botocore itself accepts as a bucket name (path-style and legacy
# buckets included); stricter DNS rules are the server's to enforce.
BUCKET_RE = re.compile(r'^[A-Za-z0-9.\-_]{1,255}$')
BUCKET_ADVICE = 'use 3-63 lower-case letters, digits, "-" and "."'

OPTS = [
    cfg.StrOpt('endpoint_url',
               help='URL of the S3 endpoint, e.g. https://s3.example.com or '
                    'http://127.0.0.1:8080 (a Swift proxy with s3api). '
                    'Unset means AWS S3 in [backup_s3] region.'),
    cfg.StrOpt('access_key',
               help='S3 access key id (for Swift s3api with tempauth: '
                    '"account:user"). Unset, with secret_key unset too, '
                    'means boto3\'s own credential chain (environment, '
                    '~/.aws, instance profile).'),
    cfg.StrOpt('secret_key',
               secret=True,
               help='S3 secret access key that goes with access_key.'),
    cfg.StrOpt('region',
               default='us-east-1',
               help='Region used to sign requests and to create buckets.'),
    cfg.StrOpt('bucket',
               default='volumebackups',
               help='Bucket for backups that do not name one (Cinder\'s '
                    'default, so both find the same backups).'),
    options.object_size_opt(50 * MiB),
    cfg.StrOpt('availability_zone',
               default='nova',
               help='Availability zone named in object prefixes '
                    '(az_<zone>_backup_<id>), as Cinder\'s '
                    'storage_availability_zone.'),
    cfg.BoolOpt('create_bucket',
                default=True,
                help='Create the bucket when it does not exist. With False '
                     'a missing bucket is an error, which protects against '
                     'a mistyped bucket name.'),
    cfg.StrOpt('addressing_style',
               default='auto',
               choices=[('auto', 'Virtual-hosted where the name allows, '
                                 'as boto3 decides.'),
                        ('path', 'http://endpoint/bucket/key: for servers '
                                 'without wildcard DNS (Swift s3api, '
                                 'MinIO, Ceph RGW by IP).'),
                        ('virtual', 'http://bucket.endpoint/key.')],
               help='How the bucket is put in request URLs.'),
    cfg.FloatOpt('connect_timeout',
                 default=60.0,
                 min=0.0,
                 help='Seconds to wait for a connection to the endpoint.'),
    cfg.FloatOpt('read_timeout',
                 default=60.0,
                 min=0.0,
                 help='Seconds to wait for data on an open connection.'),
    cfg.IntOpt('max_pool_connections',
               default=10,
               min=1,
               help='Connections kept open to the endpoint. The driver '
                    'raises it to one more than the larger of '
                    '[chunkbackup] objects_in_flight and '
                    'restore_objects_in_flight, so that no transfer waits '
                    'for a connection; set it higher only for other '
                    'clients of the same pool.'),
    cfg.StrOpt('retry_mode',
               default='standard',
               choices=[('legacy', 'botocore\'s legacy mode.'),
                        ('standard', 'botocore\'s standard mode.'),
                        ('adaptive', 'standard, plus client-side rate '
                                     'limiting when the server throttles.')],
               help='botocore retry mode. botocore makes one attempt per '
                    'request whatever the mode ([chunkbackup] '
                    'storage_retries retries, once, for every driver); '
                    '"adaptive" still slows requests down when the server '
                    'throttles.'),
    cfg.BoolOpt('verify',
                default=True,
                help='Verify the endpoint\'s TLS certificate.'),
    cfg.StrOpt('ca_bundle',
               help='CA bundle (PEM file) to verify the endpoint\'s '
                    'certificate with, instead of the system\'s.'),
    cfg.StrOpt('http_proxy',
               secret=True,
               help='Proxy URL for http:// endpoints (it may carry '
                    'credentials, so it is never logged).'),
    cfg.StrOpt('https_proxy',
               secret=True,
               help='Proxy URL for https:// endpoints (it may carry '
                    'credentials, so it is never logged).'),
    cfg.BoolOpt('send_content_md5',
                default=True,
                help='Send the MD5 of every uploaded body (and part) as '
                     'Content-MD5, so the server refuses data damaged in '
                     'transit. Turn off only for a server that rejects it.'),
    cfg.IntOpt('multipart_threshold',
               default=64 * MiB,
               min=MIN_PART_SIZE,
               max=MAX_PART_SIZE,
               help='Whole bodies (written through the Cinder writer '
                    'interface) larger than this many bytes are uploaded as '
                    'multipart uploads; smaller ones with one PUT. Streamed '
                    'objects (what chunkbackup\'s engine sends) go as one '
                    'PUT when they fit in one multipart_chunksize part and '
                    'as multipart uploads otherwise, so that only one part '
                    'is ever held in memory.'),
    cfg.IntOpt('multipart_chunksize',
               default=8 * MiB,
               min=MIN_PART_SIZE,
               max=MAX_PART_SIZE,
               help='Size in bytes of the parts of a multipart upload (S3 '
                    'requires at least 5 MiB for every part but the last; '
                    'raised for a whole body that would need more than '
                    '10000 parts). A streamed upload holds one part in '
                    'memory (two while the next is filled), so memory is '
                    'about [chunkbackup] objects_in_flight x 2 x this; an '
                    'object no larger than one part is stored with a '
                    'single PUT.'),
    cfg.StrOpt('sse_customer_key',
               secret=True,
               help='Encrypt objects with this customer-provided key '
                    '(SSE-C): 32 bytes, given raw (as Cinder\'s '
                    'backup_s3_sse_customer_key) or base64-encoded. Every '
                    'backup written with it can only be read with it. '
                    'Needs an https endpoint on AWS.'),
    cfg.StrOpt('sse_customer_algorithm',
               default='AES256',
               choices=[('AES256', 'AES-256, the only SSE-C algorithm.')],
               help='SSE-C algorithm, used when sse_customer_key is set.'),
    cfg.StrOpt('server_side_encryption',
               choices=[('AES256', 'Keys managed by the S3 service.'),
                        ('aws:kms', 'Keys in AWS KMS (see sse_kms_key_id).')],
               help='Ask the server to encrypt objects with its own keys '
                    '(SSE-S3 or SSE-KMS). Unset means the bucket\'s '
                    'default. Not together with sse_customer_key.'),
    cfg.StrOpt('sse_kms_key_id',
               help='KMS key id or ARN for server_side_encryption = '
                    'aws:kms; unset means the account\'s default key.'),
    cfg.StrOpt('object_lock_mode',
               choices=[('governance',
                         'The objects cannot be deleted or overwritten '
                         'before their date, except by a user with the '
                         's3:BypassGovernanceRetention permission who asks '
                         'for it: protects against mistakes and against '
                         'ransomware holding ordinary credentials.'),
                        ('compliance',
                         'Nobody, not even the account\'s root user, can '
                         'delete the objects or shorten their retention '
                         'before their date: the strongest protection, and '
                         'the storage is paid for until then.')],
               help='Write every object of a backup (data, _sha256file, '
                    '_metadata, fold copies) with an S3 Object Lock '
                    'retention date object_lock_days ahead. The bucket '
                    'must have Object Lock enabled (create_bucket creates '
                    'it so). backup-delete and retention policies skip a '
                    'locked backup until its date. Unset: no lock.'),
    cfg.IntOpt('object_lock_days',
               default=30,
               min=1,
               help='Days from its writing that each object of a backup '
                    'stays locked, with object_lock_mode set.'),
]

CONF.register_opts(OPTS, group=GROUP)


def decode_sse_customer_key(value: str) -> bytes:
    """The 32-byte SSE-C key from its raw or base64 form."""
    raw = value.encode('utf-8')
    if len(raw) == 32:
        return raw
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        decoded = b''
    if len(decoded) == 32:
        return decoded
    # Never echo the value: it is a secret.
    raise exception.InvalidConfiguration(
        reason='[%s] sse_customer_key must be a 256-bit key: 32 bytes, '
               'raw or base64-encoded (44 characters); the value set is '
               'neither' % GROUP)


@dataclasses.dataclass(frozen=True)
class S3Options(options.DriverOptions):
    # Secrets stay out of repr (logs); dataclasses.field() written out
    # in full so that type checkers see these fields have no default.
    GROUP = GROUP

    endpoint_url: Optional[str]
    access_key: Optional[str]
    secret_key: Optional[str] = dataclasses.field(repr=False)
    region: str
    bucket: str
    availability_zone: str
    create_bucket: bool
    addressing_style: str
    connect_timeout: float
    read_timeout: float
    max_pool_connections: int
    retry_mode: str
    verify: bool
    ca_bundle: Optional[str]
    http_proxy: Optional[str] = dataclasses.field(repr=False)
    https_proxy: Optional[str] = dataclasses.field(repr=False)
    send_content_md5: bool
    multipart_threshold: int
    multipart_chunksize: int
    sse_customer_key: Optional[str] = dataclasses.field(repr=False)
    sse_customer_algorithm: str
    server_side_encryption: Optional[str]
    sse_kms_key_id: Optional[str]
    object_lock_mode: Optional[str]
    object_lock_days: int

    def validate(self) -> None:
        if bool(self.access_key) != bool(self.secret_key):
            raise self.invalid('access_key and secret_key must be set '
                               'together (or both left unset to use '
                               'boto3\'s credential chain)')
        if self.sse_customer_key and self.server_side_encryption:
            raise self.invalid('sse_customer_key and server_side_encryption '
                               'exclude each other: choose one')
        if self.sse_kms_key_id and self.server_side_encryption != 'aws:kms':
            raise self.invalid('sse_kms_key_id needs server_side_encryption '
                               '= aws:kms')
        if not BUCKET_RE.match(self.bucket or ''):
            raise self.invalid('bucket = %r is not a valid bucket name: %s'
                               % (self.bucket, BUCKET_ADVICE))
        try:
            names.check_safe_id('availability zone', self.availability_zone)
        except exception.InvalidName as e:
            raise self.invalid('availability_zone: %s' % e)
        if self.sse_customer_key:
            decode_sse_customer_key(self.sse_customer_key)
        if self.object_lock_mode and not self.send_content_md5:
            # S3 refuses a PUT with a retention date and no checksum.
            raise self.invalid('object_lock_mode needs send_content_md5 = '
                               'True: S3 refuses locked uploads without '
                               'Content-MD5')

    @property
    def sse_c_key(self) -> Optional[bytes]:
        """The SSE-C key (32 bytes), when one is set."""
        if not self.sse_customer_key:
            return None
        return decode_sse_customer_key(self.sse_customer_key)
