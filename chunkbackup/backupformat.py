"""Reading and writing the ``_metadata`` and ``_sha256file`` documents.

The format is Cinder's chunked-backup format 1.0.0 (doc/format.md). What
we read is checked before anything trusts it: a document from a store is
input, and a wrong type, a missing key or an impossible offset must end in
a clear error naming the backup and the object, never in a crash, a huge
allocation or a wrong volume.
"""
import dataclasses
import functools
import hashlib
import json
import re
import time
from typing import Any, Dict, List, Optional, Union

from chunkbackup import compression
from chunkbackup import exception
from chunkbackup import names

VERSION = '1.0.0'
# The version of an encrypted backup's _metadata (chunkbackup.crypto):
# Cinder restores only 1.0.0, so it refuses these before reading objects.
ENCRYPTED_VERSION = '1.0.0-aes-256-gcm'
DIGEST_SIZE = 32
# Larger objects than this are refused as corrupt metadata: Cinder's largest
# default object (posix, 1999994880 bytes) is below it.
MAX_OBJECT_LENGTH = 4 * 2 ** 30
# A volume larger than this (1 PiB) is refused as corrupt metadata.
MAX_VOLUME_SIZE = 2 ** 50
_MD5_RE = re.compile(r'^[0-9a-f]{32}$')
_SHA_RE = re.compile(r'^[0-9a-fA-F]{64}$')


def metadata_name(prefix: str) -> str:
    return prefix + '_metadata'


def sha256file_name(prefix: str) -> str:
    return prefix + '_sha256file'


def data_object_name(prefix: str, number: int) -> str:
    return '%s-%05d' % (prefix, number)


def utc_stamp(when: Optional[time.struct_time] = None) -> str:
    """The timestamp in object prefixes: UTC, %Y%m%d%H%M%S."""
    return time.strftime('%Y%m%d%H%M%S', when or time.gmtime())


def posix_prefix(volume_id: str, backup_id: str,
                 when: Optional[time.struct_time] = None) -> str:
    """Cinder's posix/nfs prefix of a backup's objects."""
    return 'volume_%s_%s_backup_%s' % (
        names.check_safe_id('volume id', volume_id), utc_stamp(when),
        names.check_safe_id('backup id', backup_id))


def object_store_prefix(volume_id: str, backup_id: str,
                        availability_zone: str,
                        when: Optional[time.struct_time] = None) -> str:
    """Cinder's swift/gcs/s3 prefix of a backup's objects."""
    return 'volume_%s/%s/az_%s_backup_%s' % (
        names.check_safe_id('volume id', volume_id), utc_stamp(when),
        availability_zone, names.check_safe_id('backup id', backup_id))


def dumps(document: dict) -> bytes:
    """Cinder's serialisation: sorted keys, indent 2, UTF-8."""
    return json.dumps(document, sort_keys=True, indent=2).encode('utf-8')


@dataclasses.dataclass(frozen=True)
class ObjectEntry:
    """One data object as ``_metadata`` describes it."""

    name: str
    offset: int
    length: int
    compression: str
    md5: str
    # An encrypted object re-homed by a fold or a synthetic full keeps the
    # associated data it was sealed with: "BACKUP_ID:NAME" (None: this
    # backup's id and this name).
    sealed_as: Optional[str] = None

    @property
    def end(self) -> int:
        return self.offset + self.length

    def to_json(self) -> dict:
        info: Dict[str, Any] = {'offset': self.offset, 'length': self.length,
                                'compression': self.compression,
                                'md5': self.md5}
        if self.sealed_as:
            info['sealed_as'] = self.sealed_as
        return {self.name: info}


@dataclasses.dataclass
class Metadata:
    backup_id: str
    volume_id: str
    parent_id: Optional[str]
    objects: List[ObjectEntry]
    volume_meta: Optional[str] = None
    backup_name: Optional[str] = None
    backup_description: Optional[str] = None
    created_at: Optional[str] = None
    extra_metadata: object = None
    # An encrypted backup's key section (chunkbackup.crypto.envelope).
    encryption: Optional[Dict[str, Any]] = None
    # The document as read, for checking its HMAC (not written).
    raw: Optional[Dict[str, Any]] = dataclasses.field(default=None,
                                                      repr=False)

    def to_json(self) -> dict:
        doc: Dict[str, Any] = {
            'version': ENCRYPTED_VERSION if self.encryption else VERSION,
            'backup_id': self.backup_id,
            'volume_id': self.volume_id,
            'backup_name': self.backup_name,
            'backup_description': self.backup_description,
            'created_at': self.created_at,
            'parent_id': self.parent_id,
            'objects': [o.to_json() for o in self.objects],
            'volume_meta': self.volume_meta,
        }
        if self.extra_metadata:
            doc['extra_metadata'] = self.extra_metadata
        if self.encryption:
            doc['encryption'] = dict(self.encryption)
        return doc


@dataclasses.dataclass
class ShaFile:
    """The block size and the raw SHA-256 digests of every volume block.

    Digests are kept as one bytes object (32 bytes a block) rather than a
    list of hex strings: a quarter of the memory, and slices compare fast.
    """

    chunk_size: int
    digests: bytes

    @property
    def block_count(self) -> int:
        return len(self.digests) // DIGEST_SIZE

    def digest(self, index: int) -> bytes:
        return self.digests[index * DIGEST_SIZE:(index + 1) * DIGEST_SIZE]

    def to_json(self, common: dict) -> dict:
        doc = dict(common)
        doc['version'] = VERSION
        doc['chunk_size'] = self.chunk_size
        doc['sha256s'] = [self.digests[i:i + DIGEST_SIZE].hex()
                          for i in range(0, len(self.digests), DIGEST_SIZE)]
        return doc


_ZEROS = bytes(2 ** 20)


@functools.lru_cache(maxsize=64)
def zero_digest(length: int) -> bytes:
    """The SHA-256 of ``length`` zero bytes, in bounded memory."""
    sha = hashlib.sha256()
    while length > 0:
        sha.update(_ZEROS[:min(length, len(_ZEROS))])
        length -= len(_ZEROS)
    return sha.digest()


class _Checker:
    """Builds InvalidBackupMetadata errors for one document."""

    def __init__(self, backup_id, object_name):
        self.backup_id = backup_id
        self.object_name = object_name

    def fail(self, reason):
        return exception.InvalidBackupMetadata(
            backup_id=self.backup_id, object=self.object_name, reason=reason)

    def load(self, body, versions=(VERSION,)) -> dict:
        try:
            doc = json.loads(bytes(body).decode('utf-8'))
        except UnicodeDecodeError:
            raise self.fail('it is not UTF-8 text')
        except ValueError as e:
            raise self.fail('it is not JSON (%s)' % e)
        if not isinstance(doc, dict):
            raise self.fail('it is not a JSON object')
        version = doc.get('version')
        if version not in versions:
            raise exception.UnsupportedBackupVersion(
                backup_id=self.backup_id, version=version,
                supported=VERSION)
        return doc

    def key(self, doc, key, types, nullable=False):
        if key not in doc:
            raise self.fail('the key %r is missing' % key)
        value = doc[key]
        if value is None and nullable:
            return None
        # bool is an int in Python; it is never a valid number here.
        if isinstance(value, bool) or not isinstance(value, types):
            raise self.fail('%r has the wrong type (%s)'
                            % (key, type(value).__name__))
        return value

    def optional(self, doc, key, types):
        if key not in doc:
            return None
        return self.key(doc, key, types, nullable=True)


def parse_metadata(body: Union[bytes, bytearray, memoryview],
                   backup_id: Optional[str], object_name: str) -> Metadata:
    """Parse and check a ``_metadata`` document (raises InvalidBackup).

    ``backup_id`` is the backup it must belong to; None accepts the one it
    names (discovering backups in a store).
    """
    check = _Checker(backup_id or object_name, object_name)
    doc = check.load(body, (VERSION, ENCRYPTED_VERSION))
    stored_id = check.key(doc, 'backup_id', str)
    if backup_id is not None and stored_id != backup_id:
        raise check.fail('it belongs to backup %s' % stored_id)
    objects = []
    seen = set()
    raw_objects = check.key(doc, 'objects', list)
    for item in raw_objects:
        if not isinstance(item, dict) or len(item) != 1:
            raise check.fail('an entry of "objects" is not a one-key object')
        name, info = next(iter(item.items()))
        try:
            names.check_relative('object name', name)
        except exception.InvalidName as e:
            raise check.fail('object name %r is invalid: %s'
                             % (name[:64], e.kwargs['reason']))
        if name in seen:
            raise check.fail('object %s is listed twice' % name)
        seen.add(name)
        if not isinstance(info, dict):
            raise check.fail('the entry of %s is not an object' % name)
        where = 'object %s: ' % name
        offset = info.get('offset')
        length = info.get('length')
        for key, value in (('offset', offset), ('length', length)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise check.fail(where + '%s is not an integer' % key)
        assert isinstance(offset, int) and isinstance(length, int)
        if offset < 0 or offset > MAX_VOLUME_SIZE:
            raise check.fail(where + 'offset %d is out of range' % offset)
        if length <= 0 or length > MAX_OBJECT_LENGTH:
            raise check.fail(where + 'length %d is out of range' % length)
        label = info.get('compression')
        label = 'none' if label is None else label
        if not isinstance(label, str) or (
                label.lower() not in compression.READABLE_LABELS and
                label.lower() not in compression.NONE_LABELS):
            raise check.fail(where + 'compression %r is not one this '
                             'version reads' % (label,))
        md5 = info.get('md5')
        if not isinstance(md5, str) or not _MD5_RE.match(md5):
            raise check.fail(where + 'md5 %r is not a hex MD5' % (md5,))
        sealed_as = info.get('sealed_as')
        if sealed_as is not None and (
                not isinstance(sealed_as, str) or ':' not in sealed_as):
            raise check.fail(where + 'sealed_as %r is not BACKUP_ID:NAME'
                             % (sealed_as,))
        objects.append(ObjectEntry(name, offset, length, label.lower(), md5,
                                   sealed_as))
    parent_id = check.key(doc, 'parent_id', str, nullable=True)
    volume_meta = check.optional(doc, 'volume_meta', str)
    encryption = None
    if doc['version'] == ENCRYPTED_VERSION:
        encryption = check.key(doc, 'encryption', dict)
        for key in ('cipher', 'key_id', 'wrapped_key', 'chain', 'mac'):
            check.key(encryption, key, str)
        if encryption['cipher'] != 'aes-256-gcm':
            raise check.fail('cipher %r is not one this version reads'
                             % encryption['cipher'][:32])
    return Metadata(
        encryption=encryption, raw=doc,
        backup_id=stored_id,
        volume_id=check.key(doc, 'volume_id', str),
        parent_id=parent_id,
        objects=objects,
        volume_meta=volume_meta,
        backup_name=check.optional(doc, 'backup_name', str),
        backup_description=check.optional(doc, 'backup_description', str),
        created_at=check.optional(doc, 'created_at', str),
        extra_metadata=doc.get('extra_metadata'))


def parse_sha256file(body: Union[bytes, bytearray, memoryview], backup_id: str,
                     object_name: str) -> ShaFile:
    """Parse and check a ``_sha256file`` document (raises InvalidBackup)."""
    check = _Checker(backup_id, object_name)
    doc = check.load(body)
    chunk_size = check.key(doc, 'chunk_size', int)
    if chunk_size <= 0 or chunk_size > MAX_OBJECT_LENGTH:
        raise check.fail('chunk_size %d is out of range' % chunk_size)
    hexes = check.key(doc, 'sha256s', list)
    for value in hexes:
        if not isinstance(value, str) or not _SHA_RE.match(value):
            raise check.fail('%r is not a hex SHA-256' % (value,))
    return ShaFile(chunk_size, bytes.fromhex(''.join(hexes)))
