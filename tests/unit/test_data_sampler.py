"""Global sampler: order is a pure function of (seed, consumed_samples), the same for any dp."""

import numpy as np
import pytest

from hpcyuan.data.sampler import FeistelPermutation, GlobalSampler


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 17, 64, 1000, 4097])
def test_permutation_is_a_bijection(n):
    image = FeistelPermutation(n, key=99)(np.arange(n))
    assert np.array_equal(np.sort(image), np.arange(n))


def test_permutation_shuffles():
    image = FeistelPermutation(1000, key=7)(np.arange(1000))
    assert (image == np.arange(1000)).mean() < 0.02


def test_local_batches_concatenate_to_the_global_batch_for_any_dp():
    sampler = GlobalSampler(num_samples=37, global_batch_size=8, seed=3)
    for step in range(30):  # crosses several epoch boundaries (37 is not a multiple of 8)
        consumed = step * 8
        expected = sampler.global_batch(consumed)
        for dp in (1, 2, 4):
            parts = [sampler.local_batch(consumed, r, dp) for r in range(dp)]
            assert all(len(p) == 8 // dp for p in parts)
            assert np.array_equal(np.concatenate(parts), expected)


def test_every_sample_once_per_epoch_and_batches_straddle_epochs():
    n, g = 50, 8
    sampler = GlobalSampler(n, g, seed=11)
    stream = np.concatenate([sampler.global_batch(k * g) for k in range(3 * n // g + 1)])
    for epoch in range(3):
        assert np.array_equal(np.sort(stream[epoch * n:(epoch + 1) * n]), np.arange(n))
    # batch 6 covers samples 48..55: the last 2 of epoch 0 and the first 6 of epoch 1
    assert np.array_equal(sampler.global_batch(48), stream[48:56])
    assert not np.array_equal(stream[:n], stream[n:2 * n]), "each epoch has its own order"


def test_batch_larger_than_dataset():
    sampler = GlobalSampler(num_samples=3, global_batch_size=8, seed=0)
    batch = sampler.global_batch(0)
    assert np.array_equal(np.sort(batch[:3]), np.arange(3)) and np.array_equal(np.sort(batch[3:6]), np.arange(3))


def test_seeds_give_different_orders():
    a = GlobalSampler(1000, 16, seed=1).global_batch(0)
    b = GlobalSampler(1000, 16, seed=2).global_batch(0)
    assert not np.array_equal(a, b)


def test_order_is_a_pure_function_of_seed_and_consumed():
    reference = GlobalSampler(101, 4, seed=5)
    stream = np.concatenate([reference.global_batch(k * 4) for k in range(80)])
    for consumed in (0, 1, 3, 99, 100, 101, 202, 250, 316):  # any offset, even mid-batch
        fresh = GlobalSampler(101, 4, seed=5)
        assert np.array_equal(fresh.global_batch(consumed), stream[consumed:consumed + 4])
    # resuming at a different dp continues exactly where the stream was
    resumed = np.concatenate([GlobalSampler(101, 4, seed=5).local_batch(40, r, 2) for r in range(2)])
    assert np.array_equal(resumed, stream[40:44])


def test_scales_to_billions_without_memory():
    sampler = GlobalSampler(num_samples=3_000_000_000, global_batch_size=1024, seed=9)
    batch = sampler.global_batch(7_000_000_000)
    assert batch.dtype == np.int64 and batch.shape == (1024,)
    assert batch.min() >= 0 and batch.max() < 3_000_000_000 and len(np.unique(batch)) == 1024


def test_dp_must_divide_global_batch():
    sampler = GlobalSampler(100, 6, seed=0)
    with pytest.raises(ValueError, match="not divisible by dp = 4"):
        sampler.local_batch(0, 0, 4)
