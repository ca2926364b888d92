"""Memory does not follow the object size: a child process's peak RSS.

Each driver backs up a volume, then an incremental, restores and verifies
it through the ``chunkbackup`` command against its real server, with
objects of 256 MiB and 1 GiB (the volume is one or a few such objects, so
a whole-object buffer, or two, would show), and with the drivers' default
50 MiB objects. Every run stays under 256 MiB of peak RSS.
"""
import filecmp
import os

import pytest

from chunkbackup.testing import volumes
from tests.functional.clitool import Cli
from tests.functional import stores

MiB = 2 ** 20
GiB = 2 ** 30
RSS_LIMIT = 256 * MiB
VOLUME_SIZE = 320 * MiB
BS = 32768


@pytest.mark.parametrize('driver,object_size', [
    ('posix', 50 * MiB), ('posix', 1 * GiB),
    ('swift', 50 * MiB), ('swift', 256 * MiB), ('swift', 1 * GiB),
    ('s3', 50 * MiB), ('s3', 1 * GiB),
    ('gcs', 1 * GiB),
])
def test_peak_memory_does_not_follow_object_size(tmp_path, request, driver,
                                                 object_size):
    cli = Cli(tmp_path)
    lines = stores.store_lines(driver, request)
    if driver == 'posix':
        lines.append('path = %s' % (tmp_path / 'store'))
    lines.append('object_size = %d' % object_size)
    cli.config.write_text('\n'.join(
        ['[chunkbackup]', 'driver = %s' % driver] + lines) + '\n')
    vol = str(tmp_path / 'vol.img')
    # Mostly random: compressed bodies are as large as the data.
    volumes.write_volume(vol, VOLUME_SIZE, 'random', seed=7)
    peaks = {}
    full, peaks['full'] = cli.measured('backup-create', vol,
                                       limit=RSS_LIMIT)
    volumes.change_blocks(vol, 0.01, BS, seed=8, max_run=4)
    inc, peaks['incremental'] = cli.measured('backup-create', vol,
                                             '--incremental',
                                             limit=RSS_LIMIT)
    assert inc['parent_id'] == full['id']
    out = str(tmp_path / 'restored.img')
    _, peaks['restore'] = cli.measured('backup-restore', inc['id'], out,
                                       limit=RSS_LIMIT)
    assert filecmp.cmp(vol, out, shallow=False)
    os.unlink(out)
    verified, peaks['verify'] = cli.measured('backup-verify', inc['id'],
                                             limit=RSS_LIMIT)
    assert verified['status'] == 'verified'
    print('%s, %d MiB objects: peak RSS MiB %s' % (
        driver, object_size // MiB,
        {k: round(v / MiB) for k, v in peaks.items()}))
