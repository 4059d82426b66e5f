"""Cross-validation folds grouped by patient and stratified on the six labels.

Slices of one patient are near-duplicates, so a patient in two folds leaks; the folds
are therefore built from whole patients. Within that constraint a greedy pass balances
the label counts: patients are shuffled by ``seed`` (the only randomness), ordered
rarest-positives first, and each goes to the fold whose counts it moves closest to the
targets. The result is written as a column so training and reports read one split.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import LABELS
from ..errors import TableError
from .labels import FASTAI_COLUMN, as_wide, fastai_strings, read_labels_csv


def assign_folds(patients, labels, k: int = 5, seed: int = 0) -> np.ndarray:
    """Fold index (0..k-1) for each image; a patient's images all share one fold.

    ``patients``: one group id per image; ``labels``: ``(N, 6)`` 0/1 array in LABELS
    order. Each label's count and the image count get a per-fold target (total / k);
    adding a patient to fold f changes the squared relative deviation from the targets
    by ``2 * g . w * (C_f - T) + const``, so the best fold is an argmin over k values.
    Patients with the most (rarity-weighted) positives are placed first, while there is
    still room to balance. Deterministic for a given seed.
    """
    patients = np.asarray(patients, dtype=object).reshape(-1)
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape != (len(patients), len(LABELS)):
        raise ValueError(f"labels must be ({len(patients)}, {len(LABELS)}), got {labels.shape}")
    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    if len(patients) == 0:
        return np.zeros(0, dtype=np.int64)
    if pd.isna(patients).any():
        raise ValueError("patients contains missing values")
    codes, uniques = pd.factorize(patients)
    n_groups = len(uniques)
    if n_groups < k:
        raise TableError(f"{n_groups} patients cannot fill {k} folds: lower [data] n_folds (or --k) to at most "
                         f"{n_groups}, or add data")
    # per-patient counts: six labels + images
    stats = np.zeros((n_groups, len(LABELS) + 1))
    np.add.at(stats, codes, np.c_[labels.astype(np.float64) != 0, np.ones(len(codes))])
    target = stats.sum(axis=0) / k
    weight = 1.0 / np.maximum(target, 1.0) ** 2
    # order: rarity-weighted positives, then size, both descending; seed breaks ties
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(n_groups)
    rarity = (stats[:, :-1] / np.maximum(stats[:, :-1].sum(axis=0), 1.0)).sum(axis=1)
    order = shuffled[np.lexsort((-stats[shuffled, -1], -rarity[shuffled]))]
    counts = np.zeros((k, len(LABELS) + 1))
    group_fold = np.empty(n_groups, dtype=np.int64)
    for g in order:  # one step per patient (~19k for stage 2), k-vector work each
        row = stats[g]
        cost = (counts - target) @ (row * weight)
        fold = int(np.argmin(cost))
        group_fold[g] = fold
        counts[fold] += row
    return group_fold[codes]


def add_fold_column(metadata: pd.DataFrame, labels: pd.DataFrame, k: int = 5, seed: int = 0) -> pd.DataFrame:
    """Folds for the labelled, successfully prepared images.

    ``metadata``: ``ichkaggle prepare``'s table (``ID``, ``status``, ``PatientID``, ...);
    ``labels``: a wide label table. Only ``status == "ok"`` rows that have labels get a
    fold (test images have none). Returns ``ID, PatientID`` (with ``SeriesInstanceUID`` and
    ``position`` when the metadata has them), ``fold``, the six labels and ``labels``
    (fastai), in the metadata's row order; ``attrs`` counts what was left out.
    """
    for col in ("ID", "status", "PatientID"):
        if col not in metadata.columns:
            raise TableError(f"metadata lacks column {col!r}")
    labels = as_wide(labels)
    dup = metadata["ID"][metadata["ID"].duplicated()]
    if len(dup):
        raise TableError(f"metadata repeats {len(dup)} IDs: {', '.join(map(str, dup[:5]))}")
    ok = metadata["status"].astype(str).to_numpy() == "ok"
    carried = [c for c in ("SeriesInstanceUID", "position") if c in metadata.columns]  # for 2.5D and sequences
    meta_ok = metadata.loc[ok, ["ID", "PatientID", *carried]]
    missing_patient = meta_ok["PatientID"].isna() | (meta_ok["PatientID"].astype(str) == "")
    if missing_patient.any():
        bad = meta_ok.loc[missing_patient, "ID"]
        raise TableError(f"{len(bad)} ok metadata rows have no PatientID: {', '.join(map(str, bad[:5]))}")
    label_index = pd.Index(labels["ID"].to_numpy(dtype=object))
    if not label_index.is_unique:
        raise TableError("label table repeats IDs")
    where = label_index.get_indexer(meta_ok["ID"].to_numpy(dtype=object))
    has_label = where >= 0
    chosen = meta_ok.loc[has_label]
    array = labels[list(LABELS)].to_numpy()[where[has_label]].astype(np.int8)
    if len(chosen) == 0:
        raise TableError("no image is both prepared (status ok) and labelled: check the IDs")
    patients = chosen["PatientID"].astype(str).to_numpy(dtype=object)
    out = pd.DataFrame({"ID": chosen["ID"].to_numpy(dtype=object), "PatientID": patients,
                        **{c: chosen[c].to_numpy() for c in carried}, "fold": assign_folds(patients, array, k, seed),
                        **{name: array[:, j] for j, name in enumerate(LABELS)}})
    out[FASTAI_COLUMN] = fastai_strings(array)
    labelled = pd.Index(chosen["ID"].to_numpy(dtype=object))
    out.attrs.update(failed=int((~ok).sum()), unlabelled=int((~has_label).sum()),
                     labels_without_image=int((~label_index.isin(labelled)).sum()))
    return out


def training_table(metadata: pd.DataFrame, labels, n_folds: int, seed: int, folds: pd.DataFrame | None = None
                   ) -> pd.DataFrame:
    """The table a training run reads, one rule for ``train``, the demo and the train kernel:
    one row per labelled slice that prepared ok (``add_fold_column``), ``position`` a number,
    and the folds computed by patient, or taken from ``folds`` (``ID``, ``fold``: e.g. the table
    another process computed), where every slice must have one."""
    table = add_fold_column(metadata, labels if isinstance(labels, pd.DataFrame) else read_labels_csv(labels),
                            n_folds, seed)
    if "position" in table:
        table["position"] = pd.to_numeric(table["position"])
    if folds is not None:
        given = folds.drop_duplicates("ID").set_index("ID")["fold"]
        missing = ~table["ID"].isin(given.index)
        if missing.any():
            raise TableError(f"{int(missing.sum())} training slice(s) have no fold in the folds table, e.g. "
                             f"{', '.join(table.loc[missing, 'ID'][:3])}")
        table["fold"] = given.loc[table["ID"]].to_numpy(dtype=int)
    return table


def fold_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per fold: images, patients and each label's positive rate (to eyeball balance)."""
    grouped = table.groupby("fold")
    return pd.DataFrame({"images": grouped.size(), "patients": grouped["PatientID"].nunique()}).join(
        grouped[list(LABELS)].mean())
