"""Platt scaling: never worse than the prior it starts from, honest when cross-fitted."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ichkaggle.tables.metric import weighted_log_loss
from ichkaggle.train.calibration import Calibration, cross_fitted, fit, summary


@st.composite
def predictions(draw):
    n = draw(st.integers(8, 200))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    targets = (rng.random((n, 6)) < rng.uniform(0.02, 0.6, 6)).astype(float)
    quality = draw(st.sampled_from(["good", "noise", "confidently wrong", "constant"]))
    if quality == "good":
        probs = np.clip(0.7 * targets + 0.3 * rng.random((n, 6)), 0.01, 0.99)
    elif quality == "noise":
        probs = rng.random((n, 6))
    elif quality == "confidently wrong":
        probs = np.where(targets > 0, 1e-4, 1 - 1e-4) * np.ones((n, 6))
    else:
        probs = np.full((n, 6), 0.3)
    rates = np.clip(rng.uniform(0.01, 0.5, 6), 0.01, 0.99)
    return probs, targets, rates


@settings(max_examples=60, deadline=None)
@given(predictions())
def test_calibrated_is_never_worse_than_the_prior_it_started_from(data):
    probs, targets, rates = data
    calibration = fit(probs, targets, rates)
    prior = np.broadcast_to(rates, targets.shape)
    assert weighted_log_loss(targets, calibration.apply(probs)) <= weighted_log_loss(targets, prior) + 1e-12


def test_a_useless_model_falls_back_to_the_label_rates():
    rng = np.random.default_rng(0)
    targets = (rng.random((4000, 6)) < 0.2).astype(float)
    calibration = fit(rng.random((4000, 6)), targets, np.full(6, 0.5))
    assert np.abs(np.asarray(calibration.scale)).max() < 0.1
    out = calibration.apply(rng.random((5, 6)))
    assert np.allclose(out, targets.mean(axis=0), atol=0.05)


def test_an_already_calibrated_model_is_left_almost_unchanged():
    rng = np.random.default_rng(1)
    probs = rng.uniform(0.01, 0.99, (20000, 6))
    targets = (rng.random((20000, 6)) < probs).astype(float)
    calibration = fit(probs, targets, np.full(6, 0.5))
    assert np.allclose(calibration.scale, 1, atol=0.05) and np.allclose(calibration.offset, 0, atol=0.05)


def test_cross_fitting_scores_each_group_with_a_fit_on_the_others():
    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(10), 30)
    targets = (rng.random((300, 6)) < 0.3).astype(float)
    probs = rng.random((300, 6))
    out = cross_fitted(probs, targets, groups, np.full(6, 0.3), parts=2)
    # rows of one patient are scored together: changing a held-out group's targets changes nothing for it
    changed = targets.copy()
    changed[groups == 3] = 1 - changed[groups == 3]
    again = cross_fitted(probs, changed, groups, np.full(6, 0.3), parts=2)
    assert np.allclose(out[groups == 3], again[groups == 3])
    assert not np.allclose(out[groups != 3], again[groups != 3])


def test_summary_and_json_round_trip():
    rng = np.random.default_rng(3)
    targets = (rng.random((200, 6)) < 0.3).astype(float)
    probs = np.clip(0.6 * targets + 0.4 * rng.random((200, 6)), 0.01, 0.99)
    calibration, scores, held_out = summary(probs, targets, np.arange(200) // 10, np.full(6, 0.3))
    assert set(scores) == {"valid_raw", "valid_calibrated", "valid_prior", "valid_calibrated_in_sample"}
    assert scores["valid_calibrated"] == pytest.approx(weighted_log_loss(targets, held_out))  # the rows kept
    assert not np.allclose(held_out, calibration.apply(probs))  # not the fit that saw them
    assert scores["valid_calibrated_in_sample"] <= scores["valid_prior"]
    assert Calibration.from_json(calibration.as_json()) == calibration
    assert np.allclose(Calibration.identity(np.full(6, 0.3)).apply(probs), probs)
