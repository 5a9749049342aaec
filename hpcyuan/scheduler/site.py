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
    [env]                         # exported in the batch script (every rank inherits them)
    OMP_NUM_THREADS = "1"

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
    env: dict[str, str] = field(default_factory=dict)
    source: str = ""


_FIELDS = {"name": str, "description": str, "partition": str, "account": str, "qos": str, "exclusive": bool,
           "modules": list, "mpi": str, "srun_flags": list, "sbatch_flags": list, "env": dict}


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
        if kind is dict:
            for k, v in value.items():
                if not _ENV_NAME.match(k) or not isinstance(v, (str, int, float)) or isinstance(v, bool):
                    raise HpcyuanError(f"{source}: env.{k} = {v!r}: needs a variable name and a string or number")
            value = {k: str(v) for k, v in value.items()}
        values[key] = value
    if "name" not in values and source:
        values["name"] = Path(source).stem
    return SiteProfile(**values, source=source)
