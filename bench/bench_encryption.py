#!/usr/bin/env python3
"""Encryption benchmark: encrypted full backup and restore against plain
ones, as a ratio, in the same run.

    python bench/bench_encryption.py                 # 1 GiB, 3 rounds
    python bench/bench_encryption.py --size-mib 256 --rounds 2   # quick

A mixed volume (about a quarter zeros, a third random, the rest text-like)
is backed up (posix driver, zstd, default settings) and restored, plain
and encrypted (AES-256-GCM, a key file) in turns, each operation in a
fresh process. Rounds alternate the order so that a cache or another
user's load favours neither. It prints, per operation, the median wall
time and CPU time of each mode and encrypted / plain: the issue's target
is a throughput within 10% (a ratio of time below 1.10).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

MiB = 2 ** 20
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import benchlib  # noqa: E402  (beside this file)


def run_child(args) -> None:
    engine = {'compression_algorithm': 'zstd'}
    if args.key:
        engine.update(encryption='aes-256-gcm', key_file=args.key)
    driver = benchlib.posix_driver(args.root, **engine)
    catalog = benchlib.Catalog(args.catalog)
    t0 = time.perf_counter()
    benchlib.run_operation(driver, catalog, args.op, args.name,
                           volume=args.volume, target=args.target)
    wall = time.perf_counter() - t0
    json.dump({'wall': wall, 'cpu': benchlib.cpu_seconds(),
               'rss_mib': benchlib.peak_rss_mib()}, sys.stdout)


def child(work, op, name, volume, key=None, target=None) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), '--child',
           '--op', op, '--name', name, '--root', os.path.join(work, 'store'),
           '--catalog', os.path.join(work, 'catalog.json'),
           '--volume', volume]
    if key:
        cmd += ['--key', key]
    if target:
        cmd += ['--target', target]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, check=True)
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--size-mib', type=int, default=1024)
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--child', action='store_true')
    for name in ('op', 'name', 'root', 'catalog', 'volume', 'key',
                 'target'):
        parser.add_argument('--' + name)
    args = parser.parse_args()
    if args.child:
        return run_child(args)

    from chunkbackup.crypto import keyfile
    from chunkbackup.testing import volumes

    work = tempfile.mkdtemp(prefix='bench-encryption-')
    try:
        volume = os.path.join(work, 'volume.img')
        volumes.write_volume(volume, args.size_mib * MiB, 'mixed', seed=1)
        key = os.path.join(work, 'master.key')
        keyfile.create(key)
        modes = {'plain': None, 'encrypted': key}
        results = {(op, mode): [] for op in ('backup', 'restore')
                   for mode in modes}
        for round_ in range(args.rounds):
            order = list(modes) if round_ % 2 == 0 else list(modes)[::-1]
            for mode in order:
                name = '%s-%d' % (mode, round_)
                results['backup', mode].append(
                    child(work, 'backup', name, volume, modes[mode]))
                target = os.path.join(work, 'restored.img')
                results['restore', mode].append(
                    child(work, 'restore', name, volume, modes[mode],
                          target))
                os.unlink(target)
                shutil.rmtree(os.path.join(work, 'store'))
                os.unlink(os.path.join(work, 'catalog.json'))
        print('Encryption benchmark: %d MiB mixed volume, zstd, %d rounds, '
              '%d CPUs' % (args.size_mib, args.rounds, os.cpu_count()))
        print('%-8s %-10s %9s %9s %9s %8s' % ('op', 'mode', 'wall s',
                                              'MiB/s', 'cpu s', 'RSS MiB'))
        for op in ('backup', 'restore'):
            med = {}
            for mode in modes:
                runs = results[op, mode]
                wall = statistics.median(r['wall'] for r in runs)
                cpu = statistics.median(r['cpu'] for r in runs)
                rss = max(r['rss_mib'] for r in runs)
                med[mode] = (wall, cpu)
                print('%-8s %-10s %9.2f %9.1f %9.2f %8.0f'
                      % (op, mode, wall, args.size_mib / wall, cpu, rss))
            print('%-8s encrypted / plain: wall %.3f, cpu %.3f'
                  % (op, med['encrypted'][0] / med['plain'][0],
                     med['encrypted'][1] / med['plain'][1]))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
