"""Data-parallel gradient reduction: sum the gradients of a stage's dp group, bucket by bucket, while
backward still runs.

    sync = GradSync(flat, dp_comm, zero_stage=1, bucket_numel=6_553_600)
    sync.backward(loss, last_micro_batch=True)   # loss.backward() with the reductions started inside
    sync.finish()                                # wait for them
    sync.grad_shard                              # ZeRO-1/2: this rank's block of the summed gradient

What each ZeRO stage keeps and sends (Psi = the stage's parameters, n = dp ranks, fp32):
  stage 0  gradients accumulate in a full buffer (`grad`, 4 Psi bytes); on the last micro-batch each
           bucket is all-reduced in place: every rank holds the full sum.
  stage 1  as stage 0, but each bucket is reduce-scattered into `grad_shard` (4 Psi / n): a rank
           receives only the block its optimizer shard updates. Same bytes on the wire as stage 0's
           all-reduce minus the all-gather that the optimizer then does with the new weights.
  stage 2  no full gradient buffer: every micro-batch's gradients are copied into per-bucket staging
           buffers as autograd produces them (param.grad is dropped at once) and reduce-scattered into
           `grad_shard`; at most `MAX_IN_FLIGHT` buckets are in flight. Memory 4 Psi / n plus a few
           buckets; traffic is one reduce-scatter per micro-batch instead of one per step.

Tied parameters (pipeline parallel: the embedding on the first stage and its copy, the LM head, on
the last) are the last bucket, which backward never launches: `finish()` first sums their gradient
over `tied_group` (the two stages of this replica), then reduces the bucket over dp. Doing it inside
backward could deadlock, as the last stage finishes its backward long before the first; with stage 2
their gradient accumulates over the micro-batches in the bucket's staging buffer.

Buckets are launched strictly in bucket order on every rank (MPI requires the same order of
collectives everywhere, and autograd may finish a later bucket first); a bucket whose parameters got
no gradient in this backward is reduced with zeros at the end. Buckets are contiguous in the flat
buffer (flat.py orders parameters as backward produces them); each received block lands at its place
in `grad_shard`. Sums, not means: the optimizer divides by n inside its fused update.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hpcyuan.parallel.flat import FlatParams, Region
from hpcyuan.runtime.comm import Comm, Request

MAX_IN_FLIGHT = 2
"""ZeRO-2: bucket reductions in flight before the next launch waits (bounds the staging memory)."""


@dataclass
class _Bucket:
    segments: list[int]
    region: Region
    counts: list[int]
    """Elements of this bucket in each rank's shard (the uneven blocks of its reduce-scatter)."""
    missing: int = 0
    staging: torch.Tensor | None = None
    requests: list[Request] = field(default_factory=list)
    deferred: bool = False
    """The tied parameters' bucket: reduced in finish(), after the sum over the tied group."""


class GradSync:
    """Owns the gradients of `flat`'s parameters and their reduction over `comm` (the dp group)."""

    def __init__(self, flat: FlatParams, comm: Comm, zero_stage: int, bucket_numel: int,
                 tied_group: Comm | None = None):
        if comm.size != flat.shards:
            raise ValueError(f"the dp group has {comm.size} ranks but the flat buffer has {flat.shards} shards")
        if (flat.tied is None) != (tied_group is None):
            raise ValueError("tied parameters and a tied group go together")
        self.flat, self.comm, self.zero_stage, self.tied_group = flat, comm, zero_stage, tied_group
        self.shard = flat.shard(comm.rank)
        self.grad: torch.Tensor | None = None
        """Stages 0 and 1: the full gradient buffer; param.grad are views into it."""
        self.grad_shard: torch.Tensor | None = None
        """Stages 1 and 2: this rank's block of the summed gradient."""
        if zero_stage < 2:
            self.grad = torch.zeros(flat.padded_numel, dtype=torch.float32)
            for p, view in zip(flat.params, flat.grad_views(self.grad)):
                p.grad = view  # autograd accumulates into the flat buffer in place
        if zero_stage > 0:
            self.grad_shard = torch.zeros(self.shard.numel, dtype=torch.float32)
        groups = flat.buckets(bucket_numel)
        self._buckets = [self._bucket(indices, last=b == len(groups) - 1) for b, indices in enumerate(groups)]
        self._buckets[-1].deferred = flat.tied is not None
        self._regular = len(self._buckets) - self._buckets[-1].deferred
        """Buckets that backward launches (all but the deferred tied one)."""
        self._bucket_of = {i: b for b, bucket in enumerate(self._buckets) for i in bucket.segments}
        self._armed = False
        self._launched = 0
        self._in_flight: list[_Bucket] = []
        for i, p in enumerate(flat.params):
            p.register_post_accumulate_grad_hook(lambda p, i=i: self._on_grad(i, p))

    def _bucket(self, indices: list[int], last: bool) -> _Bucket:
        segs = [self.flat.segments[i] for i in indices]
        # the last bucket also covers the padding, so the buckets tile the whole flat buffer
        region = Region(segs[0].start, self.flat.padded_numel if last else segs[-1].start + segs[-1].numel)
        counts = [(region.intersect(self.flat.shard(r)) or Region(0, 0)).numel for r in range(self.flat.shards)]
        return _Bucket(indices, region, counts)

    # -- the step's life cycle ------------------------------------------------------------------

    def zero_grad(self) -> None:
        if self.grad is not None:
            self.grad.zero_()
        if self.grad_shard is not None:
            self.grad_shard.zero_()
        if self._buckets[-1].deferred and self.zero_stage == 2:
            self._buckets[-1].staging = torch.zeros(self._buckets[-1].region.numel, dtype=torch.float32)

    def backward(self, output: torch.Tensor, last_micro_batch: bool, grad: torch.Tensor | None = None) -> None:
        """`output.backward(grad)` (a loss, or a pipeline stage's output with the gradient its next
        stage sent), reducing while it runs when this backward must be reduced (the last micro-batch
        of a step; every micro-batch with stage 2)."""
        if self._in_flight and self.zero_stage < 2:
            raise RuntimeError("GradSync.backward: the step's reduction is already running "
                               "(last_micro_batch=True twice before finish())")
        self._armed = last_micro_batch or self.zero_stage == 2
        if self._armed:
            for bucket in self._buckets:
                bucket.missing = len(bucket.segments)
            self._launched = 0
        torch.autograd.backward(output, grad)
        if self._armed:
            self._launch_ready(flush=True)
            self._armed = False
            if self.zero_stage == 2:
                self._drain()  # staging buffers are per micro-batch

    def finish(self) -> None:
        """Complete the step's reduction: wait for the buckets in flight, then reduce the tied one."""
        self._drain()
        tied = self._buckets[-1]
        if tied.deferred:
            source = self.grad if self.zero_stage < 2 else tied.staging
            offset = 0 if self.zero_stage < 2 else tied.region.start
            span = slice(self.flat.tied.start - offset, self.flat.tied.end - offset)
            self.tied_group.all_reduce(source[span])
            self._launch(tied)
            self._drain()

    def _drain(self) -> None:
        while self._in_flight:
            self._complete(self._in_flight.pop(0))

    # -- inside backward ------------------------------------------------------------------------

    def _on_grad(self, index: int, param: torch.Tensor) -> None:
        if not self._armed:
            return  # stages 0/1 before the last micro-batch: accumulate locally only
        bucket = self._buckets[self._bucket_of[index]]
        if self.zero_stage == 2:
            seg = self.flat.segments[index]
            if bucket.staging is None:
                bucket.staging = torch.zeros(bucket.region.numel, dtype=torch.float32)
            offset = seg.start - bucket.region.start
            part = bucket.staging[offset:offset + seg.numel]
            if bucket.deferred:  # accumulates over the micro-batches, reduced once in finish()
                part.add_(param.grad.reshape(-1))
            else:
                part.copy_(param.grad.reshape(-1))
            param.grad = None  # the full-size gradient of this parameter is gone from here on
        bucket.missing -= 1
        self._launch_ready(flush=False)
        for pending in self._in_flight:
            pending.requests[0].test()  # drive MPI progress while autograd computes

    def _launch_ready(self, flush: bool) -> None:
        """Start the reductions of buckets whose gradients are complete, in bucket order; with
        `flush`, start all the rest too (parameters that got no gradient contribute zeros)."""
        while self._launched < self._regular:
            bucket = self._buckets[self._launched]
            if bucket.missing and not flush:
                return
            self._launch(bucket)
            self._launched += 1

    def _launch(self, bucket: _Bucket) -> None:
        if self.zero_stage == 2 and len(self._in_flight) >= MAX_IN_FLIGHT:
            self._complete(self._in_flight.pop(0))
        r = bucket.region
        if self.zero_stage == 0:
            bucket.requests = [self.comm.iall_reduce(self.grad[r.start:r.end])]
        else:
            source = self.grad[r.start:r.end] if self.zero_stage == 1 else self._staging(bucket)
            mine = r.intersect(self.shard)
            out = (self.grad_shard[mine.start - self.shard.start:mine.end - self.shard.start] if mine
                   else self.grad_shard[:0])
            if self.zero_stage == 2:
                out = torch.empty_like(out)  # received, then added: stage 2 accumulates over micro-batches
            bucket.requests = [self.comm.ireduce_scatter(source, bucket.counts, out)]
        self._in_flight.append(bucket)

    def _staging(self, bucket: _Bucket) -> torch.Tensor:
        if bucket.staging is None:  # no parameter of this bucket got a gradient in this backward
            bucket.staging = torch.zeros(bucket.region.numel, dtype=torch.float32)
        return bucket.staging

    def _complete(self, bucket: _Bucket) -> None:
        received = bucket.requests[0].wait()
        if self.zero_stage == 2:
            mine = bucket.region.intersect(self.shard)
            if mine:
                self.grad_shard[mine.start - self.shard.start:mine.end - self.shard.start] += received
            if not bucket.deferred:
                bucket.staging = None
        bucket.requests = []
