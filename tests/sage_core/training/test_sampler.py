"""The order of examples: a function of (seed, epoch), resumable at any batch."""

from __future__ import annotations

from sage_core.training.sampler import EpochSampler, epoch_permutation


def test_each_epoch_sees_every_example_once_in_its_own_order() -> None:
    sampler = EpochSampler(10, batch_size=4, seed=3)
    assert sampler.steps_per_epoch == 3
    first = list(sampler.batches(0))
    assert [len(b) for b in first] == [4, 4, 2]
    assert sorted(i for b in first for i in b) == list(range(10))
    assert first != list(sampler.batches(1))
    assert first == list(EpochSampler(10, batch_size=4, seed=3).batches(0))
    assert first != list(EpochSampler(10, batch_size=4, seed=4).batches(0))


def test_a_resumed_epoch_continues_where_it_stopped() -> None:
    sampler = EpochSampler(10, batch_size=4, seed=3)
    assert list(sampler.batches(2, first_batch=1)) == list(sampler.batches(2))[1:]
    assert epoch_permutation(10, 3, 2) == [i for b in sampler.batches(2) for i in b]
