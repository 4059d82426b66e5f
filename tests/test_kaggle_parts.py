"""Prepared data in parts: which image goes where, how many parts a setting needs, one set again (no torch)."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ichkaggle.errors import UserError
from ichkaggle.experiment import DataConfig, Experiment
from ichkaggle.kaggle.contract import OUTPUT_LIMIT_BYTES, PREPARE_MANIFEST
from ichkaggle.kaggle.kernel import attached_prepared
from ichkaggle.kaggle.parts import (
    MAX_SLUG,
    MAX_SOURCES,
    STAGE2_TEST_IMAGES,
    bytes_per_image,
    plan_parts,
    slug_suffix,
)
from ichkaggle.kaggle.plan import STAGE2_TRAIN_IMAGES
from ichkaggle.prepared.prepare import part_of, prepare
from ichkaggle.prepared.reader import ImageStore, PrepareSettings, read_slices

STAGE2 = STAGE2_TRAIN_IMAGES + STAGE2_TEST_IMAGES


@given(start=st.integers(0, 16**9 - 5000), count=st.integers(1, 3000), parts=st.integers(1, 16))
def test_consecutive_ids_fall_in_exactly_one_part_each_and_the_parts_are_balanced(start, count, parts):
    ids = [f"ID_{start + k:09x}" for k in range(count)]
    assigned = [part_of(i, parts) for i in ids]
    assert all(0 <= p < parts for p in assigned)
    sizes = Counter(assigned)
    assert sum(sizes.values()) == count and max(sizes.values()) - min(sizes.get(p, 0) for p in range(parts)) <= 1


@settings(max_examples=30)
@given(seed=st.integers(0, 2**32 - 1), parts=st.integers(2, 12))
def test_random_ids_spread_evenly_over_the_parts(seed, parts):
    numbers = np.random.default_rng(seed).integers(0, 16**9, size=12_000)
    sizes = Counter(part_of(f"ID_{n:09x}", parts) for n in numbers)
    expected = 12_000 / parts
    assert len(sizes) == parts and all(abs(n - expected) < 6 * expected**0.5 for n in sizes.values())


def test_a_stem_that_is_not_hex_still_has_one_part_and_one_part_is_everything():
    assert part_of("ID_nothex!", 5) == part_of("ID_nothex!", 5) and 0 <= part_of("ID_nothex!", 5) < 5
    assert part_of("ID_63eb1e259", 1) == 0 and part_of("ID_63eb1e259", 3) == int("63eb1e259", 16) % 3
    assert slug_suffix(0, 1) == "" and slug_suffix(2, 7) == "-p2of7"


def test_every_part_slug_fits_kaggles_limit_and_one_part_keeps_the_old_slug(monkeypatch):
    from ichkaggle.experiment import load_experiment
    from ichkaggle.kaggle.flow import Layout
    from ichkaggle.kaggle.pipeline import prepare_jobs

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    experiment = load_experiment("exp_00")
    one, = prepare_jobs(Layout.find(), "exp_00", experiment, 1)
    assert re.fullmatch(r"ichkaggle-prepare-224px-jpg-[0-9a-f]{6}", one.slug) and one.variables["PARTS"] == 1
    many = prepare_jobs(Layout.find(), "exp_00", experiment, MAX_SOURCES)
    assert [job.slug for job in many][-1] == f"{one.slug}-p{MAX_SOURCES - 1}of{MAX_SOURCES}"
    assert all(len(job.slug) <= MAX_SLUG and job.title.replace(" ", "-") == job.slug for job in many)


def test_stage2_at_224px_jpeg_is_one_part_and_512px_png_several_within_the_limit():
    one = plan_parts("jpg", 3, 224, STAGE2)
    assert one.parts == 1 and 10e9 < one.total_bytes < OUTPUT_LIMIT_BYTES  # the ~11 GB measured on stage 2
    for fmt, channels in (("png", 3), ("png", 4), ("jpg", 3)):
        plan = plan_parts(fmt, channels, 512, STAGE2)
        assert plan.bytes_per_part <= OUTPUT_LIMIT_BYTES
        assert plan.parts == -(-plan.total_bytes // OUTPUT_LIMIT_BYTES)  # the fewest that fit
        assert plan.parts > 1 and plan.hours_per_part < 12
    png = plan_parts("png", 4, 512, STAGE2)
    assert png.parts <= MAX_SOURCES - 7  # the infer kernel of 5 folds still attaches them all
    lines = "\n".join(png.lines())
    assert f"{png.parts} prepare kernel(s)" in lines and "measured" in lines and "x 1.3 for safety" in lines


@given(size=st.sampled_from([128, 200, 224, 256, 300, 320, 384, 448, 512, 640]),
       fmt=st.sampled_from(["jpg", "png"]), images=st.integers(1_000, 3_000_000))
def test_every_part_fits_and_one_part_fewer_would_not(size, fmt, images):
    try:
        plan = plan_parts(fmt, 3, size, images)
    except UserError as err:
        assert "cannot be prepared within Kaggle's limits" in str(err)
        return
    assert plan.bytes_per_part <= plan.limit
    by_bytes = -(-plan.total_bytes // plan.limit)
    assert plan.parts == max(1, by_bytes) or plan.hours_per_part * plan.parts > 11  # else split for CPU time


def test_a_setting_that_cannot_fit_even_in_parts_is_refused_with_the_arithmetic():
    with pytest.raises(UserError) as info:
        plan_parts("png", 4, 512, STAGE2, max_parts=3)
    text = str(info.value)
    assert "874,035 images x" in text and "needs 8 part(s) of at most 19.5 GB" in text
    assert "attaches at most 3 part(s)" in text


def test_unmeasured_sizes_are_interpolated_and_never_scaled_below_the_smallest_measurement():
    def mean(fmt, channels, size):
        return bytes_per_image(fmt, channels, size)[0]

    assert bytes_per_image("jpg", 3, 256)[2].startswith("measured")
    assert mean("jpg", 3, 256) < mean("jpg", 3, 300) < mean("jpg", 3, 320)
    assert "interpolated between the 256 and 320 px figures" in bytes_per_image("jpg", 3, 300)[2]
    assert mean("jpg", 3, 16) == mean("jpg", 3, 32)  # a tiny image is mostly JPEG's own overhead
    assert mean("png", 4, 1024) == pytest.approx(mean("png", 4, 512) * 4)
    assert mean("png", 1, 256) == pytest.approx(mean("png", 3, 256) / 3)
    for fmt, channels in (("jpg", 3), ("png", 3), ("png", 4)):
        sizes = [mean(fmt, channels, size) for size in range(32, 640, 16)]
        assert sizes == sorted(sizes)  # more pixels never take fewer bytes


# ----------------------------------------------------------------------------- one set again


def _manifest(folder: Path, part: int, parts: int, settings: PrepareSettings) -> None:
    (folder / PREPARE_MANIFEST).write_text(json.dumps({"kind": "ichkaggle-prepare", "settings": settings.as_json(),
                                                       "part": part, "parts": parts}))


@pytest.fixture(scope="module")
def prepared_parts(synth_dir, tmp_path_factory):
    """The same synthetic train + test prepared once whole and once in two parts, as attached outputs."""
    root = tmp_path_factory.mktemp("parts")
    settings = PrepareSettings(size=32, format="jpg")
    for name, parts in (("whole", 1), ("p0of2", 2), ("p1of2", 2)):
        part = 0 if parts == 1 else int(name[1])
        for split in ("train", "test"):
            prepare(synth_dir / f"stage_2_{split}", root / "input" / name / split, settings, workers=1,
                    show_progress=False, pack=True, part=(part, parts))
        _manifest(root / "input" / name, part, parts, settings)
    return root, settings


def test_two_parts_read_as_one_set_give_the_rows_and_pixels_of_one_prepare(prepared_parts, tmp_path):
    root, _ = prepared_parts
    experiment = Experiment("t", data=DataConfig(size=32))
    whole_input, parts_input = tmp_path / "whole", tmp_path / "parts"
    whole_input.mkdir()
    (whole_input / "whole").symlink_to(root / "input" / "whole")
    parts_input.mkdir()
    for name in ("p0of2", "p1of2"):
        (parts_input / name).symlink_to(root / "input" / name)
    p0 = read_slices(root / "input" / "p0of2" / "train")[0]
    assert 0 < len(p0) < len(read_slices(root / "input" / "whole" / "train")[0])  # a real split
    for split in ("train", "test"):
        single = attached_prepared(experiment, whole_input, split, tmp_path / "scratch1")
        merged = attached_prepared(experiment, parts_input, split, tmp_path / "scratch2")
        assert single.resolve() == root / "input" / "whole" / split and merged.is_relative_to(tmp_path / "scratch2")
        (a, failed_a), (b, failed_b) = read_slices(single), read_slices(merged)
        assert failed_a == failed_b
        assert a.equals(b)  # every row and column, the ranks over whole series included
        ids = a["ID"].tolist()
        one, two = ImageStore(single, ids), ImageStore(merged, ids)
        assert two.packed and all(np.array_equal(one.image(i), two.image(i)) for i in range(len(ids)))
    assert not any(p.is_file() and not p.is_symlink() for p in (tmp_path / "scratch2").rglob("*.bin"))  # linked


def test_an_incomplete_or_mixed_set_of_parts_is_an_error_naming_them(prepared_parts, tmp_path):
    root, settings = prepared_parts
    experiment = Experiment("t", data=DataConfig(size=32))
    inputs = tmp_path / "input"
    inputs.mkdir()
    (inputs / "a").symlink_to(root / "input" / "p0of2")
    with pytest.raises(UserError, match=r"not a complete set of 2 part\(s\): part\(s\) \[1\] missing"):
        attached_prepared(experiment, inputs, "train", tmp_path / "s")
    shutil.copytree(root / "input" / "p0of2", inputs / "b", symlinks=True)
    with pytest.raises(UserError, match=r"part 0 attached twice: .*a, .*b"):
        attached_prepared(experiment, inputs, "train", tmp_path / "s")
    (inputs / "b").joinpath(PREPARE_MANIFEST).unlink()
    _manifest(inputs / "b", 1, 3, settings)
    with pytest.raises(UserError, match=r"different part counts \[2, 3\]"):
        attached_prepared(experiment, inputs, "train", tmp_path / "s")
