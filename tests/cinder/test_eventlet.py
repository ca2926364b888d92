"""test_manager.py again, on eventlet: cinder-backup's default concurrency.

There the process is monkey-patched, the manager hands the driver
``eventlet.tpool.Proxy`` volume files and our engine runs its CPU work on
eventlet's native thread pool. A process is patched for good, so it is a
child pytest of its own.
"""
import os
import subprocess
import sys

from tests.cinder import conftest


def test_manager_suite_on_eventlet():
    assert conftest.concurrency_mode() == 'threading'
    env = dict(os.environ, CHUNKBACKUP_CINDER_CONCURRENCY='eventlet',
               CHUNKBACKUP_REQUIRE_CINDER='1')
    here = os.path.dirname(os.path.abspath(__file__))
    top = os.path.dirname(os.path.dirname(here))
    result = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
         '-W', 'ignore::DeprecationWarning',
         os.path.join(here, 'test_manager.py')],
        cwd=top, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-20000:]
    assert ' passed' in result.stdout and 'skipped' not in result.stdout, (
        result.stdout[-4000:])
