"""The `hpcyuan` command (also `python -m hpcyuan`).

Subcommands import torch only when they need it, so `--help` and `config` answer at once.
Errors the user can fix (`HpcyuanError`) print as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

from hpcyuan.errors import HpcyuanError

DESCRIPTION = """\
hpcyuan trains Yuan 2.0 (LFA attention) and Yuan 2.0-M32 (attention-router mixture of experts)
language models on the idle, preemptible capacity of Slurm supercomputers.

A run is described by one TOML config: a preset name from configs/ (tiny, demo, yuan-2b, yuan-51b,
yuan-102b, yuan-m32, ...) or a path. Typical use:

  hpcyuan config show yuan-102b          shapes, parameter count, parallel layout
  hpcyuan data prepare --config demo     build the tokenizer and token files, offline
  hpcyuan train --config demo --set parallel.pp=1 --set parallel.dp=1
                                         train on one process, printing a progress line
  hpcyuan launch -n 4 -- train --config demo
                                         on 4 local MPI ranks (the demo's pp = 2 x dp = 2)
  hpcyuan ckpt list runs/demo/checkpoints
                                         the run's checkpoints; the same train command resumes it
  hpcyuan generate --ckpt runs/demo/checkpoints --prompt "ROMEO:"
                                         sample text from the newest good checkpoint

On a cluster, start `hpcyuan train` with `srun --mpi=pmi2` (or mpiexec) directly: every rank runs it
and MPI says how many there are; parallel.pp x parallel.dp must equal that number.
"""

CONFIG_HELP = "preset name (see `hpcyuan config list`) or path to a TOML file"
SET_HELP = ("override one config field, e.g. --set train.lr=3e-4 --set parallel.layers_per_stage=[2,3]; "
            "the value is read as TOML (strings without quotes are fine); repeatable")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return args.handler(args) or 0
    except HpcyuanError as err:
        if _launcher_rank() == 0:  # every rank fails alike on a bad config: say it once
            print(f"hpcyuan: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hpcyuan: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpcyuan", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    train = commands.add_parser(
        "train", help="train a model (one process, or every rank of an MPI/Slurm job)",
        description="Train the model a config describes, on data made by `hpcyuan data prepare`. "
                    "Run it as one process, or on every rank of a job (mpiexec, srun --mpi=pmi2, "
                    "`hpcyuan launch`); parallel.pp x parallel.dp must equal the number of ranks. "
                    "Rank 0 prints a progress line every train.log_interval steps and writes "
                    "<train.run_dir>/metrics.jsonl, config.toml, summary.json and loss.png "
                    "(docs/metrics.md). A failing rank ends the whole job: exit status 1 crash, "
                    "2 bad input, 3 a collective timed out (parallel.timeout_s); 75 stopped by SIGUSR2/SIGTERM or the job's "
                    "deadline after saving a checkpoint (requeue it: the same command resumes).")
    add_config_args(train)
    train.add_argument("--steps", type=int, help="override train.steps")
    train.add_argument("--run-dir", help="override train.run_dir (metrics, config and checkpoints go here)")
    train.set_defaults(handler=run_train)

    launch = commands.add_parser(
        "launch", help="run an hpcyuan command on N local MPI ranks (mpiexec)",
        description="Run `hpcyuan COMMAND ...` on N ranks of this machine through mpiexec (the one from "
                    "the mpich wheel in this Python's environment, else the first on PATH), with "
                    "OMP_NUM_THREADS = cores / N unless set. Example: hpcyuan launch -n 4 -- train "
                    "--config demo (4 ranks: the demo's pp = 2 x dp = 2). On a cluster use srun --mpi=pmi2 instead.")
    launch.add_argument("-n", "--ranks", type=int, required=True, metavar="N", help="number of MPI ranks")
    launch.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND ...",
                        help="the hpcyuan command line to run on every rank")
    launch.set_defaults(handler=run_launch)

    data = commands.add_parser("data", help="prepare training data").add_subparsers(title="data commands",
                                                                                    metavar="ACTION")
    prepare = data.add_parser(
        "prepare", help="tokenize a corpus into memory-mapped token files",
        description="Read data.corpus (built-in: shakespeare; or a .txt/.md file or directory), train a "
                    "SentencePiece tokenizer with model.vocab_size pieces, and write tokenizer.model, "
                    "train.bin, val.bin and meta.json into data.dir (format: docs/data-format.md). "
                    "Works offline. Does nothing if data.dir already holds the same preparation.")
    add_config_args(prepare)
    prepare.add_argument("--force", action="store_true", help="rebuild even if data.dir is already prepared")
    prepare.set_defaults(handler=run_prepare)
    samples = data.add_parser(
        "samples", help="check a run's sample log: every sample trained once, in order",
        description="Read RUN_DIR/samples.jsonl (written with train.sample_log = true) and RUN_DIR/config.toml, "
                    "and check that the batches the final model was trained on are exactly the global "
                    "sampler's, position after position, across restarts, other layouts and spike-guard "
                    "rewinds. Prints a one-line summary; exit 2 naming the first wrong position otherwise.")
    samples.add_argument("run_dir", metavar="RUN_DIR")
    samples.set_defaults(handler=run_check_samples)

    config = commands.add_parser("config", help="inspect configs and presets").add_subparsers(
        title="config commands", metavar="ACTION")
    show = config.add_parser(
        "show", help="print a config's shapes, parameter count and layout",
        description="Print the model shapes (every parameter of one layer), the parameter count "
                    "(total and active per token), training FLOPs per token and the parallel layout.")
    show.add_argument("config", help=CONFIG_HELP)
    show.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help=SET_HELP)
    show.add_argument("--toml", action="store_true", help="print the complete, validated config as TOML instead")
    show.set_defaults(handler=run_config_show)
    listing = config.add_parser("list", help="list the presets in configs/")
    listing.set_defaults(handler=run_config_list)

    plan = commands.add_parser(
        "plan", help="choose the layers of each pipeline stage from a cost model",
        description="Split model.num_layers over parallel.pp stages: the planner minimises the slowest "
                    "stage (time per micro-batch from a FLOP/byte/op cost model) under a per-rank memory "
                    "cap (1F1B in-flight activations, parameters, gradients, ZeRO optimizer shard), and "
                    "prints its split beside the uniform one (and the config's own layers_per_stage). "
                    "Model and assumptions: docs/planner.md.")
    add_config_args(plan)
    plan.add_argument("--memory-gib", type=float, metavar="GIB", help="memory cap per rank (default: none)")
    plan.add_argument("--recompute-layers", metavar="N|all",
                      help="recompute the first N layers of every stage in backward (default: the config's "
                           "parallel.recompute_layers; all = full)")
    plan.add_argument("--machine", default="gpu", choices=["gpu", "cpu"],
                      help="assumed speed of a rank (default gpu: an H100-class device in bf16)")
    plan.set_defaults(handler=run_plan)

    ckpt = commands.add_parser("ckpt", help="list, inspect, verify and export checkpoints").add_subparsers(
        title="checkpoint commands", metavar="ACTION")
    for action, text in (("list", "one line per checkpoint under a directory: step, samples, layout, size, ok/BAD"),
                         ("inspect", "a checkpoint's metadata: step, data position, writing layout, model, tensors"),
                         ("verify", "read everything and check every file's size and every crc32 (metadata and each "
                                    "4 MiB block of data); "
                                    "exit 1 when something is wrong")):
        sub = ckpt.add_parser(action, help=text, description=text + ". PATH: a run's checkpoint directory "
                              "(<run_dir>/checkpoints) or one step_NNNNNNNN directory (docs/checkpoint-format.md).")
        sub.add_argument("path", metavar="PATH")
        sub.set_defaults(handler=run_ckpt, action=action)
    export = ckpt.add_parser(
        "export", help="write a checkpoint's model weights to one HDF5 file for inference",
        description="Write the model weights of a checkpoint to OUT (HDF5): one dataset /weights/<name> per "
                    "parameter in its full shape and stored dtype, with the model config, the run's config, "
                    "step, samples, code version and the source manifest's sha256 as attributes; plain h5py "
                    "reads it (docs/checkpoint-format.md, \"Exported weights\"). CKPT: one step_NNNNNNNN "
                    "directory, or a run's checkpoint directory (<run_dir>/checkpoints), whose newest good "
                    "checkpoint is used. The checkpoint is verified first and a damaged one refused; OUT is "
                    "written as OUT.tmp and renamed when complete. `hpcyuan generate --ckpt OUT` samples from it.")
    export.add_argument("path", metavar="CKPT")
    export.add_argument("out", metavar="OUT.h5")
    export.set_defaults(handler=run_ckpt_export)

    generate = commands.add_parser(
        "generate", help="sample text from a trained model (checkpoint or exported .h5)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Sample a continuation of a prompt from a trained model, on this one process, in fp32 on the CPU.

The model is rebuilt from the config stored with the weights (any training layout works) and the
tokenizer is read from the data.dir of the run's stored config (or --tokenizer). Every new token
re-runs the model on the last model.seq_length tokens (no KV cache); the prompt starts a document.
Prints the prompt and its continuation; the same weights, prompt and --seed give the same text.

  hpcyuan generate --ckpt runs/tiny/checkpoints --prompt "ROMEO:" --tokens 100
  hpcyuan generate --ckpt runs/tiny/checkpoints/step_00000020 --temperature 0     (greedy)
  hpcyuan ckpt export runs/tiny/checkpoints tiny.h5 && hpcyuan generate --ckpt tiny.h5
""")
    generate.add_argument("--ckpt", required=True, metavar="PATH",
                          help="a run's checkpoint directory (its newest good checkpoint), one step_NNNNNNNN "
                               "directory, or a .h5 file from `hpcyuan ckpt export`")
    generate.add_argument("--prompt", default="", help="text to continue (default: empty, a new document)")
    generate.add_argument("--tokens", type=int, default=64, metavar="N", help="new tokens to generate (default 64)")
    generate.add_argument("--temperature", type=float, default=0.8, metavar="T",
                          help="divide the logits by T; 0 = greedy (default 0.8)")
    generate.add_argument("--top-k", type=int, default=50, metavar="K",
                          help="sample among the K most likely tokens; 0 = all (default 50)")
    generate.add_argument("--seed", type=int, default=1234, metavar="S", help="sampling seed (default 1234)")
    generate.add_argument("--tokenizer", metavar="PATH",
                          help="tokenizer.model (or the data dir holding it) instead of the one in the "
                               "stored config's data.dir")
    generate.set_defaults(handler=run_generate)

    status = commands.add_parser(
        "status", help="where a run stands: steps, checkpoints, every job that trained it",
        description="Show a run's progress (step, samples), its newest good checkpoint and every attempt "
                    "that trained it (start time, Slurm job id and restart count, nodes, layout, steps, "
                    "outcome: done, stopped by a signal, or died), from RUN_DIR/attempts.jsonl, which "
                    "hpcyuan train writes; attempts still running show their live Slurm state.")
    status.add_argument("run_dir", metavar="RUN_DIR")
    status.set_defaults(handler=run_status)

    submit = commands.add_parser(
        "submit", help="submit a training run as a Slurm batch job (checkpoint, requeue, resume)",
        description="Render slurm/train.sbatch for a config and a site profile (slurm/sites/<SITE>.toml) and "
                    "submit it with sbatch; prints the job id (--dry-run: prints the script instead). The job "
                    "asks for slurm.nodes nodes (slurm.min_nodes-slurm.nodes when min_nodes is set) x "
                    "slurm.ranks_per_node ranks, slurm.time, the stop signal "
                    "slurm.signal slurm.signal_seconds before the end, and requeues itself after a checkpoint "
                    "(preemption, time limit) or a failure, at most slurm.max_requeues times (a site profile with "
                    "resume = \"singleton\" or \"array\", for sites that forbid requeue: a chain of "
                    "max_requeues + 1 jobs submitted at once, run one after another); each slot "
                    "resumes from <train.run_dir>/checkpoints with parallel.dp fitted to the nodes it got. "
                    "Output: <train.run_dir>/slurm-<jobid>.out. See docs/slurm.md.")
    add_config_args(submit)
    submit.add_argument("--site", default=None, metavar="SITE",
                        help="site profile: a name in slurm/sites/ or a .toml path (default: $HPCYUAN_SITE or local)")
    submit.add_argument("--dry-run", action="store_true", help="print the batch script, submit nothing")
    submit.add_argument("--job-name", metavar="NAME", help="Slurm job name (default hpcyuan-<config name>)")
    submit.add_argument("--executor", choices=("sbatch", "submitit"), default="sbatch",
                        help="sbatch: the batch script slurm/train.sbatch (default); submitit: the same job "
                             "run by submitit, which pickles only the config path and --set values "
                             "(log: <train.run_dir>/submitit/<jobid>_0_log.out)")
    submit.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                        help="extra sbatch command-line argument (repeatable), e.g. --sbatch-arg=--hold "
                             "(sbatch executor only)")
    submit.set_defaults(handler=run_submit)

    harvest = commands.add_parser(
        "harvest", help="keep a training run going on backfill slots across partitions (long-lived, restartable)",
        description="Find idle backfill slots, shape the next job to fit one and submit it; repeat until the run "
                    "has trained train.steps. Every poll: squeue for the run's job (never two copies: the job "
                    "name is checked and the job carries --dependency=singleton), sacct into the ledger "
                    "RUN_DIR/harvest.sqlite, and when nothing is queued: sinfo + sbatch --test-only per "
                    "partition of the site profile's [partitions.<name>] tables, the objective picks the "
                    "partition and the shape (-N min-max, --time, --time-min), partitions not taken are "
                    "logged with the reason. Prints a progress line when something changes. Ctrl-C stops the "
                    "harvester only (exit 130; SIGTERM too): the running slot goes on and the same command picks it up. "
                    "--simulate instead replays a synthetic 1000-node trace through the same policy and "
                    "prints goodput and cost per objective. See docs/harvest.md.")
    harvest.add_argument("--config", help=CONFIG_HELP + " (not needed with --simulate)")
    harvest.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help=SET_HELP)
    harvest.add_argument("--site", default=None, metavar="SITE",
                         help="site profile with [partitions.<name>] tables (default: $HPCYUAN_SITE or local)")
    harvest.add_argument("--objective", choices=["cheapest", "fastest", "budget"], default="cheapest",
                         help="cheapest: lowest price per token (price / speed); fastest: most nodes x speed; "
                              "budget: fastest within --budget per hour (default cheapest)")
    harvest.add_argument("--budget", type=float, default=0.0, metavar="COST_PER_HOUR",
                         help="the most a slot may cost per hour (nodes x price), for --objective budget")
    harvest.add_argument("--min-nodes", type=int, default=0, metavar="N",
                         help="0 (default): each slot asks for exactly the largest usable node count idle now; "
                              "N: take slots of N nodes or more, asking -N N-MAX (Slurm may start it on N)")
    harvest.add_argument("--poll", type=float, default=10.0, metavar="SECONDS",
                         help="seconds between passes (>= 1; default 10)")
    harvest.add_argument("--max-failures", type=int, default=3, metavar="N",
                         help="give up after N failed slots in a row (default 3)")
    harvest.add_argument("--job-name", metavar="NAME", help="Slurm job name (default hpcyuan-harvest-<config name>)")
    harvest.add_argument("--simulate", action="store_true",
                         help="replay a seeded synthetic cluster trace through the policy; submits nothing")
    harvest.add_argument("--nodes", type=int, default=1000, help="--simulate: nodes of the synthetic cluster")
    harvest.add_argument("--hours", type=float, default=48.0, help="--simulate: length of the trace")
    harvest.add_argument("--seed", type=int, default=0, help="--simulate: trace seed")
    harvest.add_argument("--trace", metavar="JSON", help="--simulate: a recorded trace instead of the synthetic one "
                                                         "({partition: [[start_s, end_s, nodes], ...]})")
    harvest.set_defaults(handler=run_harvest)

    report = commands.add_parser(
        "report", help="what a harvested run's node-hours bought: goodput, lost work, cost, pictures",
        description="Read RUN_DIR/harvest.sqlite (the ledger hpcyuan harvest keeps) and the run's files; print "
                    "goodput (node-time of kept steps / allocated node-time), lost steps per preemption, cost "
                    "per billion tokens and requeue-to-first-step latency; write timeline.png (slots by "
                    "partition, preemptions marked), loss.png (the loss across slots), goodput.png (over "
                    "time) and report.html (one static page embedding them) into --out. See docs/harvest.md.")
    report.add_argument("run_dir", metavar="RUN_DIR")
    report.add_argument("--out", metavar="DIR", help="where the pictures and report.html go (default RUN_DIR/report)")
    report.set_defaults(handler=run_report)
    return parser


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help=CONFIG_HELP)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help=SET_HELP)


def load(args, extra: list[str] = ()):
    from hpcyuan.config import load_config

    return load_config(args.config, [*args.set, *extra])


def run_train(args) -> int:
    from hpcyuan.runtime.signals import EXIT_REQUEUE, ignore_stop_signals, stop_request

    stop_request()  # before anything slow: a stop signal during start-up must not kill the rank
    extra = []
    if args.steps is not None:
        extra.append(f"train.steps={args.steps}")
    if args.run_dir is not None:
        extra.append(f'train.run_dir="{args.run_dir}"')
    cfg = load(args, extra)
    from hpcyuan.runtime.watchdog import run_main
    from hpcyuan.train import train

    result = run_main(train, cfg, args.config)  # an error on any rank ends every rank (MPI Abort), shown once
    ignore_stop_signals()  # saved and done: a late signal must not kill a rank on its way out
    return EXIT_REQUEUE if result.stopped_by else 0


def run_launch(args) -> int:
    from hpcyuan.runtime.launch import launch

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise HpcyuanError("launch: name the hpcyuan command to run, e.g. hpcyuan launch -n 2 -- train --config tiny")
    return launch(args.ranks, command)


def _launcher_rank() -> int:
    from hpcyuan.runtime.env import JobEnv

    try:
        return JobEnv.current().rank
    except HpcyuanError:
        return 0


def run_prepare(args) -> int:
    cfg = load(args)
    from hpcyuan.data import prepare_data

    prepare_data(cfg, force=args.force)
    return 0


def run_status(args) -> int:
    from pathlib import Path

    from hpcyuan.status import status_report

    print(status_report(Path(args.run_dir)))
    return 0


def run_check_samples(args) -> int:
    from pathlib import Path

    from hpcyuan.config import load_config
    from hpcyuan.data import GlobalSampler, TokenDataset
    from hpcyuan.data.samplelog import check_sample_log

    run_dir = Path(args.run_dir)
    for name in ("config.toml", "samples.jsonl"):
        if not (run_dir / name).is_file():
            raise HpcyuanError(f"{run_dir / name} not found: RUN_DIR must be a run directory trained with "
                               f"train.sample_log = true")
    cfg = load_config(str(run_dir / "config.toml"))
    dataset = TokenDataset(cfg.data.dir, "train", cfg.model.seq_length)
    sampler = GlobalSampler(dataset.num_samples, cfg.train.global_batch_size, cfg.data.seed)
    print(f"{run_dir}: " + check_sample_log(run_dir / "samples.jsonl", sampler))
    return 0


def run_config_show(args) -> int:
    cfg = load(args)
    if args.toml:
        print(cfg.to_toml(), end="")
        return 0
    from hpcyuan.model.summary import describe

    print(describe(cfg))
    return 0


def run_config_list(args) -> int:
    from hpcyuan.config import PRESET_DIR, list_presets

    for name in list_presets():
        first = (PRESET_DIR / f"{name}.toml").read_text().splitlines()[0].lstrip("# ")
        print(f"{name:<12} {first}")
    return 0


def run_plan(args) -> int:
    cfg = load(args)
    from hpcyuan.parallel.partition import report

    text = args.recompute_layers
    if text is not None and text != "all" and not text.isdigit():
        raise HpcyuanError(f"--recompute-layers {text}: expected a number of layers >= 0 or 'all'")
    recompute = None if text is None else cfg.model.num_layers if text == "all" else int(text)
    print(report(cfg, args.memory_gib, args.machine, recompute))
    return 0


def run_ckpt(args) -> int:
    from pathlib import Path

    from hpcyuan.checkpoint.reader import verify
    from hpcyuan.checkpoint.report import inspect_report, list_report, step_dirs

    path = Path(args.path)
    if args.action == "list":
        print(list_report(path))
        return 0
    if args.action == "inspect":
        print("\n\n".join(inspect_report(p) for p in step_dirs(path)))
        return 0
    bad = 0
    for step in step_dirs(path):
        problems = verify(step, deep=True)
        print(f"{step}: " + ("ok" if not problems else "BAD\n  " + "\n  ".join(problems)))
        bad += bool(problems)
    return 1 if bad else 0


def run_ckpt_export(args) -> int:
    from hpcyuan.checkpoint.export import export_weights

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    result = export_weights(args.path, args.out, say)
    print(f"exported {result.tensors} tensors ({result.elements:,} elements, {result.bytes / 2**20:,.1f} MiB) "
          f"of {result.source} (step {result.step}) to {result.path} in {result.seconds:.1f} s")
    return 0


def run_generate(args) -> int:
    from hpcyuan.generate import Sampling, generate

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    how = Sampling(tokens=args.tokens, temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    print(generate(args.ckpt, args.prompt, how, args.tokenizer, say))
    return 0


def run_submit(args) -> int:
    import os
    from pathlib import Path

    from hpcyuan.scheduler import executor, load_site, render_script, submit_run

    cfg = load(args)
    site = load_site(args.site or os.environ.get("HPCYUAN_SITE") or "local")
    config = args.config
    if Path(config).is_file():  # a path: the job may start elsewhere (--chdir is this directory anyway)
        config = str(Path(config).resolve())
    if args.executor == "submitit":
        if args.sbatch_arg:
            raise HpcyuanError("--sbatch-arg: only with --executor sbatch (put sbatch options in the site profile)")
        if site.resume != "requeue":
            raise HpcyuanError(f"site {site.name}: resume = {site.resume!r}: submitit resumes by requeueing the job; "
                               "use --executor sbatch on a site that forbids requeue")
        if args.dry_run:
            print(executor.render_script(cfg, site, config, args.set, job_name=args.job_name), end="")
            return 0
        job = executor.submit(cfg, site, config, args.set, job_name=args.job_name)
        print(job.job_id)
        print(f"hpcyuan submit: job {job.job_id} ({site.name}, submitit), log {job.paths.stdout}", file=sys.stderr)
        return 0
    script = render_script(cfg, site, config, args.set, job_name=args.job_name)
    if args.dry_run:
        print(script, end="")
        return 0
    Path(cfg.train.run_dir).mkdir(parents=True, exist_ok=True)  # sbatch writes the output file there
    job_ids = submit_run(script, cfg, site, *args.sbatch_arg)
    print("\n".join(job_ids))
    if len(job_ids) > 1:
        print(f"hpcyuan submit: a chain of {len(job_ids)} jobs ({site.name} forbids requeue; "
              f"--dependency=singleton), output {cfg.train.run_dir}/slurm-<jobid>.out", file=sys.stderr)
    else:
        log = f"slurm-{job_ids[0]}.out"
        if site.resume == "array":
            log += f" (an array of {cfg.slurm.max_requeues + 1} slots, one at a time)"
        print(f"hpcyuan submit: job {job_ids[0]} ({site.name}), output {cfg.train.run_dir}/{log}", file=sys.stderr)
    return 0


def run_harvest(args) -> int:
    import os

    from hpcyuan.scheduler import load_site

    site = load_site(args.site or os.environ.get("HPCYUAN_SITE") or "local")
    if args.simulate:
        from hpcyuan.scheduler.simulate import simulate_all

        if not site.partitions:
            raise HpcyuanError(f"site profile {site.name} has no [partitions.<name>] tables to simulate")
        print(simulate_all(site.partitions, args.nodes, args.hours, args.seed, args.budget, tokens_per_node_hour=1e8,
                           trace_path=args.trace))
        return 0
    if not args.config:
        raise HpcyuanError("harvest: --config is required (or --simulate)")
    from pathlib import Path

    from hpcyuan.scheduler.harvest import Harvester, HarvestOptions

    cfg = load(args)
    config = str(Path(args.config).resolve()) if Path(args.config).is_file() else args.config
    options = HarvestOptions(args.objective, args.budget, args.min_nodes, args.poll, args.max_failures,
                             args.job_name or "")
    return Harvester(cfg, config, args.set, site, options, say=lambda line: print(line, flush=True)).run()


def run_report(args) -> int:
    from pathlib import Path

    from hpcyuan.config import load_config
    from hpcyuan.report import summarize, write_html, write_pictures
    from hpcyuan.scheduler.ledger import Ledger, attempt_work

    run_dir = Path(args.run_dir)
    db = run_dir / "harvest.sqlite"
    if not db.is_file():
        raise HpcyuanError(f"{db} not found: RUN_DIR must be a run that hpcyuan harvest drove")
    cfg = load_config(str(run_dir / "config.toml"))
    ledger = Ledger(db)
    slots = ledger.slots()
    ledger.close()
    summary = summarize(slots, cfg.train.global_batch_size * cfg.model.seq_length)
    out = Path(args.out) if args.out else run_dir / "report"
    pngs = write_pictures(slots, attempt_work(run_dir), out)
    page = write_html(summary, slots, pngs, out / "report.html", f"hpcyuan report: {run_dir}")
    print(summary.text())
    print(f"pictures: {', '.join(str(p) for p in pngs)}; page: {page}")
    return 0
