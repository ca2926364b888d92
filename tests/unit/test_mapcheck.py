"""Checking a changed-block map by sampling, before an incremental trusts it.
"""
import hashlib
import random

import pytest

from chunkbackup import backupformat as fmt
from chunkbackup import concurrency
from chunkbackup.engine import blockmap
from chunkbackup.engine import mapcheck
from chunkbackup.engine import sources

K, R, H = sources.KNOWN, sources.READ, sources.HOLE

# 16 GiB of 32 KiB blocks, 1% changed, of which the map misses 5%.
BLOCKS = 16 * 2 ** 30 // (32 * 2 ** 10)
MISSED = 262
FRACTION = 0.03


def _detected(segments, missed, rng):
    for block in mapcheck.sample_blocks(segments, FRACTION, rng):
        if block in missed:
            return True
    return False


def test_a_map_missing_262_of_524288_blocks_is_caught_almost_always():
    # A correct sampler misses with p = (1 - 0.03) ** 262 = 3.4e-4 a trial,
    # so in n = 2000 trials the misses X ~ Binomial(2000, 3.4e-4), mean
    # 0.68: P(X >= 5) = 6e-4, so allowing 4 rejects a correct sampler for
    # fewer than one seed set in a thousand (the seeds are fixed: the test
    # is deterministic). A sampler catching only 99.5% (mean 10 misses)
    # passes with P(X <= 4) = 0.03, one catching 99% with 3e-5.
    segments = [sources.Segment(0, BLOCKS, K)]
    trials = 2000
    misses = 0
    for seed in range(trials):
        rng = random.Random(seed)
        missed = set(rng.sample(range(BLOCKS), MISSED))
        if not _detected(segments, missed, rng):
            misses += 1
    assert misses <= 4, '%d of %d wrong maps went unseen' % (misses, trials)


def test_a_clustered_miss_is_caught_as_well():
    # Geometric gaps draw every block independently: 262 missed blocks in
    # one run are as visible as 262 scattered ones (the bound above). The
    # run lies in a shorter KNOWN segment, which only makes the test fast.
    misses = 0
    for seed in range(2000):
        rng = random.Random(10 ** 6 + seed)
        first = rng.randrange(BLOCKS - 4096)
        segments = [sources.Segment(first, first + 4096, K)]
        start = rng.randrange(first, first + 4096 - MISSED)
        missed = set(range(start, start + MISSED))
        if not _detected(segments, missed, rng):
            misses += 1
    assert misses <= 4  # as above: mean 0.68, P(X >= 5) = 6e-4


def test_the_sample_is_about_three_percent():
    segments = [sources.Segment(0, BLOCKS, K)]
    sizes = []
    for seed in range(10):
        drawn = list(mapcheck.sample_blocks(segments, FRACTION,
                                            random.Random(seed)))
        assert drawn == sorted(set(drawn))
        assert 0 <= drawn[0] and drawn[-1] < BLOCKS
        sizes.append(len(drawn))
    # 15729 expected a run, standard deviation 124: within 3% of it.
    mean = sum(sizes) / len(sizes)
    assert abs(mean - FRACTION * BLOCKS) < 0.03 * FRACTION * BLOCKS
    assert max(sizes) < 0.05 * BLOCKS  # costs < 5% of a full read


def test_only_known_segments_are_sampled():
    segments = [sources.Segment(0, 10, R), sources.Segment(10, 20, K),
                sources.Segment(20, 30, H), sources.Segment(30, 35, K)]
    drawn = list(mapcheck.sample_blocks(segments, 1.0, random.Random(1)))
    assert drawn == list(range(10, 20)) + list(range(30, 35))
    assert list(mapcheck.sample_blocks(segments, 0.0,
                                       random.Random(1))) == []
    drawn = list(mapcheck.sample_blocks(segments, 0.5, random.Random(1)))
    assert all(10 <= b < 20 or 30 <= b < 35 for b in drawn)


# ----------------------------------------------------------------------
# check(): the parent's digests against a source.

BS = 4096


class _MemorySource(sources.VolumeSource):
    parallel_reads = True

    def __init__(self, data: bytes):
        self.data = data
        self.size = len(data)

    def read_into(self, offset, buffer):
        chunk = self.data[offset:offset + len(buffer)]
        buffer[:len(chunk)] = chunk
        return len(chunk)


def _map_of(data: bytes) -> blockmap.BlockMap:
    block_map = blockmap.BlockMap(BS)
    block_map.append(b''.join(hashlib.sha256(data[i:i + BS]).digest()
                              for i in range(0, len(data), BS)))
    return block_map


def _check(source, segments, holes, parent, parent_size, fraction=1.0):
    with concurrency.Executors(2, 2) as pools:
        return mapcheck.check(source, segments, holes, parent,
                              source.size, parent_size, fraction, pools,
                              random.Random(3))


def _volume(blocks, tail=0, seed=0):
    return random.Random(seed).randbytes(blocks * BS + tail)


def test_check_trusts_a_right_map():
    data = _volume(200)
    segments = [sources.Segment(0, 50, K), sources.Segment(50, 60, R),
                sources.Segment(60, 200, K)]
    verdict = _check(_MemorySource(data), segments, [], _map_of(data),
                     len(data))
    assert verdict.trusted and verdict.reason is None
    assert verdict.sampled == 190


def test_check_rejects_a_changed_block_the_map_calls_unchanged():
    parent = _volume(200)
    data = bytearray(parent)
    data[137 * BS + 5] ^= 1
    segments = [sources.Segment(0, 200, K)]
    verdict = _check(_MemorySource(bytes(data)), segments, [],
                     _map_of(parent), len(parent))
    assert not verdict.trusted
    assert 'block 137 (offset %d)' % (137 * BS) in verdict.reason


def test_check_rejects_a_short_read():
    parent = _volume(20)
    segments = [sources.Segment(0, 20, K)]
    source = _MemorySource(parent[:-1])
    source.size = len(parent)  # the volume shrank under us
    verdict = _check(source, segments, [], _map_of(parent), len(parent))
    assert not verdict.trusted and 'block 19' in verdict.reason


def test_check_short_last_block_unchanged():
    data = _volume(20, tail=1000)
    segments = [sources.Segment(0, 21, K)]
    verdict = _check(_MemorySource(data), segments, [], _map_of(data),
                     len(data))
    assert verdict.trusted and verdict.sampled == 21


def test_unchanged_holes_must_be_zeros_in_the_parent_even_unsampled():
    parent = bytes(100 * BS) + b'x' * BS + bytes(59 * BS)
    now = bytes(len(parent))  # the map says block 100 did not change
    segments = [sources.Segment(0, 160, H)]
    verdict = _check(_MemorySource(now), segments, [(0, 160)],
                     _map_of(parent), len(parent), fraction=0.0)
    assert not verdict.trusted
    assert 'unallocated blocks' in verdict.reason


def test_unchanged_holes_over_a_short_zero_last_block_are_trusted():
    size = 30 * BS + 100
    parent = bytes(size)
    segments = [sources.Segment(0, 31, H)]
    verdict = _check(_MemorySource(parent), segments, [(0, 31)],
                     _map_of(parent), size, fraction=0.0)
    assert verdict.trusted


def test_unchanged_holes_past_one_check_chunk():
    # Holes are compared 16384 digests at a time.
    blocks = 20000
    digests = bytearray(fmt.zero_digest(BS) * blocks)
    digests[17000 * 32] ^= 1
    parent_map = blockmap.BlockMap(BS)
    parent_map.append(bytes(digests))
    source = _MemorySource(b'')
    source.size = blocks * BS
    with concurrency.Executors(1, 1) as pools:
        bad = mapcheck.check(source, [], [(0, blocks)], parent_map,
                             blocks * BS, blocks * BS, 0.0, pools)
        good = mapcheck.check(source, [], [(0, 16384), (17001, blocks)],
                              parent_map, blocks * BS, blocks * BS, 0.0,
                              pools)
    assert not bad.trusted and good.trusted


@pytest.mark.parametrize('fraction', [0.0, 0.03])
def test_zero_fraction_samples_nothing(fraction):
    data = _volume(100)
    verdict = _check(_MemorySource(data), [sources.Segment(0, 100, K)], [],
                     _map_of(data), len(data), fraction)
    assert verdict.trusted
    assert (verdict.sampled == 0) == (fraction == 0.0)
