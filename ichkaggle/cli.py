"""The ``ichkaggle`` console script: one subcommand per module in ``ichkaggle.commands``.

Command modules are imported only when their subcommand runs, so ``ichkaggle --help``
stays fast and the core never imports torch or the Kaggle client.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import UserError

#: name (its module under ichkaggle.commands) -> one-line help. The order is the --help order.
COMMANDS: dict[str, str] = {
    "synth": "write a competition-shaped synthetic dataset of phantom head CTs",
    "prepare": "DICOM files -> windowed PNG/JPEG images + metadata.csv (resumable, --pack)",
    "pack": "pack a prepared folder's loose images into a few shard files + an index",
    "labels": "long training CSV -> one row per image (six 0/1 columns + fastai labels)",
    "folds": "patient-grouped, label-stratified folds from metadata.csv + labels",
    "score": "competition metric of a predictions CSV against a truth CSV",
    "check": "validate a submission CSV against the sample submission",
    "train": "train an experiment (TOML) with fastai + timm on prepared images",
    "predict": "TTA predictions of trained models -> a checked submission CSV",
    "embed": "per-slice CNN outputs of the folds' runs: out-of-fold and test tables for `seq`",
    "sequence": "the sequence stage: a bi-GRU or 1-D convolutions over each series (train | predict)",
    "blend": "several experiments' out-of-fold tables -> per-label weights fitted with the metric, a checked blend",
    "results": "the ledger: one row per experiment and submission known here, CV against the leaderboard",
    "plan": "GPU-hours, sessions per fold and the weekly quota an experiment needs on Kaggle",
    "demo": "the main job end to end on the embedded synthetic default (CPU)",
    "bundle": "build the package + configs as a Kaggle dataset folder (credential-checked)",
    "push": "push a dataset or kernel to Kaggle, follow it, fetch its outputs",
    "submit": "check a submission CSV, then submit it to the competition",
}


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ichkaggle",
        description="RSNA Intracranial Hemorrhage Detection toolchain: "
        "DICOM -> windowed images -> model -> checked submission.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"ichkaggle {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _command_parser(name: str) -> argparse.ArgumentParser:
    module = importlib.import_module(f"ichkaggle.commands.{name}")
    parser = argparse.ArgumentParser(
        prog=f"ichkaggle {name}",
        description=(module.__doc__ or COMMANDS[name]).strip(),
        formatter_class=_Formatter,
    )
    module.add_arguments(parser)
    parser.set_defaults(func=module.main)
    return parser


#: old command spellings, still accepted for a release, with a warning
RENAMED = {"seq": "sequence"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in RENAMED:
        print(f"ichkaggle {argv[0]}: renamed to `ichkaggle {RENAMED[argv[0]]}`; the old name goes in a later release",
              file=sys.stderr)
        argv[0] = RENAMED[argv[0]]
    if not argv or argv[0] not in COMMANDS:
        build_parser().parse_args(argv or ["--help"])
        return 2
    args = _command_parser(argv[0]).parse_args(argv[1:])
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"ichkaggle {argv[0]}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
