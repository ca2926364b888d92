"""Checking a changed-block map before trusting it.

A map can be wrong: a dirty bitmap lost in a crash, or made against
another parent. Before an incremental trusts one, two checks run:

- every unallocated block the map calls unchanged must be zeros in the
  parent (free: its digests are compared, nothing is read);
- a random sample of the allocated blocks the map calls unchanged is read,
  hashed and compared with the parent's digests.

If a map misses ``m`` changed blocks and each unchanged-by-the-map block
is sampled with probability ``f``, the miss goes unseen with probability
``(1 - f) ** m``: with f = 0.03 and m = 262 (5% of the changed blocks when
1% of a 16 GiB volume changed) that is 3.4e-4. Blocks are drawn one by one
(geometric gaps), so clustered misses are found as well as scattered ones.
"""
import dataclasses
import math
import random
from typing import Iterable, Iterator, List, Optional, Tuple

from chunkbackup import concurrency
from chunkbackup.engine import blockmap
from chunkbackup.engine import sources
from chunkbackup import pipeline

# Sampled blocks read by one task.
_BATCH = 64


@dataclasses.dataclass
class Verdict:
    trusted: bool
    sampled: int = 0
    reason: Optional[str] = None
    bytes_read: int = 0


def sample_blocks(segments: Iterable[sources.Segment], fraction: float,
                  rng: random.Random) -> Iterator[int]:
    """Block numbers drawn with probability ``fraction``, in order.

    Only KNOWN segments are drawn from; geometric gaps make it cost
    O(samples), not O(blocks).
    """
    if fraction <= 0:
        return
    log_keep = math.log1p(-fraction) if fraction < 1 else None
    for segment in segments:
        if segment.kind != sources.KNOWN:
            continue
        block = segment.first - 1
        while True:
            if log_keep is None:
                block += 1
            else:
                u = rng.random()
                block += 1 + int(math.log1p(-u) / log_keep)
            if block >= segment.end:
                break
            yield block


def check(source: sources.VolumeSource, segments: List[sources.Segment],
          unchanged_holes: List[Tuple[int, int]],
          parent_map: blockmap.BlockMap, size: int, parent_size: int,
          fraction: float, pools: concurrency.Executors,
          rng: Optional[random.Random] = None
          ) -> Verdict:
    """Whether the map behind ``segments`` can be trusted (see module)."""
    bs = parent_map.block_size
    reason = _check_holes(unchanged_holes, parent_map, parent_size)
    if reason:
        return Verdict(False, 0, reason)
    rng = rng or random.Random()
    batches = ((source, parent_map, batch, bs, size)
               for batch in _batches(sample_blocks(segments, fraction, rng)))
    verdict = Verdict(True)
    # Batches are read and compared on the CPU threads, a few at a time.
    for mismatch, count, read in pipeline.ordered(
            pools.submit_cpu, _compare, batches, pools.cpu_workers + 1):
        verdict.sampled += count
        verdict.bytes_read += read
        if mismatch is not None:
            verdict.trusted = False
            verdict.reason = ('block %d (offset %d) changed although the '
                              'map says it did not' % (mismatch,
                                                       mismatch * bs))
            break
    return verdict


def _batches(blocks: Iterator[int]) -> Iterator[List[int]]:
    batch = []
    for block in blocks:
        batch.append(block)
        if len(batch) == _BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _compare(source, parent_map, blocks, bs, size
             ) -> Tuple[Optional[int], int, int]:
    """Compare one batch of sampled blocks with the parent.

    Returns the first block that differs (or None), the blocks compared
    and the bytes read.
    """
    buffer = bytearray(bs)
    read = 0
    for count, block in enumerate(blocks, 1):
        length = min(bs, size - block * bs)
        view = memoryview(buffer)[:length]
        got = source.read_into(block * bs, view)
        read += got
        digest = parent_map.digests.block(view[:got])
        if got != length or digest != parent_map.digest(block):
            return block, count, read
    return None, len(blocks), read


def _check_holes(holes, parent_map, parent_size) -> Optional[str]:
    """Unallocated blocks the map vouches for must be zeros in the parent."""
    bs = parent_map.block_size
    zero = parent_map.digests.zero
    full = zero(bs)
    parent_blocks = parent_map.block_count
    for first, end in holes:
        for chunk in range(first, end, 16384):
            count = min(16384, end - chunk)
            expected = full * count
            if chunk + count == parent_blocks and parent_size % bs:
                # The parent's last block is short.
                expected = full * (count - 1) + zero(
                    parent_size % bs)
            if parent_map.read(chunk, count) != expected:
                return ('the parent holds data in unallocated blocks near '
                        'offset %d that the map says did not change'
                        % (chunk * bs))
    return None
