"""A job that goes wrong on purpose, to show it ends instead of hanging (tests/mpi/test_watchdog.py).

    .venv/bin/mpiexec -n 2 .venv/bin/python tests/mpi/scripts/failures.py stall   # exit 3
    .venv/bin/mpiexec -n 2 .venv/bin/python tests/mpi/scripts/failures.py crash   # exit 1
    .venv/bin/mpiexec -n 2 .venv/bin/python tests/mpi/scripts/failures.py user    # exit 2

stall: the last rank sleeps 60 s before an all-reduce on the dp group whose deadline is 3 s.
crash / user: the last rank raises (a ValueError / an HpcyuanError) while the others wait in an
all-reduce with a 60 s deadline: MPI_Abort must end them long before that.
"""

import sys
import time

import torch

from hpcyuan.config import ParallelConfig
from hpcyuan.errors import HpcyuanError
from hpcyuan.runtime.comm import Comm
from hpcyuan.runtime.topology import Topology, build_groups
from hpcyuan.runtime.watchdog import run_main


def main(mode: str) -> None:
    world = Comm.world(timeout_s=3.0 if mode == "stall" else 60.0)
    topo = Topology.for_world(ParallelConfig(pp=1, dp=world.size), num_layers=1, world_size=world.size)
    groups = build_groups(world, topo)
    last = world.rank == world.size - 1
    print(f"rank {world.rank}: ready", flush=True)
    if last and mode == "stall":
        time.sleep(60)
    if last and mode == "crash":
        raise ValueError(f"boom from rank {world.rank}")
    if last and mode == "user":
        raise HpcyuanError(f"bad input seen by rank {world.rank}")
    groups.dp.all_reduce(torch.ones(10))
    print(f"rank {world.rank}: finished", flush=True)


if __name__ == "__main__":
    run_main(main, sys.argv[1])
