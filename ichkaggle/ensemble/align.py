"""Several experiments' slice tables in one row order, or an error naming the experiment and the slices.

Why it is strict: a blend's weights are fitted on the out-of-fold rows, and its CV is only
honest when every experiment described every slice with a model that did not train on it,
on the SAME folds. ``sequence.stage.out_of_fold`` checks that within one experiment (no slice
of a run's training folds in its validation table); here the experiments are checked against
each other: the same slices, each once, in the same CNN fold, with the same targets. A table
built from other folds (another ``n_folds`` or fold seed) shows as slices whose fold differs,
since a slice of fold k in one experiment and fold j in another was trained on by one of them
wherever the other held it out.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import UserError
from ..train.slice_table import SliceTable

N_EXAMPLES = 3


def _examples(ids) -> str:
    ids = list(ids)
    return ", ".join(map(str, ids[:N_EXAMPLES])) + (", ..." if len(ids) > N_EXAMPLES else "")


def check_names(names, count: int) -> tuple[str, ...]:
    """One distinct, non-empty name per experiment."""
    names = tuple(str(n) for n in names)
    if len(names) != count:
        raise UserError(f"{count} experiment(s) but {len(names)} name(s): {list(names)}")
    if not all(n.strip() for n in names) or len(set(names)) != len(names):
        raise UserError(f"experiment names must be distinct and non-empty: {list(names)}")
    return names


def _unique_ids(table: SliceTable, name: str, what: str) -> pd.Index:
    index = pd.Index(np.asarray(table.ids, dtype=object))
    repeated = index.duplicated()
    if repeated.any():
        raise UserError(f"experiment {name}: {int(repeated.sum())} slice(s) appear more than once in its {what} "
                        f"table, e.g. {_examples(index[repeated])}")
    return index


def _same_slices(index: pd.Index, first: pd.Index, name: str, first_name: str, what: str) -> np.ndarray:
    """The rows of ``index`` in ``first``'s order; a slice on one side only is an error."""
    extra = index[~index.isin(first)]
    if len(extra):
        raise UserError(f"experiment {name}: {len(extra)} slice(s) of its {what} table are not in experiment "
                        f"{first_name}'s, e.g. {_examples(extra)}: blend experiments of the same slices")
    rows = index.get_indexer(first)
    missing = first[rows < 0]
    if len(missing):
        raise UserError(f"experiment {name}: {len(missing)} slice(s) of experiment {first_name}'s {what} table are "
                        f"missing from its table, e.g. {_examples(missing)}: blend experiments of the same slices")
    return rows


def _agree(table: SliceTable, first: SliceTable, name: str, first_name: str, what: str) -> None:
    """Folds, targets and series of the same slices agree (``table`` already in ``first``'s order)."""
    ids = first.ids
    for column in ("fold", "targets"):
        mine, theirs = getattr(table, column), getattr(first, column)
        if (mine is None) != (theirs is None):
            lacking = name if mine is None else first_name
            raise UserError(f"experiment {lacking}: its {what} table has no {column} (an out-of-fold table has)")
    if table.fold is not None:
        differ = np.flatnonzero(np.asarray(table.fold) != np.asarray(first.fold))
        if len(differ):
            shown = ", ".join(f"{ids[r]} (fold {table.fold[r]} in {name}, {first.fold[r]} in {first_name})"
                              for r in differ[:N_EXAMPLES])
            raise UserError(f"experiment {name}: {len(differ)} slice(s) in another CNN fold than in experiment "
                            f"{first_name}, e.g. {shown}: a different set of folds, where one experiment's model "
                            "trained on slices the other held out; blend experiments with the same [data] n_folds "
                            "and seed")
    if table.targets is not None:
        differ = np.flatnonzero((np.asarray(table.targets) != np.asarray(first.targets)).any(axis=1))
        if len(differ):
            raise UserError(f"experiment {name}: the targets of {len(differ)} slice(s) differ from experiment "
                            f"{first_name}'s, e.g. {_examples(ids[differ])}: were they labelled from the same "
                            "stage_2_train.csv?")
    differ = np.flatnonzero(np.asarray(table.series, dtype=object) != np.asarray(first.series, dtype=object))
    if len(differ):
        raise UserError(f"experiment {name}: {len(differ)} slice(s) in another series than in experiment "
                        f"{first_name}, e.g. {_examples(ids[differ])}")


def align(tables: list[SliceTable], names, what: str = "out-of-fold") -> list[SliceTable]:
    """The tables in the first one's row order, checked to describe the same slices (each once) with the
    same folds, targets and series; ``what`` names the tables in messages ("out-of-fold", "test")."""
    names = check_names(names, len(tables))
    if not tables:
        raise UserError("no experiments to blend")
    first = tables[0]
    first_index = _unique_ids(first, names[0], what)
    aligned = [first]
    for table, name in zip(tables[1:], names[1:]):
        rows = _same_slices(_unique_ids(table, name, what), first_index, name, names[0], what)
        ordered = table.take(rows)
        _agree(ordered, first, name, names[0], what)
        aligned.append(ordered)
    for table, name in zip(aligned, names):
        if what == "out-of-fold" and (table.targets is None or table.fold is None):
            raise UserError(f"experiment {name}: its {what} table has no targets or folds: `ichkaggle embed` "
                            "writes them in oof.npz")
    return aligned
