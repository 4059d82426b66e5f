"""The sequence stage at stage-2 size on this CPU: how long k-fold training and the test predictions take.

A synthetic out-of-fold table of the real shapes: 752,803 training slices in series of 20-60
slices (about 19,000 series), 121,232 test slices, 512 embedding values per slice (float16,
as ``ichkaggle embed`` stores them), the CNN's probabilities with lesions spanning a few to
a dozen slices. It times ``train_sequence`` (k models, one per fold) and ``predict_test``
with an experiment's ``[sequence]`` settings, and reports the out-of-fold scores. The
baseline is the CNN alone (what the stage is measured against).

    python benchmarks/bench_sequence.py [--config exp_00] [--scale 1.0] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace

import numpy as np


def synthetic_table(n: int, seed: int, folds: int | None, dims: int = 512):
    """(SliceTable) of ``n`` slices in series of 20-60, with labels that span adjacent slices."""
    from ichkaggle.train.slice_table import SliceTable

    rng = np.random.default_rng(seed)
    lengths = []
    while sum(lengths) < n:
        lengths.append(int(rng.integers(20, 61)))
    lengths[-1] -= sum(lengths) - n
    series = np.repeat(np.arange(len(lengths)), lengths)
    rank = np.concatenate([np.arange(k) for k in lengths])
    targets = np.zeros((n, 6), np.float32)
    starts = np.cumsum([0] + lengths[:-1])
    for start, k in zip(starts, lengths):
        for label in range(1, 6):
            if rng.random() < 0.15:
                first, span = int(rng.integers(0, k)), int(rng.integers(3, 13))
                targets[start + first:start + min(k, first + span), label] = 1
    targets[:, 0] = targets[:, 1:].max(axis=1)
    probs = np.clip(1 / (1 + np.exp(-(4 * (targets - 0.5) + rng.normal(0, 1.5, targets.shape)))), 1e-4, 1 - 1e-4)
    fold = None if folds is None else (series % folds)
    return SliceTable(np.array([f"ID_{i:09x}" for i in range(n)], dtype=object),
                      np.array([f"S{s}" for s in series], dtype=object), rank * 5.0, probs,
                      rng.normal(size=(n, dims)).astype(np.float16), targets, fold)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="exp_00", help="the experiment whose [sequence] settings to time")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the stage-2 sizes")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (a Kaggle CPU: 4)")
    parser.add_argument("--epochs", type=int, default=None, help="override [sequence] epochs")
    args = parser.parse_args(argv)

    import torch

    from ichkaggle.experiment import load_experiment
    from ichkaggle.sequence.models import predict_test, train_sequence
    from ichkaggle.tables.metric import weighted_log_loss

    torch.set_num_threads(args.threads)
    experiment = load_experiment(args.config)
    cfg = experiment.sequence if args.epochs is None else replace(experiment.sequence, epochs=args.epochs)
    oof = synthetic_table(int(752_803 * args.scale), 0, experiment.data.n_folds)
    test = synthetic_table(int(121_232 * args.scale), 1, None)
    print(f"{len(oof.ids):,} out-of-fold slices in {len(set(oof.series)):,} series, {len(test.ids):,} test slices, "
          f"{oof.embeddings.shape[1]} embedding values; {cfg.model}, hidden {cfg.hidden}, {cfg.epochs} epochs, "
          f"{experiment.data.n_folds} folds; {args.threads} torch threads on {os.cpu_count()} cores", flush=True)
    started = time.time()
    result = train_sequence(oof, cfg)
    trained = time.time() - started
    started = time.time()
    probs = predict_test(result.models, test, cfg.batch_series, cfg.tta)
    predicted = time.time() - started
    print(f"| step | seconds |\n|---|---:|\n| train {len(result.models)} models (k-fold) | {trained:.0f} |\n"
          f"| predict the test slices | {predicted:.0f} |")
    print(f"out-of-fold weighted log loss: CNN alone {result.scores['cnn_oof']:.4f}, with the sequence stage "
          f"{result.scores['sequence_oof']:.4f}; test {weighted_log_loss(test.targets, test.calibrated):.4f} -> "
          f"{weighted_log_loss(test.targets, probs):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
