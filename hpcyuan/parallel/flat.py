"""The model's trainable parameters as views into one flat, padded buffer: the unit ZeRO shards.

    flat = FlatParams(model, weight_decay=0.1, shards=dp)
    flat.data                     # every parameter, back to back (param.data are views into it)
    flat.shard(r)                 # Region(start, end): the slice dp rank r owns, numel / shards each
    flat.buckets(bucket_numel)    # contiguous slices of whole parameters, in gradient order

Layout: the weight-decayed parameters (>= 2-D) first, then the others (norm weights, conv biases),
each group in reverse registration order, then the `tied` parameters (the embedding copy a
pipeline's first and last stage share), which get a bucket of their own. Backward produces
gradients roughly from the last layer to the first, so buckets at the front of the buffer fill
first; the small no-decay group is one region near the end, so a shard meets few weight-decay
regions (`decay_regions`). The total is padded with zeros to a multiple of `shards` so
reduce-scatter and all-gather see equal blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hpcyuan.model import param_groups


@dataclass(frozen=True)
class Region:
    """Elements [start, end) of the flat buffer."""

    start: int
    end: int

    @property
    def numel(self) -> int:
        return self.end - self.start

    def intersect(self, other: "Region") -> "Region | None":
        start, end = max(self.start, other.start), min(self.end, other.end)
        return Region(start, end) if start < end else None


@dataclass(frozen=True)
class Segment:
    """One parameter's place in the flat buffer."""

    name: str
    start: int
    shape: tuple[int, ...]
    weight_decay: float

    @property
    def numel(self) -> int:
        return int(torch.Size(self.shape).numel())

    @property
    def region(self) -> Region:
        return Region(self.start, self.start + self.numel)


class FlatParams:
    """Moves every trainable parameter of `model` into `self.data` (values kept) and makes
    `param.data` a view of its slice, so an update of the flat buffer is an update of the model."""

    def __init__(self, model: torch.nn.Module, weight_decay: float, shards: int, tied: tuple[str, ...] = ()):
        groups = param_groups(model, weight_decay)
        ordered = [(name, p, group["weight_decay"])
                   for group in groups for name, p in reversed(list(zip(group["names"], group["params"])))]
        ordered = [e for e in ordered if e[0] not in tied] + [e for e in ordered if e[0] in tied]
        self.tied = Region(sum(p.numel() for name, p, _ in ordered if name not in tied),
                           sum(p.numel() for _, p, _ in ordered)) if tied else None
        """Where the tied parameters lie (None without any)."""
        dtypes = {p.dtype for _, p, _ in ordered}
        if len(dtypes) != 1:
            raise ValueError(f"FlatParams needs one parameter dtype, the model has {sorted(map(str, dtypes))}")
        self.params = [p for _, p, _ in ordered]
        self.segments: list[Segment] = []
        offset = 0
        for name, p, wd in ordered:
            self.segments.append(Segment(name, offset, tuple(p.shape), wd))
            offset += p.numel()
        self.numel = offset
        """Elements that belong to parameters (without the padding)."""
        self.shards = shards
        padded = -(-offset // shards) * shards
        self.data = torch.zeros(padded, dtype=dtypes.pop())
        for seg, p in zip(self.segments, self.params):
            view = self.data[seg.start:seg.start + seg.numel].view(seg.shape)
            view.copy_(p.detach())
            p.data = view

    @property
    def padded_numel(self) -> int:
        return self.data.numel()

    def shard(self, rank: int) -> Region:
        """The block of dp rank `rank`: padded_numel / shards elements."""
        size = self.padded_numel // self.shards
        return Region(rank * size, (rank + 1) * size)

    def decay_regions(self, within: Region) -> list[tuple[Region, float]]:
        """(region, weight decay) pieces of `within`, merged over consecutive equal-decay parameters;
        the padding goes with the last parameter's decay (its values stay zero either way)."""
        pieces: list[tuple[Region, float]] = []
        for seg in self.segments:
            end = self.padded_numel if seg is self.segments[-1] else seg.start + seg.numel
            part = Region(seg.start, end).intersect(within)
            if part is None:
                continue
            if pieces and pieces[-1][1] == seg.weight_decay and pieces[-1][0].end == part.start:
                pieces[-1] = (Region(pieces[-1][0].start, part.end), seg.weight_decay)
            else:
                pieces.append((part, seg.weight_decay))
        return pieces

    def buckets(self, bucket_numel: int) -> list[list[int]]:
        """Indices into `segments`, grouped into consecutive buckets of about `bucket_numel`
        elements (a bucket closes once it reaches the size; a large parameter is a bucket alone;
        the tied parameters are the last bucket, alone)."""
        buckets: list[list[int]] = [[]]
        filled = 0
        for i, seg in enumerate(self.segments):
            first_tied = self.tied is not None and seg.start == self.tied.start and buckets[-1]
            if filled >= bucket_numel or first_tied:
                buckets.append([])
                filled = 0
            buckets[-1].append(i)
            filled += seg.numel
        return buckets

    def grad_views(self, grad: torch.Tensor) -> list[torch.Tensor]:
        """`grad` (padded_numel elements) cut into one view per parameter, in `params` order."""
        return [grad[seg.start:seg.start + seg.numel].view(seg.shape) for seg in self.segments]
