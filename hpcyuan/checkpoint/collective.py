"""Resuming a training job from its newest good checkpoint (a collective call; saving: saver.py).

    meta = restore(job, optimizer, cfg, say)    # before training: {"step", "consumed_samples", ...} or None

On resume rank 0 picks the newest checkpoint that verifies
(reader.latest_good, one line per skipped one) and every rank reads what its layout needs, from
whatever layout wrote it. RNG states come back when the job has as many ranks as the writer.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from hpcyuan.checkpoint.reader import CheckpointReader, latest_good
from hpcyuan.checkpoint.saver import checkpoint_root
from hpcyuan.checkpoint.state import load_rank_state
from hpcyuan.config import Config
from hpcyuan.errors import HpcyuanError


def restore(job, optimizer, cfg: Config, say: Callable[[str], None]) -> dict | None:
    """Load the newest good checkpoint under the config's checkpoint directory into this rank's
    model and optimizer; returns its metadata, or None when there is none (a fresh start)."""
    world, root = job.groups.world, checkpoint_root(cfg)
    chosen = torch.tensor([-1], dtype=torch.int64)
    if job.is_main and root.is_dir():
        path, messages = latest_good(root)
        for line in messages:
            say(f"checkpoint: {line}")
        if path is not None:
            with CheckpointReader(path) as reader:
                chosen[0] = reader.meta["step"]
    world.broadcast(chosen)  # one rank verifies; all load the same step
    if chosen[0] < 0:
        return None
    with CheckpointReader(root / f"step_{int(chosen[0]):08d}") as reader:
        meta = reader.meta
        check_same_model(meta, cfg, reader.dir)
        load_rank_state(optimizer, reader.read)
        optimizer.steps_taken = meta["optimizer_steps"]
        if meta["layout"]["world_size"] == world.size:
            torch.set_rng_state(torch.from_numpy(reader.state(f"rng/rank_{world.rank:05d}/torch_cpu").copy()))
    layout = meta["layout"]
    say(f"resumed from {reader.dir} (step {meta['step']}, {meta['consumed_samples']:,} samples), written by "
        f"pp {layout['pp']} x dp {layout['dp']} {layout['layers_per_stage']}")
    return meta


def check_same_model(meta: dict, cfg: Config, path) -> None:
    """A checkpoint of another model refuses to load, naming every field that differs."""
    mine = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg.model).items()}
    differ = [f"model.{k} = {v} there, {mine.get(k)} here" for k, v in meta["model"].items() if mine.get(k) != v]
    if differ:
        raise HpcyuanError(f"{path} holds another model ({'; '.join(differ)}): "
                           f"use a fresh checkpoint.dir (or train.run_dir) for a different model")
