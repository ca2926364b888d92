"""The on-storage format, key for key (doc/format.md), and backups laid
out by hand exactly as Cinder lays them out."""
import bz2
import hashlib
import json
import os
import zlib

import pytest
import zstandard

from chunkbackup import backupformat as fmt
from chunkbackup import exception
from chunkbackup.testing.record import BackupRecord
from chunkbackup.testing import volumes

METADATA_KEYS = {'version', 'backup_id', 'volume_id', 'backup_name',
                 'backup_description', 'created_at', 'parent_id', 'objects',
                 'volume_meta'}
SHA_KEYS = {'version', 'backup_id', 'volume_id', 'backup_name',
            'backup_description', 'created_at', 'chunk_size', 'sha256s'}
OBJECT_KEYS = {'offset', 'length', 'compression', 'md5'}


def _read(driver, record, suffix):
    path = os.path.join(driver.backup_root, record.container,
                        record.service_metadata + suffix)
    with open(path, 'rb') as f:
        return f.read()


def _mixed_volume(tmp_path):
    """Two compressible objects, one random (stored raw), a short tail."""
    path = str(tmp_path / 'vol')
    with open(path, 'wb') as f:
        f.write(volumes.text_bytes(__import__('random').Random(1), 64 * 1024))
        f.write(bytes(64 * 1024))
        f.write(os.urandom(64 * 1024))
        f.write(b'tail' * 300)
    return path


@pytest.mark.parametrize('algorithm,label', [
    ('zlib', 'zlib'), ('gzip', 'gzip'), ('bz2', 'bz2'), ('bzip2', 'bzip2'),
    ('zstd', 'zstd'), ('none', 'none'), ('off', 'none'), ('no', 'none'),
    ('ZLIB', 'zlib')])
def test_documents_match_the_format(make_posix, ops, tmp_path, algorithm,
                                    label):
    driver = make_posix(compression_algorithm=algorithm)
    vol = _mixed_volume(tmp_path)
    record = ops.backup(driver, vol, display_name='nightly',
                        display_description='a test')
    raw = _read(driver, record, '_metadata')
    meta = json.loads(raw)
    assert raw == json.dumps(meta, sort_keys=True, indent=2).encode('utf-8')
    assert set(meta) == METADATA_KEYS
    assert meta['version'] == '1.0.0'
    assert meta['backup_id'] == record.id
    assert meta['volume_id'] == 'vol-1'
    assert meta['backup_name'] == 'nightly'
    assert meta['backup_description'] == 'a test'
    assert meta['created_at'] == str(record.created_at)
    assert meta['parent_id'] is None and meta['volume_meta'] is None
    assert record.service_metadata.startswith('volume_vol-1_')
    assert record.container == '/'.join(
        (record.id[:2], record.id[2:4], record.id))

    with open(vol, 'rb') as f:
        data = f.read()
    offset = 0
    for number, item in enumerate(meta['objects'], start=1):
        (name, obj), = item.items()
        assert name == '%s-%05d' % (record.service_metadata, number)
        assert set(obj) == OBJECT_KEYS
        assert obj['offset'] == offset
        piece = data[offset:offset + obj['length']]
        assert obj['md5'] == hashlib.md5(piece).hexdigest()
        body = _read(driver, record, name[len(record.service_metadata):])
        if obj['compression'] == 'none':
            assert body == piece
        else:
            assert obj['compression'] == label
            assert len(body) < len(piece)
            if label in ('zlib', 'gzip'):
                # One RFC 1950 stream and nothing after it.
                dec = zlib.decompressobj()
                assert dec.decompress(body) == piece and not dec.unused_data
            elif label in ('bz2', 'bzip2'):
                assert bz2.decompress(body) == piece
            else:
                # Cinder's reader needs the content size in the header.
                assert zstandard.frame_content_size(body) == len(piece)
        offset += obj['length']
    assert offset == len(data)
    # The random object never shrinks: it is stored raw, labelled none.
    assert meta['objects'][2][record.service_metadata + '-00003'][
        'compression'] == 'none'

    raw = _read(driver, record, '_sha256file')
    sha = json.loads(raw)
    assert raw == json.dumps(sha, sort_keys=True, indent=2).encode('utf-8')
    assert set(sha) == SHA_KEYS
    assert sha['chunk_size'] == 4096
    assert sha['sha256s'] == [hashlib.sha256(data[i:i + 4096]).hexdigest()
                              for i in range(0, len(data), 4096)]


def test_incremental_documents(make_posix, ops, tmp_path):
    driver = make_posix()
    vol = _mixed_volume(tmp_path)
    full = ops.backup(driver, vol)
    with open(vol, 'r+b') as f:
        f.seek(4096 * 3)
        f.write(os.urandom(100))
    inc = ops.backup(driver, vol, parent=full)
    meta = json.loads(_read(driver, inc, '_metadata'))
    assert meta['parent_id'] == full.id
    assert [list(o.values())[0]['offset'] for o in meta['objects']] == [
        4096 * 3]
    sha = json.loads(_read(driver, inc, '_sha256file'))
    with open(vol, 'rb') as f:
        data = f.read()
    assert len(sha['sha256s']) == -(-len(data) // 4096)


class CinderLayout:
    """Writes a backup by hand, as Cinder's posix driver lays it out."""

    def __init__(self, root, block_size=4096):
        self.root = root
        self.block_size = block_size

    def write(self, backup_id, volume_id, data, pieces, parent_id=None,
              when='20260101000000'):
        """``pieces``: (offset, length, label) of each data object."""
        container = os.path.join(backup_id[:2], backup_id[2:4], backup_id)
        prefix = 'volume_%s_%s_backup_%s' % (volume_id, when, backup_id)
        directory = os.path.join(self.root, container)
        os.makedirs(directory)
        objects = []
        for number, (offset, length, label) in enumerate(pieces, start=1):
            chunk = data[offset:offset + length]
            body = {'zlib': zlib.compress, 'bz2': bz2.compress,
                    'zstd': zstandard.ZstdCompressor().compress,
                    'none': bytes}[label](chunk)
            name = '%s-%05d' % (prefix, number)
            with open(os.path.join(directory, name), 'wb') as f:
                f.write(body)
            objects.append({name: {'offset': offset, 'length': length,
                                   'compression': label,
                                   'md5': hashlib.md5(chunk).hexdigest()}})
        common = {'version': '1.0.0', 'backup_id': backup_id,
                  'volume_id': volume_id, 'backup_name': None,
                  'backup_description': None,
                  'created_at': '2026-01-01 00:00:00+00:00'}
        sha = dict(common, chunk_size=self.block_size, sha256s=[
            hashlib.sha256(data[i:i + self.block_size]).hexdigest()
            for i in range(0, len(data), self.block_size)])
        meta = dict(common, parent_id=parent_id, objects=objects,
                    volume_meta=None)
        for suffix, doc in (('_sha256file', sha), ('_metadata', meta)):
            with open(os.path.join(directory, prefix + suffix), 'wb') as f:
                f.write(json.dumps(doc, sort_keys=True, indent=2).encode())
        return container, prefix


def test_cinder_layout_restored_and_used_as_parent(make_posix, ops,
                                                   tmp_path):
    driver = make_posix()
    layout = CinderLayout(driver.backup_root)
    data = bytearray(os.urandom(4096 * 40 + 333))
    data[4096 * 10:4096 * 20] = bytes(4096 * 10)
    full_id = 'a1b2c3d4-0000-4000-8000-000000000001'
    container, prefix = layout.write(
        full_id, 'vol-c', bytes(data),
        [(0, 4096 * 16, 'zlib'), (4096 * 16, 4096 * 16, 'bz2'),
         (4096 * 32, 4096 * 8 + 333, 'none')])
    full = BackupRecord('vol-c', id=full_id, container=container,
                        service_metadata=prefix, status='available')
    vol = str(tmp_path / 'vol')
    with open(vol, 'wb') as f:
        f.write(data)
    driver.verify(full)
    assert ops.same(ops.restore(driver, full), vol)

    # A Cinder-made incremental on top of it (one changed run) ...
    data[4096 * 5:4096 * 7] = os.urandom(8192)
    inc_id = 'a1b2c3d4-0000-4000-8000-000000000002'
    container2, prefix2 = layout.write(
        inc_id, 'vol-c', bytes(data), [(4096 * 5, 8192, 'zstd')],
        parent_id=full_id, when='20260102000000')
    inc = BackupRecord('vol-c', id=inc_id, parent=full,
                       container=container2, service_metadata=prefix2,
                       status='available')
    with open(vol, 'wb') as f:
        f.write(data)
    assert ops.same(ops.restore(driver, inc), vol)

    # ... and ours on top of both.
    data[4096 * 12:4096 * 13] = os.urandom(4096)
    with open(vol, 'wb') as f:
        f.write(data)
    ours = ops.backup(driver, vol, parent=inc, volume_id='vol-c')
    assert len(driver.plan_restore(ours).chain) == 3
    driver.verify(ours)
    assert ops.same(ops.restore(driver, ours), vol)


# Corruption of each kind: a clear error, never a wrong volume. -------------

@pytest.fixture
def stored(make_posix, ops, tmp_path):
    driver = make_posix(compression_algorithm='zlib')
    vol = str(tmp_path / 'vol')
    volumes.write_volume(vol, 64 * 1024 * 3 + 500, 'mixed', seed=4,
                         region_size=8192)
    record = ops.backup(driver, vol)
    directory = os.path.join(driver.backup_root, record.container)
    return driver, record, directory


def _object_path(directory, record, number):
    return os.path.join(directory, '%s-%05d' % (record.service_metadata,
                                                number))


@pytest.mark.parametrize('number', [1, 2, 3, 4])
@pytest.mark.parametrize('where', ['start', 'middle', 'end'])
def test_flipped_byte_in_any_object(stored, ops, number, where):
    driver, record, directory = stored
    path = _object_path(directory, record, number)
    with open(path, 'r+b') as f:
        size = os.fstat(f.fileno()).st_size
        pos = {'start': 0, 'middle': size // 2, 'end': size - 1}[where]
        f.seek(pos)
        byte = f.read(1)
        f.seek(pos)
        f.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(exception.BackupCorrupted) as info:
        driver.verify(record)
    message = str(info.value)
    assert record.id in message and os.path.basename(path) in message
    assert 'offset' in message
    with pytest.raises(exception.BackupCorrupted):
        ops.restore(driver, record)


def test_truncated_object(stored, ops):
    driver, record, directory = stored
    path = _object_path(directory, record, 2)
    with open(path, 'r+b') as f:
        f.truncate(os.fstat(f.fileno()).st_size // 2)
    with pytest.raises(exception.BackupCorrupted, match='-00002'):
        ops.restore(driver, record)


def test_missing_object(stored, ops):
    driver, record, directory = stored
    os.unlink(_object_path(directory, record, 3))
    with pytest.raises(exception.BackupIncomplete, match='-00003'):
        ops.restore(driver, record)


def test_missing_metadata(stored, ops):
    driver, record, directory = stored
    os.unlink(os.path.join(directory, record.service_metadata + '_metadata'))
    with pytest.raises(exception.BackupIncomplete, match='never finished'):
        ops.restore(driver, record)


@pytest.mark.parametrize('suffix', ['_metadata', '_sha256file'])
@pytest.mark.parametrize('content,error', [
    (b'{"version": "1.0.0", "objects": [', 'not JSON'),
    (b'\xff\xfe\x00garbage', 'not UTF-8'),
    (b'[]', 'not a JSON object'),
])
def test_unreadable_documents(stored, ops, suffix, content, error):
    driver, record, directory = stored
    with open(os.path.join(directory, record.service_metadata + suffix),
              'wb') as f:
        f.write(content)
    with pytest.raises(exception.InvalidBackupMetadata, match=error):
        ops.restore(driver, record)


@pytest.mark.parametrize('suffix', ['_metadata', '_sha256file'])
def test_unknown_version(stored, ops, suffix):
    driver, record, directory = stored
    path = os.path.join(directory, record.service_metadata + suffix)
    with open(path) as f:
        doc = json.load(f)
    doc['version'] = '2.0.0'
    with open(path, 'w') as f:
        json.dump(doc, f)
    with pytest.raises(exception.UnsupportedBackupVersion, match='2.0.0'):
        ops.restore(driver, record)


@pytest.mark.parametrize('mutate,error', [
    (lambda o: o.update(offset=-4096), 'out of range'),
    (lambda o: o.update(offset='0'), 'not an integer'),
    (lambda o: o.update(length=True), 'not an integer'),
    (lambda o: o.update(length=0), 'out of range'),
    (lambda o: o.update(length=2 ** 40), 'out of range'),
    (lambda o: o.update(compression='lz4'), 'compression'),
    (lambda o: o.update(md5=None), 'md5'),
    (lambda o: o.update(offset=4096), 'overlap|not aligned|no object'),
    (lambda o: o.update(offset=100), 'not aligned|overlap'),
    (lambda o: o.pop('length'), 'not an integer'),
])
def test_bad_object_entries(stored, ops, mutate, error):
    driver, record, directory = stored
    path = os.path.join(directory, record.service_metadata + '_metadata')
    with open(path) as f:
        doc = json.load(f)
    mutate(list(doc['objects'][1].values())[0])
    with open(path, 'w') as f:
        json.dump(doc, f)
    with pytest.raises(exception.InvalidBackupMetadata, match=error):
        ops.restore(driver, record)


def test_sha256file_of_wrong_length(stored, ops):
    driver, record, directory = stored
    path = os.path.join(directory, record.service_metadata + '_sha256file')
    with open(path) as f:
        doc = json.load(f)
    doc['sha256s'].pop()
    with open(path, 'w') as f:
        json.dump(doc, f)
    with pytest.raises(exception.InvalidBackupMetadata, match='blocks'):
        ops.restore(driver, record)


def test_metadata_of_another_backup(stored, ops):
    driver, record, directory = stored
    path = os.path.join(directory, record.service_metadata + '_metadata')
    with open(path) as f:
        doc = json.load(f)
    doc['backup_id'] = 'someone-else'
    with open(path, 'w') as f:
        json.dump(doc, f)
    with pytest.raises(exception.InvalidBackupMetadata, match='belongs'):
        ops.restore(driver, record)


def test_object_names():
    assert fmt.data_object_name('p', 1) == 'p-00001'
    assert fmt.data_object_name('p', 123456) == 'p-123456'
