"""The configuration tree: frozen dataclasses for model, parallel, train, data, checkpoint and slurm.

A run is described by one TOML file (see `configs/`) plus a few command-line overrides. Every field
has a docstring-style comment; every section validates itself in `__post_init__` and raises
`ConfigError` naming the field and value, and `load_config` adds the file, so a user sees one line:

    configs/demo.toml: model.hidden_size = 100: must be divisible by model.num_heads (3)

The same tree is stored inside every checkpoint (as TOML text), so a run can be inspected and
resumed without the file it started from.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from hpcyuan.errors import ConfigError, HpcyuanError

REPO_ROOT = Path(__file__).resolve().parent.parent
PRESET_DIR = REPO_ROOT / "configs"


def _check(ok: bool, name: str, value, reason: str) -> None:
    if not ok:
        raise ConfigError(name, value, reason)


def _positive(obj, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        _check(value > 0, name, value, "must be > 0")


@dataclass(frozen=True)
class ModelConfig:
    """Shapes of a Yuan 2.0 (dense, LFA) or Yuan 2.0-M32 (mixture of experts) decoder."""

    vocab_size: int = 512
    """Rows of the (tied) embedding; may exceed the tokenizer's piece count by padding (< 128)."""
    hidden_size: int = 64
    """h: the residual stream width."""
    num_layers: int = 2
    """L: decoder layers."""
    num_heads: int = 4
    """H: attention heads (no grouped-query attention in Yuan)."""
    head_dim: int = 0
    """d: width per head (Megatron's kv_channels); 0 means hidden_size // num_heads. M32 uses 256."""
    ffn_hidden_size: int = 0
    """f: SwiGLU inner width (per expert for MoE); 0 means 4 * hidden_size."""
    seq_length: int = 64
    """Tokens per training sample (the packed window)."""
    num_experts: int = 0
    """E: 0 for the dense Yuan 2.0 MLP; > 0 for M32 experts behind the attention router."""
    moe_top_k: int = 2
    """Experts each token is routed to (M32: 2)."""
    rotary_base: float = 10000.0
    """RoPE base."""
    rotary_percent: float = 1.0
    """Share of each head's dims that RoPE rotates (M32: 0.5)."""
    rope_bf16_angles: bool = False
    """Round positions and angles to bf16 as Megatron's bf16 runs did (parity with released weights)."""
    norm_eps: float = 1e-6
    """RMSNorm epsilon (Yuan hard-codes 1e-6)."""
    attention_dropout: float = 0.0
    """Dropout on attention probabilities while training (Yuan pretraining: 0.1)."""
    init_std: float = 0.02
    """Std of the normal init of linear layers, router and embedding; output projections use
    init_std / sqrt(2 * num_layers)."""

    def __post_init__(self):
        _positive(self, "vocab_size", "hidden_size", "num_layers", "num_heads", "seq_length",
                  "rotary_base", "norm_eps", "init_std")
        _check(self.head_dim >= 0, "head_dim", self.head_dim, "must be >= 0 (0 = hidden_size / num_heads)")
        _check(self.ffn_hidden_size >= 0, "ffn_hidden_size", self.ffn_hidden_size, "must be >= 0 (0 = 4 * hidden_size)")
        if self.head_dim == 0:
            _check(self.hidden_size % self.num_heads == 0, "hidden_size", self.hidden_size,
                   f"must be divisible by model.num_heads ({self.num_heads}) unless model.head_dim is set")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.ffn_hidden_size == 0:
            object.__setattr__(self, "ffn_hidden_size", 4 * self.hidden_size)
        _check(self.hidden_size % 2 == 0, "hidden_size", self.hidden_size,
               "must be even (the LFA filter's first convolution maps h to h/2)")
        _check(self.num_experts >= 0, "num_experts", self.num_experts, "must be >= 0 (0 = dense MLP)")
        if self.num_experts:
            _check(1 <= self.moe_top_k <= self.num_experts, "moe_top_k", self.moe_top_k,
                   f"must be between 1 and model.num_experts ({self.num_experts})")
        _check(0.0 < self.rotary_percent <= 1.0, "rotary_percent", self.rotary_percent, "must be in (0, 1]")
        rotary_dim = int(self.head_dim * self.rotary_percent)
        _check(rotary_dim >= 2 and rotary_dim % 2 == 0, "rotary_percent", self.rotary_percent,
               f"must rotate an even number (>= 2) of the {self.head_dim} head dims, got {rotary_dim}")
        _check(0.0 <= self.attention_dropout < 1.0, "attention_dropout", self.attention_dropout, "must be in [0, 1)")

    @property
    def attention_width(self) -> int:
        """P = num_heads * head_dim: the width of Q, K and V (4096 for M32, = h for Yuan 2.0)."""
        return self.num_heads * self.head_dim

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rotary_percent)

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0


@dataclass(frozen=True)
class ParallelConfig:
    """How ranks are arranged: a pp x dp grid (pipeline stages x data-parallel replicas)."""

    pp: int = 1
    """Pipeline stages."""
    dp: int = 1
    """Data-parallel replicas of each stage."""
    layers_per_stage: tuple[int, ...] = ()
    """Decoder layers on each stage, e.g. [2, 3, 3, 2]; empty means the planner decides."""
    zero_stage: int = 1
    """0: plain data parallel; 1: optimizer states and fp32 master weights sharded over dp;
    2: gradients sharded too."""
    recompute_layers: int = 0
    """Decoder layers of each stage, counted from its first, whose activations are recomputed in
    backward instead of kept (block recompute); >= the stage's layers recomputes all of them."""
    bucket_mb: float = 25.0
    """MiB of fp32 gradients per data-parallel reduction bucket (reductions overlap backward)."""
    timeout_s: float = 600.0
    """A collective that does not finish within this many seconds ends the job (exit status 3)."""

    def __post_init__(self):
        _positive(self, "pp", "dp", "bucket_mb", "timeout_s")
        _check(self.recompute_layers >= 0, "recompute_layers", self.recompute_layers, "must be >= 0 (0: none)")
        _check(self.zero_stage in (0, 1, 2), "zero_stage", self.zero_stage, "must be 0, 1 or 2")
        if self.layers_per_stage:
            _check(len(self.layers_per_stage) == self.pp, "layers_per_stage", list(self.layers_per_stage),
                   f"must list one layer count per pipeline stage (parallel.pp = {self.pp})")
            _check(all(n >= 1 for n in self.layers_per_stage), "layers_per_stage",
                   list(self.layers_per_stage), "every stage needs at least one layer")

    @property
    def world_size(self) -> int:
        return self.pp * self.dp


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation: batch, AdamW, learning-rate schedule, precision, logging cadence."""

    steps: int = 100
    """Optimizer steps to train for."""
    global_batch_size: int = 8
    """Samples (of seq_length tokens) per optimizer step, summed over dp and micro-batches."""
    micro_batch_size: int = 2
    """Samples per forward/backward pass on one rank; gradients accumulate over
    global_batch_size / (micro_batch_size * dp) micro-batches."""
    lr: float = 1e-3
    """Peak learning rate, reached after warmup_steps."""
    min_lr_ratio: float = 0.1
    """Cosine decay ends at lr * min_lr_ratio (Yuan: 0.1)."""
    warmup_steps: int = 10
    """Linear warm-up from 0 to lr."""
    decay_steps: int = 0
    """Steps over which cosine decay runs after warm-up; 0 means until `steps`."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay for matrices and the embedding (never for norms and biases)."""
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    bf16: bool = False
    """bf16 autocast for the forward pass; master weights and optimizer states stay fp32."""
    seed: int = 1234
    """Seed of the weight init and of dropout; the data order has its own seed (data.seed)."""
    log_interval: int = 10
    """Steps between progress lines (and JSONL metric rows)."""
    eval_interval: int = 100
    """Steps between validation passes (and one at the end); 0 disables periodic validation."""
    eval_samples: int = 64
    """Validation samples per evaluation (a fixed, deterministic subset of the split)."""
    run_dir: str = "runs/default"
    """Where metrics.jsonl, the config and (later) checkpoints of this run go."""
    kernels: str = "auto"
    """Operator implementations: "auto" (C++ extension if built, else reference), "reference",
    "extension"."""
    peak_tflops: float = 0.0
    """Peak dense TFLOP/s of one device, for MFU; 0 means measure a matmul on this machine."""
    timeline_step: int = 3
    """Record what every pipeline stage does during this step into run_dir/timeline.json (Chrome
    trace) and timeline.png, and print each stage's idle share; 0: never."""
    spike_factor: float = 3.0
    """Spike guard: a loss above this multiple of the mean of the last `spike_window` losses rewinds
    training to the last good checkpoint and skips that batch (logged); 0: off."""
    spike_window: int = 20
    """Spike guard: how many recent losses make the mean."""
    nonfinite_limit: int = 3
    """Spike guard: this many non-finite losses in a row (each step skipped by the optimizer) also
    rewind to the last good checkpoint; 0: off."""
    sample_log: bool = False
    """Append each global batch's dataset sample indices to run_dir/samples.jsonl (to check that a
    preempted, resumed or rewound run never repeats or skips a sample)."""

    def __post_init__(self):
        _positive(self, "steps", "global_batch_size", "micro_batch_size", "lr", "log_interval", "eval_samples")
        _check(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio", self.min_lr_ratio, "must be in [0, 1]")
        _check(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, "must be >= 0")
        _check(self.decay_steps >= 0, "decay_steps", self.decay_steps, "must be >= 0 (0 = until train.steps)")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        for name in ("beta1", "beta2"):
            _check(0.0 <= getattr(self, name) < 1.0, name, getattr(self, name), "must be in [0, 1)")
        _check(self.adam_eps > 0, "adam_eps", self.adam_eps, "must be > 0")
        _check(self.grad_clip >= 0, "grad_clip", self.grad_clip, "must be >= 0 (0 = no clipping)")
        _check(self.eval_interval >= 0, "eval_interval", self.eval_interval, "must be >= 0 (0 = only at the end)")
        _check(self.kernels in ("auto", "reference", "extension"), "kernels", self.kernels,
               'must be "auto", "reference" or "extension"')
        _check(self.peak_tflops >= 0, "peak_tflops", self.peak_tflops, "must be >= 0 (0 = measure)")
        _check(self.timeline_step >= 0, "timeline_step", self.timeline_step, "must be >= 0 (0 = never)")
        _check(self.spike_factor == 0 or self.spike_factor > 1, "spike_factor", self.spike_factor,
               "must be > 1 (0 = off)")
        _check(self.spike_window >= 1, "spike_window", self.spike_window, "must be >= 1")
        _check(self.nonfinite_limit >= 0, "nonfinite_limit", self.nonfinite_limit, "must be >= 0 (0 = off)")


@dataclass(frozen=True)
class DataConfig:
    """The corpus, its tokenizer and the sample order."""

    corpus: str = "shakespeare"
    """A built-in corpus name (see `hpcyuan data prepare --help`) or a path to a text file or a
    directory of .txt/.md files (one document per file)."""
    dir: str = "data/shakespeare"
    """Where `hpcyuan data prepare` writes the tokenizer and token files, and training reads them."""
    val_fraction: float = 0.05
    """Share of each document held out for validation (its tail)."""
    seed: int = 1234
    """Seed of the global sample order; with consumed samples it fixes which sample comes next."""

    def __post_init__(self):
        _check(bool(self.corpus), "corpus", self.corpus, "must name a corpus or a path")
        _check(bool(self.dir), "dir", self.dir, "must be a directory path")
        _check(0.0 < self.val_fraction < 0.5, "val_fraction", self.val_fraction, "must be in (0, 0.5)")


@dataclass(frozen=True)
class CheckpointConfig:
    """Checkpoint cadence and retention (the HDF5 format is in docs/checkpoint-format.md)."""

    dir: str = ""
    """Checkpoint directory; empty means <train.run_dir>/checkpoints."""
    interval: int = 0
    """Steps between checkpoints; 0 saves only at the end and on preemption."""
    keep_last: int = 3
    """Keep this many most recent checkpoints."""
    keep_every: int = 0
    """Also keep every checkpoint whose step is a multiple of this; 0 keeps no extra ones."""
    async_save: bool = True
    """Write checkpoints in a background thread while training goes on (training waits only for a
    freeze of the optimizer state: the next step writes out of place, into a second copy of master,
    m and v kept in memory); false writes them before the next step."""

    def __post_init__(self):
        _check(self.interval >= 0, "interval", self.interval, "must be >= 0 (0 = only at the end)")
        _check(self.keep_last >= 1, "keep_last", self.keep_last, "must be >= 1")
        _check(self.keep_every >= 0, "keep_every", self.keep_every, "must be >= 0 (0 = none)")


@dataclass(frozen=True)
class SlurmConfig:
    """What a batch job asks Slurm for (site-specific values live in a site profile)."""

    partition: str = ""
    """Partition to submit to; empty means the site profile's default."""
    nodes: int = 1
    """Nodes per job (the most a slot asks for)."""
    min_nodes: int = 0
    """Fewest nodes a slot may start on (sbatch --nodes=min_nodes-nodes; parallel.dp shrinks to fit);
    0 = exactly `nodes`."""
    ranks_per_node: int = 1
    """MPI ranks started on each node."""
    time: str = "01:00:00"
    """Walltime limit (Slurm syntax)."""
    time_min: str = ""
    """Shortest walltime the job accepts, so backfill can start it earlier; empty = same as time."""
    signal: str = "USR2"
    """Signal Slurm sends before the end of the slot; the run checkpoints and requeues."""
    signal_seconds: int = 120
    """How long before the end of the slot the signal comes."""
    max_requeues: int = 20
    """Requeue at most this many times before giving up."""

    def __post_init__(self):
        _positive(self, "nodes", "ranks_per_node", "signal_seconds")
        _check(self.max_requeues >= 0, "max_requeues", self.max_requeues, "must be >= 0")
        _check(0 <= self.min_nodes <= self.nodes, "min_nodes", self.min_nodes,
               f"must be between 1 and slurm.nodes ({self.nodes}), or 0 (= nodes)")
        _check(self.signal in ("USR1", "USR2", "TERM", "INT", "HUP"), "signal", self.signal,
               "must be one of USR1, USR2, TERM, INT, HUP")


@dataclass(frozen=True)
class Config:
    """One run: the whole tree. `name` labels the run in logs and checkpoints."""

    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    def __post_init__(self):
        par, tr, model = self.parallel, self.train, self.model
        per_step = tr.micro_batch_size * par.dp
        _check(tr.global_batch_size % per_step == 0, "train.global_batch_size", tr.global_batch_size,
               f"must be a multiple of train.micro_batch_size x parallel.dp ({tr.micro_batch_size} x {par.dp})")
        if par.layers_per_stage:
            _check(sum(par.layers_per_stage) == model.num_layers, "parallel.layers_per_stage",
                   list(par.layers_per_stage), f"must sum to model.num_layers ({model.num_layers})")
        else:
            _check(par.pp <= model.num_layers, "parallel.pp", par.pp,
                   f"cannot exceed model.num_layers ({model.num_layers})")

    @property
    def num_microbatches(self) -> int:
        """Micro-batches each data-parallel rank runs per optimizer step."""
        return self.train.global_batch_size // (self.train.micro_batch_size * self.parallel.dp)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        import tomli_w

        return tomli_w.dumps(_toml_ready(self.to_dict()))


SECTIONS = {name: hint for name, hint in typing.get_type_hints(Config).items() if name != "name"}
"""Section name -> its dataclass."""


# ---------------------------------------------------------------------------------------------
# Loading


def resolve_config_path(name_or_path: str) -> Path:
    """A preset name (`demo`) or a path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise HpcyuanError(f"{name_or_path}: no such config file")
        return path
    preset = PRESET_DIR / f"{name_or_path}.toml"
    if preset.is_file():
        return preset
    known = ", ".join(list_presets()) or "(none found)"
    raise HpcyuanError(f"unknown preset '{name_or_path}': known presets are {known} (or give a path to a .toml file)")


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load_config(name_or_path: str, overrides: typing.Sequence[str] = ()) -> Config:
    """Read a preset or TOML file, apply `section.field=value` overrides, validate everything."""
    path = resolve_config_path(name_or_path)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise HpcyuanError(f"{path}: invalid TOML: {err}") from None
    for item in overrides:
        _apply_override(raw, item)
    return config_from_dict(raw, source=str(path))


def config_from_dict(raw: dict, source: str | None = None) -> Config:
    """Build and validate the tree from plain TOML data (also used for configs stored in checkpoints)."""
    raw = dict(raw)
    name = raw.pop("name", Config.name)
    if not isinstance(name, str) or not name:
        raise ConfigError("name", name, "must be a non-empty string", source)
    sections = {}
    for key, value in raw.items():
        if key not in SECTIONS:
            raise ConfigError(key, value, _unknown("section", key, SECTIONS), source)
        if not isinstance(value, dict):
            raise ConfigError(key, value, f"must be a table ([{key}])", source)
        sections[key] = _build_section(key, value, source)
    try:
        return Config(name=name, **sections)
    except ConfigError as err:
        raise err.located(source) from None


def _build_section(section: str, values: dict, source: str | None):
    cls = SECTIONS[section]
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(f"{section}.{key}", value, _unknown("field", key, hints), source)
        try:
            kwargs[key] = _coerce(hints[key], value)
        except ValueError as err:
            raise ConfigError(f"{section}.{key}", value, str(err), source) from None
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise err.located(source, section) from None


def _coerce(hint, value):
    """Check a TOML value against a field's annotation; raise ValueError with a short reason."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        (item, _) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"must be a list of {item.__name__}")
        return tuple(_coerce(item, v) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("must be an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("must be a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError("must be a string")
        return value
    raise TypeError(f"unsupported config annotation {hint}")


def _apply_override(raw: dict, item: str) -> None:
    """`section.field=value`, the value parsed as TOML (so 1e-3, true, [2, 2]) or else taken as a string."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise HpcyuanError(f"override '{item}': expected section.field=value, e.g. train.steps=200")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    *sections, leaf = key.split(".")
    node = raw
    for part in sections:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise HpcyuanError(f"override '{item}': {part} is not a section")
    node[leaf] = value


def _unknown(kind: str, key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown {kind}{hint}; known: {', '.join(known)}"


def _toml_ready(obj):
    """asdict() output with tuples as lists (TOML has no tuples)."""
    if isinstance(obj, dict):
        return {k: _toml_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_toml_ready(v) for v in obj]
    return obj
