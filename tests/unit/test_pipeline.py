"""The bounded stages: a failed write stops the work at once."""
import concurrent.futures

import pytest

from chunkbackup import pipeline


def test_a_failed_write_is_raised_at_the_next_add_not_when_full():
    window = pipeline.Window(size=16)
    failed = concurrent.futures.Future()
    window.add(failed, 1)
    failed.set_exception(OSError('store is gone'))  # while others queue
    queued = concurrent.futures.Future()  # not started yet
    with pytest.raises(OSError, match='store is gone'):
        window.add(queued, 1)
    # The caller cancels what is left: the write just added included.
    window.cancel()
    assert queued.cancelled()


def test_writes_that_succeed_are_collected_quietly():
    window = pipeline.Window(size=2, max_bytes=10)
    for _ in range(5):
        done = concurrent.futures.Future()
        done.set_result(None)
        window.add(done, 4)
    window.drain()
    assert window.pending == {} and window.pending_bytes == 0
