"""The pp x dp grid as a value: which stage and replica a rank is, which layers a stage holds,
and the sub-communicators of a stage's dp group and a replica's pipeline.

    topo = Topology.for_world(cfg.parallel, cfg.model.num_layers, world.size)
    pp_rank, dp_rank = topo.coords(world.rank)
    groups = build_groups(world, topo)      # groups.dp: this stage's replicas, groups.pp: my pipeline

Rank order: rank = pp_rank * dp + dp_rank, so the dp ranks of one stage are consecutive. Launchers
fill nodes with consecutive ranks, so a stage's data-parallel group (whose gradient traffic is
2 (dp-1)/dp x the stage's parameters every step, the largest volume) stays inside a node whenever
dp divides the ranks per node, and only the pipeline's activations (one micro-batch's (B, T, h)
per send) cross nodes. Picture for pp=2, dp=3 (docs/runtime.md):

             dp_rank 0   dp_rank 1   dp_rank 2
  stage 0      rank 0      rank 1      rank 2     <- dp group of stage 0
  stage 1      rank 3      rank 4      rank 5     <- dp group of stage 1
               ^ pp group of replica 0 = ranks 0, 3

Pure (no MPI) except build_groups; tested by tests/unit/test_runtime_topology.py and, with real
ranks, tests/mpi/test_comm.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from hpcyuan.errors import HpcyuanError

if TYPE_CHECKING:  # comm imports mpi4py; the pure grid maths must not need it
    from hpcyuan.config import ParallelConfig
    from hpcyuan.runtime.comm import Comm


@dataclass(frozen=True)
class Topology:
    """pp pipeline stages x dp data-parallel replicas; stage s holds layers_per_stage[s] layers."""

    pp: int
    dp: int
    layers_per_stage: tuple[int, ...]

    def __post_init__(self):
        if self.pp < 1 or self.dp < 1:
            raise HpcyuanError(f"topology needs pp >= 1 and dp >= 1, got pp={self.pp}, dp={self.dp}")
        if len(self.layers_per_stage) != self.pp or min(self.layers_per_stage) < 1:
            raise HpcyuanError(f"layers_per_stage {list(self.layers_per_stage)} must give each of the "
                               f"{self.pp} stages at least one layer")

    @classmethod
    def for_world(cls, parallel: "ParallelConfig", num_layers: int, world_size: int) -> "Topology":
        """The grid of a config on a job of `world_size` ranks; errors name every degree."""
        if parallel.pp * parallel.dp != world_size:
            raise HpcyuanError(
                f"parallel.pp ({parallel.pp}) x parallel.dp ({parallel.dp}) = {parallel.pp * parallel.dp} "
                f"ranks, but the job has {world_size} rank{'s' * (world_size != 1)} (mpiexec -n / srun -n): "
                f"make pp x dp equal the number of ranks")
        layers = tuple(parallel.layers_per_stage) or uniform_split(num_layers, parallel.pp)
        if sum(layers) != num_layers:
            raise HpcyuanError(f"parallel.layers_per_stage {list(layers)} sums to {sum(layers)}, "
                               f"but model.num_layers is {num_layers}")
        return cls(parallel.pp, parallel.dp, layers)

    @property
    def world_size(self) -> int:
        return self.pp * self.dp

    @property
    def num_layers(self) -> int:
        return sum(self.layers_per_stage)

    def coords(self, rank: int) -> tuple[int, int]:
        """rank -> (pp_rank, dp_rank)."""
        self._check_rank(rank)
        return divmod(rank, self.dp)

    def rank_of(self, pp_rank: int, dp_rank: int) -> int:
        if not (0 <= pp_rank < self.pp and 0 <= dp_rank < self.dp):
            raise ValueError(f"(pp_rank, dp_rank) = ({pp_rank}, {dp_rank}) is outside a {self.pp} x {self.dp} grid")
        return pp_rank * self.dp + dp_rank

    def stage_layers(self, pp_rank: int) -> range:
        """Global indices of the decoder layers on stage `pp_rank`."""
        start = sum(self.layers_per_stage[:pp_rank])
        return range(start, start + self.layers_per_stage[pp_rank])

    def is_first_stage(self, rank: int) -> bool:
        return self.coords(rank)[0] == 0

    def is_last_stage(self, rank: int) -> bool:
        return self.coords(rank)[0] == self.pp - 1

    def prev_stage_rank(self, rank: int) -> int | None:
        """The rank that sends this rank its activations (same replica, stage - 1); None on stage 0."""
        pp_rank, dp_rank = self.coords(rank)
        return self.rank_of(pp_rank - 1, dp_rank) if pp_rank > 0 else None

    def next_stage_rank(self, rank: int) -> int | None:
        """The rank this rank sends activations to (same replica, stage + 1); None on the last stage."""
        pp_rank, dp_rank = self.coords(rank)
        return self.rank_of(pp_rank + 1, dp_rank) if pp_rank < self.pp - 1 else None

    def dp_group_ranks(self, pp_rank: int) -> list[int]:
        return [self.rank_of(pp_rank, d) for d in range(self.dp)]

    def pp_group_ranks(self, dp_rank: int) -> list[int]:
        return [self.rank_of(s, dp_rank) for s in range(self.pp)]

    def _check_rank(self, rank: int) -> None:
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} is outside a {self.pp} x {self.dp} grid of {self.world_size} ranks")


def uniform_split(num_layers: int, pp: int) -> tuple[int, ...]:
    """Layers per stage, as even as possible; the remainder goes to the middle stages, because the
    first stage also runs the embedding and the last the LM head and loss (9 over 4 -> (2, 3, 2, 2)).
    The planner of parallel/partition.py replaces this with a cost-balanced split."""
    if not 1 <= pp <= num_layers:
        raise HpcyuanError(f"cannot split model.num_layers ({num_layers}) over parallel.pp ({pp}) stages")
    base, extra = divmod(num_layers, pp)
    counts = [base] * pp
    middle = sorted(range(pp), key=lambda s: (abs(s - (pp - 1) / 2), s))  # centre outwards
    for stage in middle[:extra]:
        counts[stage] += 1
    return tuple(counts)


class Groups(NamedTuple):
    """The communicators one rank uses."""

    world: "Comm"
    dp: "Comm"
    """This stage's data-parallel group: ranks (pp_rank, 0..dp-1), rank in it = dp_rank."""
    pp: "Comm"
    """This replica's pipeline: ranks (0..pp-1, dp_rank), rank in it = pp_rank."""


def build_groups(world: "Comm", topology: Topology) -> Groups:
    """Split `world` into this rank's dp and pp groups (collective: every rank calls it)."""
    if world.size != topology.world_size:
        raise HpcyuanError(f"topology {topology.pp} x {topology.dp} needs {topology.world_size} ranks, "
                           f"the communicator has {world.size}")
    pp_rank, dp_rank = topology.coords(world.rank)
    dp = world.split(color=pp_rank, key=dp_rank, name=f"dp group of stage {pp_rank}")
    pp = world.split(color=dp_rank, key=pp_rank, name=f"pp group of replica {dp_rank}")
    return Groups(world, dp, pp)
