"""The competition: its Kaggle name and the files of a competition-shaped directory (docs/data.md).

Why one module: the demo, the synthetic data, the Kaggle kernels and the rehearsal all find
or write the same four entries, and a directory missing one of them is refused with the
same message everywhere.
"""

from __future__ import annotations

from pathlib import Path

from .errors import UserError

#: the competition's slug on Kaggle (its data is mounted under this name in a kernel)
SLUG = "rsna-intracranial-hemorrhage-detection"
TRAIN_DICOMS, TEST_DICOMS = "stage_2_train", "stage_2_test"
TRAIN_CSV, SAMPLE_CSV = "stage_2_train.csv", "stage_2_sample_submission.csv"
#: what a competition-shaped directory holds (a synthetic one also has the hidden test truth)
FILES = (TRAIN_DICOMS, TEST_DICOMS, TRAIN_CSV, SAMPLE_CSV)
TEST_TRUTH = "test_labels.csv"


def check_competition_dir(data: str | Path) -> Path:
    """``data`` if it holds the competition's files, else an error naming the missing ones."""
    data = Path(data)
    missing = [name for name in FILES if not (data / name).exists()]
    if missing:
        raise UserError(f"{data}: not competition-shaped, missing {', '.join(missing)} (see docs/data.md)")
    return data
