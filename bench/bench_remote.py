#!/usr/bin/env python3
"""Remote-store benchmark: swift and s3 across a modelled link, vs its floor.

Each operation's time is printed as a ratio of that link's floor, from
the bytes measured in the same run.

    python bench/bench_remote.py            # 512 MiB, both stores, a, b, local
    python bench/bench_remote.py --quick    # 128 MiB, a and b, 50 MiB objects
    python bench/bench_remote.py --store swift --scenario a --size-mib 256
    python bench/bench_remote.py --set chunkbackup.objects_in_flight=8

A real Swift (tempauth v1; its s3api middleware is the S3 endpoint) runs on
127.0.0.1, started by the functional tests' own fixture code
(tests/functional/servers/swift.py). Between the drivers and it sits a
link-model proxy (tests/functional/servers/linkproxy.py) that delays each
direction and caps throughput. Each operation runs in a fresh child
process through the driver API (as bench_engine does), at default settings
but for ``object_size``: the drivers' default 50 MiB, and 256 MiB.

Scenarios (MB = 10^6 bytes; caps apply to each direction separately):

    a      25 ms one way, 20 MB/s per connection, no total cap
    b      25 ms one way, one 50 MB/s cap shared by all connections
    local  no delay, no cap: what this machine's Swift and engine do alone

Floors (seconds), from the bytes the proxy counted for that operation:

    bandwidth floor  = max(bytes up, bytes down) / link rate
    round-trip floor = K x RTT + bytes up / link rate + bytes down / link rate
    link rate        = min(8 x per-connection cap, total cap)

The bandwidth floor is for full backups, restores and verifies: the time
the link needs to carry what the operation moved, on the 8 connections
the targets allow. The round-trip floor is for incrementals, which move
little: K round trips must happen one after another, RTT = 2 x the
one-way delay. K = 5 for swift: TCP connect, login, read the parent's
_metadata and _sha256file (together), write the changed objects and the
new _sha256file (together), write _metadata (last: it makes the backup
exist). K = 4 for s3, which signs requests instead of logging in.
Downloads and uploads are in different round trips, so their times add.

Every figure is printed as ``ratio`` = seconds / floor. The targets of
issue 13 are printed beside them; the benchmark never passes or fails.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Tuple
import urllib.parse
import uuid

MiB = 2 ** 20
MB = 10 ** 6
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import benchlib  # noqa: E402  (beside this file)

FLOOR_CONNECTIONS = 8
SCENARIOS = {
    'a': dict(delay=0.025, per_connection_rate=20 * MB),
    'b': dict(delay=0.025, total_rate=50 * MB),
    'local': dict(delay=0.0, handshake=False),
}
# Round trips an incremental cannot avoid, one after another (see above).
INCREMENTAL_ROUND_TRIPS = {'swift': 5, 's3': 4}
# What issue 13 asks for, by scenario: (bandwidth-floor ratio for full
# backup and restore, round-trip-floor ratio for the incremental).
TARGETS = {'a': (1.3, 2.0), 'b': (1.15, 2.0)}
OBJECT_SIZES_MIB = (50, 256)
# The groups --set may change: the engine's, and each store's (applied to
# that store's runs only).
SETTING_GROUPS = ('chunkbackup', 'backup_swift', 'backup_s3')


# --------------------------------------------------------------------------
# One operation, in a child process (so peak RSS is that operation's own).

def run_op(args: argparse.Namespace) -> None:

    driver = benchlib.remote_driver(args.store, json.loads(args.options))
    catalog = benchlib.Catalog(args.catalog)
    cpu0, t0 = benchlib.cpu_seconds(), time.perf_counter()
    started = time.time()  # the parent's link samples use the same clock
    benchlib.run_operation(driver, catalog, args.op, args.name, args.parent,
                           args.volume, args.target)
    seconds = time.perf_counter() - t0
    cpu = benchlib.cpu_seconds() - cpu0
    print(json.dumps({'seconds': seconds, 'cpu_s': cpu, 'started': started,
                      'rss_mib': benchlib.peak_rss_mib()}))


def store_options(store: str, server: Any, url: str, container: str,
                  object_size: int) -> Dict[str, Dict[str, Any]]:
    """The driver's options for a run through the proxy at ``url``."""
    if store == 'swift':
        return {'backup_swift': {
            'auth_mode': 'single_user', 'auth_version': '1',
            'auth_url': url + '/auth/v1.0', 'user': server.user,
            'key': server.key, 'container': container,
            'object_size': object_size}}
    return {'backup_s3': {
        'endpoint_url': url, 'access_key': server.s3_access_key,
        'secret_key': server.s3_secret_key, 'region': server.s3_region,
        'addressing_style': 'path', 'bucket': container,
        'object_size': object_size}}


def child(work: str, store: str, options: dict, op: str, name: str,
          volume: str, parent: Optional[str] = None,
          target: Optional[str] = None) -> Dict[str, float]:
    cmd = [sys.executable, os.path.abspath(__file__), '--op', op,
           '--store', store, '--options', json.dumps(options),
           '--name', name, '--catalog', os.path.join(work, 'catalog.json'),
           '--volume', volume]
    if parent:
        cmd += ['--parent', parent]
    if target:
        cmd += ['--target', target]
    result = subprocess.run(cmd, stdout=subprocess.PIPE, cwd=ROOT)
    if result.returncode:
        raise SystemExit('%s %s on %s failed' % (op, name, store))
    return json.loads(result.stdout.decode().strip().splitlines()[-1])


# --------------------------------------------------------------------------
# What the server saw: requests and logins, from Swift's proxy log.

# proxy-logging's line: client ip, remote ip, date, method, path, ... A
# request a client sent has the client's address; the subrequests Swift
# makes of itself (s3api's, account and container info) have "- -".
LOG_LINE = re.compile(r'proxy-server: (?P<client>\S+) \S+ \S+ '
                      r'(?P<method>[A-Z]+) (?P<path>\S+) HTTP/')
# The proxy writes its line after the response: give it a moment.
LOG_SETTLE = 0.3


class ServerLog:
    """Counts client requests in the Swift proxy's log since a mark.

    Swift's servers must run with PYTHONUNBUFFERED, or their log lines
    reach the file long after the requests.
    """

    def __init__(self, path: str):
        self.path = path
        self.offset = 0

    def mark(self) -> None:
        self.offset = os.path.getsize(self.path)

    def requests_since_mark(self) -> Dict[str, int]:
        """By method; logins (GET /auth/...) as 'login'."""
        time.sleep(LOG_SETTLE)
        with open(self.path, 'rb') as f:
            f.seek(self.offset)
            text = f.read().decode('utf-8', 'replace')
        counts: Dict[str, int] = {}
        for line in text.splitlines():
            match = LOG_LINE.search(line)
            if not match or match.group('client') == '-':
                continue
            method = match.group('method')
            if match.group('path').startswith('/auth/'):
                method = 'login'
            counts[method] = counts.get(method, 0) + 1
        return counts


def server_cpu_seconds(server: Any) -> float:
    """CPU time so far of the Swift processes the fixture started.

    On two shared cores the client, the proxy and Swift compete for the
    same CPU; this says how much of an operation was Swift's.
    """
    ticks = os.sysconf('SC_CLK_TCK')
    total = 0.0
    for proc in server.procs.values():
        try:
            with open('/proc/%d/stat' % proc.pid) as f:
                fields = f.read().rsplit(')', 1)[1].split()
        except OSError:
            continue
        # utime, stime: fields 14 and 15 of stat(5), 12 and 13 after ')'.
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


class LinkSampler:
    """Samples the proxy's byte counts, to see when data moved.

    Wall time over the floor says how much slower than the link an
    operation was; when its bulk data moved says where the rest went
    (before the first object was ready, between objects, at the end).
    """

    INTERVAL = 0.02

    def __init__(self, proxy: Any):
        self.proxy = proxy
        self.samples: List[Tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name='link-sampler')
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            stats = self.proxy.stats()
            self.samples.append((time.time(),
                                 stats.bytes_up + stats.bytes_down))
            self._stop.wait(self.INTERVAL)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def bulk_window(self, started: float) -> Tuple[float, float]:
        """When 1% and 99% of the bytes had moved, after ``started``.

        In seconds, to the samples' resolution (20 ms).
        """
        base, last = self.samples[0][1], self.samples[-1][1]
        total = last - base
        first = end = None
        for stamp, count in self.samples:
            moved = count - base
            if first is None and moved >= 0.01 * total:
                first = stamp
            if end is None and moved >= 0.99 * total:
                end = stamp
        return ((first or started) - started, (end or started) - started)


# --------------------------------------------------------------------------
# The run.

def floor_seconds(kind: str, store: str, model: Any, up: int,
                  down: int) -> Optional[float]:
    """The floor of the module docstring; None: the link has no cap."""
    caps = [c for c in (FLOOR_CONNECTIONS * model.per_connection_rate,
                        model.total_rate) if c]
    if not caps:
        return None
    rate = min(caps)
    if kind == 'round-trip':
        return (INCREMENTAL_ROUND_TRIPS[store] * model.rtt
                + up / rate + down / rate)
    return max(up, down) / rate


def run_config(work: str, store: str, server: Any, proxy: Any,
               log: ServerLog, scenario: str, object_mib: int,
               volumes: Dict[str, str],
               extra: Dict[str, Dict[str, Any]]) -> List[dict]:
    """Full, 1% incremental, restore and verify of the chain: four rows."""
    container = 'bench-%s-%s' % (store, uuid.uuid4().hex[:10])
    options = store_options(store, server, proxy.url, container,
                            object_mib * MiB)
    for group, values in extra.items():
        if group in ('chunkbackup', 'backup_' + store):
            options.setdefault(group, {}).update(values)
    rows = []
    restored = os.path.join(work, 'restored')
    steps = (
        ('full backup', 'backup', 'full', volumes['full'], None, None,
         'bandwidth'),
        ('incremental, 1% changed', 'backup', 'incr', volumes['incr'],
         'full', None, 'round-trip'),
        ('restore full + incremental', 'restore', 'incr', volumes['incr'],
         None, restored, 'bandwidth'),
        ('verify full + incremental', 'verify', 'incr', volumes['incr'],
         None, None, 'bandwidth'),
    )
    targets = TARGETS.get(scenario)
    for label, op, name, volume, parent, target, kind in steps:
        before = proxy.stats()
        proxy.reset_max_open()
        log.mark()
        proxy_cpu0 = benchlib.cpu_seconds()
        server_cpu0 = server_cpu_seconds(server)
        sampler = LinkSampler(proxy)
        try:
            result = child(work, store, options, op, name, volume, parent,
                           target)
        finally:
            sampler.stop()
        server_cpu = server_cpu_seconds(server) - server_cpu0
        bulk_from, bulk_to = sampler.bulk_window(result['started'])
        moved = proxy.stats() - before
        # The proxy runs in this process, which does nothing else meanwhile.
        proxy_cpu = benchlib.cpu_seconds() - proxy_cpu0
        requests = log.requests_since_mark()
        floor = floor_seconds(kind, store, proxy.model, moved.bytes_up,
                              moved.bytes_down)
        target_ratio = None
        if targets and op in ('backup', 'restore'):
            target_ratio = targets[1] if kind == 'round-trip' else targets[0]
        row = {
            'scenario': scenario, 'store': store, 'object_mib': object_mib,
            'operation': label, 'floor_kind': kind,
            'seconds': result['seconds'], 'cpu_s': result['cpu_s'],
            'rss_mib': result['rss_mib'], 'proxy_cpu_s': proxy_cpu,
            'server_cpu_s': server_cpu, 'bulk_from_s': bulk_from,
            'bulk_to_s': bulk_to,
            'bytes_up': moved.bytes_up, 'bytes_down': moved.bytes_down,
            'connections': moved.connections, 'max_open': moved.max_open,
            'requests': sum(v for k, v in requests.items() if k != 'login'),
            'logins': requests.get('login', 0), 'by_method': requests,
            'floor_s': floor,
            'ratio': result['seconds'] / floor if floor else None,
            'target': target_ratio,
        }
        rows.append(row)
        print_row(row)
        if op == 'restore' and not same_file(restored, volume):
            raise SystemExit('the restored volume differs (%s, %s)!'
                             % (store, scenario))
    os.unlink(restored)
    return rows


def same_file(a: str, b: str) -> bool:
    with open(a, 'rb') as fa, open(b, 'rb') as fb:
        while True:
            x, y = fa.read(16 * MiB), fb.read(16 * MiB)
            if x != y:
                return False
            if not x:
                return True


HEADER = ('%-5s %-5s %4s %-27s %7s %6s %6s %5s %4s %4s %3s %5s %5s %5s '
          '%5s %11s %6s %6s' % (
              'scen', 'store', 'obj', 'operation', 'seconds', 'MB up',
              'MB dn', 'conns', 'open', 'reqs', 'lgn', 'RSS', 'CPU', 'swift',
              'proxy', '1%-99% at s', 'floor', 'ratio'))


def print_row(row: dict) -> None:
    floor = '%6.2f' % row['floor_s'] if row['floor_s'] else '     -'
    ratio = '%6.2f' % row['ratio'] if row['ratio'] else '     -'
    target = ' (target %.2f)' % row['target'] if row['target'] else ''
    print('%-5s %-5s %4d %-27s %7.2f %6.1f %6.1f %5d %4d %4d %3d %5.0f '
          '%5.1f %5.1f %5.1f %5.2f-%5.2f %s %s%s' % (
              row['scenario'], row['store'], row['object_mib'],
              row['operation'][:27], row['seconds'], row['bytes_up'] / MB,
              row['bytes_down'] / MB, row['connections'], row['max_open'],
              row['requests'], row['logins'], row['rss_mib'], row['cpu_s'],
              row['server_cpu_s'], row['proxy_cpu_s'], row['bulk_from_s'],
              row['bulk_to_s'], floor, ratio, target), flush=True)


def markdown_table(rows: List[dict]) -> str:
    """The rows as doc/performance.md shows them."""
    lines = ['| scenario | store | object MiB | operation | seconds | MB up '
             '| MB down | connections (most open) | requests (logins) '
             '| peak RSS MiB | CPU s: client / Swift / proxy '
             '| 1%-99% of bytes moved at s | floor s | ratio | target '
             '| × local |',
             '|' + '---|' * 16]
    for r in rows:
        lines.append('| %s | %s | %d | %s | %.2f | %.1f | %.1f | %d (%d) '
                     '| %d (%d) | %.0f | %.1f / %.1f / %.1f | %.2f-%.2f '
                     '| %s | %s | %s | %s |' % (
                         r['scenario'], r['store'], r['object_mib'],
                         r['operation'], r['seconds'], r['bytes_up'] / MB,
                         r['bytes_down'] / MB, r['connections'],
                         r['max_open'], r['requests'], r['logins'],
                         r['rss_mib'], r['cpu_s'], r['server_cpu_s'],
                         r['proxy_cpu_s'], r['bulk_from_s'], r['bulk_to_s'],
                         '%.2f %s' % (r['floor_s'], r['floor_kind'])
                         if r['floor_s'] else '-',
                         '%.2f' % r['ratio'] if r['ratio'] else '-',
                         '≤ %.2f' % r['target'] if r['target'] else '',
                         '%.2f' % r['vs_local'] if r.get('vs_local')
                         else ''))
    return '\n'.join(lines)


def add_local_ratios(rows: List[dict]) -> None:
    """``vs_local``: each row's time over the same operation's without
    the link (scenario local), when that ran too.

    On two shared cores the local servers and the engine have limits of
    their own; where the no-link time is near or above a link's floor,
    the floor cannot be reached here whatever the driver does.
    """
    local = {(r['store'], r['object_mib'], r['operation']): r['seconds']
             for r in rows if r['scenario'] == 'local'}
    for row in rows:
        base = local.get((row['store'], row['object_mib'],
                          row['operation']))
        row['vs_local'] = (row['seconds'] / base
                           if base and row['scenario'] != 'local' else None)


def make_volumes(work: str, size: int) -> Dict[str, str]:
    """The mixed volume, and a copy with 1% of its 32 KiB blocks changed."""
    from chunkbackup.testing import volumes

    full = os.path.join(work, 'volume-full')
    incr = os.path.join(work, 'volume-incr')
    volumes.write_volume(full, size, 'mixed', seed=1)
    shutil.copyfile(full, incr)
    # As bench_engine: runs of 1-16 blocks, as file writes cluster.
    volumes.change_blocks(incr, 0.01, 32768, seed=2, max_run=16)
    return {'full': full, 'incr': incr}


def parse_settings(settings: List[str]) -> Dict[str, Dict[str, Any]]:
    """``--set group.name=value`` as {group: {name: value}}.

    A setting other than the defaults is what one compares against them
    (objects in flight, rate limits), so it is printed with the results.
    Values stay strings: oslo.config converts them to the option's type.
    """
    groups: Dict[str, Dict[str, Any]] = {}
    for setting in settings:
        key, sep, value = setting.partition('=')
        group, dot, name = key.partition('.')
        if not (sep and dot and group and name):
            raise SystemExit('--set wants GROUP.NAME=VALUE, not %r'
                             % setting)
        if group not in SETTING_GROUPS:
            raise SystemExit('--set %s: the group is one of %s'
                             % (setting, ', '.join(SETTING_GROUPS)))
        groups.setdefault(group, {})[name] = value
    return groups


def loadavg() -> str:
    with open('/proc/loadavg') as f:
        return ' '.join(f.read().split()[:3])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--size-mib', type=int, default=None,
                        help='volume size (default 512, --quick 128)')
    parser.add_argument('--quick', action='store_true',
                        help='a 128 MiB volume, scenarios a and b, 50 MiB '
                             'objects only')
    parser.add_argument('--store', choices=('swift', 's3', 'both'),
                        default='both')
    parser.add_argument('--scenario', default='a,b,local',
                        help='comma-separated, of: %s' % ', '.join(SCENARIOS))
    parser.add_argument('--object-mib', default=','.join(
        str(s) for s in OBJECT_SIZES_MIB),
        help='comma-separated object sizes in MiB')
    parser.add_argument('--set', action='append', default=[],
                        metavar='GROUP.NAME=VALUE',
                        help='an option for the drivers, e.g. '
                             'chunkbackup.objects_in_flight=8 or '
                             'backup_s3.multipart_threshold=5242880 '
                             '(repeatable; the other settings stay at '
                             'their defaults)')
    parser.add_argument('--workdir', default=None)
    parser.add_argument('--json', help='also write the results here')
    parser.add_argument('--markdown', action='store_true',
                        help='also print the table as markdown')
    # Child-process arguments.
    for name in ('--op', '--options', '--name', '--catalog', '--volume',
                 '--parent', '--target'):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.size_mib is None:
        args.size_mib = 128 if args.quick else 512
    if args.quick:
        args.scenario = 'a,b' if args.scenario == 'a,b,local' else \
            args.scenario
    return args


def main() -> None:
    args = parse_args()
    if args.op:
        return run_op(args)

    from tests.functional.servers import linkproxy
    from tests.functional.servers import swift as swift_server

    stores = ['swift', 's3'] if args.store == 'both' else [args.store]
    scenarios = [s.strip() for s in args.scenario.split(',') if s.strip()]
    for s in scenarios:
        if s not in SCENARIOS:
            raise SystemExit('unknown scenario %r (of %s)'
                             % (s, ', '.join(SCENARIOS)))
    object_sizes = [int(s) for s in args.object_mib.split(',')]
    extra = parse_settings(args.set)
    if args.quick and args.object_mib == ','.join(
            str(s) for s in OBJECT_SIZES_MIB):
        object_sizes = [OBJECT_SIZES_MIB[0]]
    # Swift's servers inherit it: their log lines, counted per operation,
    # must reach the log file at once.
    os.environ['PYTHONUNBUFFERED'] = '1'
    started = time.monotonic()
    print('load average at the start: %s' % loadavg())
    if extra:
        print('settings other than the defaults: %s' % ', '.join(
            '%s.%s=%s' % (g, n, v) for g, values in extra.items()
            for n, v in values.items()))
    work = tempfile.mkdtemp(prefix='chunkbackup-bench-remote-',
                            dir=args.workdir)
    rows: List[dict] = []
    try:
        print('making a %d MiB mixed volume in %s ...' % (args.size_mib,
                                                          work))
        volumes = make_volumes(work, args.size_mib * MiB)
        print('starting Swift (tempauth, s3api) on 127.0.0.1 ...')
        with swift_server.running_swift() as server:
            upstream = urllib.parse.urlsplit(server.endpoint)
            log = ServerLog(server.log_path('proxy'))
            print('\nfloor: bandwidth = max(up, down) / rate; round-trip = '
                  'K x RTT + up / rate + down / rate; rate = min(%d x '
                  'per-connection cap, total cap); K = %s' % (
                      FLOOR_CONNECTIONS, ', '.join(
                          '%d for %s' % (k, s) for s, k in
                          INCREMENTAL_ROUND_TRIPS.items())))
            for scenario in scenarios:
                model = linkproxy.LinkModel(**SCENARIOS[scenario])
                print('\nscenario %s: %s; %d MiB volume'
                      % (scenario, model.describe(), args.size_mib))
                print(HEADER)
                with linkproxy.LinkProxy(upstream.hostname, upstream.port,
                                         model) as proxy:
                    for store in stores:
                        for object_mib in object_sizes:
                            rows += run_config(work, store, server, proxy,
                                               log, scenario, object_mib,
                                               volumes, extra)
        elapsed = time.monotonic() - started
        add_local_ratios(rows)
        if any(r['vs_local'] for r in rows):
            print('\nseconds over the same operation without the link '
                  '(local), and over the floor:')
            for r in rows:
                if r['vs_local']:
                    print('  %-5s %-5s %4d %-28s %5.2fx local  %5.2fx floor'
                          % (r['scenario'], r['store'], r['object_mib'],
                             r['operation'], r['vs_local'], r['ratio']))
        print('\n%.0f s in all; load average at the end: %s'
              % (elapsed, loadavg()))
        if args.markdown:
            print('\n' + markdown_table(rows))
        if args.json:
            with open(args.json, 'w') as f:
                json.dump({'size_mib': args.size_mib, 'rows': rows,
                           'settings': extra,
                           'scenarios': {s: SCENARIOS[s] for s in scenarios},
                           'seconds': elapsed}, f, indent=2)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
