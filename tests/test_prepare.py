"""``prepare``: images in window order, metadata with ranks, failures recorded, resumable."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from ichkaggle.cli import main
from ichkaggle.ct.dicom import read_stored
from ichkaggle.ct.windowing import DEFAULT_WINDOWS, parse_windows, window_reference, window_stored
from ichkaggle.errors import UserError
from ichkaggle.prepared import prepare as prepare_module
from ichkaggle.prepared.prepare import LEAD_COLUMNS, PrepareSettings, prepare, render
from ichkaggle.prepared.reader import decode_image

from .conftest import REAL_SAMPLE


def read_image(path):
    return decode_image(path.read_bytes(), path.suffix[1:])


def _settings(**kw):
    kw.setdefault("size", 32)
    return PrepareSettings(**kw)


@pytest.fixture
def src(synth_dir, tmp_path):
    """A copy of some synthetic train slices plus one bad file of each kind."""
    folder = tmp_path / "src"
    folder.mkdir()
    for path in sorted((synth_dir / "stage_2_train").glob("*.dcm"))[:40]:
        shutil.copy(path, folder)
    (folder / "ID_00000empty.dcm").write_bytes(b"")
    (folder / "ID_0000text0.dcm").write_text("not a dicom")
    good = sorted(folder.glob("ID_*.dcm"))[5].read_bytes()
    (folder / "ID_000trunc0.dcm").write_bytes(good[:-500])
    return folder


def test_images_and_metadata(src, tmp_path):
    out = tmp_path / "out"
    result = prepare(src, out, _settings(), workers=1, show_progress=False)
    meta = pd.read_csv(out / "metadata.csv", keep_default_na=False)
    assert list(meta.columns[: len(LEAD_COLUMNS)]) == LEAD_COLUMNS
    assert len(meta) == 43 and result.failed == 3
    failed = meta.set_index("ID").loc[["ID_00000empty", "ID_0000text0", "ID_000trunc0"]]
    assert (failed["status"] == "failed").all()
    assert failed["error"].str.startswith(("empty", "not_dicom", "truncated")).all()
    ok = meta[meta["status"] == "ok"]
    for image_id in ok["ID"]:
        image = read_image(out / "images" / f"{image_id}.png")
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert not list((out / "images").glob("ID_0000*"))  # no image for a failed file


def test_channels_are_the_windows_in_order(src, tmp_path):
    windows = parse_windows("bone,brain,40/380")
    prepare(src, tmp_path / "out", _settings(size=None, windows=windows), workers=1, show_progress=False)
    path = sorted(src.glob("ID_*.dcm"))[-1]
    stored, rescale, _ = read_stored(path)
    expected = window_stored(stored, rescale, windows)
    assert np.array_equal(read_image(tmp_path / "out" / "images" / f"{path.stem}.png"), expected)


def test_ranks_follow_slice_position(src, tmp_path):
    prepare(src, tmp_path / "out", _settings(), workers=1, show_progress=False)
    meta = pd.read_csv(tmp_path / "out" / "metadata.csv")
    ok = meta[meta["status"] == "ok"]
    for _, series in ok.groupby("SeriesInstanceUID"):
        ordered = series.sort_values("rank")
        assert ordered["rank"].tolist() == list(range(len(series)))
        assert ordered["position"].is_monotonic_increasing


def test_two_workers_give_the_same_files(src, tmp_path):
    one = prepare(src, tmp_path / "one", _settings(), workers=1, show_progress=False)
    two = prepare(src, tmp_path / "two", _settings(), workers=2, show_progress=False, chunk=4)
    pd.testing.assert_frame_equal(one.metadata.drop(columns="source"), two.metadata.drop(columns="source"))
    for path in (tmp_path / "one" / "images").iterdir():
        assert path.read_bytes() == (tmp_path / "two" / "images" / path.name).read_bytes()


def test_interrupted_run_resumes_to_the_same_result(src, tmp_path, monkeypatch):
    prepare(src, tmp_path / "full", _settings(), workers=1, show_progress=False)
    real_process = prepare_module.process_file
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 17:
            raise KeyboardInterrupt
        return real_process(*args, **kwargs)

    monkeypatch.setattr(prepare_module, "process_file", dying)
    with pytest.raises(KeyboardInterrupt):
        prepare(src, tmp_path / "part", _settings(), workers=1, show_progress=False)
    assert not (tmp_path / "part" / "metadata.csv").exists()
    monkeypatch.setattr(prepare_module, "process_file", real_process)
    resumed = prepare(src, tmp_path / "part", _settings(), workers=1, show_progress=False)
    # 17 files were done before the interruption, 3 of them the bad files (sorted first): retried
    assert resumed.skipped == 14 and resumed.processed == 43 - 14
    full_meta = pd.read_csv(tmp_path / "full" / "metadata.csv")
    part_meta = pd.read_csv(tmp_path / "part" / "metadata.csv")
    pd.testing.assert_frame_equal(full_meta.drop(columns="source"), part_meta.drop(columns="source"))
    names = sorted(p.name for p in (tmp_path / "full" / "images").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "part" / "images").iterdir())
    for name in names:
        assert (tmp_path / "full" / "images" / name).read_bytes() == (tmp_path / "part" / "images" / name).read_bytes()


def test_rerun_skips_everything_done(src, tmp_path):
    prepare(src, tmp_path / "out", _settings(), workers=1, show_progress=False)
    again = prepare(src, tmp_path / "out", _settings(), workers=1, show_progress=False)
    assert again.skipped == 40 and again.processed == 3  # the 3 failures are retried


def test_other_settings_in_the_same_out_are_refused(src, tmp_path):
    prepare(src, tmp_path / "out", _settings(), workers=1, show_progress=False)
    with pytest.raises(UserError, match="other settings"):
        prepare(src, tmp_path / "out", _settings(size=48), workers=1, show_progress=False)


@pytest.mark.parametrize("fmt,windows,channels", [("jpg", "brain", 1), ("jpg", None, 3), ("npy", "brain,bone", 2),
                                                  ("png", "brain,subdural,bone,stroke", 4)])
def test_formats_and_channel_counts(src, tmp_path, fmt, windows, channels):
    settings = _settings(format=fmt, windows=parse_windows(windows))
    prepare(src, tmp_path / "out", settings, workers=1, show_progress=False)
    image = read_image(next((tmp_path / "out" / "images").glob(f"*.{fmt}")))
    assert image.shape == (32, 32, channels)


def test_impossible_channel_counts_are_refused():
    with pytest.raises(UserError, match="JPEG"):
        PrepareSettings(size=32, format="jpg", windows=parse_windows("brain,bone"))


def test_resizing_area_averages_hu_then_windows(src):
    stored, rescale, _ = read_stored(sorted(src.glob("ID_*.dcm"))[-1])
    hu = rescale.apply(stored).astype(np.float64)
    half = render(stored, rescale, PrepareSettings(size=32)).astype(np.float64)
    block_mean = hu.reshape(32, 2, 32, 2).mean(axis=(1, 3))
    expected = np.stack([window_reference(block_mean, w) for w in DEFAULT_WINDOWS], axis=-1)
    assert np.abs(half - expected).max() <= 1.0


def test_native_size_is_not_resampled(src):
    stored, rescale, _ = read_stored(sorted(src.glob("ID_*.dcm"))[-1])
    assert np.array_equal(render(stored, rescale, PrepareSettings(size=64)), window_stored(stored, rescale))


def test_cli_exit_codes(src, tmp_path, capsys):
    assert main(["prepare", str(src), str(tmp_path / "out"), "--size", "32", "--workers", "1", "--quiet"]) == 0
    assert "3 failed" in capsys.readouterr().out
    assert main(["prepare", str(tmp_path / "missing"), str(tmp_path / "o2"), "--quiet"]) == 2
    assert "no such directory" in capsys.readouterr().err


@pytest.mark.skipif(not REAL_SAMPLE.is_dir(), reason="../shared/real-sample is absent")
def test_real_sample_prepares_and_ranks(tmp_path):
    result = prepare(REAL_SAMPLE, tmp_path / "out", _settings(size=64), workers=2, show_progress=False)
    meta = result.metadata
    assert (meta["status"] == "ok").all() and len(meta) == 33
    series = meta[meta["StudyInstanceUID"] == "ID_1f6d1e8aeb"].sort_values("position")
    assert series["rank"].tolist() == list(range(32))


def test_headers_alone_give_the_metadata_and_name_bad_files(synth_dir, tmp_path):
    from ichkaggle.prepared.prepare import read_headers

    src = tmp_path / "dcm"
    shutil.copytree(synth_dir / "stage_2_train", src)
    (src / "ID_00000bad0.dcm").write_bytes(b"not a dicom at all" * 10)
    table = read_headers(src, workers=1)
    pooled = read_headers(src, workers=2, chunk=8)  # the same table from a pool of processes
    pd.testing.assert_frame_equal(table, pooled)
    assert len(table) == len(list(src.glob("*.dcm")))
    bad = table.set_index("ID").loc["ID_00000bad0"]
    assert bad["status"] == "failed" and bad["error"]
    ok = table[table["status"] == "ok"]
    assert ok["PatientID"].str.startswith("ID_").all() and ok["rank"].notna().all()
    assert list(table["ID"]) == sorted(table["ID"])  # stable order: the same folds in every kernel
