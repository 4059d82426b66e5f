"""What an experiment will cost on Kaggle, before anything is pushed.

Prints the images per epoch, the epochs, the estimated GPU-hours per fold and in total, the
sessions per fold (a Kaggle GPU session lasts at most 12 hours; 0.75 h of each is kept free
for setup and saving), and, when Kaggle credentials are set up, the account's remaining
weekly GPU quota. The throughput is the one the latest finished session of this config on
this accelerator measured (`push run` records it in OUT/throughput.json), else an estimate
from a reference table that says where its figures come from.

--accelerator takes Kaggle's ids: NvidiaTeslaT4 (GPU T4 x2, the default GPU; a single T4 is
not offered) or NvidiaTeslaP100 (the current Kaggle image's PyTorch lacks kernels for it).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="exp_00", help="experiment (a bundled name or a TOML)")
    parser.add_argument("--folds", default=None, metavar="SPEC", help="folds, e.g. 0-4; None: the config's fold")
    parser.add_argument("--accelerator", default="NvidiaTeslaT4", metavar="ID",
                        help="Kaggle's accelerator id: NvidiaTeslaT4 (GPU T4 x2) or NvidiaTeslaP100")
    parser.add_argument("--train-images", type=int, default=None, metavar="N",
                        help="labelled training slices (default: stage 2's 752,803)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="where push run keeps its records (throughput.json); None: runs/kaggle of the checkout")
    parser.add_argument("--offline", action="store_true", help="do not ask Kaggle for the remaining quota")


def run(args: argparse.Namespace) -> int:
    from ..kaggle_flow import Layout, experiment_folds, parse_folds
    from ..plan import STAGE2_TRAIN_IMAGES, make_plan

    experiment, folds = experiment_folds(args.config, parse_folds(args.folds))
    layout = Layout.find(out=args.out)
    plan = make_plan(experiment, len(folds), args.accelerator, records=layout.out,
                     train_images=args.train_images or STAGE2_TRAIN_IMAGES)
    print("\n".join(plan.lines(None if args.offline else remaining_quota())))
    return 0


def remaining_quota():
    """The weekly GPU quota when credentials and the client are there, else None (said so)."""
    import importlib.util

    from ..kaggle_api import KaggleSession, find_credentials

    credentials = find_credentials(required=False)
    if credentials is None or importlib.util.find_spec("kaggle") is None:
        print("(no Kaggle credentials or client here: the remaining quota is not shown)")
        return None
    return KaggleSession(credentials).quota()
