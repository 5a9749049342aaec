"""Checkpoint speed (issue [C]): hpcyuan's HDF5 checkpoint against raw files, torch.save and
torch.distributed.checkpoint (DCP), on the same training state, measured in one run.

    .venv/bin/python benchmarks/checkpoint.py                          # 1 GiB, ~4 minutes on 2 cores
    .venv/bin/python benchmarks/checkpoint.py --gib 4 --repeats 5 --dir /scratch/$USER

The state: a Yuan model sized so that its 16 bytes per parameter (the weight plus ZeroAdamW's fp32
master, exp_avg and exp_avg_sq) come to --gib GiB, with its real ZeroAdamW in one process (an MPI
singleton): weights from init_weights, master = weights, Adam moments random normal (so nothing but
the norm weights compresses).
hpcyuan saves the optimizer's own buffers (checkpoint.state.rank_pieces: every parameter's weight,
master, exp_avg and exp_avg_sq, padding excluded). The peers get a state dict {"{kind}/{name}": tensor}
of the same values, one contiguous fp32 tensor per piece, copied once before timing (DCP would
otherwise clone every view of a flat buffer while saving).

Measured, --repeats times each, the peers interleaved; printed: median (fastest-slowest).
  1. write GB/s: hpcyuan Saver.save with async_save = false (the real path: write_shard of contiguous
     datasets with block crc32s computed from memory in a helper thread, early writeback, fsync;
     commit: index, meta, manifest, renames) against raw numpy tofile + fsync of the same tensors (the
     practical ceiling; also with hpcyuan's early writeback), torch.save + fsync, and dcp.save
     (FileSystemWriter defaults: 1 thread, fsync).
     read GB/s: hpcyuan collective.restore (the cheap verify, then reads master, m and v into the
     optimizer with every block's crc32 checked and rebuilds the weights from the master, as after a
     step; the state's every byte comes back, from 3/4 of them on disk; its reads use O_DIRECT where
     the file system allows it, past the page cache, which is evicted before every read all the same) against raw readinto, torch.load(weights_only=True) + copy into the state
     (what load_state_dict does), and dcp.load in place. Before every read each file is dropped from
     the page cache (posix_fadvise DONTNEED; drop_caches where that is not enough), checked with
     mincore; after every read the state's crc32 is checked.
  2. blocking: what an async save (async_save = true) costs the training loop, against a synchronous
     save: the caller's time inside Saver.save (it freezes master, m and v: ZeroAdamW.freeze) plus
     what the next optimizer step takes longer, since it writes master, m and v out of place (measured
     after the reads: in-place and out-of-place steps in turn, no save in flight; the first
     out-of-place step of a job also allocates the second set of buffers, shown apart).
  3. resume: the restore call against dcp.load of the same tensors. Not a process start: building the
     model and the first step cost both the same and are not measured.
  Also: checksum speeds in memory (zlib.crc32; crc32c and xxhash when installed, neither is a
  dependency), what the write and read paths hide behind the disk.
GB/s counts the tensors' bytes (1e9 bytes/s), the same for every peer. One process writes one shard
file; with N ranks each rank writes its own shard file, all in parallel. Not a test: it prints, it does
not assert. The machine should be otherwise idle: timings are wall-clock.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import importlib.util
import mmap
import os
import platform
import shutil
import statistics
import tempfile
import time
import warnings
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from mpi4py import MPI

from hpcyuan.checkpoint.collective import restore
from hpcyuan.checkpoint.saver import Saver
from hpcyuan.checkpoint.state import live_state, rank_pieces
from hpcyuan.checkpoint.writer import early_writeback as writer_early_writeback
from hpcyuan.config import ModelConfig, load_config
from hpcyuan.model.counting import count_parameters
from hpcyuan.parallel.pipeline import build_stage
from hpcyuan.parallel.zero import ZeroAdamW
from hpcyuan.runtime.job import Job
from hpcyuan.train import TrainState

BYTES_PER_PARAM = 16  # weight + fp32 master + exp_avg + exp_avg_sq
GOALS = {"write_vs_raw": 0.9, "write_vs_dcp": 1.3, "read_vs_dcp": 1.8, "blocking_share": 0.10}
DROP_CACHES = Path("/proc/sys/vm/drop_caches")
START = time.perf_counter()


def log(line: str) -> None:
    print(f"[{time.perf_counter() - START:6.1f} s] {line}", flush=True)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def spread(seconds: list[float], nbytes: int = 0) -> str:
    """'median (fastest-slowest)': GB/s of `nbytes`, or seconds when nbytes is 0."""
    values = (statistics.median(seconds), min(seconds), max(seconds))
    if nbytes:
        median, fastest, slowest = (nbytes / 1e9 / s for s in values)
        return f"{median:.3f} ({fastest:.3f}-{slowest:.3f})"
    return "{:.3f} s ({:.3f}-{:.3f})".format(*values)


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


# -- the state -----------------------------------------------------------------------------------


def model_overrides(gib: float) -> list[str]:
    """A Yuan model whose 16 bytes per parameter come to about `gib` GiB: hidden 1024 (256 below
    0.5 GiB), ~60% of the parameters in decoder layers, the rest in the embedding."""
    target = gib * 2**30 / BYTES_PER_PARAM
    hidden = 1024 if gib >= 0.5 else 256
    shape = {"hidden_size": hidden, "num_heads": hidden // 64, "vocab_size": 128}
    one, two = (count_parameters(ModelConfig(**shape, num_layers=n)).total for n in (1, 2))
    per_layer = two - one
    layers = max(1, round(0.6 * target / per_layer))
    vocab = max(128, round((target - layers * per_layer - hidden) / hidden / 128) * 128)
    return [f"model.hidden_size={hidden}", f"model.num_heads={hidden // 64}", f"model.num_layers={layers}",
            f"model.vocab_size={vocab}"]


def build_state(cfg) -> tuple[Job, ZeroAdamW]:
    """The job (one rank) and its real ZeroAdamW, every buffer filled with incompressible values."""
    job = Job.start(cfg)
    model = build_stage(cfg.model, job.topology, job.pp_rank)
    model.init_weights(cfg.train.seed)
    optimizer = ZeroAdamW(model, cfg.train, cfg.parallel.zero_stage, job.groups.dp, job.groups.world)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    optimizer.exp_avg.normal_(0.0, 1e-3, generator=gen)
    optimizer.exp_avg_sq.normal_(0.0, 1e-3, generator=gen).square_()
    optimizer.steps_taken = 1
    return job, optimizer


def progress(cfg) -> dict:
    return dataclasses.asdict(TrainState(step=1, consumed_samples=cfg.train.global_batch_size))


def checksum(update: Callable[[int, np.ndarray], int], arrays: list[np.ndarray]) -> int:
    value = 0
    for a in arrays:
        value = update(value, a)
    return value


def crc_of(arrays: list[np.ndarray]) -> int:
    return checksum(lambda crc, a: zlib.crc32(a, crc), arrays)


def zero(arrays: list[np.ndarray]) -> None:
    for a in arrays:
        a.fill(0)


# -- the page cache --------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)


def files_under(where: Path) -> list[Path]:
    if where.is_file():
        return [where]
    return [p for p in sorted(where.rglob("*")) if p.is_file() and not p.is_symlink()]


def resident_bytes(path: Path) -> int:
    """Bytes of `path` in the page cache: mmap + mincore, as fincore(1) does (touches no page)."""
    size = path.stat().st_size
    if size == 0:
        return 0
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr is None or addr == ctypes.c_void_p(-1).value:
            raise OSError(ctypes.get_errno(), f"mmap {path}")
        try:
            vec = ctypes.create_string_buffer((size + mmap.PAGESIZE - 1) // mmap.PAGESIZE)
            if _libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore {path}")
            return int((np.frombuffer(vec.raw, dtype=np.uint8) & 1).sum()) * mmap.PAGESIZE
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def fadvise_evict(files: list[Path]) -> None:
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)  # DONTNEED drops clean pages only
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def drop_caches() -> bool:
    """echo 1 > /proc/sys/vm/drop_caches (the whole page cache; root only); False if not allowed."""
    try:
        os.sync()
        DROP_CACHES.write_text("1\n")
        return True
    except OSError:
        return False


def evict(where: Path) -> int:
    """Drop every file under `where` from the page cache; returns the bytes still cached after
    posix_fadvise, then drop_caches when fadvise left some."""
    files = files_under(where)
    fadvise_evict(files)
    left = sum(resident_bytes(p) for p in files)
    if left and drop_caches():
        left = sum(resident_bytes(p) for p in files)
    return left


def probe_eviction(workdir: Path) -> str:
    """Which eviction works here, on a 64 MiB file read into the cache before each try."""
    path = workdir / "probe.bin"
    with open(path, "wb") as fh:
        fh.write(os.urandom(64 << 20))
        fh.flush()
        os.fsync(fh.fileno())

    def after(evict_fn: Callable[[], object]) -> str:
        path.read_bytes()
        cached = resident_bytes(path)
        ok = evict_fn()
        if ok is False:
            return "not permitted"
        return f"{cached >> 20} MiB cached -> {resident_bytes(path) >> 20} MiB after"

    lines = (f"posix_fadvise(DONTNEED) per file: {after(lambda: fadvise_evict([path]))}; "
             f"echo 1 > {DROP_CACHES}: {after(drop_caches)} (mincore)")
    path.unlink()
    return lines


# -- the peers --------------------------------------------------------------------------------------


def raw_write(path: Path, tensors: list[torch.Tensor]) -> None:
    with open(path, "wb") as fh:
        for t in tensors:
            t.numpy().tofile(fh)
        fh.flush()
        os.fsync(fh.fileno())


def read_full(fh, array: np.ndarray) -> None:
    """Fill `array` from the unbuffered file `fh` at its position."""
    view = memoryview(array).cast("B")
    while view:
        n = fh.readinto(view)
        if not n:
            raise EOFError(f"{fh.name}: short file")
        view = view[n:]


def raw_read(path: Path, tensors: list[torch.Tensor]) -> None:
    with open(path, "rb", buffering=0) as fh:
        for t in tensors:
            read_full(fh, t.numpy())


def torch_write(path: Path, state: dict[str, torch.Tensor]) -> None:
    with open(path, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())


def torch_read(path: Path, state: dict[str, torch.Tensor]) -> None:
    loaded = torch.load(path, weights_only=True)
    for name, t in state.items():
        t.copy_(loaded[name])


def dcp_write(path: Path, state: dict[str, torch.Tensor]) -> None:
    dcp.save(state, checkpoint_id=path, no_dist=True)


def dcp_read(path: Path, state: dict[str, torch.Tensor]) -> None:
    dcp.load(state, checkpoint_id=path, no_dist=True)


def sync_save(saver: Saver, optimizer, cfg) -> None:
    saver.save(optimizer, progress(cfg))


def async_save(saver: Saver, optimizer, cfg) -> float:
    """One hpcyuan save until committed; returns the seconds the caller spent inside save()."""
    start = time.perf_counter()
    saver.save(optimizer, progress(cfg))
    blocking = time.perf_counter() - start
    saver.wait()
    return blocking


def hpcyuan_restore(job, optimizer, cfg) -> None:
    if restore(job, optimizer, cfg, say=lambda line: None) is None:
        raise RuntimeError(f"no checkpoint to restore under {cfg.checkpoint.dir}")


# -- the ceiling with hpcyuan's early writeback ----------------------------------------------------


@contextmanager
def early_writeback(path: Path):
    """hpcyuan's early writeback (writer.early_writeback: a thread fdatasyncs the file every 20 ms)
    around a writer that opens `path` itself."""
    path.touch()
    fd = os.open(path, os.O_RDONLY)
    try:
        with writer_early_writeback(fd):
            yield
    finally:
        os.close(fd)


def write_raw_early(path: Path, tensors: list[torch.Tensor]) -> None:
    """The raw peer with the same early writeback."""
    with early_writeback(path):
        raw_write(path, tensors)


# label, the module it needs (none is a dependency of hpcyuan), update(checksum, buffer) -> checksum
HASHERS = (
    ("zlib.crc32", "zlib", lambda crc, b: zlib.crc32(b, crc)),
    ("zlib_ng.crc32 (pip zlib-ng; the same CRC-32, hpcyuan's)", "zlib_ng",
     lambda crc, b: importlib.import_module("zlib_ng.zlib_ng").crc32(b, crc)),
    ("crc32c.crc32c (pip crc32c; CRC-32C, SSE4.2)", "crc32c",
     lambda crc, b: importlib.import_module("crc32c").crc32c(b, crc)),
    ("xxhash.xxh3_64 (pip xxhash; 64-bit hash, not a CRC)", "xxhash",
     lambda h, b: importlib.import_module("xxhash").xxh3_64_intdigest(b, seed=h)),
)


# -- the machine ---------------------------------------------------------------------------------------


def filesystem(path: Path) -> str:
    """'fstype (device on mount point)' of the mount that holds `path`."""
    best = ("", "?", "?")
    target = str(path.resolve()).rstrip("/") + "/"
    for line in Path("/proc/self/mounts").read_text().splitlines():
        device, mount, fstype = line.split()[:3]
        mount = mount.replace("\\040", " ")
        if target.startswith(mount.rstrip("/") + "/") and len(mount) >= len(best[0]):
            best = (mount, fstype, device)
    return f"{best[1]} ({best[2]} on {best[0]})"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def header(workdir: Path, cfg, nbytes: int, npieces: int, params: int) -> None:
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine   {os.cpu_count()} cores ({cpu_model()}), {mem:.0f} GiB RAM, load average {load}")
    print(f"dir       {workdir}: {filesystem(workdir)}")
    print(f"software  Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} "
          f"threads), h5py {h5py.__version__}, HDF5 {h5py.version.hdf5_version}, numpy {np.__version__}, "
          f"{' '.join(MPI.Get_library_version().splitlines()[0].split())}")
    m = cfg.model
    print(f"state     Yuan h {m.hidden_size}, {m.num_layers} layers, vocab {m.vocab_size}: {params / 1e6:.1f}M "
          f"parameters x 16 bytes = {nbytes / 1e9:.3f} GB ({nbytes / 2**30:.3f} GiB) in {npieces} tensors "
          f"(weight, master, exp_avg, exp_avg_sq of each parameter), 1 process = 1 shard file", flush=True)


def check_space(workdir: Path, nbytes: int) -> None:
    free = shutil.disk_usage(workdir).free
    if free < 7 * nbytes:
        raise SystemExit(f"{workdir}: {free / 1e9:.1f} GB free, this run needs ~{7 * nbytes / 1e9:.1f} GB")


# -- the runs -------------------------------------------------------------------------------------------


def run_writes(cases: dict[str, tuple[Path, Callable]], repeats: int, nbytes: int) -> dict[str, list]:
    """{label: [(seconds, blocking or None), ...]}: each case `repeats` times, interleaved; each case's
    output is removed before it writes (outside the timing)."""
    out = {label: [] for label in cases}
    for r in range(repeats):
        for label, (path, fn) in cases.items():
            remove(path)
            start = time.perf_counter()
            blocking = fn()
            seconds = time.perf_counter() - start
            out[label].append((seconds, blocking))
            extra = f", blocking {blocking:.3f} s" if blocking is not None else ""
            log(f"write {r + 1}/{repeats} {label}: {seconds:.2f} s = {nbytes / 1e9 / seconds:.3f} GB/s{extra}")
    return out


def run_reads(cases: dict[str, tuple[Path, Callable, list[np.ndarray]]], repeats: int, nbytes: int,
              reference: int, cached: list[int]) -> dict[str, list[float]]:
    """{label: [seconds, ...]}: before each read its files leave the page cache (the bytes left are
    appended to `cached`) and its target is zeroed; after it, the target's crc32 must be `reference`."""
    out = {label: [] for label in cases}
    for r in range(repeats):
        for label, (path, fn, target) in cases.items():
            zero(target)
            cached.append(evict(path))
            seconds = timed(fn)
            if crc_of(target) != reference:
                raise SystemExit(f"{label}: the state read back differs from the one written")
            out[label].append(seconds)
            log(f"read {r + 1}/{repeats} {label}: {seconds:.2f} s = {nbytes / 1e9 / seconds:.3f} GB/s "
                f"({cached[-1]} bytes were cached)")
    return out


def run_cpu(cases: dict[str, Callable], repeats: int, nbytes: int) -> dict[str, list[float]]:
    out = {}
    for label, fn in cases.items():
        out[label] = [timed(fn) for _ in range(repeats)]
        log(f"in memory {label}: {spread(out[label], nbytes)} GB/s")
    return out


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in files_under(path))


def goal_line(text: str, ratio: str, met: bool) -> str:
    return f"  {text:<38} {ratio:>8}  {'met' if met else 'NOT met'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0, help="size of the saved state in GiB (default 1)")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"),
                        help="where a fresh directory for the files is made, and removed at the end "
                             "(default /var/tmp; use a disk, not tmpfs)")
    parser.add_argument("--repeats", type=int, default=3, help="times each measurement runs (default 3)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="torch.distributed is disabled")  # DCP in one process, as meant
    args.dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="hpcyuan-ckpt-bench-", dir=args.dir))
    try:
        measure(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        log(f"removed {workdir}; load average now {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


def measure(args, workdir: Path) -> None:
    root = workdir / "hpcyuan"
    cfg = load_config("tiny", [*model_overrides(args.gib), f"checkpoint.dir={root}", "checkpoint.async_save=false",
                               f"train.run_dir={workdir / 'run'}"])
    async_cfg = dataclasses.replace(cfg, checkpoint=dataclasses.replace(cfg.checkpoint, async_save=True))
    params = count_parameters(cfg.model).total
    log(f"building the state: {params / 1e6:.1f}M parameters, ZeroAdamW, random Adam moments")
    job, optimizer = build_state(cfg)
    pieces = rank_pieces(optimizer, job.dp_rank, live_state(optimizer))
    hp_target = [p.data for p in pieces]  # numpy views of the optimizer's flat buffers
    nbytes = sum(a.nbytes for a in hp_target)
    state = {f"{p.kind}/{p.name}": torch.from_numpy(p.data.copy()) for p in pieces}
    tensors = list(state.values())
    peer_target = [t.numpy() for t in tensors]
    reference = crc_of(hp_target)
    header(workdir, cfg, nbytes, len(pieces), params)
    if "tmpfs" in filesystem(workdir):
        print(f"WARNING: {workdir} is tmpfs: these figures measure memory, not a disk", flush=True)
    check_space(workdir, nbytes)
    print(f"page cache eviction here: {probe_eviction(workdir)}", flush=True)

    sync_saver, async_saver = Saver(job, cfg), Saver(job, async_cfg)
    raw, raw_early, pt, dc = workdir / "raw.bin", workdir / "raw-early.bin", workdir / "torch.pt", workdir / "dcp"

    log("1-2. writes (fsync'd), every case in turn")
    writes = run_writes({
        "hpcyuan": (root, lambda: sync_save(sync_saver, optimizer, cfg)),
        "raw": (raw, lambda: raw_write(raw, tensors)),
        "raw early": (raw_early, lambda: write_raw_early(raw_early, tensors)),
        "torch": (pt, lambda: torch_write(pt, state)),
        "dcp": (dc, lambda: dcp_write(dc, state)),
        "hpcyuan async": (root, lambda: async_save(async_saver, optimizer, cfg)),
    }, args.repeats, nbytes)
    sizes = {"hpcyuan": disk_bytes(root), "raw": disk_bytes(raw), "raw early": disk_bytes(raw_early),
             "torch": disk_bytes(pt), "dcp": disk_bytes(dc)}

    log("1, 3. reads, each file evicted from the page cache first")
    cached: list[int] = []
    reads = run_reads({
        "hpcyuan": (root, lambda: hpcyuan_restore(job, optimizer, cfg), hp_target),
        "raw": (raw, lambda: raw_read(raw, tensors), peer_target),
        "torch": (pt, lambda: torch_read(pt, state), peer_target),
        "dcp": (dc, lambda: dcp_read(dc, state), peer_target),
    }, args.repeats, nbytes, reference, cached)

    log("checksums in memory, CPU only")
    installed = [(label, update) for label, module, update in HASHERS if importlib.util.find_spec(module)]
    cpu = run_cpu({label: (lambda update=update: checksum(update, hp_target)) for label, update in installed},
                  args.repeats, nbytes)
    missing = [label for label, module, _ in HASHERS if not importlib.util.find_spec(module)]

    log("2. optimizer steps in place and after a freeze (out of place), in turn")
    steps = run_steps(optimizer, args.repeats + 2)

    report(args, nbytes, writes, reads, sizes, cached, cpu, missing, steps)


def run_steps(optimizer: ZeroAdamW, repeats: int) -> dict[str, list[float]]:
    """{"in place": [s, ...], "after a freeze": [...], "first after a freeze": [s]}: optimizer steps
    (zero gradients: the same passes over the state), the out-of-place ones each after a freeze."""
    out = {"in place": [], "after a freeze": []}
    optimizer.freeze()
    out["first after a freeze"] = [timed(lambda: optimizer.step(lr=1e-4))]  # allocates the second set
    for _ in range(repeats):
        out["in place"].append(timed(lambda: optimizer.step(lr=1e-4)))
        optimizer.freeze()
        out["after a freeze"].append(timed(lambda: optimizer.step(lr=1e-4)))
    for label, s in out.items():
        log(f"step {label}: {spread(s)}")
    return out


def report(args, nbytes, writes, reads, sizes, cached, cpu, missing, steps) -> None:
    secs = {label: [s for s, _ in rows] for label, rows in writes.items()}
    w = {label: statistics.median(s) for label, s in secs.items()}  # write seconds
    r = {label: statistics.median(s) for label, s in reads.items()}  # read seconds
    print(f"\n== 1. Write and read: {nbytes / 1e9:.3f} GB of tensors, {args.repeats} repeats, median "
          f"(fastest-slowest); 'hpcyuan/peer' = hpcyuan's speed over the peer's ==")
    print(f"  {'':<44} {'write GB/s':<22} {'hpcyuan/peer':>12}   {'read GB/s':<22} {'hpcyuan/peer':>12}   on disk")
    for label, name in (("hpcyuan", "hpcyuan Saver.save (sync) / restore"),
                        ("raw", "raw numpy tofile / readinto"),
                        ("raw early", "raw tofile + hpcyuan's early writeback"),
                        ("torch", "torch.save / torch.load(weights_only)"),
                        ("dcp", "DCP dcp.save / dcp.load")):
        read = (f"{spread(reads[label], nbytes):<22} {r[label] / r['hpcyuan']:>11.2f}x" if label in reads
                else f"{'':<22} {'':>12}")
        print(f"  {name:<44} {spread(secs[label], nbytes):<22} {w[label] / w['hpcyuan']:>11.2f}x   "
              f"{read}   {sizes[label] / 1e9:.3f} GB")
    print("  hpcyuan write = the whole synchronous save (shard with block crc32s, fsync, commit); hpcyuan read =")
    print("  collective.restore (the cheap verify, then master, m and v read into the optimizer, every block's crc32")
    print("  checked, and the weights rebuilt from the master: every byte of the state back, 3/4 of them read).")
    print(f"  Page cache before each read: at most {max(cached)} bytes of the files resident (mincore), "
          f"{len(cached)} reads.")
    print("  One process writes one shard file; with N ranks, N shard files are written in parallel.")

    in_save = [b for _, b in writes["hpcyuan async"]]
    step_extra = max(0.0, statistics.median(steps["after a freeze"]) - statistics.median(steps["in place"]))
    blocking = statistics.median(in_save) + step_extra
    share = blocking / w["hpcyuan"]
    print("\n== 2. Async save: what it costs the training loop ==")
    print(f"  {'synchronous save (async_save = false)':<52} {spread(secs['hpcyuan'])}")
    print(f"  {'async save: inside Saver.save (freeze, RNG, meta)':<52} {spread(in_save)}")
    print(f"  {'optimizer step in place':<52} {spread(steps['in place'])}")
    print(f"  {'optimizer step after a freeze (out of place)':<52} {spread(steps['after a freeze'])}"
          f"   +{step_extra:.3f} s")
    print(f"  {'  the first one of a job (allocates the second set)':<52} {spread(steps['first after a freeze'])}")
    print(f"  {'async save: blocking = in save + the step extra':<52} {blocking:.3f} s = "
          f"{100 * share:.1f}% of the sync save")
    print(f"  {'async save: until committed':<52} {spread(secs['hpcyuan async'])}")

    print("\n== 3. Resume: the restore call itself (not a process start: building the model and the first "
          "step cost both the same) ==")
    print(f"  {'hpcyuan collective.restore into the optimizer':<52} {spread(reads['hpcyuan'])}")
    print(f"  {'dcp.load into the same tensors':<52} {spread(reads['dcp'])}   "
          f"hpcyuan is {r['dcp'] / r['hpcyuan']:.2f}x DCP's speed")

    print("\n== Goals ==")
    for text, ratio, goal in (("write >= 0.9x raw", w["raw"] / w["hpcyuan"], GOALS["write_vs_raw"]),
                              ("write >= 1.3x DCP", w["dcp"] / w["hpcyuan"], GOALS["write_vs_dcp"]),
                              ("read >= 1.8x DCP", r["dcp"] / r["hpcyuan"], GOALS["read_vs_dcp"])):
        print(goal_line(text, f"{ratio:.2f}x", ratio >= goal))
    print(goal_line("async blocking <= 10% of a full save", f"{100 * share:.1f}%", share <= GOALS["blocking_share"]))
    print(f"  {'(write vs raw + early writeback)':<38} {w['raw early'] / w['hpcyuan']:>7.2f}x")

    print(f"\n  {'checksum of the state in memory, CPU only':<60} {'GB/s':<22}")
    for label, s in cpu.items():
        print(f"  {label:<60} {spread(s, nbytes):<22}")
    for label in missing:
        print(f"  {label:<60} not installed")


if __name__ == "__main__":
    main()
