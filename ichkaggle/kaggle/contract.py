"""What the Kaggle side and this machine's side agree on: the names of the manifests a kernel leaves.

Why its own module: the kernels' code (``kernel``, ``inputs``) runs on Kaggle, the pipeline's
(``pipeline``, ``flow``, ``local``, ...) here; neither imports the other (an import-linter
contract in tox), and what one writes the other reads through these names only.
"""

from __future__ import annotations

#: a prepare kernel's output (its settings, counts, bytes, its part of a set)
PREPARE_MANIFEST = "ichkaggle_prepare.json"
#: a train session's output (fold, complete or not, progress, throughput)
TRAIN_MANIFEST = "ichkaggle_train.json"
#: the infer kernel's output (the folds averaged, the sequence stage's scores, the check)
INFER_MANIFEST = "ichkaggle_infer.json"
#: Kaggle keeps at most 20 GB of /kaggle/working
KAGGLE_OUTPUT_BYTES = 20e9
#: what one part's prepared data may take: under 20 GB with room for the manifest and the log
OUTPUT_LIMIT_BYTES = 19.5e9
