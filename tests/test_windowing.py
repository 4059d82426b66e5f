"""The windowing convention of docs/data.md, as properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ichkaggle.ct.dicom import Rescale
from ichkaggle.ct.windowing import (
    DEFAULT_WINDOWS,
    PRESETS,
    Window,
    apply_window,
    parse_windows,
    window_channels,
    window_reference,
    window_stored,
)
from ichkaggle.errors import UserError

windows = st.builds(
    Window,
    center=st.floats(-1500, 3000, allow_nan=False),
    width=st.floats(1, 5000, allow_nan=False),
)
int_dtypes = st.sampled_from([np.int8, np.uint8, np.int16, np.uint16, np.int32, np.int64])
float_dtypes = st.sampled_from([np.float16, np.float32, np.float64])


def hu_arrays(dtype_strategy=st.one_of(int_dtypes, float_dtypes)):
    return dtype_strategy.flatmap(
        lambda dt: hnp.arrays(
            dt,
            hnp.array_shapes(min_dims=1, max_dims=2, max_side=16),
            elements=(
                st.integers(np.iinfo(dt).min, np.iinfo(dt).max)
                if np.issubdtype(dt, np.integer)
                else st.floats(-4000, 4000, width=np.finfo(dt).bits)
            ),
        )
    )


@given(hu_arrays(), windows)
def test_output_is_uint8_in_range_and_matches_float_reference(hu, window):
    out = apply_window(hu, window)
    assert out.dtype == np.uint8 and out.shape == hu.shape
    low = window.center - window.width / 2
    exact = 255 * np.clip((hu.astype(np.float64) - low) / window.width, 0, 1)
    assert np.all(np.abs(out.astype(np.float64) - exact) <= 1.0)


@given(hu_arrays(), windows)
def test_monotone_non_decreasing_in_hu(hu, window):
    flat = np.sort(hu.ravel())
    out = apply_window(flat, window)
    assert np.all(np.diff(out.astype(np.int16)) >= 0)


@given(windows, st.floats(0, 3000))
def test_below_window_is_0_and_above_is_255(window, margin):
    low, high = window.center - window.width / 2, window.center + window.width / 2
    values = np.array([low - margin, low, high, high + margin])
    assert apply_window(values, window).tolist() == [0, 0, 255, 255]


@given(hu_arrays(), st.lists(windows, min_size=1, max_size=5))
def test_channel_order_equals_window_order(hu, window_list):
    out = window_channels(hu, window_list)
    assert out.shape == hu.shape + (len(window_list),)
    for i, window in enumerate(window_list):
        assert np.array_equal(out[..., i], apply_window(hu, window))


@settings(max_examples=40)
@given(
    st.sampled_from([np.int16, np.uint16]),
    st.sampled_from([(1.0, -1024.0), (1.0, -1000.0), (2.0, -2048.0), (0.5, 0.0)]),
    st.lists(windows, min_size=1, max_size=3),
    st.data(),
)
def test_stored_lookup_table_equals_reference_on_hu(dtype, rescale_values, window_list, data):
    info = np.iinfo(dtype)
    stored = data.draw(hnp.arrays(dtype, (8, 8), elements=st.integers(info.min, info.max)))
    rescale = Rescale(*rescale_values)
    hu = stored.astype(np.float64) * rescale.slope + rescale.intercept
    expected = np.stack([window_reference(hu, w) for w in window_list], axis=-1)
    assert np.array_equal(window_stored(stored, rescale, window_list), expected)


def test_big_endian_stored_pixels_use_their_values():
    stored = np.array([[0, 1024, 1064, 4000]], dtype=">u2")  # HU -1024, 0, 40, 2976
    out = window_stored(stored, Rescale(1.0, -1024.0), (PRESETS["brain"],))
    assert out[..., 0].tolist() == [[0, 0, 128, 255]]


def test_rounding_follows_the_formula_exactly():
    # (HU - 0) / 80 * 255 at HU 40 is 127.5: numpy rounds half to even -> 128
    assert window_reference(np.array([40.0]), PRESETS["brain"]).tolist() == [128]


def test_parse_windows_names_pairs_and_defaults():
    assert parse_windows(None) == DEFAULT_WINDOWS
    assert [tuple(w[:2]) for w in DEFAULT_WINDOWS] == [(40, 80), (80, 200), (600, 2800)]
    parsed = parse_windows("brain, Soft-Tissue,40/380,-10.5/20")
    assert [(w.center, w.width) for w in parsed] == [(40, 80), (40, 380), (40, 380), (-10.5, 20)]


@pytest.mark.parametrize("bad", ["brian", "40/", "40/0", "40/-5", "a/b", ","])
def test_parse_windows_errors_name_the_token(bad):
    with pytest.raises(UserError) as err:
        parse_windows(bad)
    assert "window" in str(err.value)


@settings(max_examples=60)
@given(
    hnp.arrays(np.float32, (6, 6), elements=st.floats(-3000, 5000, width=32)),
    st.sampled_from([(1.0, -1024.0), (1.0, -1000.0), (0.5, 0.0), (2.0, -2048.0)]),
    st.lists(windows, min_size=1, max_size=3),
)
def test_rescale_folded_into_the_window_is_within_one_of_the_reference(stored, rescale, window_list):
    from ichkaggle.ct.windowing import window_linear

    slope, intercept = rescale
    hu = stored.astype(np.float64) * slope + intercept
    got = window_linear(stored, slope, intercept, window_list).astype(int)
    for i, window in enumerate(window_list):
        low = window.center - window.width / 2
        exact = 255 * np.clip((hu - low) / window.width, 0, 1)
        assert np.all(np.abs(got[..., i] - exact) <= 1.0)
