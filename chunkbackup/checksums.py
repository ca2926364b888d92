"""The MD5 digests the format and the stores ask for, written once.

MD5 is not used for security anywhere in chunkbackup: it is Cinder's
per-object integrity check and the transfer check of object stores
(Swift's ETag, S3's Content-MD5, GCS's md5Hash). ``usedforsecurity=False``
lets it run on FIPS hosts.
"""
import base64
import hashlib
from typing import Union


def md5_hex(data: Union[bytes, bytearray, memoryview]) -> str:
    """The MD5 of ``data`` in hex (the format's ``md5``, Swift's ETag)."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def md5_base64(data: Union[bytes, bytearray, memoryview]) -> str:
    """The MD5 of ``data`` in base64 (S3's Content-MD5, GCS's md5Hash)."""
    return base64.b64encode(
        hashlib.md5(data, usedforsecurity=False).digest()).decode('ascii')
