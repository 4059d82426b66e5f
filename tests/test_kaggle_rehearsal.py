"""`push run` end to end with the kernels really running: the real client, the fake server, the sandbox.

The fake server runs every pushed kernel in the rehearsal's executor (ichkaggle.kaggle.sandbox)
under Kaggle's limits, so this is the whole job as a new user would run it: the package and
weights datasets pushed, then `push run --folds 0-4` of a tiny config on a synthetic
competition: the prepare kernel, five folds with at most 2 GPU sessions at once (the run is
told 3, so Kaggle's cap refuses and the push is retried), one fold chained across two sessions
(its first session leaves room for one epoch only), one session killed at its limit (shorter
than its setup) and pushed again, the infer kernel with the sequence stage, one checked and
scored submission, then the same command again, which pushes and submits nothing new. Also
the same job through `push run --local` (no server, no credentials), in parts.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

if importlib.util.find_spec("kaggle") is None:  # find, not import: `import kaggle` prints at import
    pytest.skip("the kaggle extra is not installed", allow_module_level=True)

from ichkaggle import LABELS
from ichkaggle.cli import main
from ichkaggle.kaggle.bundle import build_bundle
from ichkaggle.kaggle.sandbox import Limits
from ichkaggle.kaggle.schedule import KILLED_AT_LIMIT

from .fake_kaggle import files_containing, kaggle_env  # noqa: F401 (a fixture, used by name)

pytestmark = pytest.mark.torch  # the kernels train

ROOT = Path(__file__).resolve().parents[1]


def _competition(folder: Path, train: int = 90, test: int = 20) -> Path:
    """A synthetic competition with enough series (patients) for five folds, and its test labels."""
    from ichkaggle.synth.dataset import load_config, synthesize

    synthesize(folder, train, test, seed=3, config=load_config(size=64, slices_min=8, slices_max=10),
               show_progress=False)
    return folder


def _datasets(folder: Path, extra_configs=()) -> Path:
    """The package dataset (with ``extra_configs``) and a random-init weights dataset, as a user pushes them."""
    build_bundle(folder / "ichkaggle-src", "alice", extra_configs=tuple(extra_configs))
    weights = folder / "ichkaggle-timm-weights"
    weights.mkdir()
    (weights / "dataset-metadata.json").write_text(
        (ROOT / "datasets" / "ichkaggle-timm-weights" / "dataset-metadata.json").read_text())
    subprocess.run([sys.executable, str(ROOT / "datasets" / "ichkaggle-timm-weights" / "fetch_weights.py"),
                    "mobilenetv3_small_050", "--random-init", "--out", str(weights)], check=True, capture_output=True)
    return folder


def _most_at_once(timeline: list[dict]) -> int:
    spans = [(row["started"], row["ended"] or time.time()) for row in timeline if row["gpu"] and row["started"]]
    return max(sum(start <= moment < end for start, end in spans) for moment, _ in spans)


@pytest.fixture
def world(request, tmp_path, monkeypatch, capsys):
    """The fake server (``kaggle_env``) running kernels for real; after the test, the key is nowhere."""
    fake = request.getfixturevalue("kaggle_env")
    monkeypatch.chdir(ROOT)
    yield fake
    printed = capsys.readouterr()
    assert fake.key not in printed.out and fake.key not in printed.err
    assert files_containing(tmp_path, fake.key) == []
    assert fake.key not in fake.all_text()


def test_push_run_five_folds_with_the_kernels_really_running_under_kaggles_limits(world, tmp_path, capsys):
    fake = world
    started = time.monotonic()
    competition = _competition(tmp_path / "competition")
    datasets = _datasets(tmp_path / "datasets")
    sandbox = fake.run_kernels(tmp_path / "kaggle", competition, Limits(max_gpu_sessions=2), overrides={
        # fold 1's first session: a margin so large that only its first epoch (which always runs) fits
        "ichkaggle-train-fold1-s1": {"env": {"ICHKAGGLE_MARGIN_MINUTES": "100000"}},
        # fold 3's first version: a limit shorter than its setup, so Kaggle kills it
        "ichkaggle-train-fold3-s1/v1": {"session_hours": 2 / 3600},
    })
    for name in ("ichkaggle-src", "ichkaggle-timm-weights"):
        assert main(["push", "dataset", name, "--datasets-dir", str(datasets)]) == 0
    args = ["push", "run", "--config", "rehearsal", "--folds", "0-4", "-m", "rehearsed", "--datasets-dir",
            str(datasets), "--out", str(tmp_path / "runs"), "--max-gpu-sessions", "3",
            "--sample", str(competition / "stage_2_sample_submission.csv"), "--poll", "0.5"]
    assert main(args) == 0
    out = capsys.readouterr().out

    timeline = sandbox.timeline()
    assert _most_at_once(timeline) <= 2  # never more than Kaggle's two GPU sessions
    assert "Maximum batch GPU session count of 2 reached." in out and "waits" in out  # refused, retried
    state = json.loads((tmp_path / "runs" / "rehearsal-folds0-1-2-3-4.json").read_text())
    assert state["sessions"]["1"] == {"session": 2, "complete": True}  # chained across two sessions
    assert all(state["sessions"][str(k)] == {"session": 1, "complete": True} for k in (0, 2, 3, 4))
    fold1 = json.loads((sandbox.folder("alice/ichkaggle-train-fold1-s1") / "working" /
                        "ichkaggle_train.json").read_text())
    assert fold1["complete"] is False and "epoch 2/2" in fold1["progress"]
    killed = {row["version"]: row for row in timeline if row["slug"] == "ichkaggle-train-fold3-s1"}
    assert killed[1]["status"] == "ERROR" and KILLED_AT_LIMIT.search(killed[1]["failure"])
    assert killed[2]["status"] == "COMPLETE" and "was killed at its session limit" in out
    assert state["killed"] == {"alice/ichkaggle-train-fold3-s1": 1}
    infer = json.loads((sandbox.folder("alice/ichkaggle-infer") / "working" / "ichkaggle_infer.json").read_text())
    assert infer["folds"] == [0, 1, 2, 3, 4] and infer["sequence"]["slices"] == 90  # trained on every train slice
    assert len(fake.submissions) == 1 and fake.submissions[0].description == "rehearsed"
    submission = state["submission"]
    assert submission["status"] == "COMPLETE" and 0 < float(submission["public_score"]) < 2
    assert 0 < float(submission["private_score"]) < 2 and f"public {submission['public_score']}" in out
    # each kernel: what it did (its last line) and where its log is
    assert "alice/ichkaggle-train-fold1-s1 v1 said: fold 1: stopped before epoch 2/2" in out
    assert "ichkaggle-infer v1: 4 output file(s)" in out and "ichkaggle-infer.log.txt" in out
    pushes = len(fake.calls("SaveKernel"))

    assert main(args) == 0  # the same command again: nothing new pushed or submitted
    assert len(fake.calls("SaveKernel")) == pushes and len(fake.submissions) == 1
    assert "submitted already" in capsys.readouterr().out
    print(f"\nthe end-to-end rehearsal took {time.monotonic() - started:.0f}s", file=sys.__stderr__)


def test_push_run_of_two_configs_shares_the_prepare_trains_both_and_blends_them(world, tmp_path, capsys):
    """Two tiny configs with the same image settings and folds, two architectures: one prepare kernel,
    2 folds x 2 configs of sessions, one infer kernel that predicts each, blends them and runs the first
    config's sequence stage on the blend; one checked, scored submission; the same command again is a no-op."""
    fake = world
    started = time.monotonic()
    competition = _competition(tmp_path / "competition")
    second = tmp_path / "rehearsal_b.toml"
    second.write_text((ROOT / "ichkaggle" / "configs" / "rehearsal.toml").read_text()
                      .replace('name = "rehearsal"', 'name = "rehearsal_b"')
                      .replace('arch = "mobilenetv3_small_050"', 'arch = "mobilenetv3_small_075"'))
    datasets = _datasets(tmp_path / "datasets", [second])
    sandbox = fake.run_kernels(tmp_path / "kaggle", competition, Limits(max_gpu_sessions=2))
    for name in ("ichkaggle-src", "ichkaggle-timm-weights"):
        assert main(["push", "dataset", name, "--datasets-dir", str(datasets)]) == 0
    runs = tmp_path / "runs"
    sample = competition / "stage_2_sample_submission.csv"
    args = ["push", "run", "--config", "rehearsal", "--config", str(second), "--folds", "0-1", "-m", "blended",
            "--datasets-dir", str(datasets), "--out", str(runs), "--sample", str(sample), "--poll", "0.5"]
    assert main(args) == 0
    out = capsys.readouterr().out

    state = json.loads((runs / "rehearsal+rehearsal_b-folds0-1.json").read_text())
    assert state["configs"] == ["rehearsal", "rehearsal_b"]
    slugs = [ref.split("/")[1] for ref in state["kernels"]]
    assert sum(s.startswith("ichkaggle-prepare-32px-") for s in slugs) == 1  # shared by both configs
    assert sorted(s for s in slugs if s.startswith("ichkaggle-train-")) == sorted(
        f"ichkaggle-train-{tag}-fold{k}-s1" for tag in ("rehearsal", "rehearsal-b") for k in (0, 1))
    assert _most_at_once(sandbox.timeline()) <= 2
    infer_ref = next(ref for ref in state["kernels"] if "/ichkaggle-infer-blend-" in ref)
    working = sandbox.folder(infer_ref) / "working"
    manifest = json.loads((working / "ichkaggle_infer.json").read_text())
    assert manifest["configs"] == ["rehearsal", "rehearsal_b"] and manifest["folds"] == [0, 1]
    assert set(manifest["experiments"]) == {"rehearsal", "rehearsal_b"}
    blend = manifest["blend"]
    assert blend["names"] == ["rehearsal", "rehearsal_b"] and set(blend["weights"]) == set(LABELS)
    assert all(sum(w.values()) == pytest.approx(1.0) for w in blend["weights"].values())
    scores = blend["scores"]
    assert scores["cross_fit"] == "folds" and scores["folds"] == [0, 1] and scores["blend_oof"] > 0
    assert manifest["sequence"]["slices"] == scores["slices"]  # the stage trained on the blended table
    from ichkaggle.tables.submission import check_submission

    for name in ("submission_2d_rehearsal.csv", "submission_2d_rehearsal_b.csv", "submission_blend.csv",
                 "submission.csv"):
        assert check_submission(working / name, sample).ok
    slug = infer_ref.split("/")[1]
    said = (runs / slug / "v1" / f"{slug}.log.txt").read_text()  # the infer kernel's log, fetched
    assert "blend: out-of-fold rehearsal" in said and "sequence stage (rehearsal's [sequence]) on the blend" in said
    assert (working / "blend" / "blend.json").is_file() and f"{slug} v1: " in out
    assert len(fake.submissions) == 1 and fake.submissions[0].description == "blended"
    assert state["submission"]["status"] == "COMPLETE" and 0 < float(state["submission"]["public_score"]) < 2
    pushes = len(fake.calls("SaveKernel"))
    assert main(args) == 0  # the same command again: nothing new pushed or submitted
    assert len(fake.calls("SaveKernel")) == pushes and len(fake.submissions) == 1
    assert "submitted already" in capsys.readouterr().out
    (tmp_path / "none").mkdir()  # the ledger of this run: its state and fetched outputs only
    assert main(["results", "--runs", str(tmp_path / "none"), "--kaggle", str(runs), "--out", str(tmp_path / "l")]) == 0
    ledger = capsys.readouterr().out
    row = next(line for line in ledger.splitlines() if line.startswith("| rehearsal+rehearsal_b |"))
    assert f"{scores['blend_oof']:.4f}" in row and f"{float(state['submission']['public_score']):.4f}" in row
    print(f"\nthe two-config rehearsal took {time.monotonic() - started:.0f}s", file=sys.__stderr__)


def test_push_run_local_rehearses_without_credentials_in_parts(tmp_path, monkeypatch, capsys):
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(ROOT)
    competition = _competition(tmp_path / "competition")
    config = tmp_path / "big.toml"  # 512 px PNG, four windows: ~178 KB an image planned, as on real slices
    config.write_text((ROOT / "ichkaggle" / "configs" / "rehearsal.toml").read_text()
                      .replace('name = "rehearsal"', 'name = "big"').replace("size = 32", "size = 512")
                      .replace('"bone"]', '"bone", "soft_tissue"]').replace("batch_size = 16", "batch_size = 8")
                      + "\n[train]\nema = 0.0  # a checkpoint without the average's weights: it fits 18 MB\n")
    rehearsal = tmp_path / "rehearsal"
    # 110 images x ~178 KB = ~19.5 MB planned: two parts of at most 18 MB (a train output is ~16 MB)
    args = ["push", "run", "--config", str(config), "--folds", "0-1", "--local", str(rehearsal), "--data",
            str(competition), "--output-limit", "18MB", "--session-hours", "0.5", "-m", "rehearsed here"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "2 prepare kernel(s)" in out and "scored: public" in out and "built the package dataset into" in out
    kernels = sorted(p.name for p in (rehearsal / "kernels").iterdir())
    parts = [k for k in kernels if k.startswith("ichkaggle-prepare-512px-png-")]
    assert [k[-5:] for k in parts] == ["p0of2", "p1of2"]
    train = rehearsal / "kernels" / "ichkaggle-train-fold0-s1" / "v1"
    assert sorted(p.name for p in (train / "input").iterdir()) == sorted(
        ["ichkaggle-src", "ichkaggle-timm-weights", "rsna-intracranial-hemorrhage-detection", *parts])
    log = rehearsal / "runs" / "ichkaggle-train-fold0-s1" / "v1" / "ichkaggle-train-fold0-s1.log.txt"
    assert "train: 2 prepared parts attached, read as one set" in log.read_text()
    assert json.loads((rehearsal / "runs" / "big-folds0-1.json").read_text())["parts"] == 2
    submissions = json.loads((rehearsal / "submissions.json").read_text())
    assert len(submissions) == 1 and float(submissions[0]["public_score"]) > 0
    assert main(args) == 0  # again: nothing new
    assert len(json.loads((rehearsal / "submissions.json").read_text())) == 1
    assert all(len(list((rehearsal / "kernels" / k).glob("v*"))) == 1 for k in kernels)
