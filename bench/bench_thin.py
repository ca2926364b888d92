#!/usr/bin/env python3
"""Thin-volume benchmark: hole detection and changed-block maps, as ratios
of the same operations reading everything, measured in the same run.

    tox -e bench                      # also runs bench_engine.py
    python bench/bench_thin.py        # 64 GiB and 1 TiB thin volumes
    python bench/bench_thin.py --quick   # 4 GiB and 16 GiB: a smoke run

Two sparse files stand for thin volumes: one of 64 GiB holding 1 GiB of
mixed data, one of 1 TiB holding 2 GiB. The data is bench_engine.py's
mix (about a quarter zeros, a third random, the rest text-like) in 1 MiB
regions written at random 1 MiB-aligned offsets; the rest is holes.

On the 64 GiB volume, each operation runs twice with the posix driver at
default settings: once as the engine does it (holes skipped, the
incremental given the changed-block map) and once reading everything
(``skip_holes = false`` and no map: what Cinder's drivers pay). The ratio
is the second time over the first. The incremental overwrites 1% of the
data's 32 KiB blocks in scattered runs of 1-16 blocks, and the map is
exactly the extents written. The 1 TiB volume is measured against
absolute targets only: reading it all would take about an hour.

Each operation runs in a fresh process; RSS is that process's peak.
Restores go to a new thin volume (a sparse file of the volume's size) and
are compared with the volume.
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

MiB = 2 ** 20
GiB = 2 ** 30
BLOCK = 32768  # the default sha_block_size: the unit a map is judged in
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import benchlib  # noqa: E402  (beside this file)

FULL_SIZES = {'thin_gib': 64, 'thin_data_mib': 1024,
              'big_gib': 1024, 'big_data_mib': 2048}
QUICK_SIZES = {'thin_gib': 4, 'thin_data_mib': 64,
               'big_gib': 16, 'big_data_mib': 128}
# The targets, judged at the full sizes only.
TARGET_FULL_SPEEDUP = 20.0
TARGET_INCREMENTAL_SPEEDUP = 50.0
TARGET_BIG_SECONDS = {'backup': 60.0, 'incremental': 30.0, 'restore': 60.0}
TARGET_RSS_MIB = 256.0


# --------------------------------------------------------------------------
# One operation, in a child process (so peak RSS is that operation's own).

def run_op(args):
    from chunkbackup.engine import backup as backup_writer

    engine = {'skip_holes': False} if args.read_everything else {}
    driver = benchlib.posix_driver(args.root, **engine)
    catalog = benchlib.Catalog(args.catalog)
    changed = None
    if args.changed_extents:
        with open(args.changed_extents) as f:
            changed = [tuple(extent) for extent in json.load(f)]
    stats = None
    cpu0 = benchlib.cpu_seconds()
    t0 = time.perf_counter()
    backup_args = {}
    if args.op == 'backup':
        stats = backup_writer.BackupStats()
        backup_args = {'changed_extents': changed, 'stats': stats}
    # A restore's target exists at the volume's size, as a new thin volume.
    benchlib.run_operation(driver, catalog, args.op, args.name, args.parent,
                           args.volume, args.target, 'r+b', **backup_args)
    seconds = time.perf_counter() - t0
    cpu = benchlib.cpu_seconds() - cpu0
    print(json.dumps({'seconds': seconds, 'cpu_seconds': cpu,
                      'rss_mib': benchlib.peak_rss_mib(),
                      'stats': stats.to_dict() if stats else None}))


def child(work, op, name, volume, parent=None, target=None,
          read_everything=False, changed_extents=None):
    cmd = [sys.executable, os.path.abspath(__file__), '--op', op,
           '--name', name, '--root', os.path.join(work, 'backups'),
           '--catalog', os.path.join(work, 'catalog.json'),
           '--volume', volume]
    if parent:
        cmd += ['--parent', parent]
    if target:
        cmd += ['--target', target]
    if read_everything:
        cmd += ['--read-everything']
    if changed_extents:
        cmd += ['--changed-extents', changed_extents]
    print('  %s %s%s ...' % (op, name,
                             ' (reading everything)' if read_everything
                             else ''), end='', flush=True)
    result = subprocess.run(cmd, stdout=subprocess.PIPE)
    if result.returncode:
        raise SystemExit('%s %s failed' % (op, name))
    out = json.loads(result.stdout.decode().strip().splitlines()[-1])
    print(' %.2f s (CPU %.2f s), %.0f MiB' % (
        out['seconds'], out['cpu_seconds'], out['rss_mib']), flush=True)
    return out


# --------------------------------------------------------------------------
# Thin volumes.

def make_thin_volume(path, size, data_bytes, seed):
    """A sparse file of ``size`` with ``data_bytes`` of mixed 1 MiB regions
    at random 1 MiB-aligned offsets. Returns the region offsets, sorted.

    Regions as in chunkbackup.testing.volumes.write_volume('mixed'): zero
    regions are written too (allocated zeros, as a guest leaves them).
    """
    from chunkbackup.testing import volumes

    rng = random.Random(seed)
    offsets = sorted(i * MiB for i in rng.sample(range(size // MiB),
                                                 data_bytes // MiB))
    kinds, weights = ('zero', 'random', 'text'), (25, 33, 42)
    pool = {}
    with open(path, 'wb') as f:
        f.truncate(size)
        for offset in offsets:
            kind = rng.choices(kinds, weights)[0]
            if kind == 'random':
                data = volumes.random_bytes(rng, MiB)
            else:
                key = (kind, rng.randrange(8))
                if key not in pool:
                    pool[key] = volumes.region(rng, kind, MiB)
                data = pool[key]
            f.seek(offset)
            f.write(data)
    return offsets


def change_data(path, offsets, fraction, seed):
    """Overwrite ``fraction`` of the data's blocks with random bytes, in
    scattered runs of 1-16 blocks inside the data regions.

    Returns the extents written, (offset, length), sorted: the exact
    changed-block map.
    """
    from chunkbackup.testing import volumes

    rng = random.Random(seed)
    per_region = MiB // BLOCK
    target = max(1, round(len(offsets) * per_region * fraction))
    taken = set()
    extents = []
    done = 0
    with open(path, 'r+b') as f:
        while done < target:
            region = rng.choice(offsets)
            run = min(rng.randint(1, 16), target - done)
            first = rng.randrange(0, per_region - run + 1)
            blocks = {region + (first + i) * BLOCK for i in range(run)}
            if blocks & taken:
                continue
            taken |= blocks
            offset = region + first * BLOCK
            f.seek(offset)
            f.write(volumes.random_bytes(rng, run * BLOCK))
            extents.append((offset, run * BLOCK))
            done += run
    return sorted(extents)


def data_ranges(path):
    """The allocated ranges of a file (SEEK_DATA / SEEK_HOLE)."""
    ranges = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        offset = 0
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:
                break  # ENXIO: only a hole is left
            end = os.lseek(fd, start, os.SEEK_HOLE)
            ranges.append((start, end))
            offset = end
    finally:
        os.close(fd)
    return ranges


def same_thin_content(a, b):
    """True when two sparse files read the same.

    Compares every range either holds data in; outside them both are
    holes, so zeros.
    """
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    spans = sorted(data_ranges(a) + data_ranges(b))
    merged = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    with open(a, 'rb') as fa, open(b, 'rb') as fb:
        for start, end in merged:
            fa.seek(start)
            fb.seek(start)
            while start < end:
                n = min(64 * MiB, end - start)
                if fa.read(n) != fb.read(n):
                    return False
                start += n
    return True


def new_thin_target(path, size):
    if os.path.exists(path):
        os.unlink(path)
    with open(path, 'wb') as f:
        f.truncate(size)


def restore_and_compare(work, name, volume, target, size,
                        read_everything=False):
    new_thin_target(target, size)
    res = child(work, 'restore', name, volume, target=target,
                read_everything=read_everything)
    if not same_thin_content(target, volume):
        raise SystemExit('restore of %s differs from the volume!' % name)
    res['allocated_mib'] = os.stat(target).st_blocks * 512 / MiB
    os.unlink(target)
    return res


# --------------------------------------------------------------------------

def mib(n):
    return n / MiB


def describe(stats):
    if not stats:
        return ''
    parts = ['read %.0f MiB' % mib(stats['bytes_read']),
             'holes %.0f MiB' % mib(stats['hole_bytes'])]
    if stats['known_bytes']:
        parts.append('map-vouched %.0f MiB' % mib(stats['known_bytes']))
    parts.append('%d objects' % stats['objects'])
    if stats['changed_map']:
        parts.append('map %s, %d blocks sampled' % (
            stats['changed_map'], stats['blocks_sampled']))
    return ', '.join(parts)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true',
                        help='smaller volumes (%(thin_gib)d GiB with '
                             '%(thin_data_mib)d MiB of data, %(big_gib)d GiB '
                             'with %(big_data_mib)d MiB): a smoke run; the '
                             'targets are not judged' % QUICK_SIZES)
    parser.add_argument('--changed', type=float, default=0.01,
                        help='fraction of the data blocks an incremental '
                             'changes')
    parser.add_argument('--skip-big', action='store_true',
                        help='leave out the 1 TiB volume')
    parser.add_argument('--workdir', default=None)
    parser.add_argument('--json', help='also write the results here')
    # Child-process arguments.
    for name in ('--op', '--name', '--root', '--catalog', '--volume',
                 '--parent', '--target', '--changed-extents'):
        parser.add_argument(name)
    parser.add_argument('--read-everything', action='store_true')
    args = parser.parse_args()
    if args.op:
        return run_op(args)

    from chunkbackup import concurrency

    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    judged = not args.quick and args.changed == 0.01
    cores = concurrency.cpu_count()
    work = tempfile.mkdtemp(prefix='chunkbackup-bench-thin-',
                            dir=args.workdir)
    rows = []

    def row(label, res, baseline=None, target=None, passed=None):
        entry = {'operation': label, 'seconds': res['seconds'],
                 'cpu_seconds': res['cpu_seconds'],
                 'rss_mib': res['rss_mib'], 'stats': res.get('stats'),
                 'allocated_mib': res.get('allocated_mib')}
        if baseline is not None:
            entry['baseline_seconds'] = baseline['seconds']
            entry['baseline_cpu_seconds'] = baseline['cpu_seconds']
            entry['baseline_rss_mib'] = baseline['rss_mib']
            entry['speedup'] = baseline['seconds'] / res['seconds']
            entry['cpu_speedup'] = (baseline['cpu_seconds'] /
                                    res['cpu_seconds'])
        entry['target'] = target
        entry['passed'] = passed if judged else None
        rows.append(entry)
        return entry

    try:
        load_start = os.getloadavg()
        t_start = time.perf_counter()
        # ---------------- the 64 GiB thin volume, against reading all.
        size = sizes['thin_gib'] * GiB
        vol = os.path.join(work, 'thin')
        out = os.path.join(work, 'restored')
        print('making a %d GiB thin volume with %d MiB of mixed data in '
              '%s ...' % (sizes['thin_gib'], sizes['thin_data_mib'], work),
              flush=True)
        offsets = make_thin_volume(vol, size, sizes['thin_data_mib'] * MiB,
                                   seed=1)
        full = child(work, 'backup', 'full', vol)
        full_all = child(work, 'backup', 'full-all', vol,
                         read_everything=True)
        extents = change_data(vol, offsets, args.changed, seed=2)
        map_file = os.path.join(work, 'changed.json')
        with open(map_file, 'w') as f:
            json.dump(extents, f)
        changed_mib = mib(sum(length for _, length in extents))
        inc = child(work, 'backup', 'inc', vol, parent='full',
                    changed_extents=map_file)
        inc_nomap = child(work, 'backup', 'inc-nomap', vol, parent='full')
        inc_all = child(work, 'backup', 'inc-all', vol, parent='full-all',
                        read_everything=True)
        restore = restore_and_compare(work, 'inc', vol, out, size)
        restore_all = restore_and_compare(work, 'inc-all', vol, out, size,
                                          read_everything=True)
        # No verify reading everything: the issue does not ask for it,
        # and it would add minutes to the run.
        verify = child(work, 'verify', 'inc', vol)

        thin = '%d GiB thin, %d MiB data' % (
            sizes['thin_gib'], sizes['thin_data_mib'])
        entry = row('%s: full backup' % thin, full, full_all,
                    '>= %.0fx' % TARGET_FULL_SPEEDUP)
        entry['passed'] = (entry['speedup'] >= TARGET_FULL_SPEEDUP
                           if judged else None)
        entry = row('%s: incremental, %g%% changed, with the map' % (
            thin, args.changed * 100), inc, inc_all,
            '>= %.0fx' % TARGET_INCREMENTAL_SPEEDUP)
        entry['passed'] = (entry['speedup'] >= TARGET_INCREMENTAL_SPEEDUP
                           if judged else None)
        row('%s: incremental, holes skipped, no map' % thin, inc_nomap,
            inc_all)
        row('%s: restore of full + incremental, new thin volume' % thin,
            restore, restore_all)
        row('%s: verify of full + incremental' % thin, verify)
        os.unlink(vol)
        shutil.rmtree(os.path.join(work, 'backups'), ignore_errors=True)
        os.unlink(os.path.join(work, 'catalog.json'))

        # ---------------- the 1 TiB thin volume, absolute targets.
        if not args.skip_big:
            size = sizes['big_gib'] * GiB
            vol = os.path.join(work, 'big')
            print('making a %d GiB thin volume with %d MiB of mixed data '
                  '...' % (sizes['big_gib'], sizes['big_data_mib']),
                  flush=True)
            offsets = make_thin_volume(vol, size,
                                       sizes['big_data_mib'] * MiB, seed=5)
            big = '%d GiB thin, %d MiB data' % (
                sizes['big_gib'], sizes['big_data_mib'])

            def judge(label, res, kind):
                limit = TARGET_BIG_SECONDS[kind]
                row(label, res, None,
                    '<= %.0f s, RSS < %.0f MiB' % (limit, TARGET_RSS_MIB),
                    res['seconds'] <= limit and
                    res['rss_mib'] < TARGET_RSS_MIB)

            res = child(work, 'backup', 'big-full', vol)
            judge('%s: full backup' % big, res, 'backup')
            big_extents = change_data(vol, offsets, args.changed, seed=6)
            with open(map_file, 'w') as f:
                json.dump(big_extents, f)
            res = child(work, 'backup', 'big-inc', vol, parent='big-full',
                        changed_extents=map_file)
            judge('%s: incremental, %g%% changed, with the map' % (
                big, args.changed * 100), res, 'incremental')
            res = restore_and_compare(work, 'big-inc', vol, out, size)
            judge('%s: restore of full + incremental, new thin volume'
                  % big, res, 'restore')
            res = child(work, 'verify', 'big-inc', vol)
            row('%s: verify of full + incremental' % big, res)
        total = time.perf_counter() - t_start
        load_end = os.getloadavg()

        print('\nchanged-block maps: %d extents, %.1f MiB on the %d GiB '
              'volume' % (len(extents), changed_mib, sizes['thin_gib']))
        print('%d cores; total run %.0f s; load average %.1f at the start, '
              '%.1f at the end (1 minute)\n' % (
                  cores, total, load_start[0], load_end[0]))
        print('%-70s %8s %6s %7s %10s %6s %7s %8s %7s  %s' % (
            'operation', 'seconds', 'CPU s', 'RSS MiB', 'read-all s',
            'CPU s', 'RSS MiB', 'speedup', 'by CPU', 'target'))
        for r in rows:
            verdict = {True: ' met', False: ' MISSED', None: ''}[r['passed']]
            base = 'speedup' in r
            print('%-70s %8.2f %6.2f %7.0f %10s %6s %7s %8s %7s  %s%s' % (
                r['operation'], r['seconds'], r['cpu_seconds'],
                r['rss_mib'],
                '%.2f' % r['baseline_seconds'] if base else '',
                '%.1f' % r['baseline_cpu_seconds'] if base else '',
                '%.0f' % r['baseline_rss_mib'] if base else '',
                '%.1fx' % r['speedup'] if base else '',
                '%.1fx' % r['cpu_speedup'] if base else '',
                r['target'] or '', verdict))
        print()
        for r in rows:
            detail = describe(r['stats'])
            if r['allocated_mib'] is not None:
                detail = 'restored volume allocates %.0f MiB' % (
                    r['allocated_mib'])
            if detail:
                print('%s: %s' % (r['operation'], detail))
        for name, res in (('full backup reading everything', full_all),
                          ('incremental reading everything', inc_all)):
            print('%s: %s' % (name, describe(res['stats'])))
        if args.json:
            with open(args.json, 'w') as f:
                json.dump({'cores': cores, 'sizes': sizes, 'rows': rows,
                           'total_seconds': total,
                           'load_average': [load_start, load_end],
                           'baselines': {'full': full_all, 'inc': inc_all}},
                          f, indent=2)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
