"""Master keys: what wraps each backup chain's data key.

A chain's data key is random (32 bytes) and never stored in the clear:
each ``_metadata`` of the chain carries it wrapped (AES-256-GCM) by a
master key, with the master key's id. A master key comes from a
:class:`KeySource`: a key file (:mod:`chunkbackup.crypto.keyfile`) or a
key manager through castellan (:mod:`chunkbackup.crypto.keymanager`).
Rotation re-wraps the data keys under another master key; data objects
are not rewritten.
"""
import abc
import importlib
import os
from typing import Any, Optional

from cryptography.hazmat.primitives.ciphers import aead

from chunkbackup import exception

DATA_KEY_SIZE = 32
_NONCE_SIZE = 12
# A wrapped key is bound to what it is for, so it cannot be passed off as
# another wrapped value.
_WRAP_CONTEXT = b'chunkbackup data key v1\0'


class KeyUnavailable(exception.ChunkBackupError):
    """The master key a backup needs cannot be had (one line, with advice)."""

    msg_fmt = "%(reason)s"


class WrongKey(exception.ChunkBackupError):
    msg_fmt = ("the data key of %(what)s does not unwrap with master key "
               "%(key_id)s (the wrapped key was altered, or the key of that "
               "id is not the one it was made with)")


class MasterKey:
    """A 256-bit key-encryption key with a stable, non-secret id."""

    def __init__(self, key_id: str, material: bytes) -> None:
        if len(material) != DATA_KEY_SIZE:
            raise KeyUnavailable(reason='master key %s is %d bytes; an '
                                 'AES-256 key is 32' % (key_id,
                                                        len(material)))
        self.key_id = key_id
        self._aead = aead.AESGCM(bytes(material))

    def wrap(self, data_key: bytes, context: bytes = b'') -> bytes:
        """nonce || AES-256-GCM(data_key), bound to the key id and context."""
        nonce = os.urandom(_NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, data_key,
                                          self._aad(context))

    def unwrap(self, wrapped: bytes, context: bytes = b'',
               what: str = 'this backup') -> bytes:
        from cryptography import exceptions
        try:
            key = self._aead.decrypt(wrapped[:_NONCE_SIZE],
                                     wrapped[_NONCE_SIZE:],
                                     self._aad(context))
        except (exceptions.InvalidTag, ValueError):
            raise WrongKey(what=what, key_id=self.key_id)
        if len(key) != DATA_KEY_SIZE:
            raise WrongKey(what=what, key_id=self.key_id)
        return key

    def _aad(self, context: bytes) -> bytes:
        return _WRAP_CONTEXT + self.key_id.encode('utf-8') + b'\0' + context

    def __repr__(self) -> str:  # never the material
        return '<MasterKey %s>' % self.key_id


class KeySource(abc.ABC):
    """Where master keys come from."""

    #: Said in errors: "the key file /etc/...", "the key manager (barbican)".
    description = 'the key source'

    @abc.abstractmethod
    def current(self) -> MasterKey:
        """The master key that wraps the data keys of new chains."""

    @abc.abstractmethod
    def get(self, key_id: str) -> MasterKey:
        """The master key of that id, or raise KeyUnavailable."""

    def create(self) -> MasterKey:
        """A new master key (key-rotate); not every source can make one."""
        raise KeyUnavailable(reason='%s cannot create keys; make one and '
                             'pass it to key-rotate' % self.description)


def new_data_key() -> bytes:
    return os.urandom(DATA_KEY_SIZE)


def configured_source(key_file: Optional[str] = None,
                      context: Any = None) -> KeySource:
    """The master keys this process uses: the key file, or a key manager.

    ``[chunkbackup] key_file`` wins; else ``master_key_id`` in the key
    manager (castellan). Asked only when an encrypted backup is made or
    read.
    """
    from oslo_config import cfg

    if key_file:
        from chunkbackup.crypto import keyfile
        return keyfile.KeyFiles(key_file)
    master_key_id = getattr(cfg.CONF.chunkbackup, 'master_key_id', None)
    if master_key_id:
        # castellan, an optional extra
        keymanager: Any = importlib.import_module(
            'chunkbackup.crypto.keymanager')
        return keymanager.CastellanKeys(context=context)
    raise KeyUnavailable(
        reason='no master key is configured: set [chunkbackup] key_file '
               "(make one with 'chunkbackup key-create PATH') or "
               'master_key_id (a key in the key manager)')
