"""hpcyuan: train Yuan 2.0 / Yuan 2.0-M32 on the idle, preemptible capacity of Slurm supercomputers.

Install for development (the only supported way; `scripts/install.sh` does it for you):

    pip install torch==2.13.0            # the CPU build; pick your CUDA build on a GPU machine
    pip install --no-build-isolation -e .[test]

`--no-build-isolation` matters once the C++ kernels are built here: with isolation pip would build
them against another torch than the one that runs them.

Kernels (extension-cpp layout, see kernels/): `hpcyuan._C` is always built from kernels/*.cpp as a CPU
extension (OpenMP). When the installed torch is a CUDA build and nvcc is found, kernels/cuda/*.cu are
compiled into the same module. Nothing to choose: no flags, no environment switches.
"""

import glob
import os
import shutil

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension


def _has_nvcc() -> bool:
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    return shutil.which("nvcc") is not None or os.path.exists(os.path.join(cuda_home, "bin", "nvcc"))


def _extension():
    sources = sorted(glob.glob("kernels/*.cpp"))
    # -fno-math-errno (as torch's own build): sqrt in `omp simd` loops vectorizes instead of calling libm
    args = {"extra_compile_args": {"cxx": ["-O3", "-fopenmp", "-fno-math-errno"]}, "extra_link_args": ["-fopenmp"]}
    # a CPU torch wheel cannot build CUDA code (torch forces CUDA_HOME=None): CPU only there
    if torch.version.cuda is not None and _has_nvcc():
        args["extra_compile_args"]["nvcc"] = ["-O3"]  # archs: TORCH_CUDA_ARCH_LIST, else the visible GPU
        return CUDAExtension("hpcyuan._C", sources + sorted(glob.glob("kernels/cuda/*.cu")), **args)
    return CppExtension("hpcyuan._C", sources, **args)


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
        "zlib-ng>=0.5",  # checkpoint crc32s, 4x zlib's speed (the same checksums; zlib where it is missing)
    ],
    extras_require={
        # the MPI library itself: the PyPI MPICH wheel by default; a site MPI works without it
        "mpich": ["mpich>=4.2"],
        "test": ["pytest>=8", "filelock>=3", "pytest-xdist>=3.5", "pytest-timeout>=2.3", "mpich>=4.2"],
    },
    entry_points={"console_scripts": ["hpcyuan = hpcyuan.cli:main"]},
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension},
)
