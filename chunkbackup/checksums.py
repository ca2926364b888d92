"""The MD5 digests the format and the stores ask for, written once.

MD5 is not used for security anywhere in chunkbackup: it is Cinder's
per-object integrity check and the transfer check of object stores
(Swift's ETag, S3's Content-MD5, GCS's md5Hash). ``usedforsecurity=False``
lets it run on FIPS hosts.
"""
import base64
import hashlib
import hmac
from typing import Any, Protocol, Union


def md5_hex(data: Union[bytes, bytearray, memoryview]) -> str:
    """The MD5 of ``data`` in hex (the format's ``md5``, Swift's ETag)."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def md5_base64(data: Union[bytes, bytearray, memoryview]) -> str:
    """The MD5 of ``data`` in base64 (S3's Content-MD5, GCS's md5Hash)."""
    return base64.b64encode(
        hashlib.md5(data, usedforsecurity=False).digest()).decode('ascii')


def md5_hasher() -> 'hashlib._Hash':
    """An MD5 to feed piece by piece (an object streamed in pieces)."""
    return hashlib.md5(usedforsecurity=False)


_ZEROS = bytes(2 ** 20)


class ObjectHasher(Protocol):
    """Fed an object's data piece by piece; its hex fills ``md5``."""

    def update(self, data: Union[bytes, bytearray, memoryview]) -> None:
        ...

    def hexdigest(self) -> str:
        ...


class Digests:
    """How blocks and objects are digested: Cinder's plain SHA-256 and MD5.

    An encrypted backup uses :class:`KeyedDigests` instead, so that its
    ``_sha256file`` and ``md5`` fields say nothing about the plaintext.
    Every place that hashes a block or an object, or compares with the
    digest of zeros, asks one of these.
    """

    keyed = False

    def __init__(self) -> None:
        self._zero: dict = {}

    def block(self, data: Union[bytes, bytearray, memoryview]) -> bytes:
        return hashlib.sha256(data).digest()

    def _hasher(self) -> Any:
        return hashlib.sha256()

    def zero(self, length: int) -> bytes:
        """The digest of ``length`` zero bytes, computed once."""
        found = self._zero.get(length)
        if found is None:
            hasher = self._hasher()
            left = length
            while left > 0:
                hasher.update(_ZEROS[:min(left, len(_ZEROS))])
                left -= len(_ZEROS)
            found = hasher.digest()
            if len(self._zero) > 64:
                self._zero.clear()
            self._zero[length] = found
        return found

    def object_hasher(self) -> ObjectHasher:
        """What fills an object's ``md5`` field, fed piece by piece."""
        return md5_hasher()


class _Truncated:
    """A keyed object digest in the shape of the ``md5`` field (32 hex)."""

    def __init__(self, mac) -> None:
        self._mac = mac

    def update(self, data) -> None:
        self._mac.update(data)

    def hexdigest(self) -> str:
        return self._mac.hexdigest()[:32]


class KeyedDigests(Digests):
    """HMAC-SHA256 of blocks and objects under a chain's secret keys."""

    keyed = True

    def __init__(self, block_key: bytes, object_key: bytes) -> None:
        super().__init__()
        self._block_key = block_key
        self._object_key = object_key

    def block(self, data: Union[bytes, bytearray, memoryview]) -> bytes:
        return hmac.digest(self._block_key, data, 'sha256')

    def _hasher(self) -> Any:
        return hmac.new(self._block_key, digestmod='sha256')

    def object_hasher(self) -> ObjectHasher:
        return _Truncated(hmac.new(self._object_key, digestmod='sha256'))


PLAIN = Digests()
