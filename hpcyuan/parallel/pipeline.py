"""The pipeline executor: runs this stage's instruction list (schedule.py) for one step, over MPI.

    stage = build_stage(cfg.model, topology, pp_rank)          # this rank's layers (+ embedding / head)
    pipe = Pipeline(stage, groups.pp, pp_rank, topology.pp, cfg)
    loss = pipe.train_step(batches, optimizer)                 # mean loss on the last stage, else None
    loss = pipe.evaluate(batches)                              # forward only, summed loss x samples

Every stage reads its own micro-batches from the token files (stage 0 needs the tokens, the last one
the targets, all of them the positions), so only hidden states (B, T, h) travel forward and their
gradients backward. The shape is known ahead from the config: nothing but the tensor is sent, fp32,
as the residual stream is fp32 under bf16 autocast too. Sends are MPI Isend, completed at the end of
the step (a large message completes only once its receiver posts the receive); receives block, with
the watchdog's deadline. Tags follow the schedule's per-channel order (schedule.check_matching).

With one stage the schedule is forward, backward per micro-batch: the plain data-parallel step.
"""

from __future__ import annotations

import contextlib
import time

import torch

from hpcyuan.config import Config, ModelConfig
from hpcyuan.data.batches import Batch
from hpcyuan.model import YuanStage
from hpcyuan.parallel.schedule import Op, schedule
from hpcyuan.runtime.comm import Comm, Request
from hpcyuan.runtime.topology import Topology

ACTIVATION, GRADIENT = 1, 2  # MPI tags of the two channels between neighbouring stages


def build_stage(model_cfg: ModelConfig, topology: Topology, pp_rank: int, recompute_layers: int = 0) -> YuanStage:
    """This stage's slice of the model: its layers, the embedding on stage 0, the head on the last;
    its first `recompute_layers` layers recompute their activations in backward."""
    layers = topology.stage_layers(pp_rank)
    stage = YuanStage(model_cfg, layers.start, len(layers), has_embedding=pp_rank == 0,
                      has_head=pp_rank == topology.pp - 1)
    stage.recompute_layers = recompute_layers
    return stage


def tied_embedding(stage: YuanStage) -> tuple[str, ...]:
    """The parameter this stage holds of the embedding that the first and last stage share (its
    gradient is summed over the two); () when one stage holds both ends, or neither."""
    if stage.has_embedding == stage.has_head:
        return ()
    return ("embedding.weight",) if stage.has_embedding else ("lm_head.weight",)


class Pipeline:
    """One pipeline stage's part of a training or evaluation step."""

    def __init__(self, stage: YuanStage, pp: Comm, pp_rank: int, num_stages: int, cfg: Config,
                 schedule_name: str = "1f1b"):
        self.stage, self.pp, self.pp_rank, self.num_stages = stage, pp, pp_rank, num_stages
        self.schedule_name, self.bf16 = schedule_name, cfg.train.bf16
        self.is_first, self.is_last = pp_rank == 0, pp_rank == num_stages - 1
        self.hidden_size = cfg.model.hidden_size
        self.timeline: list | None = None
        """Set to a list to record (op, micro, start, end) of every instruction of the next steps
        (timeline.py gathers and draws them)."""

    def train_step(self, batches: list[Batch], optimizer) -> float | None:
        """Forward and backward of every micro-batch in schedule order, gradients accumulated into
        `optimizer` (ZeroAdamW); returns the mean loss on the last stage, None elsewhere."""
        m = len(batches)
        inputs: dict[int, torch.Tensor] = {}   # micro -> this stage's input (requires grad), not on stage 0
        outputs: dict[int, torch.Tensor] = {}  # micro -> output hidden, or the loss on the last stage
        grads: dict[int, torch.Tensor] = {}    # micro -> gradient of the output, from the next stage
        sends: list[Request] = []
        total = torch.zeros((), dtype=torch.float64)
        self.stage.train()
        for instr in schedule(self.schedule_name, self.pp_rank, self.num_stages, m):
            i, batch = instr.micro, batches[instr.micro]
            start = time.perf_counter()
            if instr.op is Op.RECV_ACT:
                inputs[i] = self._recv(batch, self.pp_rank - 1, ACTIVATION).requires_grad_()
            elif instr.op is Op.FORWARD:
                outputs[i] = self._forward(batch, inputs.get(i))
            elif instr.op is Op.SEND_ACT:
                sends.append(self.pp.isend(outputs[i].detach(), self.pp_rank + 1, ACTIVATION))
            elif instr.op is Op.RECV_GRAD:
                grads[i] = self._recv(batch, self.pp_rank + 1, GRADIENT)
            elif instr.op is Op.BACKWARD:
                output = outputs.pop(i)
                if self.is_last:
                    total += output.detach()
                    output = output / m  # the step's loss is the mean over micro-batches
                optimizer.backward(output, last_micro_batch=i == m - 1, grad=grads.pop(i, None))
            elif instr.op is Op.SEND_GRAD:
                sends.append(self.pp.isend(inputs.pop(i).grad, self.pp_rank - 1, GRADIENT))
            if self.timeline is not None:
                self.timeline.append((instr.op, i, start, time.perf_counter()))
        for request in sends:
            request.wait()
        return float(total) / m if self.is_last else None

    @torch.no_grad()
    def evaluate(self, batches: list[Batch]) -> float | None:
        """Forward only; on the last stage the sum over micro-batches of loss x samples, else None."""
        self.stage.eval()
        total, sends = 0.0, []
        for batch in batches:
            x = None if self.is_first else self._recv(batch, self.pp_rank - 1, ACTIVATION)
            out = self._forward(batch, x)
            if self.is_last:
                total += float(out) * len(batch.tokens)
            else:
                sends.append(self.pp.isend(out, self.pp_rank + 1, ACTIVATION))
        for request in sends:
            request.wait()
        self.stage.train()
        return total if self.is_last else None

    def _forward(self, batch: Batch, hidden: torch.Tensor | None) -> torch.Tensor:
        inputs = batch.tokens if self.is_first else hidden
        with autocast(self.bf16):
            return self.stage(inputs, batch.position_ids, batch.targets if self.is_last else None)

    def _recv(self, batch: Batch, source: int, tag: int) -> torch.Tensor:
        buffer = torch.empty((*batch.tokens.shape, self.hidden_size), dtype=torch.float32)
        return self.pp.recv(buffer, source, tag)


def autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
