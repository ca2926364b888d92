"""Every option chunkbackup registers, for oslo-config-generator.

Options live in groups of our own (``[chunkbackup]``, ``[backup_posix]`` ...)
so the drivers load inside a cinder-backup process without clashing with
Cinder's ``[DEFAULT] backup_*`` options.
"""
import importlib
import re
from typing import List, Tuple

from oslo_config import cfg

CONF = cfg.CONF
# Below this SHA block size digests cost more than the data is worth:
# accepted, as Cinder accepts it, with a warning.
SLOW_SHA_BLOCK_SIZE = 4096

ENGINE_GROUP = 'chunkbackup'

# The largest data object chunkbackup writes (every driver's object_size):
# objects stream in pieces, so memory does not follow it, but Cinder's own
# readers hold a whole object, and its drivers stay below 2 GiB.
MAX_OBJECT_SIZE = 2 ** 30

COMPRESSION_CHOICES = [
    ('zstd', 'Zstandard: fast, and what chunkbackup recommends.'),
    ('zlib', 'One zlib stream (Cinder reads it as zlib or gzip).'),
    ('gzip', 'Same bodies as zlib, labelled gzip as Cinder does.'),
    ('bz2', 'bzip2: small and slow.'),
    ('bzip2', 'Same as bz2, labelled bzip2.'),
    ('none', 'Store data uncompressed.'),
    ('off', 'Same as none.'),
    ('no', 'Same as none.'),
]

engine_opts = [
    cfg.StrOpt('driver',
               default='posix',
               help='Standalone use (the chunkbackup command and service): '
                    'the storage driver, by name (posix, swift, google, s3) '
                    'or as a class path. cinder-backup uses its own '
                    'backup_driver option instead.'),
    cfg.StrOpt('compression_algorithm',
               default='zstd',
               ignore_case=True,
               choices=COMPRESSION_CHOICES,
               help='How data objects are compressed. Each object whose '
                    'compressed form is not smaller than the data is stored '
                    'uncompressed and labelled "none", as Cinder does.'),
    cfg.IntOpt('compression_level',
               default=None,
               help='Codec level. Unset means a level chosen for backup '
                    'throughput: 1 for zlib and zstd, 9 for bz2. Higher '
                    'levels save space and cost CPU time. zlib takes 0 to '
                    '9, bz2 1 to 9, zstd -131072 to 22 (negative levels '
                    'are faster); other values are refused at start-up.'),
    cfg.IntOpt('sha_block_size',
               default=32768,
               min=1,
               help='Size in bytes of the blocks whose SHA-256 is recorded '
                    'in the _sha256file and compared by incremental backups. '
                    'Object sizes must be multiples of it. An incremental '
                    'backup needs the same value as its parent. Any value '
                    'Cinder accepts works; below %d a warning says it is '
                    'slow (a digest of 32 bytes, hex in _sha256file, per '
                    'block).' % SLOW_SHA_BLOCK_SIZE),
    cfg.IntOpt('objects_in_flight',
               default=4,
               min=1,
               help='How many objects a backup uploads at once (and how '
                    'many deletes run at once). Objects flow through in '
                    'pieces of 4 MiB, so memory does not grow with the '
                    'object size: about objects_in_flight x 12 MiB plus '
                    'the store client\'s buffers (an S3 part each). No '
                    'other setting adds uploads.'),
    cfg.IntOpt('restore_objects_in_flight',
               default=8,
               min=1,
               help='How many object downloads a restore or a verify runs at '
                    'once, whole objects or ranges of a large one. Higher '
                    'than objects_in_flight by default: restores from a '
                    'remote store are bound by round trips and '
                    'per-connection rates. Memory is about '
                    'restore_objects_in_flight x 12 MiB.'),
    cfg.IntOpt('cpu_workers',
               default=0,
               min=0,
               help='Native threads for hashing and compression. 0 means '
                    'one per CPU.'),
    cfg.IntOpt('incremental_merge_gap',
               default=0,
               min=0,
               help='An incremental backup stores two runs of changed '
                    'blocks as one object when at most this many unchanged '
                    'bytes lie between them. Fewer, larger objects back up '
                    'and restore faster; the unchanged bytes cost space. '
                    '0 stores only changed blocks, as Cinder does.'),
    cfg.BoolOpt('restore_check_md5',
                default=False,
                help='Also check the MD5 of every fetched object during a '
                     'restore. The SHA-256 of every written block is always '
                     'checked against the backup, which already covers all '
                     'restored data; verify always checks both.'),
    cfg.IntOpt('storage_retries',
               default=5,
               min=0,
               help='How many times a transient storage failure (timeout, '
                    'reset connection, 5xx, 429) is retried before the '
                    'operation fails.'),
    cfg.FloatOpt('storage_retry_backoff',
                 default=0.5,
                 min=0.0,
                 help='First retry delay in seconds; each retry doubles it, '
                      'with random jitter, up to storage_retry_max_delay.'),
    cfg.FloatOpt('storage_retry_max_delay',
                 default=20.0,
                 min=0.0,
                 help='Upper bound in seconds of one retry delay.'),
    cfg.IntOpt('storage_rate_limit',
               default=0,
               min=0,
               help='Largest average rate, in bytes per second, of object '
                    'bodies this process sends to and reads from storage, '
                    'both directions and all operations together (bursts '
                    'of up to one second\'s worth). A combined cap, kept '
                    'for existing configurations: it applies on top of '
                    'max_upload_rate and max_download_rate, which limit '
                    'each direction and are what new configurations should '
                    'set. 0 means unlimited.'),
    cfg.IntOpt('max_upload_rate',
               default=0,
               min=0,
               help='Largest average rate, in bytes per second, at which '
                    'this process sends object bodies to storage (backups), '
                    'shared by every thread and every backup running in it, '
                    'so a backup can run during the day without filling the '
                    'uplink. Counted as the bytes leave, chunk by chunk; '
                    'bursts are at most a tenth of a second\'s worth. 0 '
                    'means unlimited.'),
    cfg.IntOpt('max_download_rate',
               default=0,
               min=0,
               help='Largest average rate, in bytes per second, at which '
                    'this process reads object bodies from storage '
                    '(restores, verifies, parents of incrementals), shared '
                    'by every thread and every operation running in it. '
                    'Whole, streamed and ranged reads all count. 0 means '
                    'unlimited.'),
    cfg.FloatOpt('storage_request_timeout',
                 default=900.0,
                 min=0.0,
                 help='Longest time, in seconds, one storage request (one '
                      'object\'s put or get, one listing) may take, from '
                      'its first byte on the network to the last byte of '
                      'the answer, whatever the client library\'s per-read '
                      'timeouts. A request that runs out of it fails, is '
                      'not retried, and names this option. Raise it for '
                      'large objects on slow links. 0 means no limit.'),
    cfg.IntOpt('storage_min_rate',
               default=1024,
               min=0,
               help='Bytes per second below which a storage transfer counts '
                    'as stalled, when it stays below for '
                    'storage_min_rate_time seconds (as curl\'s '
                    '--speed-limit): a server that stops answering or '
                    'trickles fails the request at once, a slow but steady '
                    'link does not. 0 turns the check off.'),
    cfg.FloatOpt('storage_min_rate_time',
                 default=30.0,
                 min=0.0,
                 help='Seconds over which storage_min_rate is measured (as '
                      'curl\'s --speed-time). Keep it longer than the store '
                      'may think before answering. 0 turns the check off.'),
    cfg.FloatOpt('operation_timeout',
                 default=0.0,
                 min=0.0,
                 help='Longest time, in seconds, from the first storage '
                      'request of one operation (a backup, restore, '
                      'delete or verify) to its last: once it is spent the '
                      'requests in progress fail, naming this option, no '
                      'put or get starts, and removing what the failed '
                      'operation wrote gets as long again. Stores without '
                      'network sockets (posix) are checked between '
                      'requests. 0 means no limit.'),
    cfg.BoolOpt('skip_holes',
                default=True,
                help='Ask the file system for the allocated ranges of a '
                     'volume that is a regular file (SEEK_DATA/SEEK_HOLE), '
                     'or the NBD server for those of an export, and never '
                     'read the unallocated ones: their blocks are zeros. '
                     'Block devices and file objects without a descriptor '
                     'are read whole either way.'),
    cfg.FloatOpt('changed_extents_sample',
                 default=0.03,
                 min=0.0,
                 max=1.0,
                 help='Fraction of the allocated blocks that a changed-block '
                      'map calls unchanged which an incremental backup '
                      'still reads and compares with the parent, to catch '
                      'a wrong map (a lost or foreign dirty bitmap). On a '
                      'mismatch the backup reads the whole volume instead. '
                      'The default catches a map that misses 5% of the '
                      'changed blocks of a 16 GiB volume with 1% changed '
                      'with probability above 0.999, for about 3% of a '
                      'full read.'),
    cfg.IntOpt('block_map_memory',
               default=16 * 2 ** 20,
               min=0,
               help='Bytes of block digests (32 a block) held in memory per '
                    'block map; larger maps spill to an unlinked temporary '
                    'file in temp_dir, so memory stays flat in volume '
                    'size.'),
    cfg.StrOpt('temp_dir',
               help='Directory for block maps that spill to disk (about '
                    '1 GiB per TiB of volume). Unset means the system\'s '
                    'temporary directory ($TMPDIR or /tmp).'),
    cfg.StrOpt('encryption',
               default='none',
               ignore_case=True,
               choices=[('none', 'Backups are not encrypted (stock Cinder '
                                 'can restore them).'),
                        ('aes-256-gcm', 'Every object is sealed with '
                                        'AES-256-GCM under a data key of '
                                        'its chain (doc/encryption.md).')],
               help='Client-side encryption of new full backups (an '
                    'incremental follows its parent). Encrypted backups '
                    'need their master key to be restored, from key_file '
                    'or the key manager: a lost key means lost backups. '
                    'Stock Cinder refuses to restore them.'),
    cfg.StrOpt('key_file',
               help='The master key file (made by chunkbackup key-create, '
                    'mode 0600) that wraps the data keys of encrypted '
                    'backups. Also needed to restore, verify or extend '
                    'them. Unset: the key manager (master_key_id).'),
    cfg.BoolOpt('require_object_lock',
                default=False,
                help='Refuse to make a backup that the store would not '
                     'lock against deletion (object lock): the s3 driver '
                     'needs [backup_s3] object_lock_mode, the google driver '
                     '[backup_google] object_retention_mode; the posix and '
                     'swift drivers cannot lock and refuse every backup. '
                     'For operators who must not write an unlocked backup '
                     'by mistake.'),
    cfg.StrOpt('master_key_id',
               help='Used when encryption is on and key_file is unset: the '
                    'id of the master key in the key manager, reached '
                    'through castellan (pip install '
                    '"chunkbackup[keymanager]"), whose [key_manager] '
                    'options (e.g. backend = barbican) and [barbican] '
                    'options (e.g. barbican_endpoint) say where. Inside '
                    'cinder-backup these are Cinder\'s own sections, where '
                    'encrypted volumes\' keys are kept. Make one with '
                    'chunkbackup key-rotate --create-master-key.'),
    cfg.FloatOpt('cancel_check_interval',
                 default=1.0,
                 min=0.0,
                 help='Seconds between checks of whether a running backup or '
                      'restore was cancelled (through the backup record).'),
]

CONF.register_opts(engine_opts, group=ENGINE_GROUP)


def _driver_modules():
    """The modules that declare the drivers' options (GROUP and OPTS)."""
    import chunkbackup.drivers

    for name in chunkbackup.drivers.OPTION_MODULES:
        yield importlib.import_module(name)


# Modules of the standalone tools that declare GROUP and OPTS.
_STANDALONE_MODULES = ['chunkbackup.catalog.api']


def list_opts() -> List[Tuple[str, List[cfg.Opt]]]:
    """Return the options of every group, for oslo-config-generator."""
    # Imported here: the drivers load this module inside cinder-backup,
    # which needs neither the service nor its catalog.
    from chunkbackup import service

    groups = [(ENGINE_GROUP, engine_opts), (service.GROUP, service.OPTS)]
    seen = set()
    modules = list(_driver_modules()) + [
        importlib.import_module(name) for name in _STANDALONE_MODULES]
    for module in modules:
        if module.GROUP not in seen:
            seen.add(module.GROUP)
            groups.append((module.GROUP, module.OPTS))
    _note_cinder_equivalents(groups)
    return [(group, list(opts)) for group, opts in groups]


def _note_cinder_equivalents(groups) -> None:
    """End the help of the engine's and drivers' options with the Cinder
    options they replace (chunkbackup.cinder_options), for the sample.
    """
    from chunkbackup import cinder_options

    for group, options in groups:
        if group != ENGINE_GROUP and group not in cinder_options.STORE_GROUPS:
            continue
        for opt in options:
            if group == ENGINE_GROUP and opt.dest == 'driver':
                note = 'Cinder: backup_driver (in cinder-backup).'
            else:
                note = cinder_options.help_note(group, opt.dest)
            if opt.help and note not in opt.help:
                opt.help = '%s %s' % (opt.help, note)


_OSLO_VALUE_ERROR = re.compile(
    r"^Value for option (?P<name>\S+)(?: from LocationInfo\(.*?"
    r"detail='(?P<where>[^']*)'\))?(?: from \S+)? is not valid: "
    r"(?P<reason>.*)$", re.S)


def value_error(group: str, name: str, error: Exception) -> str:
    """One line naming the option for oslo.config's conversion error.

    oslo.config says "Value for option X from LocationInfo(location=<...>,
    detail='FILE') is not valid: REASON"; this gives
    "[GROUP] X in FILE is not valid: REASON".
    """
    text = str(error)
    found = _OSLO_VALUE_ERROR.match(text)
    if not found:
        return '[%s] %s: %s' % (group, name, text)
    where = ' in %s' % found.group('where') if found.group('where') else ''
    reason = found.group('reason').strip()
    return '[%s] %s%s is not valid: %s' % (group, name, where,
                                           reason[:1].lower() + reason[1:])


def check_object_size(option: str, size: int) -> None:
    """Refuse an object size above MAX_OBJECT_SIZE, naming the option."""
    from chunkbackup import exception

    if size > MAX_OBJECT_SIZE:
        raise exception.InvalidConfiguration(
            reason='%s = %d is larger than %d (1 GiB), the largest object '
                   'chunkbackup writes (stock Cinder reads an object whole)'
                   % (option, size, MAX_OBJECT_SIZE))


def validate(conf: cfg.ConfigOpts = CONF) -> None:
    """Read every option once, so a bad value fails at start-up.

    oslo.config converts values lazily, when they are first read; a wrong
    type would otherwise surface in the middle of a backup. Values that
    depend on each other (a codec's levels) are checked too. Raises
    InvalidConfiguration naming the option.
    """
    from chunkbackup import compression
    from chunkbackup import exception

    for group, options in list_opts():
        for opt in options:
            try:
                value = getattr(conf[group], opt.dest)
            except (cfg.ConfigFileValueError, ValueError) as e:
                raise exception.InvalidConfiguration(
                    reason=value_error(group, opt.dest, e))
            if opt.dest == 'object_size' and value is not None:
                check_object_size('[%s] object_size' % group, value)
    engine = conf[ENGINE_GROUP]
    compression.check_level(engine.compression_algorithm,
                            engine.compression_level)
