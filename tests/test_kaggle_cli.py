"""`ichkaggle push` and `ichkaggle submit` end to end: the CLI, the REAL kaggle client, a fake server.

Every test also checks that the API key appears nowhere: not in what was printed, not in
any file written (outputs, logs, state, rendered folders, bundles), not in any request the
server saw outside the Authorization header.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

if importlib.util.find_spec("kaggle") is None:  # find, not import: `import kaggle` prints at import
    pytest.skip("the kaggle extra is not installed", allow_module_level=True)

from ichkaggle.cli import main  # noqa: E402
from ichkaggle.kaggle.bundle import build_bundle  # noqa: E402
from ichkaggle.kaggle.flow import parse_folds, set_variables  # noqa: E402
from ichkaggle.tables.csv_io import long_ids  # noqa: E402
from ichkaggle.tables.labels import FILE_ORDER  # noqa: E402

from .fake_kaggle import FakeKaggle, files_containing, kaggle_env  # noqa: E402,F401,F811  (a fixture)

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--poll", "0.01"]


@pytest.fixture
def work(kaggle_env, tmp_path, monkeypatch, capsys):
    """The fake server, cwd = the checkout (its kernels/ and datasets/ templates), outputs in
    tmp; after the test: the key is in no output, file or request body."""
    monkeypatch.chdir(ROOT)
    yield kaggle_env
    key = kaggle_env.key
    printed = capsys.readouterr()
    assert key not in printed.out and key not in printed.err
    assert files_containing(tmp_path, key) == []
    assert key not in kaggle_env.all_text()
    for record in kaggle_env.requests:
        assert all(key not in str(v) for k, v in record.headers.items())  # Basic auth is base64, not the key


def _submission(tmp_path: Path, n: int = 5, bad: bool = False) -> tuple[Path, Path]:
    ids = [f"ID_{i:09x}" for i in range(1, n + 1)]
    rows = long_ids(ids, FILE_ORDER)
    sample = tmp_path / "sample.csv"
    pd.DataFrame({"ID": rows, "Label": 0.5}).to_csv(sample, index=False)
    values = np.linspace(0.01, 0.99, len(rows))
    if bad:
        values[3] = 1.5
    csv = tmp_path / "submission.csv"
    pd.DataFrame({"ID": rows, "Label": values}).to_csv(csv, index=False)
    return csv, sample


# ----------------------------------------------------------------------------- small pieces


def test_parse_folds_and_set_variables():
    assert parse_folds("0-4") == [0, 1, 2, 3, 4] and parse_folds("3,0-1") == [0, 1, 3] and parse_folds(None) is None
    for bad in ("a", "3-1", "1-"):
        with pytest.raises(Exception, match="--folds"):
            parse_folds(bad)
    script = 'CONFIG = "exp_00"\nFOLD = 0\nx = FOLD\n'
    assert set_variables(script, {"CONFIG": "b0_baseline", "FOLD": 3}) == "CONFIG = 'b0_baseline'\nFOLD = 3\nx = FOLD\n"
    with pytest.raises(Exception, match="FOLDS"):
        set_variables(script, {"FOLDS": [1]})


@pytest.mark.parametrize("command", ["bundle", "push", "submit"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0 and f"ichkaggle {command}" in capsys.readouterr().out


# ----------------------------------------------------------------------------- push kernel


def test_push_kernel_train_per_fold_waits_and_fetches_outputs(work, tmp_path, capsys):
    fake = work
    fake.kernel_outputs["ichkaggle-train-fold0"] = {"fold0/metrics.json": b"{}", "fold0/models/final.pth": b"w" * 9}
    code = main(["push", "kernel", "train", "--folds", "0-1", "--wait", "--out", str(tmp_path / "runs"), *FAST])
    out = capsys.readouterr().out
    assert code == 0
    saves = fake.calls("SaveKernel")
    assert [s.json["slug"] for s in saves] == ["alice/ichkaggle-train-fold0", "alice/ichkaggle-train-fold1"]
    for fold, save in enumerate(saves):
        body = save.json
        assert body["newTitle"] == f"ichkaggle train fold{fold}"
        assert body["isPrivate"] is True and body["enableGpu"] is True and not body.get("enableInternet", False)
        assert body["datasetDataSources"] == ["alice/ichkaggle-src", "alice/ichkaggle-timm-weights"]
        assert body["competitionDataSources"] == ["rsna-intracranial-hemorrhage-detection"]
        assert f"\nFOLD = {fold}\n" in body["text"] and "\nCONFIG = 'exp_00'\n" in body["text"]
        assert "--no-index" in body["text"]
    fold0 = tmp_path / "runs" / "ichkaggle-train-fold0" / "v1"
    assert (fold0 / "fold0" / "metrics.json").exists()
    assert not (fold0 / "fold0" / "models" / "final.pth").exists()  # weights only with --weights
    log = fold0 / "ichkaggle-train-fold0.log.txt"
    assert log.read_text() == "version 1 ran" and f"log: {log}" in out
    assert "COMPLETE" in out


def test_push_kernel_infer_dry_run_renders_the_sources(work, tmp_path, capsys):
    fake = work
    render = tmp_path / "render"
    assert main(["push", "kernel", "infer", "--folds", "0-2", "--dry-run", str(render)]) == 0
    meta = json.loads((render / "ichkaggle-infer" / "kernel-metadata.json").read_text())
    assert meta["id"] == "alice/ichkaggle-infer" and meta["enable_internet"] is False
    assert meta["kernel_sources"] == [f"alice/ichkaggle-train-fold{k}" for k in range(3)]
    assert "\nFOLDS = [0, 1, 2]\n" in (render / "ichkaggle-infer" / "infer.py").read_text()
    assert sorted(p.name for p in (render / "ichkaggle-infer").iterdir()) == ["infer.py", "kernel-metadata.json"]
    assert fake.requests == []  # a dry run sends nothing
    assert "would push alice/ichkaggle-infer" in capsys.readouterr().out


def test_a_kernel_ending_in_error_exits_non_zero_with_its_log(work, tmp_path, capsys):
    fake = work
    fake.kernel_scripts["ichkaggle-train-fold0"] = ["RUNNING", "ERROR"]
    fake.kernel_failure["ichkaggle-train-fold0"] = "Your notebook tried to allocate more memory than is available"
    code = main(["push", "kernel", "train", "--wait", "--out", str(tmp_path / "runs"), *FAST])
    err = capsys.readouterr().err
    assert code == 2
    assert "ichkaggle-train-fold0 v1 ended ERROR: Your notebook tried to allocate more memory" in err
    assert "ichkaggle-train-fold0.log.txt" in err and "| version 1 ran" in err


def test_save_kernel_error_exits_non_zero(work, capsys):
    work.save_kernel_error = "Notebook exceeds the maximum GPU quota"
    assert main(["push", "kernel", "train", "--folds", "1"]) == 2
    assert "refused it: Notebook exceeds the maximum GPU quota" in capsys.readouterr().err


def test_a_kernel_pushed_by_hand_beyond_the_gpu_cap_says_how_to_queue(work, capsys):
    work.gpu_cap = 2
    assert main(["push", "kernel", "train", "--folds", "0-2"]) == 2
    err = capsys.readouterr().err
    assert "Maximum batch GPU session count of 2 reached." in err and "`ichkaggle push run` queue them" in err
    assert len(work.kernels) == 2


def test_a_config_missing_from_the_bundle_is_refused_before_pushing(work, tmp_path, capsys):
    config = tmp_path / "mine.toml"
    config.write_text((ROOT / "ichkaggle" / "configs" / "demo.toml").read_text())
    assert main(["push", "kernel", "train", "--config", str(config), "--datasets-dir", str(tmp_path / "d")]) == 2
    assert "ichkaggle bundle --config" in capsys.readouterr().err and work.requests == []


# ----------------------------------------------------------------------------- push dataset


def test_push_dataset_creates_then_versions_with_the_bundle_bytes(work, tmp_path, capsys):
    fake = work
    datasets = tmp_path / "datasets"
    result = build_bundle(datasets / "ichkaggle-src", "alice")
    (datasets / "ichkaggle-src" / "notes.md").write_text("not uploaded")
    args = ["push", "dataset", "ichkaggle-src", "--datasets-dir", str(datasets), "--wait", *FAST]
    assert main(args) == 0
    assert main([*args, "--notes", "new wheel"]) == 0
    versions = fake.datasets["alice/ichkaggle-src"]
    assert len(versions) == 2 and versions[1]["notes"] == "new wheel"
    expected = {p.name: p.read_bytes() for p in result.files if p.name != "dataset-metadata.json"}
    assert versions[0]["files"] == expected and versions[1]["files"] == expected
    create = fake.calls("CreateDataset")[0].json
    assert create["ownerSlug"] == "alice" and create["slug"] == "ichkaggle-src" and create["isPrivate"] is True
    out = capsys.readouterr().out
    assert "creating dataset alice/ichkaggle-src" in out and "new version of dataset" in out


def test_a_stale_bundle_is_flagged(work, tmp_path, capsys):
    datasets = tmp_path / "datasets"
    result = build_bundle(datasets / "ichkaggle-src", "alice")
    assert main(["push", "kernel", "train", "--datasets-dir", str(datasets), "--dry-run", str(tmp_path / "r")]) == 0
    assert "warning" not in capsys.readouterr().err
    result.wheel.write_bytes(b"an old wheel")
    assert main(["push", "kernel", "train", "--datasets-dir", str(datasets), "--dry-run", str(tmp_path / "r")]) == 0
    assert "is not what the source builds now: run `ichkaggle bundle`" in capsys.readouterr().err


def test_push_dataset_weights_uploads_only_the_weights(work, tmp_path):
    fake = work
    datasets = tmp_path / "datasets"
    folder = datasets / "ichkaggle-timm-weights"
    folder.mkdir(parents=True)
    for name in ("dataset-metadata.json", "README.md", "fetch_weights.py"):
        (folder / name).write_bytes((ROOT / "datasets" / "ichkaggle-timm-weights" / name).read_bytes())
    (folder / "efficientnet_b0.safetensors").write_bytes(b"\1" * 1000)
    assert main(["push", "dataset", "ichkaggle-timm-weights", "--datasets-dir", str(datasets)]) == 0
    assert fake.datasets["alice/ichkaggle-timm-weights"][0]["files"] == {"efficientnet_b0.safetensors": b"\1" * 1000}


def test_push_dataset_refuses_a_credential(work, tmp_path, capsys):
    datasets = tmp_path / "datasets"
    folder = datasets / "stuff-data"
    folder.mkdir(parents=True)
    (folder / "dataset-metadata.json").write_text('{"id": "KAGGLE_USERNAME/stuff-data"}')
    (folder / "kaggle.json").write_text("{}")
    assert main(["push", "dataset", "stuff-data", "--datasets-dir", str(datasets)]) == 2
    assert "kaggle.json" in capsys.readouterr().err and work.requests == []


def test_push_dataset_without_a_bundle_says_what_to_do(work, tmp_path, capsys):
    folder = tmp_path / "datasets" / "ichkaggle-src"
    folder.mkdir(parents=True)
    (folder / "dataset-metadata.json").write_text('{"id": "KAGGLE_USERNAME/ichkaggle-src"}')
    assert main(["push", "dataset", "ichkaggle-src", "--datasets-dir", str(tmp_path / "datasets")]) == 2
    assert "ichkaggle bundle" in capsys.readouterr().err


# ----------------------------------------------------------------------------- submit


def test_submit_checks_uploads_waits_and_prints_the_scores(work, tmp_path, capsys):
    fake = work
    csv, sample = _submission(tmp_path)
    code = main(["submit", str(csv), "-m", "b5 five folds", "--sample", str(sample), "--wait", *FAST])
    out = capsys.readouterr().out
    assert code == 0
    assert fake.submissions[0].data == csv.read_bytes() and fake.submissions[0].description == "b5 five folds"
    assert "OK: 30 rows" in out and "public 0.07123, private 0.07456" in out


def test_an_invalid_file_is_never_uploaded(work, tmp_path, capsys):
    csv, sample = _submission(tmp_path, bad=True)
    assert main(["submit", str(csv), "-m", "x", "--sample", str(sample)]) == 2
    err = capsys.readouterr().err
    assert "out-of-range" in err and "nothing was uploaded" in err
    assert main(["submit", str(csv), "-m", "x"]) == 2  # the self-check catches it too
    assert work.requests == []


def test_submit_dry_run_sends_nothing(work, tmp_path, capsys):
    csv, _ = _submission(tmp_path)
    assert main(["submit", str(csv), "-m", "try", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run: would submit" in out and "user alice" in out and "not against the sample" in out
    assert work.requests == []


def test_submit_retries_a_5xx(work, tmp_path, capsys):
    fake = work
    fake.fail("StartSubmissionUpload", 503)
    csv, sample = _submission(tmp_path)
    assert main(["submit", str(csv), "-m", "x", "--sample", str(sample)]) == 0
    assert len(fake.submissions) == 1 and "retrying" in capsys.readouterr().err


def test_submit_401_is_a_clear_error(work, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KAGGLE_KEY", "0" * 32)  # the server expects another key
    csv, sample = _submission(tmp_path)
    assert main(["submit", str(csv), "-m", "x", "--sample", str(sample)]) == 2
    err = capsys.readouterr().err
    assert "HTTP 401" in err and "KAGGLE_USERNAME/KAGGLE_KEY" in err and "0" * 32 not in err


def test_a_submission_scored_error_exits_non_zero(work, tmp_path, capsys):
    work.submission_script = ["PENDING", "ERROR"]
    csv, sample = _submission(tmp_path)
    assert main(["submit", str(csv), "-m", "x", "--sample", str(sample), "--wait", *FAST]) == 2
    assert "scored ERROR: Submission CSV has the wrong number of rows" in capsys.readouterr().err


def test_a_down_server_is_a_quick_clear_error(work, tmp_path, monkeypatch, capsys):
    import socket

    from kagglesdk.kaggle_env import KaggleEnv, _env_to_endpoint

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setitem(_env_to_endpoint, KaggleEnv.PROD, f"http://127.0.0.1:{port}")
    csv, sample = _submission(tmp_path)
    assert main(["submit", str(csv), "-m", "x", "--sample", str(sample)]) == 2
    assert "cannot connect to 127.0.0.1" in capsys.readouterr().err


def test_no_credentials_is_a_clear_error(work, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("KAGGLE_KEY")
    csv, sample = _submission(tmp_path)
    assert main(["submit", str(csv), "-m", "x", "--sample", str(sample)]) == 2
    assert "no Kaggle credentials" in capsys.readouterr().err


# ----------------------------------------------------------------------------- push run (the pipeline)

PREP = "ichkaggle-prepare-224px-jpg-"  # + a digest of the image settings


def _infer_outputs(tmp_path: Path) -> dict:
    csv, _ = _submission(tmp_path)
    return {"submission.csv": csv.read_bytes(), "ichkaggle_infer.json": b'{"kind": "ichkaggle-infer"}'}


def _sessions(fake, folds, needs: dict | None = None, img_per_s: float = 140.0) -> None:
    """Train sessions that end complete after ``needs[fold]`` sessions (default 1), as the kernel writes them."""
    for fold in folds:
        for n in range(1, 6):
            complete = n >= (needs or {}).get(fold, 1)
            manifest = {"kind": "ichkaggle-train", "experiment": "exp_00", "fold": fold, "complete": complete,
                        "progress": "complete" if complete else f"stopped before epoch {n * 3} of phase unfrozen",
                        "img_per_s": img_per_s, "device": "cuda:0 x2", "valid_weighted_log_loss": 0.07}
            fake.kernel_outputs[f"ichkaggle-train-fold{fold}-s{n}"] = {
                "ichkaggle_train.json": json.dumps(manifest).encode(), f"fold{fold}/history.csv": b"epoch\n1\n",
                f"fold{fold}/models/checkpoint.pth": b"c" * 20}


def _prepare_outputs(fake) -> None:
    original = fake._rpc_SaveKernel

    def save(body):
        answer = original(body)
        if "prepare" in body.get("slug", ""):
            fake.kernels[body["slug"]].outputs = {"ichkaggle_prepare.json": b'{"kind": "ichkaggle-prepare"}',
                                                  "train/shards/shard-00000.bin": b"x" * 100}
        return answer

    fake._rpc_SaveKernel = save


def _slugs(fake) -> list[str]:
    return [s.json["slug"].split("/")[1] for s in fake.calls("SaveKernel")]


def test_run_prepares_once_trains_the_folds_infers_and_submits_then_resumes_without_repeating(work, tmp_path, capsys):
    fake = work
    _prepare_outputs(fake)
    _sessions(fake, range(3))
    fake.kernel_outputs["ichkaggle-infer"] = _infer_outputs(tmp_path)
    args = ["push", "run", "--folds", "0-2", "-m", "three folds", "--out", str(tmp_path / "runs"), *FAST]
    assert main(args) == 0
    out = capsys.readouterr().out
    slugs = _slugs(fake)
    assert slugs[0].startswith(PREP) and slugs[1:] == [f"ichkaggle-train-fold{k}-s1" for k in range(3)] + [
        "ichkaggle-infer"]
    prepare, *trains, infer = [s.json for s in fake.calls("SaveKernel")]
    assert prepare["enableGpu"] is False and "machineShape" not in prepare  # a CPU kernel
    assert all(t["enableGpu"] and t["machineShape"] == "NvidiaTeslaT4" for t in trains)
    assert all(t["kernelDataSources"] == [f"alice/{slugs[0]}"] for t in trains)  # the prepared data, attached
    assert infer["kernelDataSources"] == [f"alice/{slugs[0]}"] + [f"alice/ichkaggle-train-fold{k}-s1"
                                                                  for k in range(3)]
    assert "\nFOLDS = [0, 1, 2]\n" in infer["text"]
    assert len(fake.submissions) == 1 and fake.submissions[0].description == "three folds"
    assert "GPU-hours per fold" in out and "public 0.07123, private 0.07456" in out
    assert not list((tmp_path / "runs").rglob("*.bin")) and not list((tmp_path / "runs").rglob("*.pth"))
    state = json.loads((tmp_path / "runs" / "exp_00-folds0-1-2.json").read_text())
    assert {k["status"] for k in state["kernels"].values()} == {"COMPLETE"}
    assert state["sessions"] == {str(k): {"session": 1, "complete": True} for k in range(3)}
    assert state["submission"]["status"] == "COMPLETE" and state["submission"]["ref"] == 1000
    records = json.loads((tmp_path / "runs" / "throughput.json").read_text())
    assert records[-1]["img_per_s"] == 140.0 and records[-1]["accelerator"] == "NvidiaTeslaT4"
    # again: nothing is pushed or submitted twice
    assert main(args) == 0
    assert len(fake.calls("SaveKernel")) == 5 and len(fake.submissions) == 1
    assert "submitted already" in capsys.readouterr().out


def test_a_fold_that_needs_three_sessions_gets_them_chained(work, tmp_path, capsys):
    fake = work
    _prepare_outputs(fake)
    _sessions(fake, range(2), needs={1: 3})
    fake.kernel_outputs["ichkaggle-infer"] = _infer_outputs(tmp_path)
    assert main(["push", "run", "--folds", "0-1", "--out", str(tmp_path / "runs"), "--no-submit", *FAST]) == 0
    assert _slugs(fake)[1:] == ["ichkaggle-train-fold0-s1", "ichkaggle-train-fold1-s1", "ichkaggle-train-fold1-s2",
                                "ichkaggle-train-fold1-s3", "ichkaggle-infer"]
    bodies = {s.json["slug"].split("/")[1]: s.json for s in fake.calls("SaveKernel")}
    prep = f"alice/{_slugs(fake)[0]}"
    assert bodies["ichkaggle-train-fold1-s2"]["kernelDataSources"] == [prep, "alice/ichkaggle-train-fold1-s1"]
    assert bodies["ichkaggle-train-fold1-s3"]["kernelDataSources"] == [prep, "alice/ichkaggle-train-fold1-s2"]
    assert bodies["ichkaggle-infer"]["kernelDataSources"] == [prep, "alice/ichkaggle-train-fold0-s1",
                                                             "alice/ichkaggle-train-fold1-s3"]
    out = capsys.readouterr().out
    assert "fold 1: stopped before epoch 3 of phase unfrozen; session 2 next" in out
    assert "fold 1: complete after 3 session(s)" in out and fake.submissions == []


def test_a_session_that_errors_is_pushed_again_on_the_next_run(work, tmp_path, capsys):
    fake = work
    _prepare_outputs(fake)
    _sessions(fake, range(2), needs={0: 2})
    fake.kernel_outputs["ichkaggle-infer"] = _infer_outputs(tmp_path)
    fake.kernel_script_queue["ichkaggle-train-fold0-s2"] = [["RUNNING", "ERROR"]]
    args = ["push", "run", "--folds", "0-1", "--out", str(tmp_path / "runs"), "--no-submit", *FAST]
    assert main(args) == 2
    assert "ichkaggle-train-fold0-s2 v1 ended ERROR" in capsys.readouterr().err
    assert main(args) == 0
    assert _slugs(fake)[1:] == ["ichkaggle-train-fold0-s1", "ichkaggle-train-fold1-s1", "ichkaggle-train-fold0-s2",
                                "ichkaggle-train-fold0-s2", "ichkaggle-infer"]
    out = capsys.readouterr().out
    assert "alice/ichkaggle-train-fold0-s2: version 1 ended ERROR; pushing it again" in out
    assert f"alice/{_slugs(fake)[0]}: version 1 already pushed (COMPLETE)" in out  # prepared once


def test_the_quota_running_out_midway_stops_clearly_with_the_state_kept(work, tmp_path, capsys):
    fake = work
    _prepare_outputs(fake)
    _sessions(fake, range(2), needs={0: 3, 1: 3})
    fake.kernel_outputs["ichkaggle-infer"] = _infer_outputs(tmp_path)
    fake.quota_total, fake.hours_per_gpu_session = 40.0, 11.0  # each GPU session uses 11 h of it
    args = ["push", "run", "--folds", "0-1", "--out", str(tmp_path / "runs"), "-m", "x", "--force", *FAST]
    assert main(args) == 2  # --force starts a plan larger than the quota; a push it cannot pay still stops
    err = capsys.readouterr().err
    # a push must leave room for itself and the sessions in flight (up to 11.0 h each, the plan says):
    # 40 -> 29 -> 18 h left; fold 0's s2 (alone in flight) leaves 7, too few for fold 1's s2 beside it
    assert ("the weekly GPU quota has 7.0 h left and fold 1's next session (with the 1 in flight) needs up to "
            "21.9 h") in err
    assert "nothing lost" in err and "after the quota refreshes (2026-12-01T00:00)" in err
    state = json.loads((tmp_path / "runs" / "exp_00-folds0-1.json").read_text())
    assert state["sessions"] == {"0": {"session": 3, "complete": False}, "1": {"session": 2, "complete": False}}
    assert [s for s in _slugs(fake) if "train" in s] == ["ichkaggle-train-fold0-s1", "ichkaggle-train-fold1-s1",
                                                         "ichkaggle-train-fold0-s2"]
    fake.quota_used = 0.0  # the quota refreshed: the same command goes on where it stopped
    fake.quota_total = 100.0
    assert main(args) == 0
    assert [s for s in _slugs(fake) if "train" in s] == [
        "ichkaggle-train-fold0-s1", "ichkaggle-train-fold1-s1", "ichkaggle-train-fold0-s2", "ichkaggle-train-fold0-s3",
        "ichkaggle-train-fold1-s2", "ichkaggle-train-fold1-s3"]
    assert len(fake.submissions) == 1 and sum("prepare" in s for s in _slugs(fake)) == 1


def test_a_plan_larger_than_the_quota_is_refused_unless_forced(work, tmp_path, capsys):
    fake = work
    _prepare_outputs(fake)
    _sessions(fake, range(5))
    fake.quota_total, fake.quota_used = 30.0, 25.0
    args = ["push", "run", "--folds", "0-4", "--out", str(tmp_path / "runs"), "--no-submit", *FAST]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "the weekly GPU quota has 5.0 h left and the plan's 5 fold(s) need up to" in err
    assert "--force" in err and [s for s in _slugs(fake) if "train" in s] == []  # only the CPU prepare kernel ran


def test_a_failed_kernel_without_outputs_still_reports_its_failure(work, tmp_path, capsys):
    fake = work
    fake.kernel_scripts["ichkaggle-train-fold0"] = ["ERROR"]
    fake.kernel_failure["ichkaggle-train-fold0"] = "Kernel startup failed"
    fake.fail("ListKernelSessionOutput", 404, times=2)  # the version, then the kernel
    assert main(["push", "kernel", "train", "--wait", "--out", str(tmp_path / "runs"), *FAST]) == 2
    printed = capsys.readouterr()
    assert "no outputs or log to fetch" in printed.out
    assert "ended ERROR: Kernel startup failed (see https://www.kaggle.com/code/alice/ichkaggle-train-fold0)" \
        in printed.err


# ----------------------------------------------------------------------------- push run with several configs

TWO = ["exp_00", "b0_baseline"]  # the same folds and image settings (224 px JPEG), two architectures


def _tagged_sessions(fake, configs, folds) -> None:
    """Each config's train sessions, complete after one, under the slugs several configs get."""
    for config in configs:
        tag = config.replace("_", "-")
        for fold in folds:
            manifest = {"kind": "ichkaggle-train", "experiment": config, "fold": fold, "complete": True,
                        "progress": "complete", "img_per_s": 140.0, "device": "cuda:0 x2",
                        "valid_weighted_log_loss": 0.07}
            fake.kernel_outputs[f"ichkaggle-train-{tag}-fold{fold}-s1"] = {
                "ichkaggle_train.json": json.dumps(manifest).encode()}


def test_run_of_two_configs_shares_the_prepare_and_blends_them_in_one_infer_kernel(work, tmp_path, capsys):
    from ichkaggle.kaggle.runset import RunConfig, infer_slug

    fake = work
    _prepare_outputs(fake)
    _tagged_sessions(fake, TWO, range(2))
    infer = infer_slug("ichkaggle-infer", [RunConfig(c, None, c) for c in TWO])
    fake.kernel_outputs[infer] = _infer_outputs(tmp_path)
    args = ["push", "run", "--config", TWO[0], "--config", TWO[1], "--folds", "0-1", "-m", "two",
            "--out", str(tmp_path / "runs"), *FAST]
    assert main(args) == 0
    out = capsys.readouterr().out
    slugs = _slugs(fake)
    assert len(slugs) == 6 and slugs[0].startswith(PREP) and sum("prepare" in s for s in slugs) == 1  # shared
    trains = [f"ichkaggle-train-{c.replace('_', '-')}-fold{k}-s1" for c in TWO for k in range(2)]
    assert slugs[1:5] == trains and slugs[5] == infer and infer.startswith("ichkaggle-infer-blend-")
    bodies = {s.json["slug"].split("/")[1]: s.json for s in fake.calls("SaveKernel")}
    assert all(bodies[t]["kernelDataSources"] == [f"alice/{slugs[0]}"] for t in trains)
    assert bodies[infer]["kernelDataSources"] == [f"alice/{slugs[0]}"] + [f"alice/{t}" for t in trains]
    assert "\nCONFIGS = ['exp_00', 'b0_baseline']\n" in bodies[infer]["text"]
    assert "\nFOLDS = [0, 1]\n" in bodies[infer]["text"]
    assert "\nCONFIG = 'b0_baseline'\n" in bodies[trains[2]]["text"]
    assert bodies[trains[2]]["newTitle"] == "ichkaggle train b0 baseline fold0 s1"
    assert "all 2 configs" in out and "shared by 2 configs" in out and "exp_00 fold 1: complete" in out
    state = json.loads((tmp_path / "runs" / "exp_00+b0_baseline-folds0-1.json").read_text())
    assert state["configs"] == TWO and "config" not in state
    assert state["sessions"] == {f"{c}/{k}": {"session": 1, "complete": True} for c in TWO for k in range(2)}
    assert len(fake.submissions) == 1 and fake.submissions[0].description == "two"
    assert main(args) == 0  # again: nothing new
    assert len(fake.calls("SaveKernel")) == 6 and len(fake.submissions) == 1


def test_configs_that_cannot_be_blended_or_attached_are_refused_before_anything_is_pushed(work, tmp_path, capsys):
    out = ["--out", str(tmp_path / "runs"), "--no-submit", *FAST]
    assert main(["push", "run", "--config", "exp_00", "--config", "demo", "--folds", "0-1", *out]) == 2
    assert "a blend needs the same folds" in capsys.readouterr().err
    assert main(["push", "run", "--config", "exp_00", "--config", "exp_00", "--folds", "0", *out]) == 2
    assert "a config given twice" in capsys.readouterr().err
    four = [arg for c in ("exp_00", "b0_baseline", "b5_t4x2", "rehearsal") for arg in ("--config", c)]
    assert main(["push", "run", *four, "--folds", "0-4", *out]) == 2
    err = capsys.readouterr().err
    assert "the infer kernel would attach 2 (its datasets and the competition) + 20 fold session(s) (4 config(s) " \
           "x 5 fold(s)) + 2 prepared part(s)" in err and "= 24 sources" in err and "at most 20" in err
    assert main(["push", "kernel", "train", "--config", "exp_00", "--config", "b0_baseline"]) == 2
    assert "push kernel takes one --config" in capsys.readouterr().err
    assert work.calls("SaveKernel") == []  # refused before anything was pushed


def test_plan_sums_several_configs(work, tmp_path, capsys):
    assert main(["plan", "--config", "exp_00", "--config", "b0_baseline", "--folds", "0-4", "--offline",
                 "--out", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "plan for exp_00" in out and "plan for b0_baseline" in out and "all 2 configs" in out
    each = [float(line.split(":")[1].split()[0]) for line in out.splitlines() if line.startswith("  folds ")]
    total = float(next(line for line in out.splitlines() if line.startswith("  GPU-hours  ")).split()[1])
    assert len(each) == 2 and total == pytest.approx(sum(each), abs=0.15)
    assert "then one infer kernel that blends the configs" in out


# ----------------------------------------------------------------------------- the client's own ways to a server


def _cli(args: list[str], env: dict) -> subprocess.CompletedProcess:
    """``ichkaggle ...`` in a fresh process: only the environment points the client anywhere."""
    return subprocess.run([sys.executable, "-m", "ichkaggle.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120, cwd=ROOT)


def _clean_env(fake) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and "KAGGLE" not in k}
    return {**env, "KAGGLE_USERNAME": fake.username, "KAGGLE_KEY": fake.key}


def test_submit_reaches_a_local_server_through_kaggle_api_environment_and_a_proxy(kaggle_env, tmp_path):
    fake = kaggle_env
    csv, sample = _submission(tmp_path)
    env = {**_clean_env(fake), "KAGGLE_API_ENVIRONMENT": "LOCALHOST", "HTTP_PROXY": fake.url}
    done = _cli(["submit", str(csv), "-m", "via proxy", "--sample", str(sample)], env)
    assert done.returncode == 0, done.stderr
    assert [s.description for s in fake.submissions] == ["via proxy"]
    assert any(r.path.startswith("http://localhost/api/v1/") for r in fake.calls("CreateSubmission"))
    assert fake.key not in done.stdout + done.stderr


def test_submit_reaches_a_local_server_on_port_80(tmp_path):
    import secrets

    key = secrets.token_hex(16)
    try:
        fake = FakeKaggle("alice", key, port=80).start()
    except OSError as err:  # not root, or port 80 taken: the way cannot be tried on this machine
        pytest.skip(f"cannot listen on port 80 here: {err}")
    try:
        env = {**_clean_env(fake), "KAGGLE_API_ENVIRONMENT": "LOCALHOST", "HOME": str(tmp_path),
               "NO_PROXY": "localhost,127.0.0.1"}
        csv, sample = _submission(tmp_path)
        done = _cli(["submit", str(csv), "-m", "port 80", "--sample", str(sample)], env)
        assert done.returncode == 0, done.stderr
        assert [s.description for s in fake.submissions] == ["port 80"]
    finally:
        fake.stop()


def test_plan_prints_the_cost_and_the_remaining_quota(work, tmp_path, capsys):
    fake = work
    fake.quota_total, fake.quota_used = 30.0, 7.5
    assert main(["plan", "--config", "exp_00", "--folds", "0-4", "--accelerator", "NvidiaTeslaT4",
                 "--out", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "602,242 train, 150,561 validation" in out and "epochs               25" in out
    assert "sessions per fold    3" in out and "estimate: H200" in out
    assert "22.5 h remaining of 30.0 h" in out and "does NOT fit" in out
    assert fake.calls("GetAcceleratorQuotaStatistics")
