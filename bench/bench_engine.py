#!/usr/bin/env python3
"""Engine benchmark: throughput and peak RSS, as ratios of this machine's
own limits measured in the same run.

    tox -e bench                      # 1 GiB volume, plus a 4 GiB RSS check
    python bench/bench_engine.py --size-mib 256 --big-size-mib 0   # quick

It makes a volume of mixed content (about a quarter zeros, a third random,
the rest text-like, in 1 MiB regions), measures single-core SHA-256, MD5
and codec speeds on that volume, then runs each operation in a fresh
process (posix driver, default settings unless stated) and reports MiB/s,
peak RSS, and the throughput as a fraction of a two-core CPU limit:

    limit = cores / sum(1 / rate of each CPU step the operation needs)

full none: SHA-256 + MD5; full zstd/zlib: + that codec's compression;
incremental: SHA-256 only; restore: SHA-256 + decompression. Zero regions
cost nearly nothing in the engine, so a fraction above 1.0 is possible.
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib

import zstandard

MiB = 2 ** 20
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import benchlib  # noqa: E402  (beside this file)


def _rate(fn, data, repeat=3):
    """Best-of-N bytes per second of fn(data)."""
    best = float('inf')
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(data)
        best = min(best, time.perf_counter() - t0)
    return len(data) / best


def measure_limits(volume, sample_mib=96):
    """Single-core rates on a sample spread over the volume."""
    size = os.path.getsize(volume)
    step = max(size // (sample_mib * MiB), 1) * MiB
    parts = []
    with open(volume, 'rb') as f:
        for off in range(0, size, step):
            f.seek(off)
            parts.append(f.read(MiB))
            if len(parts) >= sample_mib:
                break
    sample = b''.join(parts)
    t0 = time.perf_counter()
    with open(volume, 'rb') as f:
        while f.read(32 * MiB):
            pass
    read_rate = size / (time.perf_counter() - t0)

    def sha_blocks(data):
        view = memoryview(data)
        for i in range(0, len(data), 32768):
            hashlib.sha256(view[i:i + 32768]).digest()

    def md5(data):
        for i in range(0, len(data), 32 * MiB):
            hashlib.md5(data[i:i + 32 * MiB], usedforsecurity=False)

    zc = zstandard.ZstdCompressor(level=1)
    zd = zstandard.ZstdDecompressor()
    zbody = [zc.compress(sample[i:i + 32 * MiB])
             for i in range(0, len(sample), 32 * MiB)]
    return {
        'sha256': _rate(sha_blocks, sample),
        'md5': _rate(md5, sample),
        'zstd1_compress': _rate(
            lambda d: [zc.compress(d[i:i + 32 * MiB])
                       for i in range(0, len(d), 32 * MiB)], sample),
        'zstd1_decompress': len(sample) / min(
            _timed(lambda: [zd.decompress(b) for b in zbody])
            for _ in range(3)),
        'zlib1_compress': _rate(
            lambda d: [zlib.compress(d[i:i + 32 * MiB], 1)
                       for i in range(0, len(d), 32 * MiB)], sample,
            repeat=1),
        'page_cache_read': read_rate,
    }


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def cpu_limit(limits, steps, cores):
    return cores / sum(1.0 / limits[s] for s in steps)


# --------------------------------------------------------------------------
# One operation, in a child process (so peak RSS is that operation's own).

def run_op(args):

    driver = benchlib.posix_driver(args.root,
                                   compression_algorithm=args.compression)
    catalog = benchlib.Catalog(args.catalog)
    t0 = time.perf_counter()
    benchlib.run_operation(driver, catalog, args.op, args.name, args.parent,
                           args.volume, args.target)
    seconds = time.perf_counter() - t0
    print(json.dumps({'seconds': seconds,
                      'rss_mib': benchlib.peak_rss_mib()}))


def child(work, op, name, volume, compression='zstd', parent=None,
          target=None):
    cmd = [sys.executable, os.path.abspath(__file__), '--op', op,
           '--name', name, '--root', os.path.join(work, 'backups'),
           '--catalog', os.path.join(work, 'catalog.json'),
           '--volume', volume, '--compression', compression]
    if parent:
        cmd += ['--parent', parent]
    if target:
        cmd += ['--target', target]
    result = subprocess.run(cmd, stdout=subprocess.PIPE)
    if result.returncode:
        raise SystemExit('%s %s failed' % (op, name))
    return json.loads(result.stdout.decode().strip().splitlines()[-1])


def cmp_files(a, b):
    with open(a, 'rb') as fa, open(b, 'rb') as fb:
        while True:
            x, y = fa.read(64 * MiB), fb.read(64 * MiB)
            if x != y:
                return False
            if not x:
                return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--size-mib', type=int, default=1024)
    parser.add_argument('--big-size-mib', type=int, default=4096,
                        help='volume for the RSS-only check (0: skip)')
    parser.add_argument('--workdir', default=None)
    parser.add_argument('--json', help='also write the results here')
    # Child-process arguments.
    for name in ('--op', '--name', '--root', '--catalog', '--volume',
                 '--parent', '--target'):
        parser.add_argument(name)
    parser.add_argument('--compression', default='zstd')
    args = parser.parse_args()
    if args.op:
        return run_op(args)

    from chunkbackup import concurrency
    from chunkbackup.testing import volumes

    cores = concurrency.cpu_count()
    work = tempfile.mkdtemp(prefix='chunkbackup-bench-', dir=args.workdir)
    try:
        vol = os.path.join(work, 'volume')
        size = args.size_mib * MiB
        print('making a %d MiB mixed volume in %s ...' % (args.size_mib,
                                                          work))
        volumes.write_volume(vol, size, 'mixed', seed=1)
        limits = measure_limits(vol)
        print('\nthis machine, one core (MB/s = 10^6 B/s):')
        for key, value in limits.items():
            print('  %-18s %8.0f MB/s' % (key, value / 1e6))

        rows = []

        def report(label, result, nbytes, steps):
            mibs = nbytes / MiB / result['seconds']
            limit = cpu_limit(limits, steps, cores) / MiB
            rows.append({'operation': label, 'seconds': result['seconds'],
                         'mib_s': mibs, 'rss_mib': result['rss_mib'],
                         'limit_mib_s': limit, 'fraction': mibs / limit})

        sha, md5 = 'sha256', 'md5'
        for comp, steps in (('none', [sha, md5]),
                            ('zlib', [sha, md5, 'zlib1_compress']),
                            ('zstd', [sha, md5, 'zstd1_compress'])):
            res = child(work, 'backup', 'full-' + comp, vol, comp)
            report('full backup, %s' % comp, res, size, steps)

        # Incrementals on the zstd full: 1% of the 32 KiB blocks changed,
        # in runs of 1-16 blocks (as file writes cluster), then 1% more as
        # single scattered blocks (the worst case for object count).
        snap = os.path.join(work, 'snap-full')
        volumes.change_blocks(vol, 0.01, 32768, seed=2, max_run=16)
        res = child(work, 'backup', 'inc1', vol, parent='full-zstd')
        report('incremental, 1% changed (runs)', res, size, [sha])
        shutil.copyfile(vol, snap)
        volumes.change_blocks(vol, 0.01, 32768, seed=3, max_run=1)
        res = child(work, 'backup', 'inc2', vol, parent='inc1')
        report('incremental, 1% changed (scattered)', res, size, [sha])

        out = os.path.join(work, 'restored')
        res = child(work, 'restore', 'full-zstd', vol, target=out)
        report('restore full zstd, new volume', res, size,
               [sha, 'zstd1_decompress'])
        res = child(work, 'restore', 'inc2', vol, target=out)
        report('restore chain (full+2 incr), new volume', res, size,
               [sha, 'zstd1_decompress'])
        if not cmp_files(out, vol):
            raise SystemExit('restored chain differs from the volume!')
        res = child(work, 'verify', 'inc2', vol)
        report('verify chain (MD5 too)', res, size,
               [sha, md5, 'zstd1_decompress'])

        if args.big_size_mib:
            big = os.path.join(work, 'big')
            volumes.write_volume(big, args.big_size_mib * MiB, 'mixed',
                                 seed=5)
            os.unlink(vol)
            res = child(work, 'backup', 'big', big, 'zstd')
            report('full backup zstd, %d MiB volume' % args.big_size_mib,
                   res, args.big_size_mib * MiB,
                   [sha, md5, 'zstd1_compress'])
            res = child(work, 'restore', 'big', big, target=out)
            report('restore zstd, %d MiB volume' % args.big_size_mib,
                   res, args.big_size_mib * MiB, [sha, 'zstd1_decompress'])

        print('\n%-44s %8s %9s %9s %10s %8s' % (
            'operation (%d MiB volume, %d cores)' % (args.size_mib, cores),
            'seconds', 'MiB/s', 'RSS MiB', 'limit', 'of limit'))
        for row in rows:
            print('%-44s %8.2f %9.0f %9.0f %10.0f %8.2f' % (
                row['operation'], row['seconds'], row['mib_s'],
                row['rss_mib'], row['limit_mib_s'], row['fraction']))
        if args.json:
            with open(args.json, 'w') as f:
                json.dump({'limits': limits, 'rows': rows, 'cores': cores,
                           'size_mib': args.size_mib}, f, indent=2)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
