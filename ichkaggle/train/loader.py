"""A fast fastai DataLoader over prepared slices (either layout) or DICOM files (train extra).

Why: the DataBlock loader decoded each image with PIL per item through fastai's typed
pipeline and started its worker processes again every epoch; a GPU waited on it. This one
keeps a torch DataLoader with persistent workers that only read and decode (OpenCV, or, when
asked, hand the JPEG bytes to nvJPEG on the GPU), ships uint8 batches in pinned memory and
leaves the augmentations to the batch transforms on the device (``ichkaggle.train.augment``).
It is a fastai ``TfmdDL``, so
``fit``, ``tta`` and ``get_preds`` work as before; its order is a pure function of
``(seed, epoch)``, so a resumed run draws the batches an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import math
import sys

import numpy as np
import torch
from fastai.data.core import TfmdDL
from fastai.torch_core import TensorImage, TensorMultiCategory, to_detach, to_device

from ..prepared.reader import CorruptImage, decode_image
from .sampling import epoch_indices, epoch_size

# ----------------------------------------------------------------------------- items and batches


class SliceDataset(torch.utils.data.Dataset):
    """Item i: (H x W x C uint8 image, or its JPEG bytes for the device to decode; six targets)."""

    n_inp = 1

    def __init__(self, images, targets: np.ndarray | None = None, encoded: bool = False, train: bool = False):
        self.images, self.encoded = images, encoded
        self.targets = np.zeros((len(images), 6), np.float32) if targets is None else np.asarray(targets, np.float32)
        # fastai's augmentations run for split 0 (training) and are the identity for split 1
        # (validation, inference); None would let the affine ones run everywhere
        self.split_idx = 0 if train else 1

    def __len__(self) -> int:
        return len(self.images)

    def name(self, i: int) -> str:
        """The image id of item ``i`` (for error messages)."""
        return self.images.name(i) if hasattr(self.images, "name") else f"item {i}"

    def __getitem__(self, i: int):
        if self.encoded:
            x = torch.frombuffer(bytearray(self.images.read(i)), dtype=torch.uint8)
        else:
            x = torch.from_numpy(np.ascontiguousarray(self.images.image(i)))
        return x, torch.from_numpy(self.targets[i])

    @contextlib.contextmanager
    def set_split_idx(self, i):
        """fastai's TTA asks the training augmentations of a validation set this way."""
        old, self.split_idx = self.split_idx, i
        try:
            yield self
        finally:
            self.split_idx = old


def collate(items):
    """uint8 HWC images -> one NCHW uint8 batch (channels-last in memory); bytes stay a list."""
    xs, ys = zip(*items)
    y = torch.stack(ys)
    if xs[0].ndim == 1:
        return list(xs), y
    return torch.stack(xs).permute(0, 3, 1, 2), y


class _Batches(torch.utils.data.Sampler):
    """The batch sampler of the persistent workers: set to each epoch's batches in the main process."""

    batches: list = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def decode_batch(encoded: list, device: torch.device, names: list[str]) -> torch.Tensor:
    """JPEG bytes -> one NCHW uint8 batch on ``device``.

    On a GPU, nvJPEG's hardware path writes its outputs without waiting for the work already
    queued on the stream, into memory the caching allocator may have freed from tensors that
    queued kernels still read (pytorch/vision#9606): the stream is drained first. A batch
    nvJPEG refuses is decoded on the CPU image by image; an image no decoder reads is a
    :class:`CorruptImage` naming it."""
    from torchvision.io import decode_jpeg

    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()
    try:
        return torch.stack(decode_jpeg(encoded, device=device))
    except RuntimeError as err:
        print(f"warning: the batch with {names[0]} failed to decode on {device} ({err}); decoding it on the CPU",
              file=sys.stderr, flush=True)
    images = []
    for data, name in zip(encoded, names):
        try:
            images.append(torch.from_numpy(decode_image(data.numpy().tobytes(), "jpg")).permute(2, 0, 1))
        except ValueError as err:
            raise CorruptImage(f"image {name}: {err}") from None
    return torch.stack(images).to(device)


def _worker_init(_worker: int) -> None:
    from ..prepared.prepare import one_thread

    one_thread()


class SliceLoader(TfmdDL):
    """The loader (see the module docstring). ``workers`` decode in persistent processes;
    ``rank``/``world`` give each process of a distributed run its share of every epoch."""

    def __init__(self, dataset=None, bs=64, shuffle=False, drop_last=False, device=None, workers=0, seed=0,
                 samples=None, negative=None, negative_fraction=1.0, weights=None, rank=0, world=1, **kwargs):
        self.workers, self.seed, self.samples, self.negative = workers, seed, samples, negative
        self.negative_fraction, self.weights, self.rank, self.world = negative_fraction, weights, rank, world
        self.epoch, self._torch = 0, None
        kwargs.pop("num_workers", None)
        super().__init__(dataset, bs=bs, shuffle=shuffle, drop_last=drop_last, num_workers=0, device=device,
                         **kwargs)

    def new(self, dataset=None, cls=None, **kwargs):
        own = dict(workers=self.workers, seed=self.seed, samples=self.samples, negative=self.negative,
                   negative_fraction=self.negative_fraction, weights=self.weights, rank=self.rank, world=self.world)
        return super().new(dataset, cls, **{**own, **kwargs})

    def get_idxs(self):
        n = len(self.dataset)
        if not self.shuffle:
            idxs = np.arange(n)
        else:
            idxs = epoch_indices(n, self.seed, self.epoch, samples=self.samples, negative=self.negative,
                                 negative_fraction=self.negative_fraction, weights=self.weights)
        if self.world == 1:
            return list(idxs)
        if self.shuffle:  # every rank the same number of batches, or DDP waits for the one short of one
            idxs = idxs[: len(idxs) - len(idxs) % self.world]
        return list(idxs[self.rank::self.world])

    def _size(self) -> int:
        n = len(self.dataset)
        if not self.shuffle:
            return len(range(self.rank, n, self.world))
        return epoch_size(n, self.samples, self.negative, self.negative_fraction) // self.world

    def __len__(self) -> int:
        size = self._size()
        return size // self.bs if self.drop_last else math.ceil(size / self.bs)

    def create_item(self, s):
        return self.dataset[s or 0]

    def create_batch(self, b):
        return collate(b)

    def _batches(self, idxs: list) -> list:
        batches = [idxs[i:i + self.bs] for i in range(0, len(idxs), self.bs)]
        return batches[:-1] if batches and self.drop_last and len(batches[-1]) < self.bs else batches

    def _raw(self, batches):
        if self.workers == 0:
            yield from (collate([self.dataset[i] for i in batch]) for batch in batches)
            return
        if self._torch is None:
            on_gpu = self.device is not None and self.device.type == "cuda"
            self._torch = torch.utils.data.DataLoader(self.dataset, batch_sampler=_Batches(), collate_fn=collate,
                                                      num_workers=self.workers, persistent_workers=True,
                                                      pin_memory=on_gpu, prefetch_factor=4,
                                                      worker_init_fn=_worker_init)
        self._torch.batch_sampler.batches = batches
        yield from self._torch

    def __iter__(self):
        self.before_iter()
        batches = self._batches(self.get_idxs())
        for idxs, (x, y) in zip(batches, self._raw(batches)):
            if isinstance(x, list):  # JPEG bytes: decode the batch where it goes
                x = decode_batch(x, self.device or torch.device("cpu"), [self.dataset.name(i) for i in idxs])
            x, y = to_device((x, y), self.device, non_blocking=True)
            yield self.after_batch((TensorImage(x), TensorMultiCategory(y)))
        self.after_iter()

    def to_detach(self, b, cpu=True, gather=True):
        """fastai gathers predictions across ranks whenever WORLD_SIZE > 1; only a sharded loader
        holds a share of the items, so only it gathers (rank 0's final evaluation reads them all)."""
        return to_detach(b, cpu, gather and self.world > 1)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_torch"] = None  # the worker processes belong to this process
        return state
