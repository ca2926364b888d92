"""From Cinder's backup options to ours: the migration table.

``MAPPINGS`` names, for every ``backup_*`` option of Cinder 29's chunked
drivers (posix, nfs, swift, s3, gcs and their base classes), the option
of ours that does the same, or says why there is none. It feeds three
things: ``chunkbackup cinder-options cinder.conf`` (``convert``), the
"Cinder: ..." note in the help of each of our options (``cinder_names``,
hence the sample config) and the README's table (tests keep them equal).

It reads a cinder.conf with ``configparser``; Cinder need not be
installed.
"""
import configparser
import dataclasses
import io
from typing import Callable, Dict, List, Optional, Tuple

ENGINE = 'chunkbackup'
POSIX = 'backup_posix'
SWIFT = 'backup_swift'
S3 = 'backup_s3'
GOOGLE = 'backup_google'
# Options ours reads from Cinder's [DEFAULT] itself: they stay there.
KEEP = 'DEFAULT'

# Cinder's backup_driver -> (our driver class, our options group).
DRIVERS = {
    'cinder.backup.drivers.posix.PosixBackupDriver':
        ('chunkbackup.drivers.posix.PosixBackupDriver', POSIX),
    'cinder.backup.drivers.nfs.NFSBackupDriver':
        ('chunkbackup.drivers.posix.PosixBackupDriver', POSIX),
    'cinder.backup.drivers.swift.SwiftBackupDriver':
        ('chunkbackup.drivers.swift.SwiftBackupDriver', SWIFT),
    'cinder.backup.drivers.s3.S3BackupDriver':
        ('chunkbackup.drivers.s3.S3BackupDriver', S3),
    'cinder.backup.drivers.gcs.GoogleBackupDriver':
        ('chunkbackup.drivers.gcs.GoogleBackupDriver', GOOGLE),
}
STORE_GROUPS = (POSIX, SWIFT, S3, GOOGLE)


def _same(value: str) -> str:
    return value


@dataclasses.dataclass(frozen=True)
class Mapping:
    """One Cinder option and where it goes.

    ``targets`` maps our driver group (``'*'``: whichever driver) to
    (group, option); a target group ``'*'`` means that driver's own
    group. No target means no equivalent, and ``note`` says why.
    """

    cinder: str
    targets: Dict[str, Tuple[str, str]]
    note: str = ''
    convert: Callable[[str], str] = _same
    # Cinder's default, emitted even when cinder.conf leaves it unset,
    # because ours differs and the behaviour would change.
    cinder_default: Optional[str] = None


def _m(cinder, targets=None, note='', convert=_same, cinder_default=None):
    return Mapping(cinder, targets or {}, note, convert, cinder_default)


def _anywhere(option: str) -> Dict[str, Tuple[str, str]]:
    return {'*': ('*', option)}


def _only(group: str, option: str) -> Dict[str, Tuple[str, str]]:
    return {group: (group, option)}


def _engine(option: str) -> Dict[str, Tuple[str, str]]:
    return {'*': (ENGINE, option)}


def _kept(name: str) -> Dict[str, Tuple[str, str]]:
    return {'*': (KEEP, name)}


_NO_MOUNT = ('chunkbackup does not mount shares: mount it yourself (fstab, '
             'systemd) and set [backup_posix] path to the mount point')
_READ_FROM_CINDER = 'read by our drivers from Cinder\'s [DEFAULT], unchanged'

MAPPINGS: List[Mapping] = [
    # cinder.backup.chunkeddriver and cinder.backup.driver
    _m('backup_compression_algorithm', _engine('compression_algorithm'),
       'same values; Cinder\'s default is zlib, ours zstd (Cinder reads '
       'both)'),
    _m('backup_create_containers',
       {POSIX: (POSIX, 'create_container'),
        SWIFT: (SWIFT, 'create_container'),
        S3: (S3, 'create_bucket'), GOOGLE: (GOOGLE, 'create_bucket')}),
    _m('backup_metadata_version', _kept('backup_metadata_version'),
       _READ_FROM_CINDER),
    _m('backup_object_number_per_notification',
       _kept('backup_object_number_per_notification'), _READ_FROM_CINDER),
    _m('backup_timer_interval', _kept('backup_timer_interval'),
       _READ_FROM_CINDER),
    # posix
    _m('backup_file_size', _only(POSIX, 'object_size'),
       'Cinder\'s default is 1999994880 bytes, ours 32 MiB: memory per '
       'object in flight'),
    _m('backup_sha_block_size_bytes', {POSIX: (ENGINE, 'sha_block_size')}),
    _m('backup_enable_progress_timer',
       {POSIX: (KEEP, 'backup_enable_progress_timer')}, _READ_FROM_CINDER),
    _m('backup_posix_path', _only(POSIX, 'path'),
       'Cinder\'s default is $state_path/backup'),
    _m('backup_container', note='none needed: Cinder\'s posix driver never '
       'uses it (each backup without a container gets '
       '<id[0:2]>/<id[2:4]>/<id>, in both)'),
    # nfs (a posix driver that mounts a share first)
    _m('backup_share', note=_NO_MOUNT),
    _m('backup_mount_point_base', note=_NO_MOUNT),
    _m('backup_mount_options', note=_NO_MOUNT),
    _m('backup_mount_attempts', note=_NO_MOUNT),
    # swift
    _m('backup_swift_url', _only(SWIFT, 'url')),
    _m('backup_swift_auth_url', _only(SWIFT, 'auth_url')),
    _m('swift_catalog_info', _only(SWIFT, 'catalog_info')),
    _m('keystone_catalog_info', _only(SWIFT, 'keystone_catalog_info')),
    _m('backup_swift_auth', _only(SWIFT, 'auth_mode'),
       'Cinder\'s default is per_user, ours single_user',
       cinder_default='per_user'),
    _m('backup_swift_auth_version', _only(SWIFT, 'auth_version'),
       '1 or 3; Keystone v2 (2) is not supported'),
    _m('backup_swift_tenant', note='Keystone v2 only, which is not '
       'supported: use backup_swift_project (project_name) with v3'),
    _m('backup_swift_user_domain', _only(SWIFT, 'user_domain_name')),
    _m('backup_swift_project_domain', _only(SWIFT, 'project_domain_name')),
    _m('backup_swift_project', _only(SWIFT, 'project_name')),
    _m('backup_swift_user', _only(SWIFT, 'user')),
    _m('backup_swift_key', _only(SWIFT, 'key')),
    _m('backup_swift_container', _only(SWIFT, 'container')),
    _m('backup_swift_create_storage_policy', _only(SWIFT, 'storage_policy')),
    _m('backup_swift_object_size', _only(SWIFT, 'object_size')),
    _m('backup_swift_block_size', {SWIFT: (ENGINE, 'sha_block_size')}),
    _m('backup_swift_retry_attempts', {SWIFT: (ENGINE, 'storage_retries')},
       'ours retry only transient failures, for every driver'),
    _m('backup_swift_retry_backoff',
       {SWIFT: (ENGINE, 'storage_retry_backoff')},
       'ours is the first delay in seconds, doubled each retry'),
    _m('backup_swift_enable_progress_timer',
       {SWIFT: (KEEP, 'backup_swift_enable_progress_timer')},
       _READ_FROM_CINDER),
    _m('backup_swift_ca_cert_file', _only(SWIFT, 'ca_certificate_file')),
    _m('backup_swift_auth_insecure', _only(SWIFT, 'insecure')),
    _m('backup_swift_service_auth', _only(SWIFT, 'service_auth'),
       'the token comes from cinder-backup\'s [service_user], as in Cinder'),
    _m('backup_swift_region_name', _only(SWIFT, 'region_name'),
       'a region no endpoint has is an error (Cinder falls back to the '
       'first endpoint)'),
    # s3
    _m('backup_s3_endpoint_url', _only(S3, 'endpoint_url')),
    _m('backup_s3_store_access_key', _only(S3, 'access_key')),
    _m('backup_s3_store_secret_key', _only(S3, 'secret_key')),
    _m('backup_s3_store_bucket', _only(S3, 'bucket')),
    _m('backup_s3_object_size', _only(S3, 'object_size')),
    _m('backup_s3_block_size', {S3: (ENGINE, 'sha_block_size')}),
    _m('backup_s3_enable_progress_timer',
       {S3: (KEEP, 'backup_s3_enable_progress_timer')}, _READ_FROM_CINDER),
    _m('backup_s3_http_proxy', _only(S3, 'http_proxy')),
    _m('backup_s3_https_proxy', _only(S3, 'https_proxy')),
    _m('backup_s3_timeout', _only(S3, 'read_timeout'),
       'Cinder uses it for connecting too: ours also has connect_timeout'),
    _m('backup_s3_max_pool_connections', _only(S3, 'max_pool_connections')),
    _m('backup_s3_retry_max_attempts', {S3: (ENGINE, 'storage_retries')},
       'ours retry only transient failures, for every driver'),
    _m('backup_s3_retry_mode', _only(S3, 'retry_mode')),
    _m('backup_s3_verify_ssl', _only(S3, 'verify')),
    _m('backup_s3_ca_cert_file', _only(S3, 'ca_bundle')),
    _m('backup_s3_md5_validation', _only(S3, 'send_content_md5')),
    _m('backup_s3_sse_customer_key', _only(S3, 'sse_customer_key'),
       'a malformed key is refused when the driver is made'),
    _m('backup_s3_sse_customer_algorithm',
       _only(S3, 'sse_customer_algorithm')),
    # gcs
    _m('backup_gcs_bucket', _only(GOOGLE, 'bucket')),
    _m('backup_gcs_object_size', _only(GOOGLE, 'object_size')),
    _m('backup_gcs_block_size', {GOOGLE: (ENGINE, 'sha_block_size')}),
    _m('backup_gcs_reader_chunk_size', note='none needed: objects are read '
       'as streams of the client\'s own size'),
    _m('backup_gcs_writer_chunk_size', _only(GOOGLE, 'upload_chunk_size')),
    _m('backup_gcs_num_retries', {GOOGLE: (ENGINE, 'storage_retries')},
       'ours retry only transient failures, for every driver'),
    _m('backup_gcs_retry_error_codes', note='none: 408, 429 and 5xx are '
       'always retried ([chunkbackup] storage_retries)'),
    _m('backup_gcs_bucket_location', _only(GOOGLE, 'bucket_location')),
    _m('backup_gcs_storage_class', _only(GOOGLE, 'storage_class')),
    _m('backup_gcs_credential_file', _only(GOOGLE, 'credentials_file')),
    _m('backup_gcs_project_id', _only(GOOGLE, 'project_id')),
    _m('backup_gcs_user_agent', note='none: the client\'s own user agent '
       'is sent'),
    _m('backup_gcs_enable_progress_timer',
       {GOOGLE: (KEEP, 'backup_gcs_enable_progress_timer')},
       _READ_FROM_CINDER),
    _m('backup_gcs_proxy_url', _only(GOOGLE, 'proxy_url')),
    # Not a backup_* option, but it names the objects of the stores.
    _m('storage_availability_zone',
       {SWIFT: (SWIFT, 'availability_zone'),
        S3: (S3, 'availability_zone'),
        GOOGLE: (GOOGLE, 'availability_zone')},
       'written into object names (az_<zone>)'),
]

BY_NAME = {m.cinder: m for m in MAPPINGS}


def target(mapping: Mapping, store_group: str) -> Optional[Tuple[str, str]]:
    """Our (group, option) for ``mapping`` with the driver of
    ``store_group``, or None.
    """
    found = mapping.targets.get(store_group) or mapping.targets.get('*')
    if found is None:
        return None
    group, option = found
    return (store_group if group == '*' else group), option


def cinder_names(group: str, option: str) -> List[str]:
    """Cinder's options that map to our ``[group] option``."""
    names = []
    for mapping in MAPPINGS:
        for store in STORE_GROUPS:
            if target(mapping, store) == (group, option):
                names.append(mapping.cinder)
                break
    return names


def help_note(group: str, option: str) -> str:
    """What the sample config says about Cinder next to our option."""
    names = cinder_names(group, option)
    if names:
        return 'Cinder: %s.' % ', '.join(names)
    return 'Cinder has no equivalent.'


def _interpolate(value: str, defaults: Dict[str, str]) -> str:
    """oslo.config's $name and ${name} substitution from [DEFAULT]."""
    for name in sorted(defaults, key=len, reverse=True):
        value = value.replace('${%s}' % name, defaults[name])
        value = value.replace('$%s' % name, defaults[name])
    return value


class _CaseKeepingParser(configparser.RawConfigParser):
    """Option names as written (Cinder's are case-sensitive)."""

    def optionxform(self, optionstr: str) -> str:
        return optionstr


def convert(cinder_conf_text: str) -> str:
    """The sections of ours equivalent to a cinder.conf's backup options.

    Raises ValueError for a cinder.conf whose backup_driver is not one of
    Cinder's chunked drivers.
    """
    parser = _CaseKeepingParser(strict=False, default_section='__none__')
    parser.read_string(cinder_conf_text)
    cinder = dict(parser.items('DEFAULT')) if parser.has_section(
        'DEFAULT') else {}
    cinder_driver = cinder.get('backup_driver',
                               'cinder.backup.drivers.swift.SwiftBackupDriver')
    if cinder_driver not in DRIVERS:
        raise ValueError(
            'backup_driver = %s is not one of Cinder\'s chunked drivers (%s)'
            % (cinder_driver, ', '.join(sorted(DRIVERS))))
    our_driver, store = DRIVERS[cinder_driver]
    defaults = {'state_path': cinder.get('state_path', '/var/lib/cinder')}
    sections: Dict[str, List[str]] = {KEEP: [
        '# was %s' % cinder_driver, 'backup_driver = %s' % our_driver]}
    unmapped = []
    for mapping in MAPPINGS:
        value = cinder.get(mapping.cinder, mapping.cinder_default)
        if value is None and mapping.cinder == 'backup_posix_path' and \
                store == POSIX and 'nfs' not in cinder_driver:
            value = '$state_path/backup'  # Cinder's default location
        if value is None:
            continue
        found = target(mapping, store)
        if found is None:
            if mapping.cinder in cinder:
                unmapped.append('# %s = %s: %s' % (
                    mapping.cinder, value, mapping.note or 'not used by '
                    'this driver'))
            continue
        group, option = found
        line = '%s = %s' % (option, mapping.convert(
            _interpolate(value, defaults)))
        if mapping.cinder != option:
            line = '# %s\n%s' % (mapping.cinder, line)
        sections.setdefault(group, []).append(line)
    if 'nfs' in cinder_driver:
        sections.setdefault(POSIX, []).insert(
            0, '# nfs: %s\npath = <the mount point of %s>' % (
                _NO_MOUNT, cinder.get('backup_share', 'backup_share')))
    out = io.StringIO()
    for group in [KEEP, ENGINE, store]:
        lines = sections.get(group)
        if not lines:
            continue
        out.write('[%s]\n' % group)
        out.write('\n'.join(lines) + '\n\n')
    if unmapped:
        out.write('# Set in the cinder.conf without an equivalent:\n')
        out.write('\n'.join(unmapped) + '\n')
    return out.getvalue()
