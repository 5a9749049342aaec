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
  hpcyuan train --config demo            train, printing a progress line
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
        "train", help="train a model (one process; multi-rank MPI training is being built)",
        description="Train the model a config describes, on data made by `hpcyuan data prepare`. "
                    "Prints a progress line every train.log_interval steps and writes "
                    "<train.run_dir>/metrics.jsonl, config.toml, summary.json and loss.png "
                    "(docs/metrics.md).")
    add_config_args(train)
    train.add_argument("--steps", type=int, help="override train.steps")
    train.add_argument("--run-dir", help="override train.run_dir (metrics, config and checkpoints go here)")
    train.set_defaults(handler=run_train)

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
    return parser


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help=CONFIG_HELP)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help=SET_HELP)


def load(args, extra: list[str] = ()):
    from hpcyuan.config import load_config

    return load_config(args.config, [*args.set, *extra])


def run_train(args) -> int:
    extra = []
    if args.steps is not None:
        extra.append(f"train.steps={args.steps}")
    if args.run_dir is not None:
        extra.append(f'train.run_dir="{args.run_dir}"')
    cfg = load(args, extra)
    from hpcyuan.train import train

    train(cfg, args.config)
    return 0


def run_prepare(args) -> int:
    cfg = load(args)
    from hpcyuan.data import prepare_data

    prepare_data(cfg, force=args.force)
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
