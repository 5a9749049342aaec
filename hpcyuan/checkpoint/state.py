"""What one rank saves and how any rank loads it back: the training state as pieces of logical tensors.

    state = live_state(optimizer)                 # or frozen_state(optimizer): an async save's, no copy
    pieces = rank_pieces(optimizer, dp_rank, state)  # this rank's share: (name, kind, shape, start, stop, data)
    load_rank_state(optimizer, read_into)         # read_into(kind, name, start, out): fill 1-D numpy `out`
    optimizer.rebuild_weights()                   # the weights from the master blocks (collective over dp)

A piece is a contiguous range [start, stop) of the *flattened* global tensor of one logical parameter
(`embedding.weight`, `layers.3.attn.q_proj.weight`, ...) and one kind: the weight itself, or the
optimizer's fp32 master copy and Adam moments. This works because every pipeline stage keeps its
parameters as views into one flat buffer and each dp rank owns one contiguous block of it
(parallel/flat.py): a block cuts parameters only into flat ranges. Nothing about the writing layout
(pp, dp, layers_per_stage, ZeRO stage, bucket sizes) is needed to load, so any layout loads any other.

Who writes what, so that every range is written exactly once:
  - each dp rank writes its own block (flat.shard(dp_rank)) of weights, master, m and v, whatever the
    ZeRO stage (with stage 0 every rank holds everything; the block split still divides the writing);
  - the tied embedding's copy on the last pipeline stage (`lm_head.weight`, logical name
    `embedding.weight`) is not written: the first stage writes it, and both load it;
  - padding is never written.

What a rank loads: only its optimizer block (master, m, v of flat.shard(dp_rank), or of everything
with ZeRO-0). The weights are not read: every step leaves them equal to the master cast to their
dtype (the fused AdamW writes them back from it), so `optimizer.rebuild_weights()` makes them again,
bit for bit, and under ZeRO-1/2 all-gathers them over dp as a step does. A rank thus reads 12 bytes
per parameter it owns instead of also the 2-4 bytes of every weight of its stage (dp times over).
The weights stay in the checkpoint for readers without an optimizer (export, generate, h5py).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from hpcyuan.checkpoint.format import KINDS, Piece

TIED_LOGICAL = "embedding.weight"


def logical(name: str) -> str:
    return TIED_LOGICAL if name == "lm_head.weight" else name


def live_state(optimizer) -> dict[str, torch.Tensor]:
    """This rank's optimizer block of every kind, live: kind -> the tensor holding flat-buffer elements
    [owned.start, owned.end) of it (the weights' part of the flat buffer, master, m, v)."""
    owned = optimizer.owned
    return {"weight": optimizer.flat.data[owned.start:owned.end], "master": optimizer.master,
            "exp_avg": optimizer.exp_avg, "exp_avg_sq": optimizer.exp_avg_sq}


def frozen_state(optimizer) -> dict[str, torch.Tensor]:
    """Like live_state, but master, m and v frozen by `optimizer.freeze()` (left unchanged by the
    next steps, see ZeroAdamW.freeze) and the weights derived from the frozen master: every step
    leaves them equal to the master cast to their dtype (the fused AdamW writes them back from it),
    so with fp32 weights they are the master's own bits and nothing is copied."""
    state = optimizer.freeze()
    dtype = optimizer.flat.data.dtype
    state["weight"] = state["master"] if dtype == torch.float32 else state["master"].to(dtype)
    return state


def rank_pieces(optimizer, dp_rank: int, state: dict[str, torch.Tensor]) -> list[Piece]:
    """This rank's pieces of every kind (see the module docstring for who writes what), their data
    numpy views of `state` (live_state or frozen_state): a live one must be written before training
    goes on."""
    flat, owned = optimizer.flat, optimizer.owned
    block = flat.shard(dp_rank)
    pieces = []
    # kind by kind, so a shard holds the weights, then master, m and v, each back to back: a resume
    # reads the last three as one sequential run (load_rank_state skips the weights)
    for kind in KINDS:
        for seg in flat.segments:
            if seg.name == "lm_head.weight":
                continue  # the first stage writes the tied embedding
            part = seg.region.intersect(block)
            if part is None:
                continue
            data = state[kind][part.start - owned.start:part.end - owned.start].detach().numpy()
            pieces.append(Piece(logical(seg.name), kind, seg.shape, part.start - seg.start, part.end - seg.start, data))
    return pieces


def load_rank_state(optimizer, read_into: Callable[[str, str, int, np.ndarray], None]) -> None:
    """Fill this rank's optimizer block (fp32 master, Adam m and v) from a checkpoint written by any
    layout; `read_into(kind, name, start, out)` fills the numpy array `out` with elements
    [start, start + out.size) of a flattened tensor (CheckpointReader.read_into), here straight into
    the live buffers. The weights come after, from the master: `optimizer.rebuild_weights()`."""
    flat = optimizer.flat
    # kind by kind, in the order rank_pieces writes them: reads from a shard of the same layout are
    # one sequential run
    for kind, target in (("master", optimizer.master), ("exp_avg", optimizer.exp_avg),
                         ("exp_avg_sq", optimizer.exp_avg_sq)):
        for seg in flat.segments:
            part = seg.region.intersect(optimizer.owned)
            if part is None:
                continue
            owned = target[part.start - optimizer.owned.start:part.end - optimizer.owned.start]
            read_into(kind, logical(seg.name), part.start - seg.start, owned.detach().numpy())
