"""`Comm`: every inter-rank transfer of hpcyuan, over mpi4py, on torch CPU tensors without copies.

    from hpcyuan.runtime.comm import Comm
    world = Comm.world(timeout_s=600)
    world.all_reduce(grad_flat)                  # in place, SUM, fp32
    shard = world.reduce_scatter(grad_flat)      # (n*k,) -> (k,), this rank's block
    world.all_gather_inplace(param_flat)         # every rank's block of (n*k,) filled in
    print(world.stats())                         # {"all_reduce": {"calls", "bytes", ...}, ...}

Run the real-rank tests with `pytest tests/mpi/test_comm.py` (mpiexec -n 1, 2, 4).

Rules this module enforces:
  * Tensors go to MPI through the buffer protocol (uppercase mpi4py calls on `tensor.detach()`),
    never pickled. They must be CPU and contiguous (a strided view would need a hidden copy).
  * Reductions run in fp32 or wider: a bf16/fp16 tensor is reduced through an fp32 copy (bf16 SUM
    is silently wrong on Open MPI and an invalid op on MPICH). Integer tensors are reduced as-is.
    Transfers that do not reduce (gather, broadcast, send) move the raw bytes of any dtype.
  * Every wait is polite and has a deadline (watchdog.PoliteWait): a blocking call here is the
    non-blocking MPI call plus a Test/sleep loop, so a waiting rank does not steal the CPU of a
    computing one, and a stalled peer becomes a CollectiveTimeout instead of a hang.

Counters (`stats()`), per operation: `calls`; `bytes`: the bytes THIS rank sends on the wire under
the bandwidth-optimal algorithm for the payload (ring / reduce-scatter+all-gather, n ranks, S the
payload below):
    all_reduce      2 (n-1)/n * S   S = the buffer (after the fp32 upcast)
    reduce_scatter    (n-1)/n * S   S = the full input (n blocks)
    all_gather        (n-1)/n * S   S = the full output (n blocks)
    broadcast         (n-1)/n * S   S = the buffer (scatter + all-gather broadcast, averaged over ranks)
    send / isend              S     recv / irecv / barrier: 0
A reduce-scatter with uneven blocks (`ireduce_scatter`) counts S minus this rank's own block: what
a ring sends; over buckets that tile a flat buffer it adds up to the even formula above. Hence
data parallel's all_reduce of Psi fp32 gradients counts 2 (n-1)/n * 4 Psi bytes and ZeRO's
reduce_scatter + all_gather the same, the ZeRO paper's 2 Psi (elements) per step. `payload_bytes`
is S itself; `seconds` is the time the caller spent blocked (for a non-blocking op: inside wait()).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from mpi4py import MPI

from hpcyuan.runtime.watchdog import DEFAULT_TIMEOUT_S, PoliteWait

_REDUCE_OPS = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}
_UPCAST = (torch.bfloat16, torch.float16)  # reduced through an fp32 copy


def modelled_wire_bytes(op: str, payload: int, n: int) -> int:
    """Bytes one rank sends for `op` on `payload` bytes over `n` ranks (the table in the docstring)."""
    if n == 1 or op in ("recv", "irecv", "barrier"):
        return 0
    if op in ("send", "isend"):
        return payload
    factor = 2 if op in ("all_reduce", "iall_reduce") else 1
    return factor * (n - 1) * payload // n


@dataclass
class OpStats:
    calls: int = 0
    bytes: int = 0
    payload_bytes: int = 0
    seconds: float = 0.0


class Request:
    """A pending non-blocking operation; `wait()` completes it politely and returns its result."""

    def __init__(self, comm: "Comm", op: str, mpi_request: MPI.Request, result: torch.Tensor,
                 finish: Callable[[], None] | None = None, keep: tuple = ()):
        self._comm, self._op, self._req, self._result, self._finish = comm, op, mpi_request, result, finish
        self._keep = keep  # buffers MPI still reads or writes: alive until completion
        self._done = False

    def test(self) -> bool:
        """Drive MPI progress without blocking (MPICH advances non-blocking collectives only inside MPI
        calls); True once the operation is complete. `wait()` must still be called for the result."""
        return self._done or bool(self._req.Test())

    def wait(self) -> torch.Tensor:
        if not self._done:
            self._comm._wait(self._req, self._op)
            if self._finish is not None:
                self._finish()  # e.g. copy an fp32 reduction back into the bf16 tensor
            self._done, self._keep = True, ()
        return self._result


class Comm:
    """A communicator (world, a dp group, a pp group) with polite, timed, counted operations."""

    def __init__(self, mpi_comm: MPI.Comm, name: str = "world", timeout_s: float = DEFAULT_TIMEOUT_S,
                 waiter: PoliteWait | None = None):
        self.mpi, self.name, self.timeout_s = mpi_comm, name, timeout_s
        self.waiter = waiter or PoliteWait()
        self._world_rank = MPI.COMM_WORLD.Get_rank()
        self._stats: dict[str, OpStats] = {}

    @classmethod
    def world(cls, timeout_s: float = DEFAULT_TIMEOUT_S) -> "Comm":
        return cls(MPI.COMM_WORLD, "world", timeout_s)

    @property
    def rank(self) -> int:
        return self.mpi.Get_rank()

    @property
    def size(self) -> int:
        return self.mpi.Get_size()

    # -- counters ------------------------------------------------------------------------------

    def stats(self) -> dict[str, dict]:
        """{op: {"calls", "bytes" (modelled wire bytes sent), "payload_bytes", "seconds"}}."""
        return {op: vars(s).copy() for op, s in sorted(self._stats.items())}

    def reset_stats(self) -> None:
        self._stats.clear()

    def _count(self, op: str, payload: int, seconds: float = 0.0, calls: int = 1, wire: int | None = None) -> None:
        s = self._stats.setdefault(op, OpStats())
        s.calls += calls
        s.payload_bytes += payload
        s.bytes += modelled_wire_bytes(op, payload, self.size) if wire is None else wire
        s.seconds += seconds

    def _wait(self, request: MPI.Request, op: str) -> None:
        waited = self.waiter.wait(request, rank=self._world_rank, op=op, group=self.name,
                                  timeout_s=self.timeout_s)
        self._count(op, 0, waited, calls=0)

    def _run(self, op: str, request: MPI.Request, payload: int) -> None:
        """Count and politely complete a non-blocking call that stands for a blocking one."""
        self._count(op, payload)
        self._wait(request, op)

    # -- reductions (fp32) ---------------------------------------------------------------------

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """In place: every rank ends with the elementwise `op` ("sum", "max", "min") over ranks."""
        return self._iall_reduce(tensor, op, "all_reduce").wait()

    def iall_reduce(self, tensor: torch.Tensor, op: str = "sum") -> Request:
        """Non-blocking all_reduce; `tensor` must not be touched until `wait()`."""
        return self._iall_reduce(tensor, op, "iall_reduce")

    def _iall_reduce(self, tensor: torch.Tensor, op: str, name: str) -> Request:
        buf = _reducible(tensor)
        self._count(name, _nbytes(buf))
        req = self.mpi.Iallreduce(MPI.IN_PLACE, buf, _REDUCE_OPS[op])
        return Request(self, name, req, tensor, _copy_back(tensor, buf), keep=(buf,))

    def reduce_scatter(self, tensor: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """SUM over ranks of `tensor` (n equal blocks, n*k elements; pad a flat buffer to a multiple
        of n), leaving block `rank` (k elements) in `out`, which is returned (flat, tensor's dtype)."""
        n = self.size
        if tensor.numel() % n:
            raise ValueError(f"reduce_scatter: {tensor.numel()} elements do not split into {n} equal blocks")
        if out is None:
            out = torch.empty(tensor.numel() // n, dtype=tensor.dtype)
        _check_block(out, tensor.numel() // n, "reduce_scatter")
        src, dst = _reducible(tensor), _reducible(out)
        self._count("reduce_scatter", _nbytes(src))
        self._wait(self.mpi.Ireduce_scatter_block(src, dst, MPI.SUM), "reduce_scatter")
        _copy_back(out, dst)()
        return out

    def ireduce_scatter(self, tensor: torch.Tensor, counts: list[int], out: torch.Tensor) -> Request:
        """Non-blocking SUM over ranks of `tensor`, cut into consecutive blocks of `counts[r]` elements
        (any sizes, zeros allowed); rank r receives block r in `out` (counts[rank] elements, same
        dtype). ZeRO's gradient buckets use it: a bucket meets each rank's shard unevenly."""
        if sum(counts) != tensor.numel() or len(counts) != self.size:
            raise ValueError(f"ireduce_scatter: counts {counts} must give each of {self.size} ranks a block "
                             f"of the {tensor.numel()} elements")
        _check_block(out, counts[self.rank], "ireduce_scatter")
        src, dst = _reducible(tensor), _reducible(out)
        self._count("reduce_scatter", _nbytes(src), wire=src.element_size() * (src.numel() - counts[self.rank]))
        req = self.mpi.Ireduce_scatter(src, dst, list(counts), MPI.SUM)
        return Request(self, "reduce_scatter", req, out, _copy_back(out, dst), keep=(src, dst))

    # -- transfers of raw bytes ----------------------------------------------------------------

    def all_gather(self, tensor: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Concatenate every rank's `tensor` (k elements) in rank order into `out` (n*k, flat)."""
        if out is None:
            out = torch.empty(tensor.numel() * self.size, dtype=tensor.dtype)
        if out.dtype != tensor.dtype or out.numel() != tensor.numel() * self.size:
            raise ValueError(f"all_gather: out must be {tensor.numel() * self.size} elements of {tensor.dtype}")
        dst = _raw(out)
        self._count("all_gather", _nbytes(dst))
        self._wait(self.mpi.Iallgather(_raw(tensor), dst), "all_gather")
        return out

    def all_gather_inplace(self, flat: torch.Tensor) -> torch.Tensor:
        """`flat` holds n equal blocks; this rank's block is already filled; fill the others."""
        if flat.numel() % self.size:
            raise ValueError(f"all_gather_inplace: {flat.numel()} elements do not split into {self.size} blocks")
        buf = _raw(flat)
        self._count("all_gather", _nbytes(buf))
        self._wait(self.mpi.Iallgather(MPI.IN_PLACE, buf), "all_gather")
        return flat

    def broadcast(self, tensor: torch.Tensor, root: int = 0) -> torch.Tensor:
        """In place: every rank ends with root's `tensor`."""
        buf = _raw(tensor)
        self._run("broadcast", self.mpi.Ibcast(buf, root=root), _nbytes(buf))
        return tensor

    def send(self, tensor: torch.Tensor, dest: int, tag: int = 0) -> None:
        self.isend(tensor, dest, tag, op="send").wait()

    def recv(self, tensor: torch.Tensor, source: int, tag: int = 0) -> torch.Tensor:
        """Receive into `tensor` (its shape and dtype must match the sender's)."""
        return self.irecv(tensor, source, tag, op="recv").wait()

    def isend(self, tensor: torch.Tensor, dest: int, tag: int = 0, op: str = "isend") -> Request:
        buf = _raw(tensor)
        self._count(op, _nbytes(buf))
        return Request(self, op, self.mpi.Isend(buf, dest=dest, tag=tag), tensor, keep=(buf,))

    def irecv(self, tensor: torch.Tensor, source: int, tag: int = 0, op: str = "irecv") -> Request:
        buf = _raw(tensor)
        self._count(op, _nbytes(buf))
        return Request(self, op, self.mpi.Irecv(buf, source=source, tag=tag), tensor, keep=(buf,))

    def gather_bytes(self, payload: bytes, root: int = 0) -> list[bytes] | None:
        """Every rank's `payload` (any length) on `root`, in rank order; None on the other ranks.
        For small, rare metadata (checkpoint shard records, timelines): a length, then the bytes,
        point to point, never pickled."""
        if self.rank != root:
            self.send(torch.tensor([len(payload)], dtype=torch.int64), root)
            if payload:
                self.send(torch.frombuffer(bytearray(payload), dtype=torch.uint8), root)
            return None
        out = []
        for source in range(self.size):
            if source == root:
                out.append(payload)
                continue
            n = int(self.recv(torch.empty(1, dtype=torch.int64), source))
            out.append(self.recv(torch.empty(n, dtype=torch.uint8), source).numpy().tobytes() if n else b"")
        return out

    def broadcast_text(self, text: str, root: int = 0) -> str:
        """`root`'s `text` on every rank (a verdict, an error line): its length, then its bytes."""
        payload = text.encode() if self.rank == root else b""
        size = int(self.broadcast(torch.tensor([len(payload)], dtype=torch.int64), root))
        if size == 0:
            return ""
        buf = torch.frombuffer(bytearray(payload), dtype=torch.uint8) if self.rank == root \
            else torch.empty(size, dtype=torch.uint8)
        return self.broadcast(buf, root).numpy().tobytes().decode()

    # -- group management ----------------------------------------------------------------------

    def barrier(self) -> None:
        self._run("barrier", self.mpi.Ibarrier(), 0)

    def split(self, color: int, key: int | None = None, name: str = "") -> "Comm":
        """Ranks with the same `color` form a new Comm, ordered by `key` (default: current rank).
        `name` appears in timeout messages, e.g. "dp group of stage 1"."""
        self.barrier()  # MPI_Comm_split blocks and spins: arrive politely, under the deadline, first
        sub = self.mpi.Split(color, self.rank if key is None else key)
        return Comm(sub, name or f"{self.name} split {color}", self.timeout_s, self.waiter)

    def dup(self, name: str = "") -> "Comm":
        """A separate communicator over the same ranks (e.g. for background checkpoint I/O, whose
        messages must never match the training loop's)."""
        self.barrier()
        w = self.waiter  # its own waiter: a dup is usually driven by another thread
        waiter = PoliteWait(w.min_spin_s, w.max_spin_s, w.adaptive, w.first_sleep_s, w.max_sleep_s)
        return Comm(self.mpi.Dup(), name or f"{self.name} (dup)", self.timeout_s, waiter)

    def abort(self, code: int) -> None:
        """End every rank of the job now with exit status `code`."""
        self.mpi.Abort(code)


# -- buffers ------------------------------------------------------------------------------------


def _checked(tensor: torch.Tensor) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor) or tensor.device.type != "cpu":
        raise TypeError(f"Comm takes CPU torch tensors, got {type(tensor).__name__} "
                        f"{getattr(tensor, 'device', '')}")
    if not tensor.is_contiguous():
        raise ValueError(f"Comm needs contiguous tensors (got shape {tuple(tensor.shape)}, "
                         f"strides {tensor.stride()}): call .contiguous() or use a flat buffer")
    return tensor.detach()  # shares storage; parameters that require grad refuse the buffer protocol


def _reducible(tensor: torch.Tensor) -> torch.Tensor:
    """The buffer MPI reduces: the tensor itself, or an fp32 copy of a bf16/fp16 tensor."""
    t = _checked(tensor)
    if t.dtype in _UPCAST:
        return t.float()
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"Comm cannot reduce {t.dtype} tensors")
    return t


def _copy_back(tensor: torch.Tensor, buf: torch.Tensor) -> Callable[[], None]:
    """After an upcast reduction, write the fp32 result back (rounded to the tensor's dtype)."""
    if buf.data_ptr() == tensor.data_ptr():
        return lambda: None
    return lambda: tensor.detach().copy_(buf.view(tensor.shape))


def _raw(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes as a flat uint8 view: any dtype (bf16, bool) moves unchanged on any MPI."""
    return _checked(tensor).reshape(-1).view(torch.uint8)


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _check_block(out: torch.Tensor, numel: int, op: str) -> None:
    if out.numel() != numel:
        raise ValueError(f"{op}: out has {out.numel()} elements, expected {numel} (input / ranks)")
