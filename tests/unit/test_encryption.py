"""The envelope (chunkbackup.crypto): sealed bodies, keyed digests, signed
documents, wrapped keys and key files.
"""
import hashlib
import json
import os

import pytest

from chunkbackup import backupformat as fmt
from chunkbackup import checksums
from chunkbackup.crypto import envelope
from chunkbackup.crypto import keyfile
from chunkbackup.crypto import keys
from chunkbackup import exception

SEG = envelope.SEGMENT


@pytest.fixture
def chain():
    master = keys.MasterKey('test-key', os.urandom(32))
    return envelope.ChainKeys.create(master, 'chain-1'), master


def _seal(keys_, data, pieces, backup='b1', name='obj-1'):
    sealer = keys_.sealer(backup, name)
    out = []
    pos = 0
    for size in pieces:
        out.append(sealer.update(data[pos:pos + size]))
        pos += size
    out.append(sealer.update(data[pos:]))
    out.append(sealer.finish())
    return b''.join(out)


@pytest.mark.parametrize('length', [0, 1, SEG - 1, SEG, SEG + 1, 3 * SEG,
                                    3 * SEG + 17])
@pytest.mark.parametrize('pieces', [[], [1], [SEG], [SEG - 3, 5, SEG + 7]])
def test_sealed_bodies_open_to_what_went_in(chain, length, pieces):
    keys_, _ = chain
    data = os.urandom(length)
    body = _seal(keys_, data, pieces)
    assert len(body) == envelope.sealed_size(length)
    for chunk in (1, 7, SEG + 16, len(body) or 1):
        chunks = [body[i:i + chunk] for i in range(0, len(body), chunk)]
        assert b''.join(keys_.open(chunks, 'b1', 'obj-1', 0)) == data


def _opens(keys_, body, backup='b1', name='obj-1'):
    return b''.join(keys_.open([body], backup, name, 0))


def test_tampered_bodies_fail_naming_the_object(chain):
    keys_, _ = chain
    data = os.urandom(3 * SEG + 5)
    body = _seal(keys_, data, [])
    whole = SEG + 16
    head = envelope.HEADER_SIZE
    flipped = bytearray(body)
    flipped[head + whole + 3] ^= 1
    segments = [body[head + i * whole:head + (i + 1) * whole]
                for i in range(4)]
    cases = {
        'flipped': bytes(flipped),
        'truncated': body[:head + 2 * whole],
        'reordered': body[:head] + segments[1] + segments[0] +
        b''.join(segments[2:]),
        'short': body[:10],
        'no header': b'XXXX' + body[4:],
    }
    for what, tampered in cases.items():
        with pytest.raises(exception.BackupCorrupted) as raised:
            _opens(keys_, tampered)
        assert 'obj-1' in str(raised.value), what
        assert 'does not authenticate' in str(raised.value), what
    # Another object's name or another backup: the same bytes fail.
    with pytest.raises(exception.BackupCorrupted):
        _opens(keys_, body, name='obj-2')
    with pytest.raises(exception.BackupCorrupted):
        _opens(keys_, body, backup='b2')
    assert _opens(keys_, body) == data


def test_another_chain_cannot_open_a_body(chain):
    keys_, master = chain
    other = envelope.ChainKeys.create(master, 'chain-2')
    body = _seal(keys_, b'secret' * 1000, [])
    with pytest.raises(exception.BackupCorrupted):
        _opens(other, body)


def test_keyed_digests_are_not_sha256_and_stay_stable(chain):
    keys_, master = chain
    block = os.urandom(4096)
    digests = keys_.digests
    assert digests.keyed and not checksums.PLAIN.keyed
    assert digests.block(block) != hashlib.sha256(block).digest()
    assert digests.zero(4096) == digests.block(bytes(4096))
    assert checksums.PLAIN.zero(4096) == fmt.zero_digest(4096)
    # The same data key from the wrapped section gives the same digests.
    section = keys_.section()
    source = _Source(master)
    again = envelope.ChainKeys.open_section(section, source, 'b1')
    assert again.digests.block(block) == digests.block(block)
    hasher = digests.object_hasher()
    hasher.update(block)
    assert len(hasher.hexdigest()) == 32
    assert hasher.hexdigest() != hashlib.md5(block).hexdigest()


class _Source(keys.KeySource):
    def __init__(self, *found):
        self.found = {k.key_id: k for k in found}

    def current(self):
        return next(iter(self.found.values()))

    def get(self, key_id):
        if key_id not in self.found:
            raise keys.KeyUnavailable(reason='no key %s here' % key_id)
        return self.found[key_id]


def test_signed_documents_and_sealed_text(chain):
    keys_, _ = chain
    doc = keys_.sign({'backup_id': 'b1', 'objects': [{'o': {'offset': 0}}]})
    keys_.check(json.loads(json.dumps(doc)), 'b1', 'b1_metadata')
    doc['objects'][0]['o']['offset'] = 4096
    with pytest.raises(exception.InvalidBackupMetadata) as raised:
        keys_.check(doc, 'b1', 'b1_metadata')
    assert 'does not authenticate' in str(raised.value)
    sealed = keys_.seal_text('{"name": "vol"}', 'b1', 'volume_meta')
    assert 'vol' not in sealed
    assert keys_.open_text(sealed, 'b1', 'volume_meta') == '{"name": "vol"}'
    with pytest.raises(exception.InvalidBackup):
        keys_.open_text(sealed, 'b2', 'volume_meta')


def test_wrapped_keys_need_their_master_and_context():
    master = keys.MasterKey('k1', os.urandom(32))
    data_key = keys.new_data_key()
    wrapped = master.wrap(data_key, b'chain-1')
    assert master.unwrap(wrapped, b'chain-1') == data_key
    with pytest.raises(keys.WrongKey):
        master.unwrap(wrapped, b'chain-2')
    with pytest.raises(keys.WrongKey):
        keys.MasterKey('k1', os.urandom(32)).unwrap(wrapped, b'chain-1')
    assert 'k1' in repr(master) and data_key.hex() not in repr(master)


def test_rewrapping_keeps_the_data_key(chain):
    keys_, master = chain
    new = keys.MasterKey('k2', os.urandom(32))
    rewrapped = keys_.rewrapped(new, master)
    assert rewrapped.key_id == 'k2' and rewrapped.same_data_key(keys_)
    opened = envelope.ChainKeys.open_section(rewrapped.section(),
                                             _Source(new), 'b1')
    assert opened.same_data_key(keys_)


def test_key_files(tmp_path):
    path = str(tmp_path / 'k')
    made = keyfile.create(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    loaded = keyfile.load(path)
    assert loaded.key_id == made.key_id
    with pytest.raises(keys.KeyUnavailable, match='exists already'):
        keyfile.create(path)
    os.chmod(path, 0o640)
    with pytest.raises(keys.KeyUnavailable, match='chmod 600'):
        keyfile.load(path)
    os.chmod(path, 0o600)
    doc = json.loads(open(path).read())
    doc['id'] = 'file-0000000000000000'
    bad = tmp_path / 'bad'
    bad.write_text(json.dumps(doc))
    os.chmod(bad, 0o600)
    with pytest.raises(keys.KeyUnavailable, match='damaged'):
        keyfile.load(str(bad))
    bad.write_text('not json')
    with pytest.raises(keys.KeyUnavailable, match='not a chunkbackup key'):
        keyfile.load(str(bad))
    with pytest.raises(keys.KeyUnavailable, match='does not exist'):
        keyfile.load(str(tmp_path / 'missing'))
    source = keyfile.KeyFiles(path)
    assert source.get(made.key_id).key_id == made.key_id
    with pytest.raises(keys.KeyUnavailable, match='holds key %s'
                       % made.key_id):
        source.get('file-ffffffffffffffff')


def test_no_key_source_configured_is_one_line():
    with pytest.raises(keys.KeyUnavailable,
                       match='no master key is configured'):
        keys.configured_source(None)


def test_encrypted_metadata_round_trips_through_the_parser(chain):
    keys_, _ = chain
    entry = fmt.ObjectEntry('p-00001', 0, 4096, 'zstd', 'a' * 32)
    metadata = fmt.Metadata(backup_id='b1', volume_id='v', parent_id=None,
                            objects=[entry], encryption=keys_.section())
    doc = keys_.sign(metadata.to_json())
    parsed = fmt.parse_metadata(fmt.dumps(doc), 'b1', 'p_metadata')
    assert parsed.encryption['key_id'] == 'test-key'
    keys_.check(parsed.raw, 'b1', 'p_metadata')
    doc['encryption'].pop('mac')
    with pytest.raises(exception.InvalidBackupMetadata, match='mac'):
        fmt.parse_metadata(fmt.dumps(doc), 'b1', 'p_metadata')
