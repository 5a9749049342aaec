"""Saving and resuming a training job: every rank writes its share, rank 0 commits (collective calls).

    meta = restore(job, optimizer, cfg, say)    # before training: {"step", "consumed_samples", ...} or None
    save(job, optimizer, cfg, progress)         # at a checkpoint step: progress = {"step": ..., ...}

A save is synchronous for now: each rank copies its pieces (state.py), writes its shard file, and
sends its shard record and RNG state to rank 0 as bytes (no pickle), which writes the index, the
metadata and the manifest last, then renames the directory and repoints `latest` (writer.py). A rank
that fails to write raises, and the job ends (watchdog.run_main): the `.tmp` directory is never
committed and the next start ignores it. On resume rank 0 picks the newest checkpoint that verifies
(reader.latest_good, one line per skipped one) and every rank reads what its layout needs, from
whatever layout wrote it. RNG states come back when the job has as many ranks as the writer.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import hpcyuan
from hpcyuan.checkpoint.format import ShardRecord, tmp_dir_name
from hpcyuan.checkpoint.reader import CheckpointReader, latest_good
from hpcyuan.checkpoint.state import load_rank_state, rank_pieces
from hpcyuan.checkpoint.writer import begin, commit, write_shard
from hpcyuan.config import Config
from hpcyuan.errors import HpcyuanError


def checkpoint_root(cfg: Config) -> Path:
    return Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else Path(cfg.train.run_dir) / "checkpoints"


def save(job, optimizer, cfg: Config, progress: dict) -> None:
    """Write and commit the checkpoint of `progress["step"]` (every rank calls it)."""
    world, step, root = job.groups.world, progress["step"], checkpoint_root(cfg)
    pieces = [dataclasses.replace(p, data=p.data.copy()) for p in rank_pieces(optimizer, job.dp_rank)]
    if job.is_main:
        begin(root, step)
    world.barrier()  # the step_N.tmp directory exists
    record = write_shard(root / tmp_dir_name(step), world.rank, pieces)
    records = world.gather_bytes(record.to_bytes())
    rngs = world.gather_bytes(torch.get_rng_state().numpy().tobytes())
    if job.is_main:
        topo = job.topology
        meta = {**progress, "optimizer_steps": optimizer.steps_taken, "data_seed": cfg.data.seed,
                "model": dataclasses.asdict(cfg.model), "config": cfg.to_toml(),
                "code_version": hpcyuan.__version__,
                "layout": {"pp": topo.pp, "dp": topo.dp, "layers_per_stage": list(topo.layers_per_stage),
                           "zero_stage": optimizer.zero_stage, "world_size": world.size}}
        arrays = {f"rng/rank_{r:05d}/torch_cpu": np.frombuffer(b, dtype=np.uint8) for r, b in enumerate(rngs)}
        commit(root, step, [ShardRecord.from_bytes(b) for b in records], meta, cfg.checkpoint.keep_last,
               cfg.checkpoint.keep_every, arrays)
    world.barrier()  # committed before anyone goes on (or ends)


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
