r"""The random streams of a run that do not come from the global RNG state.

* The data order: epoch ``e`` visits the training set in the order ``randperm(n)`` drawn from a
  generator seeded by ``(seed, e)`` (:func:`epoch_permutation`); step ``t`` takes batch
  ``t mod steps_per_epoch`` of epoch ``t div steps_per_epoch`` (:class:`BatchOrder`).
* The evaluation subsets: ``randperm(n)[:k]`` from a generator seeded by
  :data:`EVAL_SUBSET_SEED` ``+ salt`` (:func:`eval_subset`), independent of ``--seed``, so every
  run of a data set is evaluated on the same points.
* Evaluation draws: evaluation, gradient analysis, active units and samples run under
  :func:`forked_rng` seeded by :func:`eval_seed` ``(seed, step)``: they leave the global state
  (and so training) unchanged, and an evaluation redone after a resume draws the same values.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import torch
from torch import Tensor

__all__ = ["EVAL_SUBSET_SEED", "eval_subset", "epoch_permutation", "eval_seed", "forked_rng", "BatchOrder"]

#: the seed of the fixed evaluation subsets (the same for every run of a data set)
EVAL_SUBSET_SEED = 20200611


def eval_subset(n: int, k: int, salt: int) -> Tensor:
    r"""``min(n, k)`` distinct indices of ``range(n)`` (int64 ``[min(n, k)]``), fixed by ``salt``."""
    g = torch.Generator().manual_seed(EVAL_SUBSET_SEED + salt)
    return torch.randperm(n, generator=g)[: min(n, k)]


def epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    r"""The order of the ``n`` training points in ``epoch`` (int64 ``[n]``), a function of ``(seed, epoch)``."""
    g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch)) % (2 ** 62))
    return torch.randperm(n, generator=g)


def eval_seed(seed: int, step: int) -> int:
    r"""The seed of the evaluation at ``step`` of a run with ``seed`` (in ``[0, 2**62)``)."""
    return (int(seed) * 7_919 + int(step) * 104_729 + 17) % (2 ** 62)


@contextmanager
def forked_rng(device: torch.device, seed: int) -> Iterator[None]:
    r"""Inside the block, torch's CPU RNG (and ``device``'s when it is CUDA) is seeded with
    ``seed``; after it, the states are back to what they were."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class BatchOrder:
    r"""The training indices of each step: batch ``t mod steps_per_epoch`` (``batch_size`` indices)
    of :func:`epoch_permutation` ``(n, seed, t div steps_per_epoch)``; the permutation of the
    current epoch is kept, so consecutive steps draw it once."""

    def __init__(self, n: int, batch_size: int, steps_per_epoch: int, seed: int) -> None:
        if n < 1 or batch_size < 1 or steps_per_epoch < 1 or steps_per_epoch * batch_size > n:
            raise ValueError(f"BatchOrder needs n >= steps_per_epoch * batch_size >= 1, got n={n}, "
                             f"batch_size={batch_size}, steps_per_epoch={steps_per_epoch}")
        self.n, self.batch_size, self.steps_per_epoch, self.seed = n, batch_size, steps_per_epoch, seed
        self._epoch = -1
        self._perm: Optional[Tensor] = None

    def indices(self, step: int) -> Tensor:
        r"""The indices of the batch of ``step`` (int64 ``[batch_size]``)."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch or self._perm is None:
            self._perm = epoch_permutation(self.n, self.seed, epoch)
            self._epoch = epoch
        bs = self.batch_size
        return self._perm[pos * bs:(pos + 1) * bs]
