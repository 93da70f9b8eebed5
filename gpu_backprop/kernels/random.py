"""Counter-based random numbers: the same bits on NumPy and CuPy.

A stateless hash of (seed, counter, index) gives uniform numbers that are
identical on both backends, need no generator state beyond two integers
(so a checkpoint restores them exactly), and cost one elementwise pass.
Dropout's masks use the same hash (:mod:`.dropout`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._cuda import define_elementwise, elementwise

Array = Any

#: the hash, in C: ``i`` is the element index, ``key`` the 64-bit mix of seed and counter
HASH_C = """
unsigned int h = (unsigned int)i * 0x9E3779B1u ^ (unsigned int)key;
h ^= (unsigned int)(key >> 32);
h ^= h >> 16; h *= 0x85EBCA6Bu; h ^= h >> 13; h *= 0xC2B2AE35u; h ^= h >> 16;
h += (unsigned int)i; h ^= h >> 15; h *= 0x2C1B3C6Du; h ^= h >> 12; h *= 0x297A2D39u; h ^= h >> 15;
"""


define_elementwise("hash_u32", "uint64 key", "uint32 out", HASH_C + "out = h;")


def mix_key(seed: int, counter: int) -> int:
    """Mix seed and counter into one 64-bit key (splitmix64)."""
    z = (seed * 0x9E3779B97F4A7C15 + counter * 0xD1B54A32D192ED03 + 0x632BE59BD9B4E019) & (2**64 - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return z ^ (z >> 31)


def hash_numpy(n: int, key: int) -> np.ndarray:
    """The hash of the indices ``0 … n-1`` under ``key``: ``HASH_C`` in NumPy, the same bits."""
    with np.errstate(over="ignore"):
        i = np.arange(n, dtype=np.uint32)
        h = i * np.uint32(0x9E3779B1) ^ np.uint32(key & 0xFFFFFFFF)
        h ^= np.uint32(key >> 32)
        for shift, mult in ((16, 0x85EBCA6B), (13, 0xC2B2AE35)):
            h ^= h >> np.uint32(shift)
            h *= np.uint32(mult)
        h ^= h >> np.uint32(16)
        h += i
        for shift, mult in ((15, 0x2C1B3C6D), (12, 0x297A2D39)):
            h ^= h >> np.uint32(shift)
            h *= np.uint32(mult)
        h ^= h >> np.uint32(15)
    return h


def hash_uniform(xp: Any, n: int, seed: int, counter: int) -> Array:
    """``n`` uint32 random words from (seed, counter), identical on NumPy and CuPy. Kernel: ``hash_u32``."""
    key = mix_key(seed, counter)
    if xp is np:
        return hash_numpy(n, key)
    out = xp.empty(n, dtype=xp.uint32)
    elementwise("hash_u32")(np.uint64(key), out)
    return out


def random_permutation(xp: Any, n: int, seed: int, counter: int) -> Array:
    """A permutation of ``range(n)`` drawn on the device from (seed, counter), the same on both backends."""
    keys = hash_uniform(xp, n, seed, counter).astype(xp.uint64)
    keys <<= 32
    keys |= xp.arange(n, dtype=xp.uint64)  # ties broken by index: a total order
    return xp.argsort(keys)

