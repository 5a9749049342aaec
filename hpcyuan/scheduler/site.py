"""Site profiles: what differs between clusters, kept out of the run's config.

A profile is a small TOML file (slurm/sites/<name>.toml, or any path):

    name = "local"
    partition = "normal"          # used when the config's slurm.partition is empty
    account = ""                  # --account, if the site needs one
    qos = ""                      # --qos
    exclusive = true              # whole nodes (--exclusive)
    modules = []                  # `module load` each, in order, before the ranks start
    mpi = "pmi2"                  # srun --mpi=<this>: the PyPI mpich wheel + mpi4py speak PMI2
    srun_flags = ["--kill-on-bad-exit=1"]
    sbatch_flags = []             # extra #SBATCH options, e.g. ["--gres=gpu:8"]
    resume = "requeue"            # how a run continues in a new slot: "requeue" (scontrol requeue), or where
                                  # a site forbids requeue, a chain submitted up front: "singleton"
                                  # (--dependency=singleton jobs of one name) or "array" (--array=0-N%1)
    [env]                         # exported in the batch script (every rank inherits them)
    OMP_NUM_THREADS = "1"
    [partitions.low]              # what the harvester may use (docs/harvest.md); none: it cannot run
    price_per_node_hour = 1.0     # or billing_weight = 0.25 (the site's billing units per node-hour)
    speed = 1.0                   # relative speed of a node there (tokens/s scale with it)
    max_nodes = 4                 # the most nodes one slot may take
    preemptible = true            # jobs there may be taken back at any moment
    time = "00:30:00"             # the walltime a slot asks for (--time); backfill may grant time_min
    time_min = "00:05:00"         # --time-min; empty: the same as time

Every value is data: the renderer (sbatch.py) shell-quotes each one; nothing here is run as shell text.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from hpcyuan.errors import HpcyuanError

SITE_DIR = Path(__file__).resolve().parent.parent.parent / "slurm" / "sites"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_SLURM_TIME = re.compile(r"(\d+-)?\d+(:\d{1,2}){0,2}\Z")
_PARTITION_FIELDS = {"price_per_node_hour": (int, float), "billing_weight": (int, float), "speed": (int, float),
                     "max_nodes": int, "preemptible": bool, "time": str, "time_min": str}


@dataclass(frozen=True)
class SiteProfile:
    name: str = "generic"
    description: str = ""
    partition: str = ""
    """Default partition (the config's slurm.partition wins when set); empty: the cluster's default."""
    account: str = ""
    qos: str = ""
    exclusive: bool = True
    modules: tuple[str, ...] = ()
    mpi: str = "pmi2"
    srun_flags: tuple[str, ...] = ("--kill-on-bad-exit=1",)
    sbatch_flags: tuple[str, ...] = ()
    resume: str = "requeue"
    """How a run continues in a new slot (RESUME_MODES): the job requeues itself, or the next job of a
    chain of slurm.max_requeues + 1 jobs submitted at once starts when the previous one ends."""
    env: dict[str, str] = field(default_factory=dict)
    partitions: dict[str, PartitionProfile] = field(default_factory=dict)
    """Partitions the harvester may submit to, by name (the order of the file)."""
    source: str = ""

    def __post_init__(self):
        if self.resume not in RESUME_MODES:
            raise HpcyuanError(f"{self.source or self.name}: resume = {self.resume!r}: must be one of "
                               f"{', '.join(RESUME_MODES)}")


RESUME_MODES = ("requeue", "singleton", "array")


@dataclass(frozen=True)
class PartitionProfile:
    """One partition as the harvester weighs it: price, speed, size limit, preemptibility, slot length."""

    name: str
    price_per_node_hour: float = 0.0
    """Cost of one node-hour (any currency); or give billing_weight."""
    billing_weight: float = 0.0
    """Billing units charged per node-hour (Slurm TRESBillingWeights); used as the price when no price is set."""
    speed: float = 1.0
    """Relative speed of one node (1.0 = the reference): a slot's tokens/s scale with nodes x speed."""
    max_nodes: int = 1
    preemptible: bool = False
    time: str = "00:30:00"
    time_min: str = ""

    def __post_init__(self):
        where = f"partitions.{self.name}"
        if self.price_per_node_hour and self.billing_weight:
            raise HpcyuanError(f"{where}: give price_per_node_hour or billing_weight, not both")
        if self.price_per_node_hour < 0 or self.billing_weight < 0:
            raise HpcyuanError(f"{where}: a price cannot be negative")
        if self.speed <= 0:
            raise HpcyuanError(f"{where}.speed = {self.speed}: must be > 0")
        if self.max_nodes < 1:
            raise HpcyuanError(f"{where}.max_nodes = {self.max_nodes}: must be >= 1")
        for key in ("time", "time_min"):
            value = getattr(self, key)
            if value and not _SLURM_TIME.match(value):
                raise HpcyuanError(f"{where}.{key} = {value!r}: not a Slurm time ([D-]HH:MM:SS, MM:SS or minutes)")

    @property
    def price(self) -> float:
        """Cost of one node-hour here: the price, else the billing weight."""
        return self.price_per_node_hour or self.billing_weight


_FIELDS = {"name": str, "description": str, "partition": str, "account": str, "qos": str, "exclusive": bool,
           "modules": list, "mpi": str, "srun_flags": list, "sbatch_flags": list, "resume": str, "env": dict,
           "partitions": dict}


def site_path(name_or_path: str) -> Path:
    """A profile name (slurm/sites/<name>.toml) or a path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or "/" in name_or_path:
        candidates = [path]
    else:
        candidates = [SITE_DIR / f"{name_or_path}.toml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    known = ", ".join(sorted(p.stem for p in SITE_DIR.glob("*.toml"))) or "none"
    raise HpcyuanError(f"site profile {name_or_path!r} not found (known in {SITE_DIR}: {known}; or give a .toml path)")


def load_site(name_or_path: str) -> SiteProfile:
    path = site_path(name_or_path)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise HpcyuanError(f"{path}: invalid TOML: {err}") from None
    return site_from_dict(raw, str(path))


def site_from_dict(raw: dict, source: str = "") -> SiteProfile:
    values = {}
    for key, value in raw.items():
        kind = _FIELDS.get(key)
        if kind is None:
            raise HpcyuanError(f"{source}: unknown site field {key!r} (known: {', '.join(_FIELDS)})")
        if not isinstance(value, kind):
            raise HpcyuanError(f"{source}: {key} = {value!r}: must be a {kind.__name__}")
        if kind is list:
            if not all(isinstance(v, str) for v in value):
                raise HpcyuanError(f"{source}: {key}: every entry must be a string")
            value = tuple(value)
        if key == "partitions":
            value = {name: _partition(name, table, source) for name, table in value.items()}
        elif kind is dict:
            for k, v in value.items():
                if not _ENV_NAME.match(k) or not isinstance(v, (str, int, float)) or isinstance(v, bool):
                    raise HpcyuanError(f"{source}: env.{k} = {v!r}: needs a variable name and a string or number")
            value = {k: str(v) for k, v in value.items()}
        values[key] = value
    if "name" not in values and source:
        values["name"] = Path(source).stem
    return SiteProfile(**values, source=source)


def _partition(name: str, table, source: str) -> PartitionProfile:
    if not isinstance(table, dict):
        raise HpcyuanError(f"{source}: partitions.{name} must be a table")
    for key, value in table.items():
        kind = _PARTITION_FIELDS.get(key)
        if kind is None:
            known = ", ".join(_PARTITION_FIELDS)
            raise HpcyuanError(f"{source}: partitions.{name}: unknown field {key!r} (known: {known})")
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise HpcyuanError(f"{source}: partitions.{name}.{key} = {value!r}: wrong type")
    try:
        return PartitionProfile(name, **table)
    except HpcyuanError as err:
        raise HpcyuanError(f"{source}: {err}") from None
