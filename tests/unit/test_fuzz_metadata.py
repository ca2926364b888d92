"""Property-based tests: mutated _metadata and _sha256file documents fed to
restore and verify end in a clear chunkbackup error, never in a crash, a
hang, an oversized allocation or a wrong volume."""
import json
import os
import tracemalloc

import hypothesis
from hypothesis import strategies as st
import pytest

from chunkbackup import exception

given = hypothesis.given

JSON_LEAF = st.one_of(st.none(), st.booleans(),
                      st.integers(min_value=-2 ** 70, max_value=2 ** 70),
                      st.floats(allow_nan=False), st.text(max_size=20))
JSON_ANY = st.recursive(JSON_LEAF, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=8)
OBJECT_KEYS = ['offset', 'length', 'compression', 'md5']
COMPRESSIONS = st.sampled_from(['none', 'zlib', 'bz2', 'zstd', 'lz4', 'NONE',
                                'gzip', '', 'zlib\0'])
NUMBERS = st.one_of(st.integers(min_value=-2 ** 64, max_value=2 ** 64),
                    st.sampled_from([0, 1, 4095, 4096, 65536, 65537,
                                     2 ** 31, 2 ** 62]))


@pytest.fixture(scope='module')
def stored(tmp_path_factory):
    """One backup (full + incremental), and the volume it must restore."""
    from oslo_config import cfg

    from chunkbackup.drivers import posix
    from chunkbackup.testing.record import BackupRecord
    from chunkbackup.testing import volumes
    tmp = tmp_path_factory.mktemp('fuzz')
    cfg.CONF.set_override('sha_block_size', 4096, 'chunkbackup')
    cfg.CONF.set_override('cancel_check_interval', 0, 'chunkbackup')
    cfg.CONF.set_override('compression_algorithm', 'zlib', 'chunkbackup')
    cfg.CONF.set_override('object_size', 65536, 'backup_posix')
    cfg.CONF.set_override('path', str(tmp / 'store'), 'backup_posix')
    driver = posix.PosixBackupDriver(None)
    vol = str(tmp / 'vol')
    volumes.write_volume(vol, 65536 * 3 + 999, 'mixed', seed=3,
                         region_size=8192)
    full = BackupRecord('v')
    with open(vol, 'rb') as f:
        driver.backup(full, f)
    volumes.change_blocks(vol, 0.1, 4096, seed=4)
    inc = BackupRecord('v', parent=full)
    with open(vol, 'rb') as f:
        driver.backup(inc, f)
    with open(vol, 'rb') as f:
        image = f.read()
    yield driver, full, inc, image, tmp
    for name in ('sha_block_size', 'cancel_check_interval',
                 'compression_algorithm'):
        cfg.CONF.clear_override(name, 'chunkbackup')
    for name in ('object_size', 'path'):
        cfg.CONF.clear_override(name, 'backup_posix')


def _path(driver, record, suffix):
    return os.path.join(driver.backup_root, record.container,
                        record.service_metadata + suffix)


def _attempt(driver, record, image, tmp):
    """Restore and verify; either a clear error or the right volume."""
    out = str(tmp / 'out')
    tracemalloc.start()
    try:
        with open(out, 'wb') as f:
            driver.restore(record, 'v', f, volume_is_new=True)
        restored_ok = True
    except exception.ChunkBackupError as e:
        assert str(e)  # a message, not an empty error
        restored_ok = False
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 64 * 2 ** 20, 'allocated %d bytes' % peak
    if restored_ok:
        # Accepted: then it must be exactly the volume (the SHA-256 check).
        with open(out, 'rb') as f:
            assert f.read() == image
        driver.verify(record)
    else:
        with pytest.raises(exception.ChunkBackupError):
            driver.verify(record)


def _mutate_and_try(stored, suffix, mutate):
    driver, full, inc, image, tmp = stored
    path = _path(driver, inc, suffix)
    with open(path, 'rb') as f:
        original = f.read()
    try:
        body = mutate(json.loads(original))
        with open(path, 'wb') as f:
            f.write(body if isinstance(body, bytes)
                    else json.dumps(body).encode())
        _attempt(driver, inc, image, tmp)
    finally:
        with open(path, 'wb') as f:
            f.write(original)


FUZZ = hypothesis.settings(
    max_examples=150, deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])


@FUZZ
@given(key=st.sampled_from(['version', 'backup_id', 'volume_id', 'objects',
                            'parent_id', 'volume_meta', 'backup_name',
                            'created_at']),
       value=JSON_ANY, drop=st.booleans())
def test_metadata_top_level(stored, key, value, drop):
    def mutate(doc):
        if drop:
            doc.pop(key, None)
        else:
            doc[key] = value
        return doc
    _mutate_and_try(stored, '_metadata', mutate)


@FUZZ
@given(index=st.integers(min_value=0, max_value=20),
       key=st.sampled_from(OBJECT_KEYS), number=NUMBERS,
       compression=COMPRESSIONS, other=JSON_ANY,
       how=st.sampled_from(['number', 'compression', 'other', 'drop',
                            'rename', 'duplicate']))
def test_metadata_objects(stored, index, key, number, compression, other,
                          how):
    def mutate(doc):
        objects = doc['objects']
        if not objects:
            return doc
        entry = objects[index % len(objects)]
        name, info = next(iter(entry.items()))
        if how == 'number':
            info[key] = number
        elif how == 'compression':
            info['compression'] = compression
        elif how == 'other':
            info[key] = other
        elif how == 'drop':
            info.pop(key)
        elif how == 'rename':
            entry[name + 'x'] = entry.pop(name)
        else:
            objects.append(dict(entry))
        return doc
    _mutate_and_try(stored, '_metadata', mutate)


@FUZZ
@given(key=st.sampled_from(['chunk_size', 'sha256s', 'version']),
       number=NUMBERS, other=JSON_ANY, index=st.integers(0, 60),
       how=st.sampled_from(['number', 'other', 'drop', 'flip', 'truncate',
                            'extend']))
def test_sha256file(stored, key, number, other, index, how):
    def mutate(doc):
        if how == 'number':
            doc[key] = number
        elif how == 'other':
            doc[key] = other
        elif how == 'drop':
            doc.pop(key)
        elif how == 'flip':
            shas = doc['sha256s']
            i = index % len(shas)
            shas[i] = shas[i][::-1]
        elif how == 'truncate':
            del doc['sha256s'][index % len(doc['sha256s']):]
        else:
            doc['sha256s'].extend(doc['sha256s'][:index + 1])
        return doc
    _mutate_and_try(stored, '_sha256file', mutate)


@FUZZ
@given(data=st.binary(max_size=300), suffix=st.sampled_from(
    ['_metadata', '_sha256file']))
def test_raw_bytes(stored, data, suffix):
    _mutate_and_try(stored, suffix, lambda doc: data or b'\x00')


@FUZZ
@given(prefix_len=st.integers(0, 4000), junk=st.binary(max_size=64))
def test_non_utf8_and_truncated_documents(stored, prefix_len, junk):
    driver, full, inc, image, tmp = stored
    with open(_path(driver, inc, '_metadata'), 'rb') as f:
        original = f.read()
    _mutate_and_try(stored, '_metadata',
                    lambda doc: original[:prefix_len] + junk + b'\xff')
