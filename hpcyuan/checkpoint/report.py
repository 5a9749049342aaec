"""What `hpcyuan ckpt list | inspect | verify` print: checkpoints described in text, no torch needed.

    print(list_report(root))      # one line per checkpoint: step, samples, layout, size, verified
    print(inspect_report(step))   # metadata, layout, tensors per kind with their bytes
    problems = verify(step, deep=True)   # reader.verify: [] when good
"""

from __future__ import annotations

import math
from pathlib import Path

from hpcyuan.checkpoint.format import KINDS, list_checkpoints, read_latest
from hpcyuan.checkpoint.reader import CheckpointReader, verify
from hpcyuan.errors import HpcyuanError


def step_dirs(path: Path) -> list[Path]:
    """The checkpoints `path` names: a step directory itself, or every one under a checkpoint root."""
    if (path / "meta.json").is_file() or (path / "manifest.json").is_file() or path.name.startswith("step_"):
        return [path]
    if not path.is_dir():
        raise HpcyuanError(f"{path}: no such checkpoint directory")
    found = [p for _, p in list_checkpoints(path)]
    if not found:
        raise HpcyuanError(f"{path}: no checkpoints here (step_NNNNNNNN directories)")
    return found


def list_report(root: Path) -> str:
    latest = read_latest(root)
    lines = [f"{'step':>8}  {'samples':>12}  {'layout':<22}{'size':>10}  status"]
    for path in step_dirs(root):
        problems = verify(path)
        size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
        try:
            with CheckpointReader(path) as reader:
                meta = reader.meta
            layout = meta.get("layout", {})
            where = f"pp {layout.get('pp')} x dp {layout.get('dp')} {layout.get('layers_per_stage')}"
            step, samples = meta["step"], f"{meta.get('consumed_samples', 0):,}"
        except HpcyuanError:
            where, step, samples = "?", path.name, "?"
        status = "ok" if not problems else f"BAD: {problems[0]}"
        mark = "  <- latest" if latest is not None and latest.resolve() == path.resolve() else ""
        lines.append(f"{step:>8}  {samples:>12}  {where:<22}{size / 2**20:>8.1f} MiB  {status}{mark}")
    return "\n".join(lines)


def inspect_report(step_dir: Path) -> str:
    with CheckpointReader(step_dir) as reader:
        meta = reader.meta
        layout = meta.get("layout", {})
        lines = [f"{step_dir}: step {meta['step']}, {meta.get('consumed_samples', 0):,} samples consumed, "
                 f"{meta.get('optimizer_steps', '?')} optimizer steps, hpcyuan {meta.get('code_version', '?')}",
                 f"written by {layout.get('world_size', '?')} ranks: pp {layout.get('pp')} x dp {layout.get('dp')}, "
                 f"layers per stage {layout.get('layers_per_stage')}, ZeRO-{layout.get('zero_stage')}",
                 "model: " + ", ".join(f"{k} {v}" for k, v in meta.get("model", {}).items())]
        for kind in KINDS:
            names = reader.names(kind)
            elements = sum(math.prod(reader.shape(kind, n)) for n in names)
            lines.append(f"{kind:<11} {len(names):>4} tensors, {elements:,} elements")
    return "\n".join(lines)

