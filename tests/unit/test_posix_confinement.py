"""Nothing is read from outside the backup root, and names that could
not be ours are called invalid (issue 15, item 4)."""
import json
import os
import shutil

import pytest

from chunkbackup import backupformat as fmt
from chunkbackup import exception
from chunkbackup import names


def _backup(make_posix, ops, tmp_path):
    driver = make_posix()
    vol = str(tmp_path / 'vol')
    with open(vol, 'wb') as f:
        f.write(os.urandom(150000))
    return driver, vol, ops.backup(driver, vol)


def _data_objects(driver, record):
    directory = os.path.join(driver.backup_root, record.container)
    return directory, sorted(
        n for n in os.listdir(directory)
        if not n.endswith(('_metadata', '_sha256file')))


def test_an_object_replaced_by_a_symlink_is_not_followed(make_posix, ops,
                                                         tmp_path):
    driver, vol, record = _backup(make_posix, ops, tmp_path)
    directory, objects = _data_objects(driver, record)
    # The link's target outside the root holds exactly the right bytes, so
    # only the link itself can be refused.
    outside = str(tmp_path / 'outside')
    shutil.copy(os.path.join(directory, objects[0]), outside)
    os.unlink(os.path.join(directory, objects[0]))
    os.symlink(outside, os.path.join(directory, objects[0]))
    with pytest.raises(exception.StorageError,
                       match='symbolic link.*below the backup root'):
        ops.restore(driver, record)
    with pytest.raises(exception.StorageError, match='symbolic link'):
        driver.verify(record)
    # Deleting removes the link, never what it points to.
    driver.delete_backup(record)
    assert os.path.exists(outside)


def _rewrite_metadata(driver, record, rename):
    path = os.path.join(driver.backup_root, record.container,
                        record.service_metadata + '_metadata')
    with open(path) as f:
        doc = json.load(f)
    doc['objects'] = [{rename(name): info} for item in doc['objects']
                      for name, info in item.items()]
    with open(path, 'w') as f:
        json.dump(doc, f)


@pytest.mark.parametrize('rename,expected', [
    (lambda n: '../../../' + n, "has a '..' component"),
    (lambda n: n + '\x1b[2J', 'control character'),
    (lambda n: '/etc/' + n, 'absolute path'),
    (lambda n: 'elsewhere-' + n, "does not start with the backup's prefix"),
])
def test_an_invalid_object_name_is_invalid_not_missing(make_posix, ops,
                                                       tmp_path, rename,
                                                       expected):
    driver, vol, record = _backup(make_posix, ops, tmp_path)
    _rewrite_metadata(driver, record, rename)
    with pytest.raises(exception.InvalidBackupMetadata) as info:
        ops.restore(driver, record)
    assert 'invalid' in str(info.value) and expected in str(info.value)
    assert 'missing' not in str(info.value)


@pytest.mark.parametrize('bad', ['\x01', '\x07', '\x1b', '\t', '\x7f',
                                 '\x85', '\n', '\0'])
def test_control_characters_in_names_and_ids_are_refused(make_posix, bad):
    with pytest.raises(exception.InvalidName, match='control character'):
        names.check_relative('container', 'backups' + bad + 'x')
    with pytest.raises(exception.InvalidName):
        names.check_safe_id('backup id', 'abc' + bad)
    with pytest.raises(exception.InvalidName):
        make_posix().put_container('c' + bad)
    entry = {'p-00001' + bad: {'offset': 0, 'length': 1,
                               'compression': None, 'md5': '0' * 32}}
    body = json.dumps({'version': fmt.VERSION, 'backup_id': 'b',
                       'volume_id': 'v', 'objects': [entry],
                       'parent_id': None}).encode()
    with pytest.raises(exception.InvalidBackupMetadata,
                       match='is invalid'):
        fmt.parse_metadata(body, 'b', 'p_metadata')


def test_an_id_with_a_trailing_newline_is_refused():
    # re's '$' matches before a final newline.
    with pytest.raises(exception.InvalidName):
        names.check_safe_id('volume id', 'volume-1\n')
    assert names.check_safe_id('volume id', 'volume-1') == 'volume-1'
