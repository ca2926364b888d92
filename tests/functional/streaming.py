"""Checks that a store moves a big object without holding it whole.

Python's own allocations are traced (tracemalloc) while a streamed put
and a streamed get of ``size`` bytes run in this process against a real
server; the peak must stay far below the object size. The producer
yields one reused chunk, so what is traced is the store's.
"""
import os
import tracemalloc

MiB = 1024 * 1024


def uneven(body: bytes, sizes=(1, 65536, 3 * MiB + 7, 4093, MiB - 1)):
    """A producer of ``body`` in chunks of uneven sizes, again each call."""
    def produce():
        pos, n = 0, 0
        while pos < len(body):
            step = sizes[n % len(sizes)]
            yield body[pos:pos + step]
            pos += step
            n += 1
    return produce


def failing_after(count: int, chunk_size: int = MiB):
    """A producer of ``count`` random chunks that then fails.

    It raises RuntimeError, as a volume that went away would.
    """
    chunk = os.urandom(chunk_size)

    def produce():
        for _ in range(count):
            yield chunk
        raise RuntimeError('the volume went away')
    return produce


def peak_of(fn) -> int:
    """Bytes of the peak of traced allocations while ``fn()`` runs."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def assert_bounded(store, container, name, size=96 * MiB,
                   limit=32 * MiB) -> None:
    chunk = bytes(range(256)) * (MiB // 256)
    count = size // len(chunk)

    def put():
        store.put_stream(container, name, lambda: [chunk] * count)

    def get():
        received = 0
        for piece in store.get_stream(container, name, chunk_size=MiB):
            received += len(piece)
        assert received == size

    put_peak = peak_of(put)
    get_peak = peak_of(get)
    print('%s: put of %d MiB peaked at %.1f MiB, get at %.1f MiB'
          % (name, size // MiB, put_peak / MiB, get_peak / MiB))
    assert put_peak < limit, put_peak
    assert get_peak < limit, get_peak
    assert store.object_size(container, name) == size
