"""The MPI runtime: where this rank sits (env), how ranks talk (comm), the pp x dp grid (topology),
polite deadline-bound waits and the job-ending error handler (watchdog), local launch (launch).

The pure parts (env, hostlist, topology, launch) import without MPI; `comm` loads mpi4py, which
initialises MPI, so import it only in processes that take part in a job:

    from hpcyuan.runtime.comm import Comm
    from hpcyuan.runtime.topology import Topology, build_groups
    from hpcyuan.runtime.watchdog import run_main

See docs/runtime.md.
"""
