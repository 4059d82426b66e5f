"""The plan: images, epochs, GPU-hours and sessions per fold; measured throughput before estimates."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ichkaggle.errors import UserError
from ichkaggle.experiment import load_experiment
from ichkaggle.kaggle.plan import (
    REFERENCE,
    SESSION_HOURS,
    SESSION_MARGIN_HOURS,
    make_plan,
    margin_minutes,
    record_throughput,
    session_rounds,
)
from ichkaggle.train.state import parse_duration


def test_exp_00_does_not_fit_a_session_and_says_how_many_it_needs():
    plan = make_plan(load_experiment("exp_00"), 5, "NvidiaTeslaT4")
    assert (plan.train_images, plan.valid_images, plan.epochs) == (602_242, 150_561, 25)
    assert plan.img_per_s == REFERENCE[("efficientnet_b5", "NvidiaTeslaT4")]
    assert 20 < plan.hours_per_fold < 40 and plan.sessions_per_fold == 3  # the issue's ~20-35 GPU-hours a fold
    assert plan.total_hours == pytest.approx(5 * plan.hours_per_fold)


def test_the_flagship_trains_a_fold_in_one_t4x2_session_with_margin():
    plan = make_plan(load_experiment("b5_t4x2"), 5, "NvidiaTeslaT4")
    assert plan.sessions_per_fold == 1
    assert plan.hours_per_fold < (SESSION_HOURS - SESSION_MARGIN_HOURS) / 2  # twice as slow would still fit
    assert plan.total_hours < 30  # five folds inside a weekly quota


def test_a_measured_session_replaces_the_estimate(tmp_path):
    experiment = load_experiment("exp_00")
    estimate = make_plan(experiment, 1, "NvidiaTeslaT4", records=tmp_path)
    record_throughput(tmp_path, "exp_00", "NvidiaTeslaT4", 300.0, "cuda:0 x2")
    record_throughput(tmp_path, "exp_00", "NvidiaTeslaP100", 10.0, "cuda:0")
    measured = make_plan(experiment, 1, "NvidiaTeslaT4", records=tmp_path)
    assert measured.img_per_s == 300.0 and measured.source.startswith("measured")
    assert measured.hours_per_fold < estimate.hours_per_fold


def test_an_unknown_arch_or_accelerator_is_named(tmp_path):
    with pytest.raises(UserError, match="no throughput for efficientnet_b5 on TpuV5E8"):
        make_plan(load_experiment("exp_00"), 1, "TpuV5E8")


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("45m", 2700), ("11h15m", 40500), ("3600", 3600),
                                           ("1h30m20s", 5420), ("2.5h", 9000)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "1d", "-5", "0s", "m"])
def test_bad_durations_are_named(text):
    with pytest.raises(UserError, match="duration"):
        parse_duration(text)


# ----------------------------------------------------------------------------- wall clock, sources, any arch


def test_five_one_session_folds_two_at_once_take_three_rounds():
    assert session_rounds(5, 1, 2) == 3 and session_rounds(5, 3, 2) == 9 and session_rounds(1, 4, 2) == 4
    plan = make_plan(load_experiment("b5_t4x2"), 5, "NvidiaTeslaT4")
    assert plan.rounds == 3 and "~3 round(s) of <= 12 h (5 fold(s) x 1 session(s), 2 at once" in plan.wall_clock()


@given(folds=st.integers(1, 12), sessions=st.integers(1, 6), at_once=st.integers(1, 6))
def test_rounds_are_bounded_by_the_chains_and_by_the_slots(folds, sessions, at_once):
    rounds = session_rounds(folds, sessions, at_once)
    assert max(sessions, -(-folds * sessions // at_once)) <= rounds <= folds * sessions
    if at_once >= folds:
        assert rounds == sessions  # every fold at once: the chain is the wall clock
    if sessions == 1:
        assert rounds == -(-folds // at_once)
    assert session_rounds(folds, sessions, at_once + 1) <= rounds  # more room never takes longer


def test_a_given_throughput_comes_after_a_measured_one_and_before_the_table(tmp_path):
    experiment = load_experiment("exp_00")
    given_plan = make_plan(experiment, 1, "NvidiaTeslaT4", records=tmp_path, throughput_given=75.0)
    assert given_plan.img_per_s == 75.0 and given_plan.source == "given by --throughput"
    record_throughput(tmp_path, "exp_00", "NvidiaTeslaT4", 300.0, "cuda:0 x2")
    assert make_plan(experiment, 1, "NvidiaTeslaT4", records=tmp_path, throughput_given=75.0).img_per_s == 300.0
    unknown = make_plan(experiment, 1, "TpuV5E8", throughput_given=40.0)  # no reference there: given is enough
    assert unknown.img_per_s == 40.0


def test_a_shorter_session_keeps_a_proportionate_margin():
    assert margin_minutes() == 20.0 and margin_minutes(killed=True) == 60.0
    assert margin_minutes(0.6) == 1.0 and margin_minutes(0.6, killed=True) == 3.0
    short = make_plan(load_experiment("exp_00"), 1, "NvidiaTeslaT4", session_hours=1.0)
    assert short.sessions_per_fold > 30 and short.session_hours == 1.0


def test_without_torch_an_unknown_arch_says_both_ways_out(tmp_path):
    import subprocess
    import sys

    config = tmp_path / "b3.toml"
    config.write_text('name = "b3"\n[model]\narch = "efficientnet_b3"\n[data]\nsize = 300\n'
                      '[[phases]]\nname = "p"\nepochs = 1\nlr = 0.001\n')
    code = ("import sys; sys.modules['torch'] = None; sys.modules['timm'] = None\n"
            "from ichkaggle.errors import UserError\nfrom ichkaggle.experiment import load_experiment\n"
            "from ichkaggle.kaggle.plan import make_plan\n"
            f"try:\n    make_plan(load_experiment({str(config)!r}), 5, 'NvidiaTeslaT4')\n"
            "except UserError as err:\n    print(err)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "needs torch and timm" in done.stdout and "pip install 'ichkaggle[train]'" in done.stdout
    assert "--throughput IMG_PER_S" in done.stdout


@pytest.mark.torch
def test_any_timm_arch_is_planned_from_its_flops_as_an_estimate(tmp_path):
    from dataclasses import replace

    from ichkaggle.kaggle.flops import forward_gflops

    b5 = load_experiment("b5_t4x2")
    b3 = replace(b5, name="b3", model=replace(b5.model, arch="efficientnet_b3"), data=replace(b5.data, size=300))
    plan = make_plan(b3, 5, "NvidiaTeslaT4", records=tmp_path)
    assert plan.source.startswith("ESTIMATE: efficientnet_b5's reference") and "efficientnet_b3" in plan.source
    ratio = forward_gflops("efficientnet_b5", 224) / forward_gflops("efficientnet_b3", 300)
    assert plan.img_per_s == pytest.approx(REFERENCE[("efficientnet_b5", "NvidiaTeslaT4")] * ratio)
    assert 0.5 < forward_gflops("efficientnet_b0", 224) < 1.0  # timm lists B0 at 0.39 GMACs
    tiny = replace(b5, name="t", model=replace(b5.model, arch="mobilenetv3_small_050"), data=replace(b5.data, size=32))
    assert make_plan(tiny, 1, "NvidiaTeslaT4", records=tmp_path).source.startswith("ESTIMATE: efficientnet_b0's")
    with pytest.raises(UserError, match="timm cannot build it"):
        make_plan(replace(b5, model=replace(b5.model, arch="no_such_net")), 1, "NvidiaTeslaT4")
