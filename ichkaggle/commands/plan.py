"""What an experiment will cost on Kaggle, before anything is pushed.

Prints the images per epoch, the epochs, the estimated GPU-hours per fold and in total, the
sessions per fold (a Kaggle GPU session lasts at most 12 hours; 0.75 h of each is kept free
for setup and saving), the wall clock (Kaggle runs at most 2 GPU sessions of an account at
once, so five one-session folds take three rounds), how many prepare kernels the image
settings need (one kernel keeps at most 20 GB of output: larger settings are split into
parts, each sized from bytes per image measured on real slices; one that cannot fit even so
is refused with the arithmetic), and, when Kaggle credentials are set up, the account's
remaining weekly GPU quota.

The throughput comes from the first of: the latest finished session of this config on this
accelerator (`push run` records it in OUT/throughput.json); --throughput IMG_PER_S; the
reference table (EfficientNet-B0 and B5, estimates that say where they come from); else, for
any other timm architecture, the nearest reference scaled by the model's forward FLOPs at the
config's image size (counted on PyTorch's meta device: needs the train extra), an estimate
and said so.

--accelerator takes Kaggle's ids: NvidiaTeslaT4 (GPU T4 x2, the default GPU; a single T4 is
not offered) or NvidiaTeslaP100 (the current Kaggle image's PyTorch lacks kernels for it).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", action="append", default=None, metavar="CONFIG",
                        help="experiment (a bundled name or a TOML); repeat it for several, summed as `push run "
                             "--config A --config B` runs them (default: exp_00)")
    parser.add_argument("--folds", default=None, metavar="SPEC", help="folds, e.g. 0-4; None: the config's fold")
    parser.add_argument("--accelerator", default="NvidiaTeslaT4", metavar="ID",
                        help="Kaggle's accelerator id: NvidiaTeslaT4 (GPU T4 x2) or NvidiaTeslaP100")
    parser.add_argument("--throughput", type=float, default=None, metavar="IMG_PER_S",
                        help="training images a second on that accelerator, when no session has measured it "
                             "(else the reference table, or an estimate scaled by the model's FLOPs)")
    parser.add_argument("--max-gpu-sessions", type=int, default=2, metavar="N",
                        help="GPU sessions at once (Kaggle runs at most 2 per account): the wall clock's rounds")
    parser.add_argument("--train-images", type=int, default=None, metavar="N",
                        help="labelled training slices (default: stage 2's 752,803)")
    parser.add_argument("--test-images", type=int, default=None, metavar="N",
                        help="test slices, prepared too (default: stage 2's 121,232)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="where push run keeps its records (throughput.json); None: runs/kaggle of the checkout")
    parser.add_argument("--offline", action="store_true", help="do not ask Kaggle for the remaining quota")


def main(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..kaggle.flow import Layout, experiment_folds, parse_folds
    from ..kaggle.parts import STAGE2_TEST_IMAGES
    from ..kaggle.pipeline import check_sources, max_parts
    from ..kaggle.plan import STAGE2_TRAIN_IMAGES, make_plan, total_lines
    from ..kaggle.runset import prepare_key

    if args.max_gpu_sessions < 1:
        raise UserError("--max-gpu-sessions: at least 1")
    configs = args.config or ["exp_00"]
    if len(set(configs)) != len(configs):
        raise UserError(f"--config {configs}: a config given twice")
    loaded = [experiment_folds(config, parse_folds(args.folds)) for config in configs]
    layout = Layout.find(out=args.out)
    check_sources(layout, len(configs), len(loaded[0][1]), {prepare_key(e): 1 for e, _ in loaded})
    plans = [make_plan(experiment, len(folds), args.accelerator, records=layout.out,
                       train_images=args.train_images or STAGE2_TRAIN_IMAGES,
                       test_images=STAGE2_TEST_IMAGES if args.test_images is None else args.test_images,
                       throughput_given=args.throughput, max_gpu_sessions=args.max_gpu_sessions,
                       max_parts=max_parts(layout, len(folds) * len(configs)))
             for experiment, folds in loaded]
    quota = None if args.offline else remaining_quota()
    lines = [line for plan in plans for line in plan.lines(quota if len(plans) == 1 else None)]
    if len(plans) > 1:
        lines += total_lines(plans, args.max_gpu_sessions, quota)
    print("\n".join(lines))
    return 0


def remaining_quota():
    """The weekly GPU quota when credentials and the client are there, else None (said so)."""
    import importlib.util

    from ..kaggle.api import KaggleSession
    from ..kaggle.credentials import find_credentials

    credentials = find_credentials(required=False)
    if credentials is None or importlib.util.find_spec("kaggle") is None:
        print("(no Kaggle credentials or client here: the remaining quota is not shown)")
        return None
    return KaggleSession(credentials).quota()
