"""Training batches: token windows -> (tokens, targets, position_ids) int64 tensors.

Samples are packed windows that cross document boundaries. As in Megatron's
`reset_position_ids`, positions restart after every <eod>: the token after an <eod> gets position
0 and the <eod> itself keeps its running position, so `a b <eod> c d` -> 0 1 2 0 1.

    for mb in micro_batches(dataset, sampler.local_batch(consumed, dp_rank, dp), micro_batch_size):
        loss = model(mb.tokens, mb.position_ids, mb.targets)      # each (micro_batch_size, T)
"""

from __future__ import annotations

from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch


class Batch(NamedTuple):
    tokens: torch.Tensor        # (B, T) int64 inputs
    targets: torch.Tensor       # (B, T) int64, tokens shifted left by one
    position_ids: torch.Tensor  # (B, T) int64, reset after each <eod>


def position_ids(tokens: torch.Tensor, eod_id: int) -> torch.Tensor:
    """(B, T) int64 positions counting from the last document start in each row."""
    B, T = tokens.shape
    t = torch.arange(T, device=tokens.device).expand(B, T)  # (B, T)
    starts = torch.zeros_like(t)
    # A document starts at t when token t-1 is <eod>; carry the latest start forward with cummax.
    starts[:, 1:] = torch.where(tokens[:, :-1] == eod_id, t[:, 1:], 0)
    return t - starts.cummax(dim=1).values


def make_batch(dataset, indices: Sequence[int], eod_id: int) -> Batch:
    """Stack dataset.sample(i) windows (T + 1 tokens each) into a Batch of shape (B, T)."""
    windows = torch.from_numpy(np.stack([dataset.sample(int(i)) for i in indices]))  # (B, T+1)
    tokens = windows[:, :-1].contiguous()
    return Batch(tokens, windows[:, 1:].contiguous(), position_ids(tokens, eod_id))


def micro_batches(dataset, local_indices: Sequence[int], micro_batch_size: int,
                  eod_id: int | None = None) -> Iterator[Batch]:
    """A rank's local batch in order, micro_batch_size samples at a time (must divide it)."""
    if len(local_indices) % micro_batch_size:
        raise ValueError(f"local batch of {len(local_indices)} samples is not a multiple of "
                         f"micro_batch_size {micro_batch_size}")
    eod = dataset.eod_id if eod_id is None else eod_id
    for start in range(0, len(local_indices), micro_batch_size):
        yield make_batch(dataset, local_indices[start:start + micro_batch_size], eod)
