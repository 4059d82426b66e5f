"""Packed prepared data: same pixels as loose files, few shards, corruption named, interruptions resumed."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from ichkaggle.cli import main
from ichkaggle.errors import UserError
from ichkaggle.prepared import prepare as prepare_module
from ichkaggle.prepared import shards as pack_module
from ichkaggle.prepared.prepare import PrepareSettings, prepare
from ichkaggle.prepared.reader import CorruptImage, ImageStore

SETTINGS = PrepareSettings(size=32, format="jpg")


@pytest.fixture
def src(synth_dir, tmp_path):
    folder = tmp_path / "src"
    shutil.copytree(synth_dir / "stage_2_train", folder)
    (folder / "ID_00000bad0.dcm").write_bytes(b"not a dicom")
    return folder


def _ok_ids(out) -> list[str]:
    meta = pd.read_csv(out / "metadata.csv")
    return meta.loc[meta["status"] == "ok", "ID"].tolist()


def _shards(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").glob("shard-*.bin"))}


def test_packed_images_are_the_loose_files_bytes_and_pixels(src, tmp_path):
    prepare(src, tmp_path / "loose", SETTINGS, workers=1, show_progress=False)
    prepare(src, tmp_path / "packed", SETTINGS, workers=2, show_progress=False, pack=True, chunk=4)
    ids = _ok_ids(tmp_path / "packed")
    assert ids == _ok_ids(tmp_path / "loose") and len(ids) == 90
    loose, packed = ImageStore(tmp_path / "loose", ids), ImageStore(tmp_path / "packed", ids)
    assert (loose.layout, packed.layout) == ("files", "packed")
    for i in range(len(ids)):
        assert packed.read(i) == loose.read(i)
        assert np.array_equal(packed.image(i), loose.image(i)) and packed.image(i).shape == (32, 32, 3)
    assert not (tmp_path / "packed" / "images").exists() or not any((tmp_path / "packed" / "images").iterdir())
    meta = pd.read_csv(tmp_path / "packed" / "metadata.csv")
    assert (meta.set_index("ID").loc["ID_00000bad0", "status"]) == "failed"


def test_at_most_one_shard_per_5000_images_and_a_small_shard_size_splits(src, tmp_path, monkeypatch):
    prepare(src, tmp_path / "one", SETTINGS, workers=1, show_progress=False, pack=True)
    assert list(_shards(tmp_path / "one")) == ["shard-00000.bin"]  # 90 images: 1 <= 1 + 90 / 5000
    monkeypatch.setattr(pack_module, "PER_SHARD", 25)
    prepare(src, tmp_path / "four", SETTINGS, workers=1, show_progress=False, pack=True)
    assert len(_shards(tmp_path / "four")) == 4  # 25 + 25 + 25 + 15


def test_a_truncated_or_damaged_shard_names_the_shard_and_the_image(src, tmp_path):
    out = tmp_path / "p"
    prepare(src, out, SETTINGS, workers=1, show_progress=False, pack=True)
    ids = _ok_ids(out)
    shard = out / "shards" / "shard-00000.bin"
    data = bytearray(shard.read_bytes())
    store = ImageStore(out, ids)
    last = int(np.argmax(store.offset))
    shard.write_bytes(bytes(data[: int(store.offset[last]) + 10]))
    with pytest.raises(CorruptImage, match=rf"shards/shard-00000.bin is truncated at image {ids[last]}"):
        ImageStore(out, ids).read(last)
    data[int(store.offset[3]) + 100] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptImage, match=rf"damaged \(CRC mismatch\) at image {ids[3]}"):
        ImageStore(out, ids).read(3)
    with pytest.raises(UserError, match="1 image.s. not in .*index.csv"):
        ImageStore(out, ids + ["ID_0000nope0"])


def test_an_interrupted_pack_resumes_to_the_same_shards(src, tmp_path, monkeypatch):
    monkeypatch.setattr(pack_module, "PER_SHARD", 20)
    prepare(src, tmp_path / "full", SETTINGS, workers=1, show_progress=False, pack=True)
    real = prepare_module.process_file
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 47:  # two shards complete, the third in progress
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(prepare_module, "process_file", dying)
    with pytest.raises(KeyboardInterrupt):
        prepare(src, tmp_path / "part", SETTINGS, workers=1, show_progress=False, pack=True)
    assert len(_shards(tmp_path / "part")) == 2 and not (tmp_path / "part" / "metadata.csv").exists()
    monkeypatch.setattr(prepare_module, "process_file", real)
    resumed = prepare(src, tmp_path / "part", SETTINGS, workers=1, show_progress=False, pack=True)
    assert resumed.skipped == 40  # the images of the two durable shards; the bad file is retried
    assert _shards(tmp_path / "part") == _shards(tmp_path / "full")
    full, part = (pd.read_csv(tmp_path / d / "shards" / "index.csv") for d in ("full", "part"))
    pd.testing.assert_frame_equal(full, part)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "full" / "metadata.csv").drop(columns="source"),
                                  pd.read_csv(tmp_path / "part" / "metadata.csv").drop(columns="source"))


def test_pack_command_converts_a_loose_folder_and_layouts_do_not_mix(src, tmp_path, capsys):
    out = tmp_path / "p"
    prepare(src, out, SETTINGS, workers=1, show_progress=False)
    ids = _ok_ids(out)
    before = [ImageStore(out, ids).read(i) for i in range(len(ids))]
    with pytest.raises(UserError, match="holds loose images: pack them"):
        prepare(src, out, SETTINGS, workers=1, show_progress=False, pack=True)
    assert main(["pack", str(out), "--quiet"]) == 0
    assert "90 image(s) packed, 1 shard(s), 90 loose file(s) removed" in capsys.readouterr().out
    assert [ImageStore(out, ids).read(i) for i in range(len(ids))] == before
    with pytest.raises(UserError, match="is packed"):
        prepare(src, out, SETTINGS, workers=1, show_progress=False)
    again = prepare(src, out, SETTINGS, workers=1, show_progress=False, pack=True)  # adds to it: nothing left
    assert again.skipped == 90 and again.processed == 1  # the bad file is retried


def test_prepare_pack_cli(src, tmp_path, capsys):
    assert main(["prepare", str(src), str(tmp_path / "o"), "--size", "32", "--format", "jpg", "--pack",
                 "--workers", "1", "--quiet"]) == 0
    assert "shards" in capsys.readouterr().out
    assert (tmp_path / "o" / "shards" / "index.csv").exists()
