"""Checks of folds and synthetic fulls for any driver against its server.

``fold_chain_checks(driver, workdir)`` makes chains of five backups (a
full and four incrementals), forgets their middle backups in every order
(``driver.fold_into_child``, the records relinked as the catalog does),
restores every remaining backup byte-exact and verifies it, checks that
the copies were made on the server (the driver read no data object), then
makes a synthetic full of the last chain, deletes that chain whole and
restores the synthetic full. The drivers' functional tests call it.
"""
import hashlib
import itertools
import os
from typing import Any, Callable, Dict, List, Optional

from chunkbackup import storage
from chunkbackup.testing.record import BackupRecord
from chunkbackup.testing import volumes

KiB = 1024


def _digest(path: str) -> str:
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def _backup(driver: Any, record: BackupRecord, path: str) -> None:
    with open(path, 'rb') as f:
        driver.backup(record, f)
    record.status = 'available'


def _restored(driver: Any, record: BackupRecord, workdir: str) -> str:
    out = os.path.join(workdir, 'restored-%s' % record.id)
    with open(out, 'wb'):
        pass
    with open(out, 'r+b') as f:
        driver.restore(record, record.volume_id, f, volume_is_new=True)
    digest = _digest(out)
    os.unlink(out)
    return digest


def forget(driver: Any, record: BackupRecord) -> Optional[BackupRecord]:
    """Forget a backup as ``chunkbackup backup-delete`` does; its child."""
    children = [c for c in record.children if c.status != 'deleted']
    if not children:
        driver.delete_backup(record)
        record.status = 'deleted'
        return None
    (child,) = children
    driver.fold_into_child(record, child)
    # The catalog's part: the child names the parent's parent.
    record.children.remove(child)
    child.parent = record.parent
    if record.parent is not None:
        record.parent.children.remove(record)
        record.parent.children.append(child)
    driver.delete_objects(record.container, record.service_metadata)
    record.status = 'deleted'
    return child


def _chain(driver: Any, workdir: str, seed: int, size: int,
           make_record: Callable[..., BackupRecord]
           ) -> Dict[str, Any]:
    vol = os.path.join(workdir, 'vol-%d.img' % seed)
    volumes.write_volume(vol, size, 'mixed', seed=seed,
                         region_size=48 * KiB)
    records: List[BackupRecord] = []
    images = {}
    for i in range(5):
        if i:
            volumes.change_blocks(vol, 0.15, driver.sha_block_size,
                                  seed=seed * 10 + i, max_run=4)
        record = make_record(parent=records[-1] if records else None)
        _backup(driver, record, vol)
        records.append(record)
        images[record.id] = _digest(vol)
    return {'volume': vol, 'records': records, 'images': images}


def _data_bytes_read(driver: Any) -> int:
    metrics = storage.metrics_of(driver.store)
    return metrics.snapshot()['get'].bytes if metrics else 0


def fold_chain_checks(driver: Any, workdir: str, size: int = 768 * KiB,
                      orders: Optional[List[List[int]]] = None,
                      container: Optional[str] = None) -> int:
    """Run the checks (see the module doc); return the folds made."""
    volume_id = 'vol-fold-%s' % os.path.basename(workdir)[-12:]

    def make_record(parent=None):
        return BackupRecord(volume_id, parent=parent, container=container)

    if orders is None:
        orders = [list(p) for p in itertools.permutations([1, 2, 3])]
        orders.append([0, 3])
    folds = 0
    chain: Dict[str, Any] = {}
    for n, order in enumerate(orders):
        chain = _chain(driver, workdir, 1000 + n, size, make_record)
        records = chain['records']
        for index in order:
            victim = records[index]
            read_before = _data_bytes_read(driver)
            child = forget(driver, victim)
            assert child is not None
            folds += 1
            # Documents are read; data objects are copied on the server.
            assert _data_bytes_read(driver) - read_before < size // 2, \
                'the fold read data objects through the client'
            for gone in (victim.container, ):
                names = driver.store.list(gone, victim.service_metadata)
                assert names == [], names
        for record in records:
            if record.status == 'deleted':
                continue
            assert _restored(driver, record, workdir) == \
                chain['images'][record.id], (order, record.id)
            driver.verify(record)
    # A synthetic full of the last chain; then the chain goes whole.
    records = [r for r in chain['records'] if r.status != 'deleted']
    newest = records[-1]
    synthetic = make_record()
    read_before = _data_bytes_read(driver)
    driver.synthetic_full(synthetic, newest)
    assert _data_bytes_read(driver) - read_before < size // 2
    synthetic.status = 'available'
    for record in reversed(records):
        forget(driver, record)
    assert _restored(driver, synthetic, workdir) == \
        chain['images'][newest.id]
    driver.verify(synthetic)
    # An incremental on top of it works as on any full.
    volumes.change_blocks(chain['volume'], 0.1, driver.sha_block_size,
                          seed=7, max_run=4)
    inc = make_record(parent=synthetic)
    _backup(driver, inc, chain['volume'])
    assert _restored(driver, inc, workdir) == _digest(chain['volume'])
    return folds
