"""The sequence stage: a bi-GRU or 1-D convolutions over each series, trained on the out-of-fold table.

  ichkaggle sequence train --config C --embeddings DIR --out SEQ
      k models, one per fold of the out-of-fold table (the CNN's folds, by patient); prints
      the out-of-fold score of the CNN alone and with the sequence stage; SEQ/sequence.pth
  ichkaggle sequence predict --config C --embeddings DIR --models SEQ --sample CSV --out submission.csv
      the test slices (DIR/test.npz) through the k models, averaged, as a checked submission;
      a sample image that was not prepared gets the training label rates of the CNN's runs
      (what `embed` recorded, the rule of every submission)

Settings come from the experiment's [sequence] table (hidden, layers, embedding_dims,
epochs, lr, batch_series, dropout). `ichkaggle seq` is the old name of this command. Needs
the train extra.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("train", "predict"), help="train the models, or predict the test slices")
    parser.add_argument("--config", required=True, help="the experiment ([sequence] settings)")
    parser.add_argument("--embeddings", required=True, metavar="DIR", help="ichkaggle embed's output")
    parser.add_argument("--out", required=True, metavar="PATH", help="train: the models' folder; predict: the CSV")
    parser.add_argument("--models", default=None, metavar="SEQ", help="predict: the folder seq train wrote")
    parser.add_argument("--sample", default=None, metavar="CSV", help="predict: stage_2_sample_submission.csv")


def main(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..experiment import load_experiment
    from ..sequence.models import predict_test
    from ..sequence.stage import OOF, TEST, load_fill_rates, load_models, train_stage
    from ..tables.submission import write_checked
    from ..train.slice_table import SliceTable

    experiment = load_experiment(args.config)
    folder = Path(args.embeddings)
    if args.action == "train":
        result, _ = train_stage(SliceTable.load(folder / OOF), experiment, args.out)
        print(f"out-of-fold weighted log loss: CNN alone {result.scores['cnn_oof']:.4f}, with the sequence stage "
              f"{result.scores['sequence_oof']:.4f} ({result.seconds:.0f}s); models in {args.out}")
        return 0
    if not args.models or not args.sample:
        raise UserError("sequence predict needs --models (sequence train's folder) and --sample")
    test = SliceTable.load(folder / TEST)
    probs = predict_test(load_models(args.models), test, experiment.sequence.batch_series, experiment.sequence.tta)
    path, _ = write_checked(args.out, test.ids, probs, args.sample, load_fill_rates(folder))
    print(f"wrote {path}")
    return 0
