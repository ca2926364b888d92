"""Master keys in files (``chunkbackup key-create PATH``).

A key file is a small JSON document: the key's id and its 32 bytes in
base64. It must be readable by its owner only (0600): a key file that
group or others may read is refused, as ssh refuses such private keys.
The id is derived from the key, so a file cannot claim another key's id.
"""
import base64
import hashlib
import json
import os
import stat
from typing import Dict, Optional, Sequence

from chunkbackup.crypto import keys

_KIND = 'chunkbackup master key'


def key_id_of(material: bytes) -> str:
    return 'file-' + hashlib.sha256(b'chunkbackup key id\0' +
                                    material).hexdigest()[:16]


def create(path: str) -> keys.MasterKey:
    """Write a new random master key to ``path`` (0600); never overwrite."""
    material = os.urandom(keys.DATA_KEY_SIZE)
    key_id = key_id_of(material)
    document = {'kind': _KIND, 'id': key_id,
                'key': base64.b64encode(material).decode('ascii'),
                'warning': 'Without this key its backups cannot be '
                           'restored: keep a copy somewhere safe, apart '
                           'from the backups.'}
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise keys.KeyUnavailable(
            reason='key file %s exists already; a key file is never '
                   'overwritten (its backups need it): choose another path'
                   % path)
    except OSError as e:
        raise keys.KeyUnavailable(reason='cannot create key file %s: %s'
                                  % (path, e.strerror))
    with os.fdopen(fd, 'w') as f:
        json.dump(document, f, indent=2)
        f.write('\n')
        f.flush()
        os.fsync(f.fileno())
    return keys.MasterKey(key_id, material)


def load(path: str) -> keys.MasterKey:
    """The master key in ``path``, or KeyUnavailable saying what is wrong."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise keys.KeyUnavailable(
            reason='key file %s does not exist; make one with '
                   "'chunkbackup key-create %s' (for new backups) or "
                   'restore the file from your copy' % (path, path))
    except OSError as e:
        raise keys.KeyUnavailable(reason='cannot open key file %s: %s'
                                  % (path, e.strerror))
    with os.fdopen(fd) as f:
        mode = os.fstat(f.fileno()).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise keys.KeyUnavailable(
                reason='key file %s is accessible by group or others (mode '
                       '%04o); run: chmod 600 %s'
                       % (path, stat.S_IMODE(mode), path))
        try:
            document = json.load(f)
            material = base64.b64decode(document['key'], validate=True)
            stated = document['id']
        except (ValueError, KeyError, TypeError):
            raise keys.KeyUnavailable(
                reason='key file %s is not a chunkbackup key file (made by '
                       "'chunkbackup key-create')" % path)
    if len(material) != keys.DATA_KEY_SIZE or stated != key_id_of(material):
        raise keys.KeyUnavailable(
            reason='key file %s is damaged: its key does not match its id '
                   '%s; restore the file from your copy' % (path, stated))
    return keys.MasterKey(stated, material)


class KeyFiles(keys.KeySource):
    """The configured key file, and any others given (key rotation)."""

    def __init__(self, path: str, others: Sequence[str] = ()) -> None:
        self.path = path
        self.description = 'the key file %s' % path
        self._others = list(others)
        self._keys: Dict[str, keys.MasterKey] = {}
        self._current: Optional[keys.MasterKey] = None

    def current(self) -> keys.MasterKey:
        if self._current is None:
            current = self._current = load(self.path)
            self._keys[current.key_id] = current
        return self._current

    def get(self, key_id: str) -> keys.MasterKey:
        if key_id not in self._keys:
            self.current()
            for path in self._others:
                key = load(path)
                self._keys[key.key_id] = key
        found = self._keys.get(key_id)
        if found is None:
            raise keys.KeyUnavailable(
                reason='the key file %s holds key %s: set [chunkbackup] '
                       'key_file to the file of key %s'
                       % (self.path, self.current().key_id, key_id))
        return found

    def add(self, key: keys.MasterKey) -> None:
        self._keys[key.key_id] = key
