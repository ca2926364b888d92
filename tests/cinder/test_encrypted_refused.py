"""Stock Cinder refuses an encrypted backup cleanly and writes nothing.

Ours writes an encrypted chain (full and incremental) inside a real
Cinder setup; Cinder's own posix driver is then asked to restore each
backup onto a volume holding known bytes. It must raise, and the volume
must be exactly what it was: no byte of ciphertext or of a wrong image.
Ours restores the same backups byte-exact with the key.
"""
import os

from cinder import exception as cinder_exception
import pytest

from chunkbackup.crypto import keyfile
from tests.cinder import conftest
from tests.cinder.test_posix_oracle import drivers  # noqa: F401
from tests.cinder.test_posix_oracle import shared  # noqa: F401

KiB = conftest.KiB
MiB = conftest.MiB


def test_cinder_refuses_encrypted_backups_and_writes_nothing(
        drivers, overrides, tmp_path):  # noqa: F811
    key_path = str(tmp_path / 'master.key')
    keyfile.create(key_path)
    overrides('encryption', 'aes-256-gcm', 'chunkbackup')
    overrides('key_file', key_path, 'chunkbackup')
    drivers.load()
    v0 = conftest.random_volume(2 * MiB + 5 * KiB, seed=31)
    v1 = bytearray(v0)
    v1[MiB:MiB + 64 * KiB] = os.urandom(64 * KiB)
    full = drivers.backup(drivers.ours, v0)
    incr = drivers.backup(drivers.ours, bytes(v1), parent=full)
    for backup, data in ((full, v0), (incr, bytes(v1))):
        junk = os.urandom(len(data))
        path = str(tmp_path / ('target-%s' % backup.id))
        with open(path, 'wb') as f:
            f.write(junk)
        with open(path, 'r+b') as f:
            with pytest.raises(cinder_exception.InvalidBackup) as raised:
                drivers.cinder.restore(backup, drivers.volume.id, f, False)
        assert 'version 1.0.0-aes-256-gcm' in str(raised.value)
        with open(path, 'rb') as f:
            assert f.read() == junk, 'Cinder wrote into the volume'
        assert drivers.restore(drivers.ours, backup) == data
