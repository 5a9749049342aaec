"""Test tiers follow the directory: tests/unit, tests/mpi, tests/slurm, tests/kernels.

Each test gets the marker of its directory, so `pytest -m unit` (or mpi, slurm, kernels) runs one tier.
"""

import pytest

TIERS = ("unit", "mpi", "slurm", "kernels")


def pytest_collection_modifyitems(items):
    for item in items:
        for tier in TIERS:
            if f"/tests/{tier}/" in str(item.fspath):
                item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def shakespeare_512():
    """The Shakespeare corpus tokenized with 512 pieces (the tiny presets' data), built once per machine.

    Kept in data/ (git-ignored) so repeated test runs reuse it; `prepare_data` is idempotent and the
    lock keeps two pytest workers from building it at the same time.
    """
    from pathlib import Path

    from filelock import FileLock

    from hpcyuan.config import load_config
    from hpcyuan.data import prepare_data

    repo = Path(__file__).resolve().parent.parent
    cfg = load_config("tiny")
    path = repo / cfg.data.dir
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        prepare_data(load_config("tiny", [f'data.dir="{path}"']))
    return path
