"""Resharding by logical name and flat range (hpcyuan/checkpoint/state.py), without files or ranks.

State written by every rank of one layout (pp = 1 x dp = 3, or pp = 2 x dp = 2, ZeRO-1) is loaded by every rank of
others (pp = 2 x dp = 2 with an uneven split, pp = 4 x dp = 1, ZeRO-0): each rank's optimizer block
comes back equal, bit for bit, to the values written, and the weights rebuilt from the master blocks
(as ZeroAdamW.rebuild_weights does: each rank's block, all-gathered over dp) equal the weights
written; every range was written once.
The optimizer stand-in holds the tensors ZeroAdamW holds (flat buffer, owned block, master, m, v);
the MPI runs of the same code are the checkpoint integration tests.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hpcyuan.checkpoint.format import KINDS
from hpcyuan.checkpoint.state import live_state, load_rank_state, logical, rank_pieces
from hpcyuan.config import load_config
from hpcyuan.parallel.flat import FlatParams, Region
from hpcyuan.parallel.pipeline import build_stage, tied_embedding
from hpcyuan.runtime.topology import Topology

CFG = load_config("tiny-m32")


def truth() -> dict:
    """A distinct value for every (kind, logical name, element), except that the weights equal the
    master (fp32 here), as every step leaves them."""
    stage = build_stage(CFG.model, Topology(1, 1, (CFG.model.num_layers,)), 0)
    g = torch.Generator().manual_seed(7)
    values = {(kind, name): torch.randn(p.numel(), generator=g) for kind in KINDS for name, p in stage.named_parameters()
              if kind != "weight"}
    return values | {("weight", name): values[("master", name)].clone() for _, name in list(values)}


def ranks(topology: Topology, zero_stage: int):
    """Every rank's optimizer stand-in for a layout, with zeroed state."""
    for pp_rank in range(topology.pp):
        for dp_rank in range(topology.dp):
            stage = build_stage(CFG.model, topology, pp_rank)
            flat = FlatParams(stage, 0.1, shards=topology.dp, tied=tied_embedding(stage))
            owned = flat.shard(dp_rank) if zero_stage > 0 else Region(0, flat.padded_numel)
            zeros = torch.zeros(owned.numel)
            yield dp_rank, SimpleNamespace(flat=flat, owned=owned, master=zeros.clone(), exp_avg=zeros.clone(),
                                           exp_avg_sq=zeros.clone())


def fill_from(values: dict, optimizer) -> set[str]:
    """load_rank_state from `values`; returns the kinds it read."""
    kinds = set()

    def read_into(kind, name, start, out):
        kinds.add(kind)
        out[...] = values[(kind, name)][start:start + out.size].numpy()
    load_rank_state(optimizer, read_into)
    return kinds


def rebuild_weights(stage_ranks: list) -> None:
    """ZeroAdamW.rebuild_weights over one stage's dp ranks: each casts its master block into its
    flat buffer, then the all-gather (here: every rank's block copied to the others)."""
    for opt in stage_ranks:
        opt.flat.data[opt.owned.start:opt.owned.end] = opt.master
    for opt in stage_ranks:
        for other in stage_ranks:
            other.flat.data[opt.owned.start:opt.owned.end] = opt.flat.data[opt.owned.start:opt.owned.end]


@pytest.mark.parametrize("source", [Topology(1, 3, (4,)), Topology(2, 2, (3, 1))], ids=["from-dp3", "from-pp2xdp2"])
@pytest.mark.parametrize("target", [(Topology(2, 2, (1, 3)), 1), (Topology(4, 1, (1, 1, 1, 1)), 1),
                                    (Topology(1, 2, (4,)), 0)], ids=["to-pp2xdp2", "to-pp4", "to-dp2-zero0"])
def test_any_layout_loads_any_other(source, target):
    values = truth()
    written = {key: np.full(len(v), -1) for key, v in values.items()}  # which rank wrote each element
    for rank, (dp_rank, opt) in enumerate(ranks(source, zero_stage=1)):
        fill_from(values, opt)
        rebuild_weights([opt])  # its own block is all rank_pieces writes
        for piece in rank_pieces(opt, dp_rank, live_state(opt)):
            key = (piece.kind, piece.name)
            assert (written[key][piece.start:piece.stop] == -1).all(), f"{key} written twice"
            written[key][piece.start:piece.stop] = rank
            assert torch.equal(torch.from_numpy(piece.data), values[key][piece.start:piece.stop])
    assert all((w >= 0).all() for w in written.values()), "a range was never written"

    topology, zero_stage = target
    loaded = list(ranks(topology, zero_stage))
    for _, opt in loaded:
        stored = {key: v.clone() for key, v in values.items()}
        assert fill_from(stored, opt) == {"master", "exp_avg", "exp_avg_sq"}  # the weights are not read
    for pp_rank in range(topology.pp):
        rebuild_weights([opt for _, opt in loaded[pp_rank * topology.dp:(pp_rank + 1) * topology.dp]])
    for _, opt in loaded:
        for seg in opt.flat.segments:
            name = logical(seg.name)
            assert torch.equal(opt.flat.data[seg.start:seg.start + seg.numel], values[("weight", name)])
            part = seg.region.intersect(opt.owned)
            if part:
                for kind in ("master", "exp_avg", "exp_avg_sq"):
                    got = getattr(opt, kind)[part.start - opt.owned.start:part.end - opt.owned.start]
                    assert torch.equal(got, values[(kind, name)][part.start - seg.start:part.end - seg.start])
        assert not opt.flat.data[opt.flat.numel:].any()  # padding stays zero
