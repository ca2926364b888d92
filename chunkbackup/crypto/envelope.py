"""The engine's side of encryption: a chain's keys, sealed objects, signed
documents (doc/encryption.md).

A backup chain has one random data key. From it (HKDF-SHA256) come:

- the object key: each data object body (compressed first) is sealed in
  segments of ``SEGMENT`` bytes with AES-256-GCM under a key of its own,
  derived from the object key and a random salt in the body's header.
  Every segment's associated data names the backup and the object the
  body was sealed for, and its nonce holds its index and whether it is
  the last: an object cannot be swapped with another, moved to another
  backup, truncated, reordered or altered without its open failing;
- the digest keys: ``_sha256file`` holds HMAC-SHA256 digests of blocks
  and the ``md5`` fields a truncated HMAC-SHA256 of each object's data
  (:class:`chunkbackup.checksums.KeyedDigests`), so nothing equals a
  digest anyone can compute from a guessed plaintext, and incrementals
  still compare digests;
- the document key: ``volume_meta`` is sealed, and ``_metadata`` carries
  an HMAC of everything the restore trusts in it (``encryption.mac``).

``_metadata`` stays JSON so catalogs can be rebuilt from a store; its
``version`` marks it encrypted, and stock Cinder refuses that version
before it writes anything.
"""
import base64
import dataclasses
import hmac
import json
import os
from typing import Any, Dict, Iterable, Iterator, Optional, Tuple, Union

from cryptography import exceptions as crypto_exceptions
from cryptography.hazmat.primitives.ciphers import aead
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf import hkdf

from chunkbackup import backupformat as fmt
from chunkbackup import checksums
from chunkbackup.crypto import keys as crypto_keys
from chunkbackup import exception

CIPHER = 'aes-256-gcm'
ENCRYPTED_VERSION = fmt.ENCRYPTED_VERSION
SCHEME = 1
# Plaintext bytes of one sealed segment (each costs 16 bytes of tag).
SEGMENT = 64 * 1024
_TAG = 16
_MAGIC = b'CBE1'
_SALT = 16
HEADER_SIZE = len(_MAGIC) + _SALT

Data = Union[bytes, bytearray, memoryview]


def _derive(key: bytes, purpose: bytes, salt: Optional[bytes] = None,
            ) -> bytes:
    return hkdf.HKDF(algorithm=hashes.SHA256(), length=32, salt=salt,
                     info=b'chunkbackup ' + purpose).derive(key)


def _nonce(index: int, last: bool) -> bytes:
    return index.to_bytes(11, 'big') + (b'\x01' if last else b'\x00')


def object_aad(backup_id: str, name: str) -> bytes:
    return ('chunkbackup object\0%s\0%s' % (backup_id, name)).encode('utf-8')


def sealed_for(entry: Any, backup_id: str) -> Tuple[str, str]:
    """(backup id, object name) an object of ``backup_id`` was sealed for.

    Its own, unless a fold or synthetic full re-homed it (``sealed_as``).
    """
    if entry.sealed_as:
        sealed_backup, _, name = entry.sealed_as.partition(':')
        return sealed_backup, name
    return backup_id, entry.name


def rehomed(entry: Any, backup_id: str, name: str) -> Any:
    """``entry`` of ``backup_id`` under a new ``name``, still openable."""
    return dataclasses.replace(
        entry, name=name,
        sealed_as='%s:%s' % sealed_for(entry, backup_id))


def sealed_size(length: int) -> int:
    """The body size of ``length`` sealed bytes."""
    segments = max(1, -(-length // SEGMENT))
    return HEADER_SIZE + length + segments * _TAG


class Sealer:
    """Seals one object body, fed in order; ``update`` returns ciphertext."""

    def __init__(self, object_key: bytes, aad: bytes) -> None:
        salt = os.urandom(_SALT)
        self._aead = aead.AESGCM(_derive(object_key, b'object v1', salt))
        self._aad = aad
        self._pending = bytearray()
        self._index = 0
        self._header: Optional[bytes] = _MAGIC + salt

    def _seal(self, data: Data, last: bool) -> bytes:
        out = self._aead.encrypt(_nonce(self._index, last), data, self._aad)
        self._index += 1
        return out

    def _start(self) -> list:
        parts = []
        if self._header is not None:
            parts.append(self._header)
            self._header = None
        return parts

    def update(self, data: Data) -> bytes:
        parts = self._start()
        view = memoryview(data).cast('B') if not isinstance(
            data, memoryview) else data.cast('B')
        pending = self._pending
        pos = 0
        if pending:
            take = min(len(view), SEGMENT - len(pending))
            pending += view[:take]
            pos = take
            # A segment is sealed once more data follows it: the last one
            # is sealed by finish(), flagged last.
            if len(pending) == SEGMENT and pos < len(view):
                parts.append(self._seal(pending, False))
                pending.clear()
        while not pending and len(view) - pos > SEGMENT:
            parts.append(self._seal(view[pos:pos + SEGMENT], False))
            pos += SEGMENT
        pending += view[pos:]
        return b''.join(parts)

    def finish(self) -> bytes:
        parts = self._start()
        parts.append(self._seal(self._pending, True))
        self._pending = bytearray()
        return b''.join(parts)

    def seal_all(self, chunks: Iterable[Data]) -> Iterator[bytes]:
        for chunk in chunks:
            out = self.update(chunk)
            if out:
                yield out
        yield self.finish()


class SealingEncoder:
    """A compression StreamEncoder whose output is sealed as it comes."""

    def __init__(self, inner: Any, sealer: Sealer) -> None:
        self._inner = inner
        self._sealer = sealer

    @property
    def label(self) -> str:
        return self._inner.label

    def compress(self, data: Data) -> bytes:
        return self._sealer.update(self._inner.compress(data))

    def flush(self) -> bytes:
        tail = self._inner.flush()
        return self._sealer.update(tail) + self._sealer.finish()


class ChainKeys:
    """The keys of one backup chain, and what it does with them."""

    cipher = CIPHER

    def __init__(self, data_key: bytes, key_id: str, wrapped: bytes,
                 chain_id: str) -> None:
        self.key_id = key_id
        self.wrapped = wrapped
        self.chain_id = chain_id
        self._object_key = _derive(data_key, b'objects')
        self._document_key = _derive(data_key, b'documents')
        self.digests = checksums.KeyedDigests(
            _derive(data_key, b'block digests'),
            _derive(data_key, b'object digests'))

    @classmethod
    def create(cls, master: crypto_keys.MasterKey,
               chain_id: str) -> 'ChainKeys':
        data_key = crypto_keys.new_data_key()
        return cls(data_key, master.key_id,
                   master.wrap(data_key, chain_id.encode('utf-8')), chain_id)

    @classmethod
    def open_section(cls, section: Dict[str, Any],
                     source: crypto_keys.KeySource,
                     backup_id: str) -> 'ChainKeys':
        """The keys of a backup from its ``_metadata``'s section."""
        key_id = section['key_id']
        master = source.get(key_id)
        wrapped = base64.b64decode(section['wrapped_key'])
        data_key = master.unwrap(wrapped, section['chain'].encode('utf-8'),
                                 what='backup %s' % backup_id)
        return cls(data_key, key_id, wrapped, section['chain'])

    def rewrapped(self, master: crypto_keys.MasterKey,
                  old: crypto_keys.MasterKey) -> 'ChainKeys':
        """The same data key, wrapped by ``master`` (key rotation)."""
        data_key = old.unwrap(self.wrapped, self.chain_id.encode('utf-8'))
        return ChainKeys(data_key, master.key_id,
                         master.wrap(data_key, self.chain_id.encode('utf-8')),
                         self.chain_id)

    def same_data_key(self, other: 'ChainKeys') -> bool:
        return hmac.compare_digest(self._object_key, other._object_key)

    # Objects ----------------------------------------------------------

    def sealer(self, backup_id: str, name: str) -> Sealer:
        return Sealer(self._object_key, object_aad(backup_id, name))

    def open(self, chunks: Iterable[Data], backup_id: str, name: str,
             offset: int) -> Iterator[bytes]:
        """The plaintext of a sealed body, a segment at a time.

        Raises BackupCorrupted (naming the object) on any tampering.
        """
        def corrupt(why):
            return exception.BackupCorrupted(
                backup_id=backup_id, object=name, offset=offset,
                reason='it does not authenticate as object %s of this '
                       'backup (%s): it was altered, truncated, or belongs '
                       'elsewhere' % (name, why))

        aad = object_aad(backup_id, name)
        # Bytes of a segment (or of the header) that a chunk ended in;
        # whole segments are opened from the chunk itself, uncopied.
        carry = bytearray()
        cipher = None
        index = 0
        whole = SEGMENT + _TAG
        for chunk in chunks:
            view = memoryview(chunk).cast('B')
            pos = 0
            if cipher is None:
                pos = min(len(view), HEADER_SIZE - len(carry))
                carry += view[:pos]
                if len(carry) < HEADER_SIZE:
                    continue
                if bytes(carry[:len(_MAGIC)]) != _MAGIC:
                    raise corrupt('no encryption header')
                cipher = aead.AESGCM(_derive(
                    self._object_key, b'object v1',
                    bytes(carry[len(_MAGIC):HEADER_SIZE])))
                carry = bytearray()
            if carry:
                take = min(whole - len(carry), len(view) - pos)
                carry += view[pos:pos + take]
                pos += take
                if pos == len(view):
                    continue  # last or not: the next chunk tells
                yield self._open_segment(cipher, carry, index, False, aad,
                                         corrupt)
                index += 1
                carry = bytearray()
            count = max(0, (len(view) - pos - 1) // whole)
            if count:
                # The chunk's whole segments as one output: fewer, larger
                # pieces for the decompressor.
                yield self._open_run(cipher, view[pos:pos + count * whole],
                                     index, count, aad, corrupt)
                index += count
                pos += count * whole
            carry += view[pos:]
        if cipher is None:
            raise corrupt('shorter than its header')
        if len(carry) < _TAG:
            raise corrupt('its last segment is cut short')
        yield self._open_segment(cipher, carry, index, True, aad, corrupt)

    @classmethod
    def _open_run(cls, cipher, data, index, count, aad, corrupt):
        """Open ``count`` whole, non-last segments into one buffer."""
        whole = SEGMENT + _TAG
        if not hasattr(cipher, 'decrypt_into'):  # cryptography < 48
            return b''.join(
                cls._open_segment(cipher, data[k * whole:(k + 1) * whole],
                                  index + k, False, aad, corrupt)
                for k in range(count))
        out = bytearray(count * SEGMENT)
        with memoryview(out) as target:
            for k in range(count):
                try:
                    cipher.decrypt_into(
                        _nonce(index + k, False),
                        data[k * whole:(k + 1) * whole], aad,
                        target[k * SEGMENT:(k + 1) * SEGMENT])
                except crypto_exceptions.InvalidTag:
                    raise corrupt('segment %d fails its AES-GCM tag'
                                  % (index + k))
        return out

    @staticmethod
    def _open_segment(cipher, data, index, last, aad, corrupt) -> bytes:
        try:
            return cipher.decrypt(_nonce(index, last), data, aad)
        except crypto_exceptions.InvalidTag:
            raise corrupt('segment %d fails its AES-GCM tag' % index)

    # Documents --------------------------------------------------------

    def seal_text(self, text: str, backup_id: str, purpose: str) -> str:
        aad = ('chunkbackup %s\0%s' % (purpose, backup_id)).encode('utf-8')
        nonce = os.urandom(12)
        body = aead.AESGCM(self._document_key).encrypt(
            nonce, text.encode('utf-8'), aad)
        return 'sealed:' + base64.b64encode(nonce + body).decode('ascii')

    def open_text(self, sealed: str, backup_id: str, purpose: str) -> str:
        aad = ('chunkbackup %s\0%s' % (purpose, backup_id)).encode('utf-8')
        try:
            raw = base64.b64decode(sealed[len('sealed:'):])
            return aead.AESGCM(self._document_key).decrypt(
                raw[:12], raw[12:], aad).decode('utf-8')
        except (ValueError, crypto_exceptions.InvalidTag):
            raise exception.InvalidBackup(
                reason='the %s of backup %s does not authenticate: it was '
                       'altered or belongs to another backup'
                       % (purpose, backup_id))

    def section(self) -> Dict[str, Any]:
        """The ``encryption`` section of a ``_metadata``, without its MAC."""
        return {'cipher': CIPHER, 'scheme': SCHEME, 'key_id': self.key_id,
                'wrapped_key': base64.b64encode(self.wrapped).decode('ascii'),
                'chain': self.chain_id}

    def mac(self, document: Dict[str, Any]) -> str:
        """The HMAC of a ``_metadata`` document (its own MAC left out)."""
        doc = dict(document)
        section = dict(doc.get('encryption') or {})
        section.pop('mac', None)
        doc['encryption'] = section
        text = json.dumps(doc, sort_keys=True, separators=(',', ':'))
        return hmac.new(self._document_key, text.encode('utf-8'),
                        'sha256').hexdigest()

    def sign(self, document: Dict[str, Any]) -> Dict[str, Any]:
        document['encryption'] = self.section()
        document['encryption']['mac'] = self.mac(document)
        return document

    def check(self, document: Dict[str, Any], backup_id: str,
              object_name: str) -> None:
        given = (document.get('encryption') or {}).get('mac')
        if not isinstance(given, str) or not hmac.compare_digest(
                given, self.mac(document)):
            raise exception.InvalidBackupMetadata(
                backup_id=backup_id, object=object_name,
                reason='it does not authenticate under its chain\'s key '
                       '(its HMAC differs): it was altered')
