"""The engine's settings as one typed object.

The engine never reads oslo.config itself: ``ChunkedBackupDriver`` builds
an ``EngineOptions`` from ``[chunkbackup]`` and the driver's object size,
so tests and other callers pass plain values.
"""
import dataclasses
from typing import Optional, Set

from oslo_config import cfg
from oslo_log import log as logging

from chunkbackup import compression
from chunkbackup import concurrency
from chunkbackup import exception
from chunkbackup import opts

LOG = logging.getLogger(__name__)
SLOW_SHA_BLOCK_SIZE = opts.SLOW_SHA_BLOCK_SIZE
_WARNED: Set[int] = set()  # sha_block_size values already warned about


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    object_size: int
    sha_block_size: int = 32768
    compression_algorithm: str = 'zstd'
    compression_level: Optional[int] = None
    objects_in_flight: int = 4
    restore_objects_in_flight: int = 8
    cpu_workers: int = 0
    incremental_merge_gap: int = 0
    restore_check_md5: bool = False
    cancel_check_interval: float = 1.0
    skip_holes: bool = True
    changed_extents_sample: float = 0.03
    block_map_memory: int = 16 * 2 ** 20
    temp_dir: Optional[str] = None
    encryption: str = 'none'
    key_file: Optional[str] = None
    # Names the object size option in errors (it is a driver option).
    object_size_option: str = 'object_size'

    def __post_init__(self):
        if self.sha_block_size < SLOW_SHA_BLOCK_SIZE and \
                self.sha_block_size not in _WARNED:
            _WARNED.add(self.sha_block_size)
            LOG.warning('[chunkbackup] sha_block_size = %(bs)d is accepted, '
                        'as Cinder accepts it, but slow: one 32-byte digest '
                        'per %(bs)d bytes (%(mib).0f MiB of _sha256file per '
                        'GiB). %(good)d or more is recommended.',
                        {'bs': self.sha_block_size,
                         'mib': 2 ** 30 / self.sha_block_size * 70 / 2 ** 20,
                         'good': SLOW_SHA_BLOCK_SIZE})
        if self.object_size <= 0 or self.object_size % self.sha_block_size:
            raise exception.InvalidConfiguration(
                reason='%s = %s must be a positive multiple of '
                       '[chunkbackup] sha_block_size = %d' % (
                           self.object_size_option, self.object_size,
                           self.sha_block_size))
        opts.check_object_size(self.object_size_option, self.object_size)
        compression.check_level(self.compression_algorithm,
                                self.compression_level)

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts.GroupAttr, object_size: int,
                  object_size_option: str = 'object_size'
                  ) -> 'EngineOptions':
        """From the ``[chunkbackup]`` group of an oslo.config object."""
        return cls(
            object_size=object_size,
            object_size_option=object_size_option,
            sha_block_size=conf.sha_block_size,
            compression_algorithm=conf.compression_algorithm,
            compression_level=conf.compression_level,
            objects_in_flight=conf.objects_in_flight,
            restore_objects_in_flight=conf.restore_objects_in_flight,
            cpu_workers=conf.cpu_workers,
            incremental_merge_gap=conf.incremental_merge_gap,
            restore_check_md5=conf.restore_check_md5,
            cancel_check_interval=conf.cancel_check_interval,
            skip_holes=conf.skip_holes,
            changed_extents_sample=conf.changed_extents_sample,
            block_map_memory=conf.block_map_memory,
            temp_dir=conf.temp_dir,
            encryption=conf.encryption.lower(),
            key_file=conf.key_file)

    @property
    def encrypts(self) -> bool:
        """Whether new full backups are encrypted."""
        return self.encryption != 'none'

    @property
    def cpu_threads(self) -> int:
        return self.cpu_workers or concurrency.cpu_count()

    @property
    def io_threads(self) -> int:
        """Threads for uploads and deletes: what objects_in_flight says."""
        return self.objects_in_flight

    @property
    def download_threads(self) -> int:
        """Downloads at once, on restore and verify."""
        return self.restore_objects_in_flight

    def compressor(self) -> compression.Compressor:
        return compression.Compressor(self.compression_algorithm,
                                      self.compression_level)
