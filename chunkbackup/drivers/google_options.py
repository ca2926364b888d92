"""The options of the Google Cloud Storage driver, read and checked once."""
import dataclasses
from typing import Optional

from oslo_config import cfg

from chunkbackup.drivers import options

CONF = cfg.CONF

GROUP = 'backup_google'
UPLOAD_CHUNK_MULTIPLE = 256 * 1024

OPTS = [
    cfg.StrOpt('bucket',
               default='volumebackups',
               help='Bucket that holds the backups when a backup does not '
                    'name one.'),
    cfg.StrOpt('project_id',
               help='Google Cloud project that owns the buckets; needed to '
                    'create a bucket. Unset means the project of the '
                    'credentials.'),
    cfg.StrOpt('credentials_file',
               help='Path of a service-account JSON key file. Unset means '
                    'the application default credentials '
                    '(GOOGLE_APPLICATION_CREDENTIALS, the metadata server of '
                    'a Google Cloud VM, gcloud) unless anonymous is set.'),
    cfg.BoolOpt('anonymous',
                default=False,
                help='Send no credentials at all. Only for emulators and '
                     'tests, together with endpoint.'),
    cfg.URIOpt('endpoint',
               schemes=['http', 'https'],
               help='Root URL of the JSON API, e.g. http://127.0.0.1:9023 '
                    'for an emulator. Unset means Google\'s '
                    '(https://storage.googleapis.com).'),
    options.object_size_opt(50 * options.MiB),
    cfg.StrOpt('bucket_location',
               default='US',
               help='Location of a bucket the driver creates (a region such '
                    'as europe-west1, or a multi-region such as US).'),
    cfg.StrOpt('storage_class',
               default='NEARLINE',
               help='Default storage class of a bucket the driver creates '
                    '(STANDARD, NEARLINE, COLDLINE, ARCHIVE). NEARLINE, '
                    'Cinder\'s default, suits data read rarely; reading it '
                    'back costs a retrieval fee.'),
    cfg.BoolOpt('create_bucket',
                default=True,
                help='Create the bucket on the first backup when it does not '
                     'exist. When False a missing bucket is an error.'),
    cfg.URIOpt('proxy_url',
               schemes=['http', 'https'],
               help='HTTP(S) proxy for every request, e.g. '
                    'http://proxy.example.com:3128.'),
    cfg.IntOpt('upload_chunk_size',
               default=8 * 1024 * 1024,
               min=UPLOAD_CHUNK_MULTIPLE,
               help='Objects larger than 8 MiB are sent as resumable uploads '
                    'in pieces of this many bytes; a multiple of 262144 '
                    '(256 KiB).'),
    cfg.FloatOpt('timeout',
                 default=60.0,
                 min=1.0,
                 help='Seconds to wait for the service to connect or answer '
                      'one request before it counts as a (retried) '
                      'transient failure.'),
    cfg.StrOpt('availability_zone',
               default='nova',
               help='Availability zone written into object names '
                    '(az_<zone>_backup_<id>), as Cinder\'s '
                    'storage_availability_zone.'),
    cfg.StrOpt('object_retention_mode',
               choices=[('unlocked',
                         'The retention date can be shortened or removed, '
                         'and the object then deleted, by a user with the '
                         'storage.objects.overrideUnlockedRetention '
                         'permission: protects against mistakes and '
                         'against ransomware holding ordinary '
                         'credentials (S3\'s governance mode).'),
                        ('locked',
                         'Nobody can delete the object or shorten its '
                         'retention before its date (S3\'s compliance '
                         'mode); the storage is paid for until then.')],
               help='Write every object of a backup (data, _sha256file, '
                    '_metadata, fold copies) with a GCS object retention '
                    'date object_retention_days ahead. The bucket must '
                    'have object retention enabled (create_bucket '
                    'creates it so). backup-delete and retention policies '
                    'skip a locked backup until its date. Unset: no '
                    'retention.'),
    cfg.IntOpt('object_retention_days',
               default=30,
               min=1,
               help='Days from its writing that each object of a backup '
                    'is retained, with object_retention_mode set.'),
]

CONF.register_opts(OPTS, group=GROUP)


@dataclasses.dataclass(frozen=True)
class GoogleOptions(options.DriverOptions):
    GROUP = GROUP

    bucket: str
    project_id: Optional[str]
    credentials_file: Optional[str]
    anonymous: bool
    endpoint: Optional[str]
    bucket_location: str
    storage_class: str
    create_bucket: bool
    proxy_url: Optional[str]
    upload_chunk_size: int
    timeout: float
    availability_zone: str
    object_retention_mode: Optional[str]
    object_retention_days: int

    def validate(self) -> None:
        if self.upload_chunk_size % UPLOAD_CHUNK_MULTIPLE:
            raise self.invalid('upload_chunk_size = %d must be a multiple '
                               'of %d (256 KiB)' % (self.upload_chunk_size,
                                                    UPLOAD_CHUNK_MULTIPLE))
        if self.anonymous and self.credentials_file:
            raise self.invalid('anonymous and credentials_file are both '
                               'set; set one of them')
