"""Resuming a training job from its newest good checkpoint (a collective call; saving: saver.py).

    meta = restore(job, optimizer, cfg, say)    # before training: {"step", "consumed_samples", ...} or None

Rank 0 picks the newest checkpoint that passes the cheap checks (reader.latest_good: sizes, metadata
crc32s; one line per skipped one) and every rank reads what its layout needs, from whatever layout
wrote it, checking each block it reads against its crc32: its optimizer block (master, m, v); the
weights are then rebuilt from the master blocks (state.py). Between them the ranks read, and so
check, every byte of the optimizer state once (the weights, equal to the master cast, are checked
by `hpcyuan ckpt verify --deep` and by export). If any rank finds damage, all ranks agree on its
one-line reason, which rank 0 prints, and go back to the previous good checkpoint. RNG states come
back when the job has as many ranks as the writer.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from hpcyuan.checkpoint.format import list_checkpoints, parse_step, step_dir_name
from hpcyuan.checkpoint.reader import CheckpointReader, latest_good
from hpcyuan.checkpoint.saver import checkpoint_root
from hpcyuan.checkpoint.state import load_rank_state
from hpcyuan.config import Config
from hpcyuan.errors import HpcyuanError


def restore(job, optimizer, cfg: Config, say: Callable[[str], None]) -> dict | None:
    """Load the newest good checkpoint under the config's checkpoint directory into this rank's
    model and optimizer; returns its metadata, or None when there is none (a fresh start). Raises
    HpcyuanError when there are checkpoints but none of them loads: a fresh start would overwrite them."""
    world, root = job.groups.world, checkpoint_root(cfg)
    older_than, said = None, set()
    while True:
        step = _choose(job, root, older_than, said, say)
        if step == NONE:
            return None
        if step == NONE_GOOD:
            raise HpcyuanError(f"no checkpoint under {root} can be loaded (reasons above); a fresh start "
                               f"would overwrite them: move them aside to start afresh")
        with CheckpointReader(root / step_dir_name(step)) as reader:
            meta = reader.meta
            check_same_model(meta, cfg, reader.dir)
            problem = ""
            try:
                # every block's crc32 is checked while the next ones are read, all before use
                load_rank_state(optimizer, lambda *where: reader.read_into(*where, check=False))
                reader.check_reads()
                if meta["layout"]["world_size"] == world.size:
                    rng = reader.state(f"rng/rank_{world.rank:05d}/torch_cpu")
                    torch.set_rng_state(torch.from_numpy(rng.copy()))
            except HpcyuanError as e:
                problem = str(e)
        replies = world.gather_bytes(problem.encode())
        if job.is_main:
            problem = next((r.decode() for r in replies if r), "")
        problem = world.broadcast_text(problem)
        if not problem:
            break
        if job.is_main:
            say(f"checkpoint: skipping {problem}; loading the previous good checkpoint")
        older_than = step
    optimizer.rebuild_weights()  # only now: every rank's reads checked, so all ranks take part
    optimizer.steps_taken = meta["optimizer_steps"]
    layout = meta["layout"]
    say(f"resumed from {reader.dir} (step {meta['step']}, {meta['consumed_samples']:,} samples), written by "
        f"pp {layout['pp']} x dp {layout['dp']} {layout['layers_per_stage']}")
    return meta


NONE, NONE_GOOD = -1, -2


def _choose(job, root, older_than: int | None, said: set[str], say) -> int:
    """The step rank 0 picks (newest that passes the cheap checks, below `older_than`), on every
    rank; NONE when there is no checkpoint, NONE_GOOD when none is good. Each message is said once."""
    chosen = torch.tensor([NONE], dtype=torch.int64)
    if job.is_main and root.is_dir():
        path, messages = latest_good(root, older_than)
        for line in messages:
            if line not in said:
                say(f"checkpoint: {line}")
                said.add(line)
        if path is not None:
            chosen[0] = parse_step(path.name)
        elif list_checkpoints(root):
            chosen[0] = NONE_GOOD
    job.groups.world.broadcast(chosen)  # one rank verifies; all load the same step
    return int(chosen[0])


def check_same_model(meta: dict, cfg: Config, path) -> None:
    """A checkpoint of another model refuses to load, naming every field that differs."""
    mine = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg.model).items()}
    differ = [f"model.{k} = {v} there, {mine.get(k)} here" for k, v in meta["model"].items() if mine.get(k) != v]
    if differ:
        raise HpcyuanError(f"{path} holds another model ({'; '.join(differ)}): "
                           f"use a fresh checkpoint.dir (or train.run_dir) for a different model")
