"""hpcyuan: train Yuan 2.0 / Yuan 2.0-M32 on the idle, preemptible capacity of Slurm supercomputers.

Layout (docs/architecture.md): config -> data -> model/ops -> optim -> train loop; the MPI runtime,
pipeline, checkpoints and Slurm workflows compose around the same loop.
"""

__version__ = "0.1.0"
