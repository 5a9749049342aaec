"""hpcyuan: train Yuan 2.0 / Yuan 2.0-M32 on the idle, preemptible capacity of Slurm supercomputers.

Install for development (the only supported way; `scripts/install.sh` does it for you):

    pip install torch==2.13.0            # the CPU build; pick your CUDA build on a GPU machine
    pip install --no-build-isolation -e .[test]

`--no-build-isolation` matters once the C++ kernels are built here: with isolation pip would build
them against another torch than the one that runs them.
"""

from setuptools import find_packages, setup

setup(
    name="hpcyuan",
    version="0.1.0",
    description="Yuan 2.0 training on preemptible supercomputer backfill: MPI pipeline + ZeRO, HDF5 checkpoints, Slurm",
    packages=find_packages(include=["hpcyuan", "hpcyuan.*"]),
    python_requires=">=3.11",
    install_requires=[
        "torch>=2.5,<2.15",  # 2.13.0 is the CPU build on our CI machines; an unpinned torch pulls CUDA
        "numpy>=1.26",
        "h5py>=3.10",
        "mpi4py>=4.0",
        "submitit>=1.5",
        "sentencepiece>=0.2",
        "matplotlib>=3.8",
        "tomli-w>=1.0",
    ],
    extras_require={
        # the MPI library itself: the PyPI MPICH wheel by default; a site MPI works without it
        "mpich": ["mpich>=4.2"],
        "test": ["pytest>=8", "filelock>=3", "pytest-xdist>=3.5", "pytest-timeout>=2.3", "mpich>=4.2"],
    },
    entry_points={"console_scripts": ["hpcyuan = hpcyuan.cli:main"]},
)
