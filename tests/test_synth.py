"""Synthetic phantoms: competition layout and formats, true labels, header variety, determinism."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ichkaggle import LABELS, SUBTYPES
from ichkaggle.synth.dataset import load_config, synthesize
from ichkaggle.synth.phantom import BLOOD_HU, PhantomConfig, plan_series, render_slice
from ichkaggle.tables.labels import FILE_ORDER

from .dicom_factory import read_hu


def test_layout_and_csv_formats(synth_dir):
    train = pd.read_csv(synth_dir / "stage_2_train.csv")
    sample = pd.read_csv(synth_dir / "stage_2_sample_submission.csv")
    truth = pd.read_csv(synth_dir / "test_labels.csv")
    assert list(train.columns) == ["ID", "Label"] == list(sample.columns) == list(truth.columns)
    train_files = {p.stem for p in (synth_dir / "stage_2_train").glob("*.dcm")}
    test_files = {p.stem for p in (synth_dir / "stage_2_test").glob("*.dcm")}
    assert len(train_files) == 90 and len(test_files) == 30 and not train_files & test_files
    labels = "epidural|intraparenchymal|intraventricular|subarachnoid|subdural|any"
    assert train["ID"].str.fullmatch(rf"ID_[0-9a-f]{{9}}_({labels})").all()
    # six rows per image in the real file's label order; one image repeated with the same values
    first = train.iloc[:6]["ID"].str.split("_").str[-1].tolist()
    assert first == list(FILE_ORDER)
    assert len(train) == 6 * 91 and train.duplicated().sum() == 6
    assert set(train["ID"].str[:12]) == train_files
    assert (sample["Label"] == 0.5).all() and set(sample["ID"]) == set(truth["ID"])
    assert set(truth["ID"].str[:12]) == test_files


def test_any_is_the_or_of_the_subtypes(synth_dir):
    truth = pd.read_csv(synth_dir / "test_labels.csv")
    truth[["image", "label"]] = truth["ID"].str.rsplit("_", n=1, expand=True)
    wide = truth.pivot(index="image", columns="label", values="Label")
    assert (wide["any"] == wide[list(SUBTYPES)].max(axis=1)).all()


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    config = load_config(size=32, slices_min=3, slices_max=4)

    def digest(folder):
        files = sorted(folder.rglob("*"))
        return hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in files if p.is_file())).hexdigest()

    a, b, c = (synthesize(tmp_path / n, 10, 4, seed=s, config=config, show_progress=False) for n, s in
               (("a", 1), ("b", 1), ("c", 2)))
    assert digest(a.out) == digest(b.out) != digest(c.out)


def test_headers_show_the_real_variety(synth_dir):
    metas = [read_hu(p)[1] for p in sorted((synth_dir / "stage_2_train").glob("*.dcm"))]
    assert {m.pixel_representation for m in metas} >= {0} and len({m.SeriesInstanceUID for m in metas}) >= 3
    assert all(m.PatientID.startswith("ID_") and m.StudyInstanceUID.startswith("ID_") for m in metas)


def test_default_config_gives_every_subtype_at_demo_size():
    config = PhantomConfig(size=64)
    rng = np.random.default_rng(0)
    counts = dict.fromkeys(LABELS, 0)
    n = 0
    while n < 1000:
        plan = plan_series(rng, config)
        for k in range(plan.n_slices):
            present = _labels_only(plan, k, config)
            n += 1
            for label, value in present.items():
                counts[label] += value
    rates = {k: v / n for k, v in counts.items()}
    assert all(rates[t] >= 0.04 for t in SUBTYPES), rates
    assert 0.2 <= rates["any"] <= 0.7, rates


def _labels_only(plan, k, config):
    return render_slice(plan, k, config)[1]


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(SUBTYPES))
def test_a_labelled_slice_shows_blood_and_an_unlabelled_one_none(seed, subtype):
    """Labels come from the drawn masks: blood (denser than any brain tissue or CSF, even where it
    fades at a lesion's ends) appears exactly where a label says so."""
    rates = {t: float(t == subtype) for t in SUBTYPES}
    config = PhantomConfig(size=64, noise_hu=0.0, subtype_rates=rates)
    plan = plan_series(np.random.default_rng(seed), config)
    for k in range(plan.n_slices):
        hu, present = render_slice(plan, k, config)
        blood = ((hu > 42) & (hu <= BLOOD_HU[1] + 0.5)).sum()
        assert present["any"] == present[subtype]
        assert (blood > 0) == present[subtype], (k, blood)


def test_slices_have_anatomy_in_hu():
    config = PhantomConfig(size=128)
    plan = plan_series(np.random.default_rng(1), config)
    hu, _ = render_slice(plan, plan.n_slices // 2, config)
    assert hu.min() < -900  # air
    assert (hu > 1000).mean() > 0.01  # skull
    assert ((hu > 20) & (hu < 45)).mean() > 0.2  # brain
    assert ((hu > -5) & (hu < 15)).sum() > 20  # CSF in ventricles and sulci


def test_config_rejects_unknown_settings(tmp_path):
    path = tmp_path / "synth.toml"
    path.write_text("[phantom]\nsize = 64\nsubtype_rates = { epidural = 0.9 }\n")
    config = load_config(path)
    assert config.size == 64 and config.subtype_rates["epidural"] == 0.9 and config.subtype_rates["subdural"] == 0.4
    path.write_text("[phantom]\nsizes = 64\n")
    with pytest.raises(ValueError, match="sizes"):
        load_config(path)
