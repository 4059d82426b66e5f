"""What the metric-matched loss, the weight average and the sequence-stage TTA each do on the demo, alone.

Each variant is the demo's first config alone with one option switched on against a baseline
with all three off (the seed's loss, no average, each series read once), run as the demo runs
(``ichkaggle.demo.run_demo`` with that one config: synthetic competition, 3 folds, the
sequence stage), on each ``--seeds`` (the synthetic data's seed). Reported: the CNN's out-of-fold score (the folds'
mean calibrated validation score), the sequence stage's out-of-fold score, and the test
scores of the CNN alone and of the final submission, against the hidden synthetic truth.

    python benchmarks/bench_training_options.py --seeds 0 1            # ~4 variants x 2 seeds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: variant -> the [train] and [sequence] values it sets (the baseline: every option off)
VARIANTS = {
    "baseline (all off)": {"train": {"loss": "equal", "ema": 0.0}, "sequence": {"tta": False}},
    "metric-matched loss": {"train": {"loss": "metric", "ema": 0.0}, "sequence": {"tta": False}},
    "weight average (EMA)": {"train": {"loss": "equal", "ema": 0.99}, "sequence": {"tta": False}},
    "sequence-stage TTA": {"train": {"loss": "equal", "ema": 0.0}, "sequence": {"tta": True}},
}


def variant_config(base: str, name: str, settings: dict, folder: Path) -> Path:
    """The base config with the variant's [train] and [sequence] values, as a TOML file."""
    from dataclasses import replace

    from ichkaggle.experiment import load_experiment

    experiment = load_experiment(base)
    experiment = replace(experiment, name=f"{experiment.name}-{name.split()[0]}",
                         train=replace(experiment.train, **settings["train"]),
                         sequence=replace(experiment.sequence, **settings["sequence"]))
    path = folder / f"{experiment.name}.toml"
    path.write_text(experiment.to_toml())
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--config", default="demo")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the rows here")
    args = parser.parse_args(argv)

    from ichkaggle.demo import run_demo

    work = Path(tempfile.mkdtemp(prefix="bench-options-"))
    rows, started = [], time.time()
    for seed in args.seeds:
        data = None
        for name in args.variants:
            config = variant_config(args.config, name, VARIANTS[name], work)
            result = run_demo(work / f"seed{seed}-{config.stem}", data=data, configs=[str(config)], seed=seed)
            data = data or result.workdir / "data"  # every variant of a seed on the same synthetic data
            cnn = next(k for k in result.scores if k.startswith("CNN "))
            rows.append({"seed": seed, "variant": name, "cnn_oof": result.oof[cnn.split(" (")[0]],
                         "sequence_oof": result.oof.get("blend + sequence stage"), "cnn_test": result.scores[cnn],
                         "final_test": result.scores.get("blend + sequence stage (submission)")})
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{time.strftime('%Y-%m-%d')}, {platform.machine()} ({os.cpu_count()} cores), "
          f"{time.time() - started:.0f}s")
    print("| seed | variant | CNN out of fold | sequence out of fold | CNN test | final test |")
    print("|---:|---|---:|---:|---:|---:|")
    for row in rows:
        cells = " | ".join(f"{v:.4f}" if isinstance(v, float) else "-"
                           for v in (row["cnn_oof"], row["sequence_oof"], row["cnn_test"], row["final_test"]))
        print(f"| {row['seed']} | {row['variant']} | {cells} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
