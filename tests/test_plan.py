"""The plan: images, epochs, GPU-hours and sessions per fold; measured throughput before estimates."""

from __future__ import annotations

import pytest

from ichkaggle.errors import UserError
from ichkaggle.experiment import load_experiment
from ichkaggle.plan import REFERENCE, SESSION_HOURS, SESSION_MARGIN_HOURS, make_plan, record_throughput
from ichkaggle.run_state import parse_duration


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
