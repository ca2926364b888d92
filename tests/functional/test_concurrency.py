"""Concurrent operations: eight backups at once through the service, and a
backup of a volume while an earlier backup of it is being restored."""
import hashlib
import os

from chunkbackup.testing import volumes
from tests.functional.clitool import Cli
from tests.functional.test_service import Catalog
from tests.functional.test_service import cli
from tests.functional.test_service import services  # noqa: F401 (fixture)
from tests.functional.test_service import SLOW_DRIVER
from tests.functional.test_service import wait_for
from tests.functional.test_service import write_config

MiB = 2 ** 20


def _digest(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_eight_backups_at_once_through_the_service(tmp_path,
                                                   services):  # noqa: F811
    # Each stored object waits 30 ms (the slow test driver), so the eight
    # backups are long enough to be seen running at the same time.
    config = write_config(tmp_path, 'eventlet', max_ops=8,
                          driver=SLOW_DRIVER)
    paths = []
    for i in range(8):
        path = str(tmp_path / ('vol%d.img' % i))
        volumes.write_volume(path, 4 * MiB + i * 4096, 'mixed', seed=i,
                             region_size=65536)
        paths.append(path)
    for path in paths:  # queued first: the service finds all eight
        cli(config, 'backup-create', path, '--async')
    service = services(config, str(tmp_path / 'service.log'),
                       put_delay=0.03)
    catalog = Catalog(tmp_path / 'catalog.sqlite')

    def all_done():
        rows = catalog.backups()
        finished = [r for r in rows if r['status'] != 'creating']
        return rows if len(finished) == 8 else None

    rows = wait_for(all_done, 'eight backups', service)
    assert sorted(r['status'] for r in rows) == ['available'] * 8
    # They did overlap: the service ran them in parallel.
    starts = sorted(r['created_at'] for r in rows)
    ends = sorted(r['updated_at'] for r in rows)
    assert starts[-1] < ends[0], 'the eight backups ran one after another'
    by_path = {r['volume_path']: r for r in rows}
    for path in paths:
        out = tmp_path / ('restored-%s' % os.path.basename(path))
        cli(config, 'backup-restore', by_path[path]['id'], str(out))
        assert _digest(out) == _digest(path)
    assert service.terminate() == 0


def test_backup_while_restoring_an_earlier_backup(tmp_path):
    cli_ = Cli(tmp_path)
    vol = str(tmp_path / 'disk.img')
    volumes.write_volume(vol, 48 * MiB, 'mixed', seed=3)
    first_image = _digest(vol)
    full = cli_.json('backup-create', vol)
    for round_ in range(3):
        volumes.change_blocks(vol, 0.05, 16384, seed=10 + round_,
                              max_run=8)
        image = _digest(vol)
        target = str(tmp_path / ('restored-%d' % round_))
        restore = cli_.popen('backup-restore', full['id'], target)
        backup = cli_.popen('backup-create', vol, '--incremental')
        assert backup.wait(300) == 0
        assert restore.wait(300) == 0
        assert _digest(target) == first_image
        newest = cli_.json('backup-list')[-1]
        assert newest['status'] == 'available'
        out = str(tmp_path / ('check-%d' % round_))
        cli_.json('backup-restore', newest['id'], out)
        assert _digest(out) == image
    assert cli_.json('backup-show', full['id'])['status'] == 'available'
