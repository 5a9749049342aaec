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
