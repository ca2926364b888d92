"""Fold and synthetic-full plans, from hand-made metadata (no store)."""
import hashlib
import types

from chunkbackup import backupformat as fmt
from chunkbackup.engine import blockmap
from chunkbackup.engine import documents
from chunkbackup.engine import fold
from chunkbackup.engine import plan as restore_plan

BS = 4096


def _layer(backup_id, objects, parent_id=None):
    entries = [fmt.ObjectEntry('%s-%05d' % (backup_id, n + 1), offset,
                               length, 'none', '%032d' % n)
               for n, (offset, length) in enumerate(objects)]
    return documents.Layer(
        types.SimpleNamespace(id=backup_id),
        documents.Location('c-' + backup_id, backup_id),
        fmt.Metadata(backup_id, 'vol', parent_id, entries))


def _owners_by_byte(chain, size):
    """Who supplies each block of the image, by the restore plan."""
    digests = b''.join(hashlib.sha256(b'%d' % i).digest()
                       for i in range(size // BS))
    block_map = blockmap.BlockMap(BS)
    block_map.append(digests)
    plan = restore_plan.plan(chain, block_map, size)
    out = {}
    for f in plan.fetches:
        for start, end in f.pieces:
            for block in range(start // BS, end // BS):
                out[block] = (f.entry.md5, f.entry.offset)
    return out


def test_fold_keeps_only_objects_that_own_bytes_and_lists_them_first():
    a = _layer('a', [(0, 4 * BS), (4 * BS, 4 * BS)])
    b = _layer('b', [(0, BS), (2 * BS, 2 * BS), (5 * BS, BS)], 'a')
    c = _layer('c', [(0, 2 * BS), (5 * BS, BS)], 'b')
    rehoming = fold.plan_fold(b, c)
    # b-00001 and b-00003 are wholly rewritten by c: dropped.
    assert [e.name for e in rehoming.dropped] == ['b-00001', 'b-00003']
    assert [(src, name) for src, name, _ in rehoming.copies] == [
        ('c-b', 'b-00002')]
    names = [e.name for e in rehoming.metadata.objects]
    assert names == ['c-00003', 'c-00001', 'c-00002']
    assert rehoming.metadata.parent_id == 'a'
    assert rehoming.pieces['c-00003'] == [(2 * BS, 4 * BS)]
    # The image is the same, block for block.
    folded = documents.Layer(c.backup, c.location, rehoming.metadata)
    assert _owners_by_byte([a, folded], 8 * BS) == \
        _owners_by_byte([a, b, c], 8 * BS)


def test_fold_of_an_already_folded_child_and_synthetic_full():
    a = _layer('a', [(0, 8 * BS)])
    b = _layer('b', [(0, 3 * BS)], 'a')
    c = _layer('c', [(2 * BS, 2 * BS)], 'b')
    once = fold.plan_fold(b, c)
    c1 = documents.Layer(c.backup, c.location, once.metadata)
    twice = fold.plan_fold(a, c1)
    assert twice.metadata.parent_id is None
    c2 = documents.Layer(c.backup, c.location, twice.metadata)
    assert _owners_by_byte([c2], 8 * BS) == _owners_by_byte([a, b, c],
                                                            8 * BS)
    common = {'backup_id': 's', 'volume_id': 'vol'}
    synthetic = fold.plan_synthetic(
        [a, b, c], documents.Location('c-s', 's'), common)
    assert [e.name for e in synthetic.metadata.objects] == [
        's-00001', 's-00002', 's-00003']
    assert [n for _, n, _ in synthetic.copies] == ['a-00001', 'b-00001',
                                                   'c-00001']
    s = documents.Layer(types.SimpleNamespace(id='s'),
                        documents.Location('c-s', 's'), synthetic.metadata)
    assert _owners_by_byte([s], 8 * BS) == _owners_by_byte([a, b, c],
                                                           8 * BS)


def test_a_full_result_rewrites_copies_overwritten_with_zeros():
    # Cinder skips the zeros of a full backup on a new volume: a kept
    # object that a later one overwrites with zeros must not stay whole.
    a = _layer('a', [(0, 4 * BS)])
    b = _layer('b', [(BS, BS)], 'a')
    rehoming = fold.plan_fold(a, b)
    block_map = blockmap.BlockMap(BS)
    zero = fmt.zero_digest(BS)
    block_map.append(b''.join(hashlib.sha256(b'x').digest() if i != 1
                              else zero for i in range(4)))
    fold.make_base_safe(rehoming, block_map, 4 * BS)
    assert rehoming.rewrites == {'b-00002': ['b-00003', 'b-00004']}
    # Not when the overwritten blocks hold data.
    rehoming = fold.plan_fold(a, b)
    data = blockmap.BlockMap(BS)
    data.append(hashlib.sha256(b'x').digest() * 4)
    fold.make_base_safe(rehoming, data, 4 * BS)
    assert rehoming.rewrites == {}
    # Nor for an incremental result (Cinder writes those whole).
    root = _layer('r', [(0, 4 * BS)])
    a2 = _layer('a', [(0, 4 * BS)], 'r')
    rehoming = fold.plan_fold(a2, _layer('b', [(BS, BS)], 'a'))
    fold.make_base_safe(rehoming, block_map, 4 * BS)
    assert rehoming.rewrites == {} and root


def test_store_copy_server_side_or_through_the_client(tmp_path, overrides,
                                                      monkeypatch):
    import os

    from chunkbackup.drivers import posix
    overrides('path', str(tmp_path), 'backup_posix')
    driver = posix.PosixBackupDriver(None)
    store = driver.store
    store.ensure_container('a')
    store.ensure_container('b')
    store.put('a', 'obj-00001', b'hello' * 1000)
    store.copy('a', 'obj-00001', 'b', 'obj-00009')
    assert store.get('b', 'obj-00009') == b'hello' * 1000
    assert os.stat(tmp_path / 'b' / 'obj-00009').st_nlink == 2  # a link
    # A driver that cannot copy: the bytes go through the client.
    monkeypatch.setattr(driver, 'copy_object', lambda *a: False)
    store.copy('a', 'obj-00001', 'b', 'obj-00010')
    assert store.get('b', 'obj-00010') == b'hello' * 1000
    assert os.stat(tmp_path / 'b' / 'obj-00010').st_nlink == 1
    assert not [n for n in os.listdir(tmp_path / 'b')
                if n.startswith('.tmp-')]
    # Across file systems (no hard link): copy_file_range.
    monkeypatch.undo()
    monkeypatch.setattr(os, 'link', _no_link)
    overrides('path', str(tmp_path), 'backup_posix')
    store.copy('a', 'obj-00001', 'b', 'obj-00011')
    assert store.get('b', 'obj-00011') == b'hello' * 1000


def _no_link(*args, **kwargs):
    import errno
    raise OSError(errno.EXDEV, 'Invalid cross-device link')
