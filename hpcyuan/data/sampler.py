"""The global sample order: a pure function of (seed, consumed_samples), independent of dp.

    sampler = GlobalSampler(num_samples=len(dataset), global_batch_size=G, seed=config.data.seed)
    idx = sampler.local_batch(consumed_samples, dp_rank, dp_size)   # this rank's G/dp indices
    consumed_samples += G

Global sample number n (0, 1, 2, ... over the whole run) is sample `permute(n % N)` of epoch
`n // N`, where `permute` is a keyed pseudorandom bijection of [0, N) chosen per (seed, epoch).
Each epoch therefore visits every sample exactly once, a batch may straddle two epochs, and the
order needs O(1) memory and no numpy RNG (whose streams may change between versions): it is a
Feistel network over the next power of 4 >= N (two halves of equal bit width) with cycle-walking
back into [0, N), computed with numpy uint64 arithmetic on whole batches.

Resuming on any dp gives the same next samples: rank r takes the contiguous slice
[r*G/dp, (r+1)*G/dp) of the global batch.
"""

from __future__ import annotations

import numpy as np

ROUNDS = 6  # >= 4 rounds make a Feistel network a strong pseudorandom permutation (Luby-Rackoff)
_M64 = (1 << 64) - 1


def splitmix64(x):
    """The splitmix64 finaliser, for python ints or uint64 arrays (wrap-around arithmetic)."""
    if isinstance(x, int):
        x = (x + 0x9E3779B97F4A7C15) & _M64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
        return x ^ (x >> 31)
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class FeistelPermutation:
    """A keyed bijection of [0, n): balanced Feistel network on 2*half_bits bits + cycle-walking."""

    def __init__(self, n: int, key: int):
        if n < 1:
            raise ValueError(f"permutation size must be >= 1, got {n}")
        self.n = n
        self.half_bits = max(1, ((n - 1).bit_length() + 1) // 2)  # 4**half_bits >= n
        self.mask = np.uint64((1 << self.half_bits) - 1)
        self.round_keys = [np.uint64(splitmix64((key + r * 0x632BE59BD9B4E019) & _M64)) for r in range(ROUNDS)]

    def _rounds(self, x: np.ndarray) -> np.ndarray:
        shift = np.uint64(self.half_bits)
        left, right = x >> shift, x & self.mask
        for k in self.round_keys:
            left, right = right, left ^ (splitmix64(right ^ k) & self.mask)
        return (left << shift) | right

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        """Images of positions in [0, n); (k,) int64 -> (k,) int64."""
        x = self._rounds(np.asarray(positions, dtype=np.uint64))
        # Cycle-walking: the domain is < 4n, so few values need more than one or two extra passes,
        # and walking the cycle from a value in [0, n) keeps the map a bijection of [0, n).
        outside = x >= np.uint64(self.n)
        while outside.any():
            x[outside] = self._rounds(x[outside])
            outside = x >= np.uint64(self.n)
        return x.astype(np.int64)


class GlobalSampler:
    """Dataset indices of each global batch; state is only the caller's consumed_samples."""

    def __init__(self, num_samples: int, global_batch_size: int, seed: int):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if global_batch_size < 1:
            raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
        self.num_samples, self.global_batch_size, self.seed = num_samples, global_batch_size, seed

    def epoch_permutation(self, epoch: int) -> FeistelPermutation:
        key = splitmix64((splitmix64(self.seed & _M64) ^ epoch) & _M64)
        return FeistelPermutation(self.num_samples, key)

    def indices(self, start: int, count: int) -> np.ndarray:
        """Dataset indices of global samples start .. start + count - 1; (count,) int64."""
        if start < 0:
            raise ValueError(f"consumed samples must be >= 0, got {start}")
        n = np.arange(start, start + count, dtype=np.int64)
        epochs, positions = n // self.num_samples, n % self.num_samples
        out = np.empty(count, dtype=np.int64)
        for epoch in np.unique(epochs):  # one or two epochs per batch unless G > N
            sel = epochs == epoch
            out[sel] = self.epoch_permutation(int(epoch))(positions[sel])
        return out

    def global_batch(self, consumed_samples: int) -> np.ndarray:
        """(global_batch_size,) int64 indices of the batch after `consumed_samples` samples."""
        return self.indices(consumed_samples, self.global_batch_size)

    def local_batch(self, consumed_samples: int, dp_rank: int, dp_size: int) -> np.ndarray:
        """(global_batch_size / dp_size,) int64: dp_rank's contiguous slice of the global batch."""
        if dp_size < 1 or self.global_batch_size % dp_size:
            raise ValueError(f"global_batch_size {self.global_batch_size} is not divisible by dp = {dp_size}")
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank {dp_rank} out of range [0, {dp_size})")
        per_rank = self.global_batch_size // dp_size
        return self.indices(consumed_samples + dp_rank * per_rank, per_rank)
