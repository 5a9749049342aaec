"""Saving a training job's checkpoint, in the background: the blocking part is a freeze, not a copy.

    saver = Saver(job, cfg)                 # every rank; duplicates the world communicator
    saver.save(optimizer, progress)         # at a checkpoint step: freeze, then write in a thread
    ...                                     # training goes on while the files are written
    saver.wait()                            # before the next save, a rewind, or the end of the run
    saver.close()                           # the end of the run: the save in flight is finished

`save` first waits for the previous save (and re-raises its error), then freezes the optimizer's
master, m and v (ZeroAdamW.freeze: the next step reads them and writes its result into a second set
of buffers, out of place, so they stay as they are with nothing copied; the weights are the frozen
master, state.frozen_state) and takes its RNG state and the progress: after that training goes on.
A thread then writes the frozen state on its own duplicate of the world communicator, whose messages
can never match the training loop's (MPI runs with MPI_THREAD_MULTIPLE): rank 0 creates
`step_N.tmp/`, every rank writes its shard file, rank 0 gathers every rank's shard record (or its
error) and commits (writer.commit: index, meta, manifest last, fsync, rename, `latest`), or removes
the `.tmp` when any rank failed, and tells every rank the outcome. A failed save (a full disk, say)
therefore raises the same one-line HpcyuanError on every rank at the next `wait`, and the previous
checkpoints are untouched.

If the job dies (a killed rank, MPI_Abort) while a save is in flight, the directory is still
`step_N.tmp/`, which no reader ever looks at: a save is committed whole or not at all. With
`checkpoint.async_save = false` the same steps run in the caller's thread on the live state.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import hpcyuan
from hpcyuan.checkpoint.format import Piece, ShardRecord, tmp_dir_name
from hpcyuan.checkpoint.state import frozen_state, live_state, rank_pieces
from hpcyuan.checkpoint.writer import abort, begin, commit, write_shard
from hpcyuan.config import Config
from hpcyuan.errors import EveryRankError, HpcyuanError
from hpcyuan.runtime.comm import Comm
from hpcyuan.runtime.faults import fault, kill_self

_OK, _FAILED = b"ok:", b"error:"


def checkpoint_root(cfg: Config) -> Path:
    return Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else Path(cfg.train.run_dir) / "checkpoints"


@dataclass
class Snapshot:
    """What one rank writes for one checkpoint: views of the frozen (async) or live (sync) state."""

    step: int
    pieces: list[Piece]
    rng: bytes
    meta: dict


@dataclass
class SaveTiming:
    """Seconds of the last save: `blocking` the caller waited in save(), `total` until committed."""

    step: int = -1
    blocking: float = 0.0
    total: float = 0.0


class Saver:
    """Writes checkpoints of one job, at most one at a time, in the background (see module docs)."""

    def __init__(self, job, cfg: Config):
        self.job, self.cfg, self.root = job, cfg, checkpoint_root(cfg)
        self.asynchronous = cfg.checkpoint.async_save
        self.comm: Comm = job.groups.world.dup("checkpoint I/O")
        self.last = SaveTiming()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, optimizer, progress: dict) -> None:
        """Checkpoint `progress["step"]`: returns once the state is frozen (async) or committed."""
        self.wait()
        start = time.perf_counter()
        snap = self._snapshot(optimizer, progress)
        self.last = SaveTiming(snap.step, time.perf_counter() - start)
        if not self.asynchronous:
            self._write(snap, start)
            self.last.blocking = self.last.total
            self._raise_error()
            return
        self._thread = threading.Thread(target=self._write, args=(snap, start),
                                        name=f"checkpoint step {snap.step}", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Block until the save in flight (if any) is committed; raise its error on every rank."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._raise_error()

    def close(self) -> None:
        """The end of the run: finish the save in flight (a run that ends by an exception instead
        leaves it as `step_N.tmp/`, never committed)."""
        self.wait()

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _snapshot(self, optimizer, progress: dict) -> Snapshot:
        state = frozen_state(optimizer) if self.asynchronous else live_state(optimizer)
        pieces = rank_pieces(optimizer, self.job.dp_rank, state)
        topo, world = self.job.topology, self.job.groups.world
        meta = {**progress, "optimizer_steps": optimizer.steps_taken, "data_seed": self.cfg.data.seed,
                "model": dataclasses.asdict(self.cfg.model), "config": self.cfg.to_toml(),
                "code_version": hpcyuan.__version__,
                "layout": {"pp": topo.pp, "dp": topo.dp, "layers_per_stage": list(topo.layers_per_stage),
                           "zero_stage": optimizer.zero_stage, "world_size": world.size}}
        return Snapshot(progress["step"], pieces, torch.get_rng_state().numpy().tobytes(), meta)

    def _write(self, snap: Snapshot, start: float) -> None:
        """Every rank, on the checkpoint communicator: write, gather, commit or discard, agree."""
        try:
            outcome = self._write_and_commit(snap)
            if outcome:
                raise EveryRankError(outcome)
        except BaseException as e:  # handed to the training thread by wait()
            self._error = e
        self.last.total = time.perf_counter() - start

    def _write_and_commit(self, snap: Snapshot) -> str:
        """'' once committed, else the one-line reason every rank raises."""
        comm, main = self.comm, self.comm.rank == 0
        tmp = self.root / tmp_dir_name(snap.step)
        problem = ""
        if main:
            try:
                begin(self.root, snap.step)
            except HpcyuanError as e:
                problem = str(e)
        problem = self._agree(problem)  # the directory exists (or nobody writes)
        if problem:
            return problem
        try:
            payload = _OK + write_shard(tmp, comm.rank, snap.pieces).to_bytes()
            if fault("kill-in-save", step=snap.step, rank=comm.rank):
                kill_self()
        except HpcyuanError as e:
            payload = _FAILED + f"rank {comm.rank}: {e}".encode()
        replies = comm.gather_bytes(payload)
        rngs = comm.gather_bytes(snap.rng)
        if main:
            failed = [r[len(_FAILED):].decode() for r in replies if r.startswith(_FAILED)]
            if failed:
                abort(tmp)
                problem = f"checkpoint of step {snap.step} not saved, previous ones kept: {failed[0]}"
            else:
                arrays = {f"rng/rank_{r:05d}/torch_cpu": np.frombuffer(b, dtype=np.uint8) for r, b in enumerate(rngs)}
                try:
                    commit(self.root, snap.step, [ShardRecord.from_bytes(r[len(_OK):]) for r in replies],
                           snap.meta, self.cfg.checkpoint.keep_last, self.cfg.checkpoint.keep_every, arrays)
                except HpcyuanError as e:
                    problem = f"checkpoint of step {snap.step} not saved, previous ones kept: {e}"
        return self._agree(problem)

    def _agree(self, problem: str) -> str:
        """Rank 0's verdict ('' = fine) on every rank."""
        return self.comm.broadcast_text(problem)
