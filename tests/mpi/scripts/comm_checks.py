"""Every Comm operation against a locally computed reference, on any number of ranks.

    .venv/bin/mpiexec -n 4 .venv/bin/python tests/mpi/scripts/comm_checks.py

Each rank prints "rank R: all checks passed"; a failed check aborts the job (run_main) with exit 1.
"""

import torch

from hpcyuan.config import ParallelConfig
from hpcyuan.runtime.comm import Comm, modelled_wire_bytes
from hpcyuan.runtime.topology import Topology, build_groups
from hpcyuan.runtime.watchdog import run_main

ODD = 1001  # odd sizes catch block and padding mistakes


def equal(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    assert torch.equal(got, want), f"{what}: max diff {(got.double() - want.double()).abs().max()}"


def check_all_reduce(comm: Comm) -> None:
    n, r = comm.size, comm.rank
    ranks_sum = n * (n + 1) // 2  # sum over ranks of (rank + 1)
    x = torch.arange(ODD, dtype=torch.float32).reshape(7, 143) * (r + 1)
    equal(comm.all_reduce(x), torch.arange(ODD, dtype=torch.float32).reshape(7, 143) * ranks_sum, "fp32 sum")
    m = torch.full((5,), float(r))
    equal(comm.all_reduce(m, op="max"), torch.full((5,), float(n - 1)), "max")
    equal(comm.all_reduce(torch.full((3,), r, dtype=torch.int64)), torch.full((3,), n * (n - 1) // 2), "int64")
    for dtype in (torch.bfloat16, torch.float16):
        # 1.01 is not exact in bf16: the reference is the fp32 sum of the rounded inputs, rounded once
        vals = torch.full((ODD,), 1.01, dtype=dtype) * (r + 1)
        want = sum((torch.full((ODD,), 1.01, dtype=dtype) * (k + 1)).float() for k in range(n)).to(dtype)
        equal(comm.all_reduce(vals), want, f"{dtype} sum through fp32")
    grad_param = torch.nn.Parameter(torch.ones(4))  # requires grad: reduced through .detach()
    comm.all_reduce(grad_param)
    equal(grad_param.data, torch.full((4,), float(n)), "parameter")


def check_reduce_scatter_and_gather(comm: Comm) -> None:
    n, r, k = comm.size, comm.rank, 37
    full = torch.arange(n * k, dtype=torch.float32)
    want_block = (full * n + sum(range(n)))[r * k:(r + 1) * k]
    equal(comm.reduce_scatter(full + r), want_block, "reduce_scatter fp32")
    got_bf16 = comm.reduce_scatter((full + r).to(torch.bfloat16))
    equal(got_bf16, want_block.to(torch.bfloat16), "reduce_scatter bf16")
    for dtype in (torch.float32, torch.bfloat16, torch.bool, torch.int32):
        mine = torch.full((k,), r % 2 if dtype == torch.bool else r).to(dtype)
        want = torch.cat([torch.full((k,), q % 2 if dtype == torch.bool else q).to(dtype) for q in range(n)])
        equal(comm.all_gather(mine), want, f"all_gather {dtype}")
    flat = torch.zeros(n * k)
    flat[r * k:(r + 1) * k] = r + 0.5  # ZeRO style: own shard filled, gather the rest in place
    equal(comm.all_gather_inplace(flat), torch.arange(n).float().repeat_interleave(k) + 0.5, "all_gather_inplace")


def check_broadcast_and_p2p(comm: Comm) -> None:
    n, r = comm.size, comm.rank
    root = n - 1
    b = torch.full((ODD,), 3.25 if r == root else 0.0, dtype=torch.bfloat16)
    equal(comm.broadcast(b, root=root), torch.full((ODD,), 3.25, dtype=torch.bfloat16), "broadcast bf16")
    # Ring: send to the next rank, receive from the previous; non-blocking so no ordering deadlock.
    out = torch.full((2, 3), float(r))
    into = torch.empty(2, 3)
    reqs = [comm.isend(out, (r + 1) % n, tag=7), comm.irecv(into, (r - 1) % n, tag=7)]
    for req in reqs:
        req.wait()
    equal(into, torch.full((2, 3), float((r - 1) % n)), "isend/irecv ring")
    if n >= 2 and r < 2:  # a blocking pair between ranks 0 and 1
        msg = torch.arange(5, dtype=torch.int64)
        if r == 0:
            comm.send(msg, 1, tag=3)
        else:
            equal(comm.recv(torch.empty(5, dtype=torch.int64), 0, tag=3), msg, "send/recv")
    pending = comm.iall_reduce(torch.ones(ODD, dtype=torch.bfloat16))
    _ = torch.randn(64, 64) @ torch.randn(64, 64)  # work overlapping the reduction
    equal(pending.wait(), torch.full((ODD,), float(n), dtype=torch.bfloat16), "iall_reduce bf16")
    comm.barrier()


def check_errors(comm: Comm) -> None:
    for bad, kind in ((torch.ones(4, 4)[:, ::2], ValueError), (torch.ones(3, dtype=torch.bool), TypeError)):
        try:
            comm.all_reduce(bad)
        except kind:
            continue
        raise AssertionError(f"all_reduce accepted {bad.dtype} {tuple(bad.stride())}")


def check_counters(comm: Comm) -> None:
    n = comm.size
    comm.reset_stats()
    comm.all_reduce(torch.ones(1000))
    comm.all_reduce(torch.ones(1000, dtype=torch.bfloat16))  # counted as the fp32 buffer on the wire
    comm.reduce_scatter(torch.ones(8 * n))
    comm.all_gather(torch.ones(8))
    s = comm.stats()
    assert s["all_reduce"]["calls"] == 2 and s["all_reduce"]["payload_bytes"] == 8000, s
    assert s["all_reduce"]["bytes"] == 2 * modelled_wire_bytes("all_reduce", 4000, n) == 4 * (n - 1) * 4000 // n, s
    assert s["reduce_scatter"]["bytes"] == (n - 1) * 32 * n // n, s
    assert s["all_gather"]["bytes"] == (n - 1) * 32 * n // n, s
    assert all(v["seconds"] > 0 for v in s.values()), s


def check_gather_bytes(comm: Comm) -> None:
    n, r = comm.size, comm.rank
    payload = bytes(range(r % 256)) * 3  # rank 0 sends nothing at all: empty payloads must work
    for root in {0, n - 1}:
        got = comm.gather_bytes(payload, root=root)
        if r == root:
            assert got == [bytes(range(k % 256)) * 3 for k in range(n)], f"gather_bytes to {root}: {got}"
        else:
            assert got is None, "gather_bytes returns None off the root"


def check_groups(world: Comm) -> None:
    n = world.size
    for pp in (p for p in range(1, n + 1) if n % p == 0):
        topo = Topology.for_world(ParallelConfig(pp=pp, dp=n // pp), num_layers=n, world_size=n)
        g = build_groups(world, topo)
        pp_rank, dp_rank = topo.coords(world.rank)
        assert (g.dp.size, g.dp.rank, g.pp.size, g.pp.rank) == (topo.dp, dp_rank, topo.pp, pp_rank)
        assert g.dp.name == f"dp group of stage {pp_rank}" and g.pp.name == f"pp group of replica {dp_rank}"
        me = torch.tensor([float(world.rank)])
        equal(g.dp.all_reduce(me.clone()), torch.tensor([float(sum(topo.dp_group_ranks(pp_rank)))]), "dp group")
        equal(g.pp.all_reduce(me.clone()), torch.tensor([float(sum(topo.pp_group_ranks(dp_rank)))]), "pp group")
    io = world.dup("checkpoint io")
    equal(io.all_reduce(torch.ones(3)), torch.full((3,), float(n)), "dup")


def main() -> None:
    torch.set_num_threads(1)
    world = Comm.world(timeout_s=60)
    for check in (check_all_reduce, check_reduce_scatter_and_gather, check_broadcast_and_p2p,
                  check_errors, check_counters, check_gather_bytes, check_groups):
        check(world)
    print(f"rank {world.rank}: all checks passed", flush=True)


if __name__ == "__main__":
    run_main(main)
