"""The fast loader: same batches from either layout, reproducible order, workers, uint8 to the device, 2.5D."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest

from ichkaggle import LABELS
from ichkaggle.experiment import DataConfig, Experiment, ModelConfig, Phase

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def layouts(synth_dir, tmp_path_factory):
    """The synthetic train slices prepared twice at 32 px JPEG: loose files and packed."""
    from ichkaggle.prepared.prepare import PrepareSettings, prepare
    from ichkaggle.prepared.reader import read_slices
    from ichkaggle.tables.folds import add_fold_column
    from ichkaggle.tables.labels import read_labels_csv

    root = tmp_path_factory.mktemp("layouts")
    settings = PrepareSettings(size=32, format="jpg")
    for name, pack in (("loose", False), ("packed", True)):
        prepare(synth_dir / "stage_2_train", root / name, settings, workers=1, show_progress=False, pack=pack)
    slices, _ = read_slices(root / "packed")
    table = add_fold_column(slices.assign(status="ok"), read_labels_csv(synth_dir / "stage_2_train.csv"), k=2)
    return root, table


def experiment(**data) -> Experiment:
    return Experiment("t", ModelConfig(), replace(DataConfig(size=32, batch_size=8, n_folds=2), **data),
                      (Phase("p", 1, 1e-3),))


def _loader(root, table, layout, exp, train=True, **kw):
    from ichkaggle.train.data import loader
    from ichkaggle.train.samples import slice_images

    images = slice_images(table, root / layout, exp)
    return loader(exp, images, table[list(LABELS)].to_numpy(), train=train, **kw)


def _batches(dl, epoch=0):
    import torch

    dl.epoch = epoch
    torch.manual_seed(0)  # the augmentations draw from torch's generator
    return [(x.clone(), y.clone()) for x, y in dl]


def test_packed_and_loose_give_identical_batches(layouts):
    root, table = layouts
    exp = experiment()
    a, b = (_batches(_loader(root, table, layout, exp)) for layout in ("loose", "packed"))
    assert len(a) == len(b) > 2
    for (xa, ya), (xb, yb) in zip(a, b):
        assert (xa == xb).all() and (ya == yb).all()


def test_order_is_reproducible_from_the_seed_and_differs_between_epochs(layouts):
    root, table = layouts
    dl = _loader(root, table, "packed", experiment(flip=False, max_rotate=0.0, max_zoom=1.0))
    dl.epoch = 0
    first = dl.get_idxs()
    dl.epoch = 1
    assert dl.get_idxs() != first
    dl.epoch = 0
    assert dl.get_idxs() == first
    other = _loader(root, table, "packed", experiment(seed=5))
    assert other.get_idxs() != first
    x0 = [x for x, _ in _batches(dl, 0)]
    assert all((a == b).all() for a, b in zip(x0, [x for x, _ in _batches(dl, 0)]))


def test_persistent_workers_give_the_same_batches_as_the_main_process(layouts):
    root, table = layouts
    exp = experiment(flip=False, max_rotate=0.0, max_zoom=1.0)
    inline = _batches(_loader(root, table, "packed", exp))
    dl = _loader(root, table, "packed", replace(exp, data=replace(exp.data, num_workers=2)))
    for epoch in (0, 1):  # the second epoch reuses the same worker processes
        with_workers = _batches(dl, epoch)
        expected = _batches(_loader(root, table, "packed", exp), epoch) if epoch else inline
        assert all((xa == xb).all() for (xa, _), (xb, _) in zip(with_workers, expected))
    assert dl._torch is not None and dl._torch.persistent_workers


def test_batches_stay_uint8_until_the_device_then_normalised_floats(layouts):
    from ichkaggle.train.loader import SliceDataset, collate

    root, table = layouts
    dl = _loader(root, table, "packed", experiment(), train=False)
    raw = collate([dl.dataset[i] for i in range(4)])
    assert raw[0].dtype.is_floating_point is False and tuple(raw[0].shape) == (4, 3, 32, 32)
    assert raw[0].is_contiguous(memory_format=__import__("torch").channels_last)
    x, y = dl.one_batch()
    assert x.dtype.is_floating_point and abs(float(x.mean())) < 3 and tuple(y.shape) == (8, 6)
    assert isinstance(dl.dataset, SliceDataset) and dl.dataset.split_idx == 1  # inference: no augmentation


def test_jpeg_bytes_decoded_as_a_batch_match_opencv(layouts):
    """The GPU path hands JPEG bytes to torchvision's batched decoder; on CPU it must agree with OpenCV."""
    import torch
    from torchvision.io import decode_jpeg

    from ichkaggle.prepared.reader import ImageStore

    root, table = layouts
    store = ImageStore(root / "packed", table["ID"])
    encoded = [torch.frombuffer(bytearray(store.read(i)), dtype=torch.uint8) for i in range(6)]
    decoded = decode_jpeg(encoded, device="cpu")
    for i, image in enumerate(decoded):
        reference = torch.from_numpy(store.image(i)).permute(2, 0, 1)
        assert image.shape == reference.shape
        assert (image.int() - reference.int()).abs().float().mean() < 1.5  # decoders differ by rounding only


def test_two_point_five_d_stacks_neighbours_per_recipe(layouts):
    from ichkaggle.prepared.series import neighbours
    from ichkaggle.train.samples import slice_images

    root, table = layouts
    alone = slice_images(table, root / "packed", experiment())
    nb = neighbours(table["SeriesInstanceUID"], table["position"], 1)
    one = slice_images(table, root / "packed", experiment(context=1))
    every = slice_images(table, root / "packed", experiment(context=1, context_recipe="all"))
    for i in (0, 5, 17):
        a, b, c = (alone.image(int(j)) for j in nb[i])
        assert np.array_equal(one.image(i), np.stack([a[..., 0], b[..., 1], c[..., 2]], axis=2))
        assert np.array_equal(every.image(i), np.concatenate([a, b, c], axis=2))
    dl = _loader(root, table, "packed", experiment(context=1, context_recipe="all"), train=False)
    x, _ = dl.one_batch()
    assert tuple(x.shape) == (8, 9, 32, 32)


def test_a_corrupt_shard_stops_the_loader_naming_shard_and_image(layouts, tmp_path):
    from ichkaggle.prepared.reader import CorruptImage

    root, table = layouts
    copy = tmp_path / "packed"
    shutil.copytree(root / "packed", copy)
    shard = copy / "shards" / "shard-00000.bin"
    shard.write_bytes(shard.read_bytes()[:1000])
    dl = _loader(tmp_path, table, "packed", experiment(), train=False)
    with pytest.raises(CorruptImage, match="shard-00000.bin is truncated at image ID_"):
        list(dl)
