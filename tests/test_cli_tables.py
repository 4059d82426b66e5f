"""The table commands through the CLI entry point: labels, folds, score, check."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ichkaggle import LABELS
from ichkaggle.cli import main
from ichkaggle.tables.csv_io import long_ids
from ichkaggle.tables.labels import FILE_ORDER, wide_to_long
from ichkaggle.tables.metric import weighted_log_loss


def _wide(n: int, seed: int = 0, consistent: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    table = pd.DataFrame({"ID": [f"ID_{i:09x}" for i in range(n)]})
    array = (rng.random((n, 6)) < 0.2).astype(np.int8)
    if consistent:
        array[:, 0] = array[:, 1:].max(axis=1)
    for j, name in enumerate(LABELS):
        table[name] = array[:, j]
    return table


@pytest.mark.parametrize("command", ["labels", "folds", "score", "check"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert f"ichkaggle {command}" in capsys.readouterr().out


# ---------------------------------------------------------------------------- labels


def test_labels_writes_one_row_per_image(tmp_path, capsys):
    wide = _wide(30)
    long = wide_to_long(wide)
    pd.concat([long, long.iloc[:6]]).to_csv(tmp_path / "train.csv", index=False)
    assert main(["labels", str(tmp_path / "train.csv"), str(tmp_path / "wide.csv")]) == 0
    out = pd.read_csv(tmp_path / "wide.csv", keep_default_na=False)
    assert list(out.columns) == ["ID", *LABELS, "labels"]
    assert list(out["ID"]) == list(wide["ID"])
    np.testing.assert_array_equal(out[list(LABELS)].to_numpy(), wide[list(LABELS)].to_numpy())
    text = capsys.readouterr().out
    assert "186 rows -> 30 images" in text and "merged 6 repeated rows" in text
    counts = {line.split()[0]: line.split()[1] for line in text.splitlines() if line.startswith("  ")}
    assert counts == {name: str(int(wide[name].sum())) for name in LABELS}
    assert "any = OR of the subtypes for every image" in text


def test_labels_reports_any_violations(tmp_path, capsys):
    wide = _wide(10)
    wide.loc[2, "any"] = 1 - wide.loc[2, "any"]
    wide_to_long(wide).to_csv(tmp_path / "train.csv", index=False)
    assert main(["labels", str(tmp_path / "train.csv"), str(tmp_path / "wide.csv")]) == 0
    assert "ID_000000002" in capsys.readouterr().out


def test_labels_error_names_the_line(tmp_path, capsys):
    long = wide_to_long(_wide(3))
    long.loc[7, "Label"] = 5
    long.to_csv(tmp_path / "train.csv", index=False)
    assert main(["labels", str(tmp_path / "train.csv"), str(tmp_path / "wide.csv")]) == 2
    err = capsys.readouterr().err
    assert "ichkaggle labels: error:" in err and "line 9" in err and "ID_000000001_intraparenchymal" in err
    assert not (tmp_path / "wide.csv").exists()


def test_labels_missing_file(tmp_path, capsys):
    assert main(["labels", str(tmp_path / "nope.csv"), str(tmp_path / "w.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------------------- folds


def test_folds_command(tmp_path, capsys):
    wide = _wide(120, seed=1)
    wide_to_long(wide).to_csv(tmp_path / "train.csv", index=False)
    main(["labels", str(tmp_path / "train.csv"), str(tmp_path / "wide.csv")])
    metadata = pd.DataFrame(
        {
            "ID": list(wide["ID"]) + ["ID_test0001"],
            "status": ["ok"] * 119 + ["failed", "ok"],
            "error": "",
            "PatientID": [f"ID_p{i // 6}" for i in range(120)] + ["ID_pt"],
        }
    )
    metadata.to_csv(tmp_path / "metadata.csv", index=False)
    args = ["folds", str(tmp_path / "metadata.csv"), str(tmp_path / "wide.csv"), str(tmp_path / "folds.csv")]
    assert main([*args, "--k", "4", "--seed", "3"]) == 0
    folds = pd.read_csv(tmp_path / "folds.csv", keep_default_na=False)
    assert list(folds.columns) == ["ID", "PatientID", "fold", *LABELS, "labels"]
    assert len(folds) == 119 and set(folds["fold"]) == {0, 1, 2, 3}
    assert (folds.groupby("PatientID")["fold"].nunique() == 1).all()
    text = capsys.readouterr().out
    assert "119 images of 20 patients in 4 folds" in text and "1 failed" in text
    # the long CSV works as LABELS_CSV too, with the same result
    assert main(["folds", str(tmp_path / "metadata.csv"), str(tmp_path / "train.csv"),
                 str(tmp_path / "folds2.csv"), "--k", "4", "--seed", "3"]) == 0
    assert (tmp_path / "folds.csv").read_text() == (tmp_path / "folds2.csv").read_text()


def test_folds_errors(tmp_path, capsys):
    pd.DataFrame({"ID": ["ID_a"], "status": ["ok"]}).to_csv(tmp_path / "m.csv", index=False)
    wide_to_long(_wide(2)).to_csv(tmp_path / "t.csv", index=False)
    assert main(["folds", str(tmp_path / "m.csv"), str(tmp_path / "t.csv"), str(tmp_path / "f.csv")]) == 2
    assert "PatientID" in capsys.readouterr().err
    assert main(["folds", str(tmp_path / "m.csv"), str(tmp_path / "t.csv"), str(tmp_path / "f.csv"), "--k", "1"]) == 2


# ---------------------------------------------------------------------------- score


def test_score_prints_breakdown_and_the_number_last(tmp_path, capsys):
    wide = _wide(25, seed=2)
    rng = np.random.default_rng(5)
    probs = rng.random((25, 6))
    pred = wide.copy()
    pred[list(LABELS)] = probs
    wide_to_long(wide).to_csv(tmp_path / "truth.csv", index=False)
    wide_to_long(pred).sample(frac=1, random_state=1).to_csv(tmp_path / "pred.csv", index=False)
    assert main(["score", str(tmp_path / "pred.csv"), str(tmp_path / "truth.csv")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    expected = weighted_log_loss(wide[list(LABELS)].to_numpy(), probs)
    assert float(lines[-1]) == pytest.approx(expected, abs=1e-6)
    assert lines[-1] == f"{float(lines[-1]):.6f}"
    assert any(line.startswith("epidural") for line in lines)


def test_score_names_missing_ids(tmp_path, capsys):
    wide = _wide(4)
    wide_to_long(wide).to_csv(tmp_path / "truth.csv", index=False)
    wide_to_long(wide).iloc[1:].to_csv(tmp_path / "pred.csv", index=False)
    assert main(["score", str(tmp_path / "pred.csv"), str(tmp_path / "truth.csv")]) == 2
    assert "ID_000000000_epidural" in capsys.readouterr().err
    (tmp_path / "h.csv").write_text("id,label\n")
    assert main(["score", str(tmp_path / "h.csv"), str(tmp_path / "truth.csv")]) == 2


# ---------------------------------------------------------------------------- check


@pytest.fixture
def sample(tmp_path):
    ids = np.array([f"ID_{i:09x}" for i in range(5)], dtype=object)
    table = pd.DataFrame({"ID": long_ids(ids, FILE_ORDER), "Label": 0.5})
    table.to_csv(tmp_path / "sample.csv", index=False)
    return table


def test_check_valid(tmp_path, sample, capsys):
    sample.assign(Label=0.1).to_csv(tmp_path / "sub.csv", index=False)
    assert main(["check", str(tmp_path / "sub.csv"), "--sample", str(tmp_path / "sample.csv")]) == 0
    assert capsys.readouterr().out.startswith("OK: 30 rows, 5 images")


def test_check_invalid_lists_every_problem(tmp_path, sample, capsys):
    bad = sample.iloc[2:].astype({"Label": object})
    bad.iloc[0, 1] = "oops"
    bad.iloc[1, 1] = 3
    bad.to_csv(tmp_path / "sub.csv", index=False)
    assert main(["check", str(tmp_path / "sub.csv"), "--sample", str(tmp_path / "sample.csv")]) == 1
    out = capsys.readouterr().out
    assert out.startswith("INVALID")
    for kind in ("missing: 2", "rows-per-image: 1", "non-numeric: 1", "out-of-range: 1"):
        assert kind in out
    assert "line 2 'ID_000000000_intraventricular' = 'oops'" in out


def test_check_requires_sample(tmp_path, sample):
    with pytest.raises(SystemExit) as info:
        main(["check", str(tmp_path / "sample.csv")])
    assert info.value.code == 2


def test_check_unreadable_is_a_user_error(tmp_path, sample, capsys):
    assert main(["check", str(tmp_path / "nope.csv"), "--sample", str(tmp_path / "sample.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err
