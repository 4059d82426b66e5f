"""`push run`, `plan` and `submit` under Kaggle's limits, with the REAL client against the scripted fake server.

At most 2 GPU sessions at once (the folds queued, a refusal for the cap waited out), a session
killed at its limit pushed again once with a larger margin, a session that makes no progress,
the day's submissions spent, a submission followed by its ref beyond the list's first page, an
image setting too large even in parts, any timm architecture planned by FLOPs, an interrupted
run that follows its versions in flight. The key is checked nowhere to be found, as in
test_kaggle_cli (its ``work`` fixture).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

if importlib.util.find_spec("kaggle") is None:  # find, not import: `import kaggle` prints at import
    pytest.skip("the kaggle extra is not installed", allow_module_level=True)

from ichkaggle.cli import main
from ichkaggle.kaggle.bundle import build_bundle

from .fake_kaggle import kaggle_env  # noqa: F401 (a fixture the `work` fixture uses by name)
from .test_kaggle_cli import (  # noqa: F401 (`work`: the fixture `fake` takes it by name)
    FAST,
    _infer_outputs,
    _prepare_outputs,
    _sessions,
    _slugs,
    _submission,
    work,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake(request):
    """The scripted fake server, with test_kaggle_cli's checks that the key is nowhere afterwards."""
    return request.getfixturevalue("work")


def test_run_queues_the_folds_under_the_gpu_cap_and_waits_out_refusals(fake, tmp_path, capsys):
    _prepare_outputs(fake)
    _sessions(fake, range(5), needs={2: 2})
    fake.kernel_outputs["ichkaggle-infer"] = _infer_outputs(tmp_path)
    fake.gpu_cap = 2  # Kaggle's; the run is told it may have 3 at once, so its third push is refused
    args = ["push", "run", "--folds", "0-4", "--out", str(tmp_path / "runs"), "--max-gpu-sessions", "3", "-m", "x",
            *FAST]
    assert main(args) == 0
    out = capsys.readouterr().out
    accepted = {ref.split("/")[1]: len(k.versions) for ref, k in fake.kernels.items()}
    trains = sorted(slug for slug in accepted if "train" in slug)
    assert trains == sorted([f"ichkaggle-train-fold{k}-s1" for k in range(5)] + ["ichkaggle-train-fold2-s2"])
    assert all(accepted[slug] == 1 for slug in trains) and fake.most_gpu_running == 2
    gpu_pushes = [c for c in fake.calls("SaveKernel") if c.json.get("enableGpu")]
    assert len(gpu_pushes) > len(trains) + 1  # some pushes were refused, and pushed again later
    assert "Maximum batch GPU session count of 2 reached." in out and "waits" in out
    assert "wall clock           ~6 round(s) of <= 12 h (5 fold(s) x 3 session(s), 3 at once" in out  # the plan
    state = json.loads((tmp_path / "runs" / "exp_00-folds0-1-2-3-4.json").read_text())
    assert all(entry["complete"] for entry in state["sessions"].values()) and state["version"] == 3
    assert len(fake.submissions) == 1


def test_run_waits_while_another_notebook_holds_the_gpu_sessions(fake, tmp_path, capsys):
    _prepare_outputs(fake)
    _sessions(fake, range(2))
    fake.kernel_outputs["ichkaggle-infer"] = _infer_outputs(tmp_path)
    fake.busy_pushes = 3  # none of this run's kernels runs: the refusals are for another notebook's sessions
    assert main(["push", "run", "--folds", "0-1", "--out", str(tmp_path / "runs"), "--no-submit", *FAST]) == 0
    out = capsys.readouterr().out
    assert "fold 0 waits" in out and sorted(r for r in fake.kernels if "train" in r) == [
        "alice/ichkaggle-train-fold0-s1", "alice/ichkaggle-train-fold1-s1"]
    assert _slugs(fake)[1:5] == ["ichkaggle-train-fold0-s1"] * 4  # refused 3 times, then accepted
    assert len(fake.calls("SaveKernel")) == 1 + 3 + 2 + 1  # prepare, 3 refused, 2 folds, infer


def test_a_session_killed_at_its_limit_is_pushed_again_once_with_a_larger_margin(fake, tmp_path, capsys):
    _prepare_outputs(fake)
    _sessions(fake, range(2), needs={1: 2})
    fake.kernel_outputs["ichkaggle-infer"] = _infer_outputs(tmp_path)
    killed = "Notebook exceeded its maximum run time of 12 hours and was stopped"
    fake.kernel_script_queue["ichkaggle-train-fold1-s2"] = [["RUNNING", "ERROR"]]
    fake.kernel_failure["ichkaggle-train-fold1-s2"] = killed
    args = ["push", "run", "--folds", "0-1", "--out", str(tmp_path / "runs"), "--no-submit", *FAST]
    assert main(args) == 0
    bodies = [c.json for c in fake.calls("SaveKernel") if c.json["slug"].endswith("fold1-s2")]
    assert len(bodies) == 2 and "\nMARGIN_MINUTES = 20.0\n" in bodies[0]["text"]
    assert "\nMARGIN_MINUTES = 60.0\n" in bodies[1]["text"]  # three times the margin
    assert bodies[1]["kernelDataSources"][-1] == "alice/ichkaggle-train-fold1-s1"  # continues from s1
    out = capsys.readouterr().out
    assert "was killed at its session limit" in out and "fold 1: complete after 2 session(s)" in out
    # killed twice: a failure like any other, the same command pushes it again
    fake.kernel_script_queue["ichkaggle-train-fold0-s1"] = [["ERROR"], ["ERROR"]]
    fake.kernel_failure["ichkaggle-train-fold0-s1"] = killed
    again = ["push", "run", "--folds", "0", "--out", str(tmp_path / "runs2"), "--no-submit", *FAST]
    assert main(again) == 2
    assert "ichkaggle-train-fold0-s1 v3 ended ERROR: Notebook exceeded" in capsys.readouterr().err  # v1: run 1


def test_a_session_that_makes_no_progress_stops_the_run(fake, tmp_path, capsys):
    _prepare_outputs(fake)
    manifest = {"kind": "ichkaggle-train", "experiment": "exp_00", "fold": 0, "complete": False,
                "progress": "stopped before epoch 1 of phase unfrozen"}
    for n in (1, 2):
        fake.kernel_outputs[f"ichkaggle-train-fold0-s{n}"] = {"ichkaggle_train.json": json.dumps(manifest).encode()}
    assert main(["push", "run", "--folds", "0", "--out", str(tmp_path / "runs"), "--no-submit", *FAST]) == 2
    err = capsys.readouterr().err
    assert "fold 0: session 2 (alice/ichkaggle-train-fold0-s2 v1) made no progress (stopped before epoch 1" in err
    assert [s for s in _slugs(fake) if "train" in s] == ["ichkaggle-train-fold0-s1", "ichkaggle-train-fold0-s2"]


def test_no_submission_left_today_stops_clearly_then_the_next_day_submits_and_follows_it_by_ref(fake, tmp_path,
                                                                                                  capsys):
    _prepare_outputs(fake)
    _sessions(fake, range(2))
    fake.kernel_outputs["ichkaggle-infer"] = _infer_outputs(tmp_path)
    fake.submission_limits = {"numToday": 5, "numTotal": 12, "numAllowedNow": 0}
    args = ["push", "run", "--folds", "0-1", "--out", str(tmp_path / "runs"), "-m", "two folds", *FAST]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "allows no more submissions" in err and "5 today, 12 in all, 0 allowed now" in err
    assert "nothing was uploaded" in err and fake.submissions == [] and not fake.calls("StartSubmissionUpload")
    fake.submission_limits = None  # the next day (and ours is listed on the list's second page only)
    fake.earlier_submissions, fake.list_newest_first = 30, False
    assert main(args) == 0
    assert len(fake.submissions) == 1 and fake.calls("GetSubmission")
    assert [s for s in _slugs(fake) if "train" in s] == ["ichkaggle-train-fold0-s1", "ichkaggle-train-fold1-s1"]
    state = json.loads((tmp_path / "runs" / "exp_00-folds0-1.json").read_text())["submission"]
    assert (state["status"], state["public_score"], state["private_score"]) == ("COMPLETE", "0.07123", "0.07456")
    assert state["ref"] == fake.submissions[0].ref and state["date"].startswith("2024-01-01")


def test_an_image_setting_too_large_even_in_parts_is_refused_before_anything_is_pushed(fake, tmp_path, capsys):
    config = tmp_path / "huge.toml"
    text = (ROOT / "ichkaggle" / "configs" / "b5_t4x2.toml").read_text().replace('name = "b5_t4x2"', 'name = "huge"')
    config.write_text(text.replace("size = 224\n", "size = 2048\n").replace(
        'windows = ["brain", "subdural", "bone"]', 'windows = ["brain", "subdural", "bone", "soft_tissue"]'))
    datasets = tmp_path / "datasets"
    build_bundle(datasets / "ichkaggle-src", "alice", extra_configs=(config,))
    assert main(["plan", "--config", str(config), "--folds", "0-4", "--offline", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "2048 px png (4 channels) cannot be prepared within Kaggle's limits" in err and "874,035 images x" in err
    assert main(["push", "run", "--config", str(config), "--folds", "0-4", "--datasets-dir", str(datasets),
                 "--out", str(tmp_path / "r"), *FAST]) == 2
    assert "cannot be prepared within Kaggle's limits" in capsys.readouterr().err and fake.calls("SaveKernel") == []


@pytest.mark.torch  # the FLOPs are counted on a timm model
def test_plan_estimates_any_timm_architecture_from_its_flops_and_takes_a_given_throughput(fake, tmp_path, capsys):
    config = tmp_path / "b3.toml"
    text = (ROOT / "ichkaggle" / "configs" / "b5_t4x2.toml").read_text().replace('name = "b5_t4x2"', 'name = "b3"')
    config.write_text(text.replace('arch = "efficientnet_b5"', 'arch = "efficientnet_b3"').replace(
        "size = 224\n", "size = 384\n"))
    args = ["plan", "--config", str(config), "--folds", "0-4", "--offline", "--out", str(tmp_path / "r")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "ESTIMATE: efficientnet_b5's reference (150 img/s at 224 px) scaled by forward FLOPs" in out
    assert "efficientnet_b3" in out and (tmp_path / "r" / "flops.json").is_file()
    assert main([*args, "--throughput", "95"]) == 0
    assert "95 img/s training (given by --throughput)" in capsys.readouterr().out


def test_submit_reads_the_allowance_first_and_uploads_nothing_when_none_is_left(fake, tmp_path, capsys):
    csv, sample = _submission(tmp_path)
    fake.submission_limits = {"numToday": 5, "numTotal": 5, "numAllowedNow": 0}
    assert main(["submit", str(csv), "-m", "x", "--sample", str(sample)]) == 2
    assert "allows no more submissions" in capsys.readouterr().err and not fake.calls("StartSubmissionUpload")
    fake.submission_limits = {}  # all zero: a new team, allowed
    assert main(["submit", str(csv), "-m", "x", "--sample", str(sample), "--wait", *FAST]) == 0
    assert len(fake.submissions) == 1 and fake.calls("GetSubmission")


def test_an_interrupted_run_follows_its_versions_in_flight_instead_of_pushing_them_again(fake, tmp_path, capsys):
    _prepare_outputs(fake)
    _sessions(fake, range(2))
    fake.kernel_outputs["ichkaggle-infer"] = _infer_outputs(tmp_path)
    fake.kernel_scripts["ichkaggle-train-fold1-s1"] = ["RUNNING"]  # still running when this command gives up
    args = ["push", "run", "--folds", "0-1", "--out", str(tmp_path / "runs"), "--no-submit", *FAST]
    assert main([*args, "--max-wait", "0.3"]) == 2
    assert "still RUNNING after" in capsys.readouterr().err
    state = json.loads((tmp_path / "runs" / "exp_00-folds0-1.json").read_text())
    assert state["kernels"]["alice/ichkaggle-train-fold1-s1"]["status"] == "RUNNING"
    fake.kernels["alice/ichkaggle-train-fold1-s1"].statuses = ["COMPLETE"]  # it ended meanwhile
    assert main(args) == 0
    assert len(fake.kernels["alice/ichkaggle-train-fold1-s1"].versions) == 1  # followed, not pushed again
    assert "alice/ichkaggle-train-fold1-s1: version 1 already pushed (RUNNING)" in capsys.readouterr().out


def test_a_state_written_before_the_scheduler_still_resumes(fake, tmp_path, capsys):
    _prepare_outputs(fake)
    _sessions(fake, range(2))
    fake.kernel_outputs["ichkaggle-infer"] = _infer_outputs(tmp_path)
    args = ["push", "run", "--folds", "0-1", "--out", str(tmp_path / "runs"), "-m", "x", *FAST]
    assert main(args) == 0
    path = tmp_path / "runs" / "exp_00-folds0-1.json"
    state = json.loads(path.read_text())
    old = {k: v for k, v in state.items() if k not in ("killed", "progress", "parts")}
    path.write_text(json.dumps({**old, "version": 2}))  # as version 2 wrote it
    pushes = len(fake.calls("SaveKernel"))
    assert main(args) == 0
    assert len(fake.calls("SaveKernel")) == pushes and len(fake.submissions) == 1
    again = json.loads(path.read_text())
    assert again["version"] == 3 and again["parts"] == 1 and again["sessions"] == state["sessions"]


# ----------------------------------------------------------------------------- the scheduler's judgements


def test_only_a_run_time_limit_counts_as_killed_at_the_limit():
    from ichkaggle.kaggle.sandbox import KILLED_TEXT
    from ichkaggle.kaggle.schedule import KILLED_AT_LIMIT

    assert KILLED_AT_LIMIT.search(KILLED_TEXT.format(hours=12))
    assert KILLED_AT_LIMIT.search("Your notebook exceeded the maximum run time of 12 hours")
    for other in ("Watchdog caught collective operation timeout: WorkNCCL(SeqNum=5, OpType=ALLREDUCE)",
                  "CUDA error: the launch timed out and was terminated",
                  "Notebook output of 21,000,000,000 bytes exceeds the 20,000,000,000-byte limit of /kaggle/working"):
        assert not KILLED_AT_LIMIT.search(other), other


def test_a_version_is_followed_for_a_whole_session_unless_max_wait_says_otherwise():
    from ichkaggle.commands.push import polling_for

    assert polling_for(None, None, 12.0, local=False).timeout == 13 * 3600  # a session and an hour for outputs
    assert polling_for(None, None, 0.01, local=True).timeout == pytest.approx(3636.0)
    assert polling_for(None, 0.3, 12.0, local=False).timeout == 0.3  # --max-wait is what it says
    assert polling_for(None, 50.0, 12.0, local=False).submission_timeout == 50.0


def test_a_submission_made_without_a_ref_is_followed_not_uploaded_again(tmp_path):
    from types import SimpleNamespace

    from ichkaggle.files import sha256_file
    from ichkaggle.kaggle.pipeline import PipelineState, submit_once
    from ichkaggle.kaggle.results import Polling

    csv = tmp_path / "submission.csv"
    csv.write_text("ID,Label\n")
    state = PipelineState(tmp_path / "state.json", {"submission": {"ref": 0, "sha256": sha256_file(csv),
                                                                   "message": "first", "status": "PENDING"}})
    followed = []

    def wait(ref, message, file_name, competition, **_):
        followed.append((ref, message, file_name))
        return SimpleNamespace(status="COMPLETE", public_score="0.07", private_score="0.08", date="today")

    def submit(*_):
        raise AssertionError("uploaded again")

    session = SimpleNamespace(wait_submission=wait, submit=submit)
    submit_once(session, state, csv, "another message", None, "comp", Polling(), lambda line: None)
    assert followed == [(0, "first", "submission.csv")]  # found by its message and file name
    assert state.data["submission"]["private_score"] == "0.08"
