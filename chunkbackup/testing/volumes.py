"""Deterministic test volumes: random, text-like, zero-heavy and mixed.

The same seed gives the same bytes, so a failing test or a benchmark can
be rerun on the same data.
"""
import os
import random

MiB = 2 ** 20
_WORDS = (b'the of and to in is was for on that with as by at from this be '
          b'backup volume chunk block object restore incremental parent '
          b'metadata container driver swift posix google cinder openstack '
          b'error status available creating deleting size offset length '
          b'compression zlib zstd sha256 md5 json true false null 0 1 2 3 4 '
          b'5 6 7 8 9 10 42 100 1024 4096 def return import class self if '
          b'else for while try except raise with yield lambda None').split()


def random_bytes(rng: random.Random, size: int) -> bytes:
    return rng.getrandbits(size * 8).to_bytes(size, 'little') if size else b''


def text_bytes(rng: random.Random, size: int) -> bytes:
    """Text-like data: words, numbers and line breaks (compresses ~3-4x)."""
    out = bytearray()
    while len(out) < size:
        line = b' '.join(rng.choice(_WORDS) for _ in range(rng.randint(4, 14)))
        out += line + (b'\n' if rng.random() < 0.9 else b';\n')
    return bytes(out[:size])


def region(rng: random.Random, kind: str, size: int) -> bytes:
    if kind == 'zero':
        return bytes(size)
    if kind == 'random':
        return random_bytes(rng, size)
    if kind == 'text':
        return text_bytes(rng, size)
    raise ValueError(kind)


def write_volume(path: str, size: int, kind: str = 'mixed', seed: int = 0,
                 region_size: int = MiB) -> None:
    """Write a volume of ``size`` bytes.

    ``mixed`` is, by region, about a quarter zeros, a third random and the
    rest text-like (the benchmark's content); ``zero-heavy`` is 80% zeros.
    Text regions repeat a small pool so big volumes are cheap to make.
    """
    rng = random.Random(seed)
    weights = {'mixed': (('zero', 25), ('random', 33), ('text', 42)),
               'zero-heavy': (('zero', 80), ('random', 10), ('text', 10)),
               'random': (('random', 1),),
               'text': (('text', 1),),
               'zero': (('zero', 1),)}[kind]
    kinds = [k for k, _ in weights]
    cum = [w for _, w in weights]
    pool = {}
    with open(path, 'wb') as f:
        left = size
        while left > 0:
            n = min(region_size, left)
            choice = rng.choices(kinds, cum)[0]
            if choice == 'random':
                f.write(random_bytes(rng, n))
            else:
                key = (choice, n, rng.randrange(8))
                if key not in pool:
                    pool[key] = region(rng, choice, n)
                f.write(pool[key])
            left -= n


def change_blocks(path: str, fraction: float, block_size: int, seed: int = 1,
                  max_run: int = 1) -> int:
    """Overwrite ``fraction`` of the blocks of a volume with random data.

    Changes come in runs of 1..max_run blocks at random places. Returns the
    number of blocks written.
    """
    rng = random.Random(seed)
    size = os.path.getsize(path)
    blocks = max(1, size // block_size)
    target = max(1, int(blocks * fraction))
    done = 0
    with open(path, 'r+b') as f:
        while done < target:
            run = min(rng.randint(1, max_run), target - done)
            start = rng.randrange(0, max(1, blocks - run))
            f.seek(start * block_size)
            f.write(random_bytes(rng, run * block_size))
            done += run
    return done
