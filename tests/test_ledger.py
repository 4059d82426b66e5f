"""The ledger from fixture files: local runs, a blend, a sequence stage, a demo folder, push run's states."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from ichkaggle.cli import main
from ichkaggle.ensemble import blend_tables, save_blend
from ichkaggle.errors import UserError
from ichkaggle.ledger import collect, config_digest, write_ledger

from .test_blend import _oof, _test_table

CONFIG = 'name = "{name}"\n\n[model]\narch = "{arch}"\n\n[data]\nsize = 32\nfold = {fold}\nn_folds = 2\n'


def _run(folder: Path, name: str, fold: int, cv: float, arch: str = "resnet18") -> Path:
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text(CONFIG.format(name=name, arch=arch, fold=fold))
    (folder / "metrics.json").write_text(json.dumps({"experiment": name, "fold": fold,
                                                     "valid_weighted_log_loss": cv}))
    return folder


def _kernel(out: Path, slug: str, files: dict) -> dict:
    folder = out / slug / "v1"
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(content if isinstance(content, str) else json.dumps(content))
    return {"ref": f"alice/{slug}", "version": 1, "url": "", "status": "COMPLETE", "output": str(folder)}


def _train(out: Path, slug: str, name: str, fold: int, cv: float, arch: str = "resnet18") -> dict:
    return _kernel(out, slug, {
        "ichkaggle_train.json": {"kind": "ichkaggle-train", "experiment": name, "fold": fold, "complete": True,
                                 "config": f"fold{fold}/config.toml", "valid_weighted_log_loss": cv},
        f"fold{fold}/config.toml": CONFIG.format(name=name, arch=arch, fold=fold),
        f"fold{fold}/metrics.json": {"experiment": name, "fold": fold, "valid_weighted_log_loss": cv}})


def _states(kaggle: Path) -> None:
    """One single-config run (the format of today's `push run`) and one of two configs, both scored."""
    kernels = {k["ref"]: k for k in (
        _train(kaggle, "t-fold0-s1", "alpha", 0, 0.30), _train(kaggle, "t-fold1-s1", "alpha", 1, 0.20),
        _kernel(kaggle, "infer", {"ichkaggle_infer.json": {
            "experiment": "alpha", "folds": [0, 1], "valid_weighted_log_loss": {"0": 0.30, "1": 0.20},
            "sequence": {"cnn_oof": 0.25, "sequence_oof": 0.22}}}))}
    (kaggle / "alpha-folds0-1.json").write_text(json.dumps({
        "config": "alpha", "folds": [0, 1], "owner": "alice", "kernels": kernels,
        "submission": {"status": "COMPLETE", "public_score": "0.2400", "private_score": "0.2300",
                       "date": "2025-02-01T10:00:00"}}))
    kernels = {k["ref"]: k for k in (
        _train(kaggle, "t-alpha-fold0-s1", "alpha", 0, 0.30), _train(kaggle, "t-beta-fold0-s1", "beta", 0, 0.28, "vgg"),
        _kernel(kaggle, "infer-ab", {"ichkaggle_infer.json": {
            "experiments": {"alpha": {"experiment": "alpha", "folds": [0], "valid_weighted_log_loss": {"0": 0.30}},
                            "beta": {"experiment": "beta", "folds": [0], "valid_weighted_log_loss": {"0": 0.28}}},
            "blend": {"scores": {"blend_oof": 0.26}}, "sequence": {}}}))}
    (kaggle / "alpha+beta-folds0.json").write_text(json.dumps({
        "configs": ["alpha", "beta"], "folds": [0], "owner": "alice", "kernels": kernels,
        "submission": {"status": "COMPLETE", "public_score": "0.2700", "private_score": "0.2650",
                       "date": "2025-02-02T10:00:00"}}))
    (kaggle / "throughput.json").write_text(json.dumps([{"config": "alpha", "img_per_s": 100}]))  # not a state


@pytest.fixture
def world(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    _run(runs / "alpha" / "run0", "alpha", 0, 0.31)
    _run(runs / "alpha" / "run1", "alpha", 1, 0.21)
    _run(runs / "beta" / "run0", "beta", 0, 0.40, arch="vgg")
    oofs = [_oof(seed=0, noise=0.1), _oof(seed=1, noise=0.3)]
    result = blend_tables(oofs, [_test_table(o) for o in oofs], ["alpha", "beta"])
    save_blend(result, runs / "blend", ["runs/alpha", "runs/beta"])
    (runs / "seq").mkdir()
    (runs / "seq" / "sequence.json").write_text(json.dumps({"cnn_oof": 0.26, "sequence_oof": 0.19}))
    demo = tmp_path / "work"
    _run(demo / "run0", "demo", 0, 0.9)  # described by scores.json: not a row of its own
    (demo / "scores.json").write_text(json.dumps({
        "date": "2025-03-01T09:00:00",
        "experiments": {"demo": {"cv": 0.50, "folds": [0, 1], "config": str(demo / "run0" / "config.toml")},
                        "demo_b": {"cv": 0.55, "folds": [0, 1], "digest": "abcdefabcdef"}},
        "blend": {"names": ["demo", "demo_b"], "cv": 0.48, "private": 0.47},
        "sequence": {"input": "blend", "cv": 0.40, "private": 0.41}}))
    kaggle = runs / "kaggle"
    _states(kaggle)
    return runs, demo, kaggle, result


def _by_name(rows):
    return {(r.experiment, r.where.split("/")[-1]): r for r in rows}


def test_the_ledger_has_a_row_per_experiment_and_submission(world):
    runs, demo, kaggle, blend = world
    rows = collect([runs, demo], kaggle)
    names = [r.experiment for r in rows]
    assert names.count("alpha") == 3 and names.count("beta") == 2 and "demo" in names  # local, 1-config, 2-config
    assert len(rows) == 12
    local = next(r for r in rows if r.experiment == "alpha" and r.where == "runs/alpha")
    assert local.folds == "0,1" and local.cv_cnn == pytest.approx(0.26) and local.public is None
    assert local.config_digest == config_digest(CONFIG.format(name="alpha", arch="resnet18", fold=7))
    assert local.config_digest != next(r for r in rows if r.where == "runs/beta/run0").config_digest
    single = next(r for r in rows if r.where == "runs/kaggle/alpha-folds0-1.json")
    assert (single.folds, single.cv_cnn, single.cv_sequence) == ("0,1", pytest.approx(0.25), 0.22)
    assert (single.public, single.private, single.date) == (0.24, 0.23, "2025-02-01T10:00:00")
    assert single.config_digest == local.config_digest  # what ran on Kaggle is what ran here
    two = [r for r in rows if r.where == "runs/kaggle/alpha+beta-folds0.json"]
    assert [r.experiment for r in two] == ["alpha", "beta", "alpha+beta"]
    assert [r.cv_cnn for r in two] == [0.30, 0.28, 0.28] and two[2].cv_blend == 0.26
    assert (two[2].public, two[2].private) == (0.27, 0.265) and two[0].public is None
    assert two[2].config_digest == f"{two[0].config_digest}+{two[1].config_digest}"
    blended = next(r for r in rows if r.where == "runs/blend")
    assert blended.experiment == "blend(alpha+beta)" and blended.folds == "0,1"
    assert blended.cv_blend == pytest.approx(blend.scores["blend_oof"])
    assert blended.cv_cnn == pytest.approx(min(blend.scores["experiments"].values()))
    seq = next(r for r in rows if r.where == "runs/seq")
    assert (seq.cv_cnn, seq.cv_sequence) == (0.26, 0.19)
    demo_rows = [r for r in rows if r.where == "work"]
    assert [r.experiment for r in demo_rows] == ["demo", "demo_b", "blend(demo+demo_b)", "sequence(blend)"]
    assert demo_rows[0].config_digest == config_digest(CONFIG.format(name="demo", arch="resnet18", fold=0))
    assert demo_rows[1].config_digest == "abcdefabcdef" and demo_rows[3].cv_blend == 0.48
    assert (demo_rows[3].cv_sequence, demo_rows[3].private, demo_rows[3].date) == (0.40, 0.41, "2025-03-01T09:00:00")
    assert all(r.cv_cnn != 0.9 for r in rows)  # the demo's run is described by its scores.json only


def test_the_ledger_writes_markdown_csv_and_the_cv_against_lb_picture(world, tmp_path, capsys):
    runs, demo, kaggle, _ = world
    assert main(["results", "--runs", str(runs), str(demo), "--kaggle", str(kaggle), "--out", "ledger"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| experiment | config digest | folds | CV CNN | CV blend | CV sequence | public |")
    assert "| alpha+beta |" in out and "0.2600" in out and "12 row(s)" in out and "cv_vs_lb.png" in out
    table = pd.read_csv(tmp_path / "ledger" / "results.csv")
    assert list(table.columns) == ["experiment", "config_digest", "folds", "cv_cnn", "cv_blend", "cv_sequence",
                                   "public", "private", "date", "where"]
    assert len(table) == 12 and table["public"].notna().sum() == 2 and table["private"].notna().sum() == 4
    assert (tmp_path / "ledger" / "results.md").read_text().count("\n| ") == 13  # the heading row and 12 rows
    png = (tmp_path / "ledger" / "cv_vs_lb.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_without_matplotlib_or_scores_the_tables_are_still_written(world, tmp_path, monkeypatch):
    runs, _, _, _ = world
    rows = collect([runs / "alpha"])
    assert [r.experiment for r in rows] == ["alpha"]
    md, csv, said = write_ledger(rows, tmp_path / "a")
    assert "no row has both a CV and a leaderboard score" in said and md.is_file() and csv.is_file()
    assert not (tmp_path / "a" / "cv_vs_lb.png").exists()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    _, csv, said = write_ledger(collect([runs], runs / "kaggle"), tmp_path / "b")
    assert "matplotlib is not installed" in said and len(pd.read_csv(csv)) == 8
    assert not (tmp_path / "b" / "cv_vs_lb.png").exists()


def test_the_ledger_names_a_file_it_cannot_read(tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "scores.json").write_text(json.dumps({"blend": {}}))
    with pytest.raises(UserError, match="scores.json: no \"experiments\""):
        collect([tmp_path / "w"])
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "metrics.json").write_text("{not json")
    with pytest.raises(UserError, match="r/metrics.json: not readable JSON"):
        collect([tmp_path / "r"])
    with pytest.raises(UserError, match="--runs .*nothere: no such folder"):
        collect([tmp_path / "nothere"])


def test_a_digest_ignores_the_fold_and_nothing_else():
    assert config_digest(CONFIG.format(name="a", arch="x", fold=0)) == config_digest(
        CONFIG.format(name="a", arch="x", fold=3))
    assert config_digest(CONFIG.format(name="a", arch="x", fold=0)) != config_digest(
        CONFIG.format(name="a", arch="y", fold=0))
    assert len(config_digest("")) == 12
