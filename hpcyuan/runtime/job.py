"""This rank's place in a training job: the communicators and grid coordinates `train.py` needs.

    job = Job.start(cfg)          # collective: every rank of the job calls it
    job.dp_rank, job.pp_rank      # where this rank sits in the pp x dp grid (topology.py)
    job.groups.dp                 # the data-parallel group of this rank's stage
    job.embedding                 # first + last stage of this replica (they share the embedding)
    job.is_main                   # world rank 0: the rank that prints and writes run files

The same code runs on one process (`hpcyuan train`, an MPI singleton of one rank), under
`mpiexec -n N` and under `srun --mpi=pmi2`: MPI itself says how many ranks there are.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from hpcyuan.config import Config, ParallelConfig
from hpcyuan.errors import EveryRankError, HpcyuanError
from hpcyuan.runtime.comm import Comm
from hpcyuan.runtime.topology import Groups, Topology, build_groups


@dataclass(frozen=True)
class Job:
    topology: Topology
    groups: Groups
    pp_rank: int
    dp_rank: int
    embedding: Comm | None
    """The first and last stage of this rank's replica (pp > 1, on those two stages only)."""

    @classmethod
    def start(cls, cfg: Config) -> "Job":
        world = Comm.world(timeout_s=cfg.parallel.timeout_s)
        try:
            topology = Topology.for_world(planned_parallel(cfg), cfg.model.num_layers, world.size)
        except HpcyuanError as err:
            raise EveryRankError(str(err)) from None
        pp_rank, dp_rank = topology.coords(world.rank)
        groups = build_groups(world, topology)
        embedding = None
        if topology.pp > 1:  # collective: every rank splits; middle stages get a group of their own
            ends = pp_rank in (0, topology.pp - 1)
            group = world.split(color=dp_rank if ends else topology.dp + world.rank, key=pp_rank,
                                name=f"embedding group of replica {dp_rank}")
            embedding = group if ends else None
        return cls(topology, groups, pp_rank, dp_rank, embedding)

    @property
    def is_main(self) -> bool:
        return self.groups.world.rank == 0


def planned_parallel(cfg: Config) -> ParallelConfig:
    """cfg.parallel with layers_per_stage filled in by the stage planner when the config does not pin
    it (parallel/partition.py; a pure function of the config, so every rank gets the same split)."""
    if cfg.parallel.layers_per_stage or cfg.parallel.pp == 1:
        return cfg.parallel
    import torch

    from hpcyuan.parallel.partition import CostModel, plan

    machine = "gpu" if torch.cuda.is_available() else "cpu"
    return replace(cfg.parallel, layers_per_stage=plan(cfg, model=CostModel.from_config(cfg, machine)).layers_per_stage)
