"""Which training examples each optimizer step sees.

The order of an epoch is a function of (seed, epoch) only, so a resumed run starts at any
(epoch, batch) without replaying what came before. A distributed run draws the same
batches on every rank, and each rank trains on its `rank_share` of each.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    """The example order of one epoch."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)
    return torch.randperm(n, generator=generator).tolist()


class EpochSampler:
    """Shuffled batches of `batch_size` example indices; the last of an epoch may be short."""

    def __init__(self, n_examples: int, batch_size: int, seed: int) -> None:
        self.n_examples, self.batch_size, self.seed = n_examples, batch_size, seed

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n_examples / self.batch_size)

    def batches(self, epoch: int, first_batch: int = 0) -> Iterator[list[int]]:
        """The batches of `epoch` from its `first_batch` on."""
        order = epoch_permutation(self.n_examples, self.seed, epoch)
        size = self.batch_size
        for b in range(first_batch, self.steps_per_epoch):
            yield order[b * size:(b + 1) * size]


def rank_share(batch: list[int], rank: int, ranks: int) -> list[int]:
    """Rank `rank`'s contiguous part of `batch` out of `ranks`: sizes differ by at most one,
    the first ranks take the extra examples, and a rank past a short batch's end gets none."""
    size, extra = divmod(len(batch), ranks)
    start = rank * size + min(rank, extra)
    return batch[start:start + size + (1 if rank < extra else 0)]
