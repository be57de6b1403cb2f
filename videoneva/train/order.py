"""The data order of a training run: one global stream of micro-batches, shared out to the processes.

Each epoch shuffles the records with its own seed (seed x 1000 + epoch) and cuts the permutation
into micro-batches of `micro` records (a tail shorter than a micro-batch is left out). The stream
is the same whatever the number of processes: optimizer step s takes the next
grad_accum x world_size micro-batches of it, and micro-step a of process r takes micro-batch
a x world_size + r of those. One process with grad_accum = A x W therefore sees exactly the
micro-batches W processes with grad_accum = A see together, and a run resumed at micro-batch k
(on any number of processes) continues the stream where it stopped.
"""
from __future__ import annotations

import torch

from videoneva.errors import ConfigError


class MicroBatchOrder:
    """Record indices of micro-batch k of the global stream (see the module docstring)."""

    def __init__(self, n_records: int, micro: int, seed: int):
        if n_records < micro:
            raise ConfigError(f"data.data_path has {n_records} records, fewer than train.micro_batch_size={micro}")
        self.n, self.micro, self.seed = n_records, micro, seed
        self.per_epoch = n_records // micro
        self._epoch, self._perm = -1, []

    def micro_batch(self, k: int) -> list[int]:
        """Indices of the records in micro-batch k (k counts from the start of training)."""
        epoch, i = divmod(k, self.per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1000 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=gen).tolist()
        return self._perm[i * self.micro: (i + 1) * self.micro]


def rank_micro_batches(consumed: int, grad_accum: int, world_size: int, rank: int) -> list[int]:
    """Micro-batch numbers process `rank` trains on in the optimizer step that follows the first
    `consumed` micro-batches of the stream."""
    return [consumed + a * world_size + rank for a in range(grad_accum)]
