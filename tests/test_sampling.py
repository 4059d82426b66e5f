"""Epoch order (pure): reproducible from the seed, different between epochs, covering every slice per pass."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ichkaggle.prepared.series import neighbours, sequences
from ichkaggle.train.sampling import epoch_indices, epoch_size


@settings(max_examples=80)
@given(st.integers(2, 300), st.integers(0, 2**31), st.integers(0, 20), st.floats(0.05, 1.0))
def test_an_epoch_is_a_pure_function_of_seed_and_epoch(n, seed, epoch, fraction):
    samples = max(1, int(n * fraction))
    a = epoch_indices(n, seed, epoch, samples=samples)
    assert np.array_equal(a, epoch_indices(n, seed, epoch, samples=samples))
    assert len(a) == samples and a.min() >= 0 and a.max() < n
    if (epoch * samples) // n == ((epoch + 1) * samples - 1) // n:  # within one pass: no slice twice
        assert len(set(a)) == samples


@settings(max_examples=60)
@given(st.integers(10, 300), st.integers(0, 2**31), st.integers(1, 7))
def test_short_epochs_cover_every_slice_once_per_pass(n, seed, parts):
    samples = n // parts
    if samples * parts != n:
        n = samples * parts
    seen = np.concatenate([epoch_indices(n, seed, e, samples=samples) for e in range(parts)])
    assert sorted(seen) == list(range(n))  # one pass: each slice exactly once


def test_epochs_differ_and_seeds_differ():
    assert not np.array_equal(epoch_indices(100, 0, 0), epoch_indices(100, 0, 1))
    assert not np.array_equal(epoch_indices(100, 0, 0), epoch_indices(100, 1, 0))


@settings(max_examples=50)
@given(st.integers(0, 2**31), st.floats(0.05, 0.95))
def test_negative_subsampling_keeps_every_positive_and_a_fixed_count_of_negatives(seed, fraction):
    negative = np.random.default_rng(seed).random(200) < 0.7
    idx = epoch_indices(200, seed, 3, negative=negative, negative_fraction=fraction)
    assert set(np.flatnonzero(~negative)) <= set(idx)
    assert len(idx) == epoch_size(200, None, negative, fraction) and len(set(idx)) == len(idx)


def test_weighted_sampling_draws_the_heavy_items_more():
    weights = np.r_[np.full(10, 10.0), np.full(90, 1.0)]
    idx = epoch_indices(100, 0, 0, samples=5000, weights=weights)
    assert (idx < 10).mean() > 0.45  # 100 / 190 of the weight


# ---------------------------------------------------------------------------- series order


@st.composite
def slices(draw):
    n_series = draw(st.integers(1, 5))
    series, position = [], []
    for s in range(n_series):
        k = draw(st.integers(1, 12))
        positions = draw(st.lists(st.floats(-200, 200, allow_nan=False), min_size=k, max_size=k, unique=True))
        series += [f"S{s}"] * k
        position += positions
    order = draw(st.permutations(range(len(series))))
    return np.array(series, dtype=object)[order], np.array(position)[order]


@settings(max_examples=80)
@given(slices(), st.integers(0, 3))
def test_neighbours_follow_position_stay_in_the_series_and_repeat_the_edges(data, context):
    series, position = data
    table = neighbours(series, position, context)
    assert table.shape == (len(series), 2 * context + 1)
    assert np.array_equal(table[:, context], np.arange(len(series)))  # the middle is the slice itself
    for i, row in enumerate(table):
        assert (series[row] == series[i]).all()  # never across series
        assert (np.diff(position[row]) >= 0).all()  # ordered by position
        same = np.flatnonzero(series == series[i])
        rank = int((position[same] < position[i]).sum())
        for k, j in enumerate(row):  # offset k - context from the slice, clamped at the series' ends
            expected_rank = min(max(rank + k - context, 0), len(same) - 1)
            assert int((position[same] < position[j]).sum()) == expected_rank


@settings(max_examples=50)
@given(slices())
def test_sequences_are_each_series_in_slice_order(data):
    series, position = data
    seqs = sequences(series, position)
    assert sorted(np.concatenate(seqs)) == list(range(len(series)))
    for seq in seqs:
        assert len(set(series[seq])) == 1 and (np.diff(position[seq]) > 0).all()
