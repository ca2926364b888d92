"""verify reports every bad object it finds; restore stops at the first
(issue 15, item 9)."""
import os

import pytest

from chunkbackup import exception


def _corrupt(path):
    with open(path, 'r+b') as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xff]))


def test_verify_lists_every_bad_object(make_posix, ops, tmp_path):
    driver = make_posix(object_size=64 * 1024, compression_algorithm='none')
    vol = str(tmp_path / 'vol')
    with open(vol, 'wb') as f:
        f.write(os.urandom(6 * 64 * 1024))
    record = ops.backup(driver, vol)
    directory = os.path.join(driver.backup_root, record.container)
    objects = sorted(n for n in os.listdir(directory)
                     if not n.endswith(('_metadata', '_sha256file')))
    assert len(objects) == 6
    _corrupt(os.path.join(directory, objects[1]))
    _corrupt(os.path.join(directory, objects[4]))
    os.rename(os.path.join(directory, objects[5]),
              str(tmp_path / 'aside'))
    with pytest.raises(exception.BackupVerifyFailed) as info:
        driver.verify(record)
    message = str(info.value)
    assert '3 bad object(s)' in message and '\n' not in message
    for name in (objects[1], objects[4], objects[5]):
        assert name in message, message
    for name in (objects[0], objects[2], objects[3]):
        assert name not in message
    # In volume order.
    assert message.index(objects[1]) < message.index(objects[4])
    # A restore still stops at the first bad object it meets.
    os.rename(str(tmp_path / 'aside'), os.path.join(directory, objects[5]))
    with pytest.raises(exception.BackupCorrupted) as info:
        ops.restore(driver, record)
    assert not isinstance(info.value, exception.BackupVerifyFailed)
