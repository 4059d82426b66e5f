"""The GPU path's defects, shown on a CPU: the same conversions, device moves, orders and decisions a GPU run takes."""

from __future__ import annotations

import copy
import json
import os
import socket
from dataclasses import replace

import numpy as np
import pytest

from .test_training import prepared, tiny_experiment  # noqa: F401  (a fixture)

pytestmark = pytest.mark.torch


@pytest.fixture
def learner(prepared, tmp_path):  # noqa: F811
    from fastai.data.core import DataLoaders

    from ichkaggle.train.data import loader
    from ichkaggle.train.learner import build_learner
    from ichkaggle.train.samples import slice_images

    root, folds = prepared
    experiment = tiny_experiment()
    dl = loader(experiment, slice_images(folds, root / "train", experiment))
    return build_learner(DataLoaders(dl, dl), experiment, tmp_path, pretrained=False)


# ----------------------------------------------------------------------------- synchronised batch norm


def test_the_distributed_path_trains_the_network_predict_rebuilds(learner):
    """The conversion the GPU path uses keeps timm's batch norm + activation modules: same types
    (their synchronised variants), same outputs for the same weights, also when a second phase
    converts again; torch's own converter, which fastai calls, would drop the activations."""
    import torch
    from timm.layers import BatchNormAct2d
    from timm.layers.norm_act import SyncBatchNormAct

    from ichkaggle.train.distributed import ShardedTrainer, sync_batchnorm

    model = learner.model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    fused = [name for name, m in model.named_modules() if isinstance(m, BatchNormAct2d)]
    assert len(fused) > 40  # EfficientNet-B0: every batch norm carries its activation
    converted = sync_batchnorm(copy.deepcopy(model))
    twice = sync_batchnorm(converted)  # the next phase's fit converts again
    for net in (converted, twice):
        modules = dict(net.named_modules())
        assert all(isinstance(modules[name], SyncBatchNormAct) for name in fused)
        assert all(type(modules[name].act) is type(dict(model.named_modules())[name].act) for name in fused)
        with torch.no_grad():
            torch.testing.assert_close(net.eval()(x), expected, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # what fastai's DistributedTrainer(sync_bn=True) did
        plain = torch.nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model)).eval()(x)
    assert (plain - expected).abs().max() > 1e-2

    trainer = ShardedTrainer(sync_bn=True, cpu=True)  # the callback converts with the same function
    trainer.learn = learner
    from fastai.distributed import DistributedTrainer

    DistributedTrainer.before_fit, original = (lambda self: None), DistributedTrainer.before_fit
    try:
        trainer.before_fit()
    finally:
        DistributedTrainer.before_fit = original
    assert all(isinstance(dict(learner.model.named_modules())[name], SyncBatchNormAct) for name in fused)


# ----------------------------------------------------------------------------- the optimizer


def test_the_optimizer_is_torchs_with_fastais_defaults_and_no_decay_on_norms_and_biases(learner):
    import torch
    from fastai.torch_core import norm_bias_params

    from ichkaggle.train import optim
    from ichkaggle.train.learner import use_optimizer

    use_optimizer(learner, "adam")
    opt = learner.opt
    assert isinstance(opt.opt, torch.optim.AdamW) and opt.opt.defaults["foreach"]  # the CPU's implementation
    groups = opt.opt.param_groups
    assert len(groups) == 2 * len(opt.param_lists) == 4  # body and head, each with and without decay
    no_decay = {id(p) for p in norm_bias_params(learner.model, with_bias=True)}
    assert no_decay and all(id(p) in no_decay for g in groups[1::2] for p in g["params"])
    assert not any(id(p) in no_decay for g in groups[::2] for p in g["params"])
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0, 0.01, 0.0]
    assert groups[0]["betas"] == (0.9, 0.99) and groups[0]["eps"] == 1e-5  # fastai's Adam
    opt.set_hypers(wd=0.1, mom=0.8, lr=0.02)  # what Learner.fit and the schedules set
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0, 0.1, 0.0]
    assert all(g["betas"][0] == 0.8 and g["lr"] == 0.02 for g in groups)
    assert [h["lr"] for h in opt.hypers] == [0.02, 0.02] and opt.hypers[0]["wd"] == 0.1
    learner.freeze()  # fastai's freeze over the two groups: the head and the body's norms train
    body_norms = {id(p) for p in norm_bias_params(learner.model[0], with_bias=False)}
    for p in opt.param_lists[0]:
        assert p.requires_grad == (id(p) in body_norms)
    assert all(p.requires_grad for p in opt.param_lists[1])
    fused = optim.make_optimizer(learner.splitter(learner.model), kind="adamw", no_decay=frozenset(),
                                 device=torch.device("cuda"))
    assert fused.opt.defaults["fused"] is True  # one kernel a step, and the loss scaler's check on the device
    radam = optim.make_optimizer(learner.splitter(learner.model), kind="radam", no_decay=frozenset(),
                                 device=torch.device("cuda"))
    assert isinstance(radam.opt, torch.optim.RAdam) and radam.opt.defaults["foreach"]


def test_a_restored_optimizer_state_follows_its_parameters_device(learner):
    """A checkpoint is read onto the CPU; on a GPU the parameters are elsewhere. Here they are on
    the ``meta`` device: every restored state tensor must be there too, or the first step after a
    resume mixes devices."""
    import torch

    from ichkaggle.train import optim
    from ichkaggle.train.learner import use_optimizer

    use_optimizer(learner, "radam")
    learner.unfreeze()
    x = torch.randn(4, 3, 32, 32)
    learner.model.train()
    learner.model(x).sum().backward()
    learner.opt.step()
    saved = copy.deepcopy(learner.opt.state_dict())
    assert any(torch.is_tensor(v) and v.device.type == "cpu" and v.dim() > 0
               for s in saved["state"].values() for v in s.values())
    learner.model.to("meta")
    use_optimizer(learner, "radam")
    learner.unfreeze()
    optim.restore(learner.opt, saved)
    state = learner.opt.opt.state
    assert len(state) == len(saved["state"]) > 0
    for param, values in state.items():
        assert param.device.type == "meta"
        assert all(v.device.type == "meta" for k, v in values.items() if torch.is_tensor(v) and k != "step")


def test_an_old_checkpoint_resumes_with_a_fresh_optimizer_state_and_says_so(tmp_path, capsys):
    import torch

    from ichkaggle.train.checkpoints import CHECKPOINT_FORMAT, checkpoint_path, load_checkpoint

    (tmp_path / "models").mkdir()
    torch.save({"model": {}, "opt": {"state": {}, "hypers": []}, "scaler": None, "phase": 0, "epoch": 1},
               checkpoint_path(tmp_path))  # fastai's optimizer state: no "format"
    torch.save({"python": None}, tmp_path / "models" / "rng-0.pth")
    state = load_checkpoint(tmp_path)
    assert state["opt"] is None and state["epoch"] == 1
    assert f"checkpoint format 1, this version writes {CHECKPOINT_FORMAT}" in capsys.readouterr().err


# ----------------------------------------------------------------------------- JPEG decode on the GPU


@pytest.fixture(scope="module")
def jpegs(synth_dir, tmp_path_factory):
    import torch

    from ichkaggle.prepared.prepare import PrepareSettings, prepare
    from ichkaggle.prepared.reader import ImageStore, read_slices

    out = tmp_path_factory.mktemp("jpegs")
    prepare(synth_dir / "stage_2_train", out, PrepareSettings(size=32, format="jpg"), workers=1,
            show_progress=False, pack=True)
    table, _ = read_slices(out)
    store = ImageStore(out, table["ID"][:6])
    return store, [torch.frombuffer(bytearray(store.read(i)), dtype=torch.uint8) for i in range(6)]


def test_a_gpu_decode_starts_only_after_the_stream_has_drained(jpegs, monkeypatch):
    import torch
    import torchvision.io

    from ichkaggle.train import loader

    store, encoded = jpegs
    calls = []

    class Stream:
        def synchronize(self):
            calls.append("drain")

    real = torchvision.io.decode_jpeg
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    monkeypatch.setattr(torchvision.io, "decode_jpeg",
                        lambda data, device: calls.append(f"decode on {device}") or real(data, device="cpu"))
    out = loader.decode_batch(encoded, torch.device("cuda", 1), [str(i) for i in store.ids])
    assert calls == ["drain", "decode on cuda:1"]
    assert tuple(out.shape) == (6, 3, 32, 32)


def test_a_batch_the_gpu_decoder_refuses_is_decoded_on_the_cpu_or_names_the_bad_image(jpegs, monkeypatch, capsys):
    import torch
    import torchvision.io

    from ichkaggle.prepared.reader import CorruptImage
    from ichkaggle.train.loader import decode_batch

    store, encoded = jpegs
    names = [str(i) for i in store.ids]

    def refuse(data, device):
        raise RuntimeError("nvjpeg: failed to decode")

    monkeypatch.setattr(torchvision.io, "decode_jpeg", refuse)
    out = decode_batch(encoded, torch.device("cpu"), names)
    assert torch.equal(out, torch.stack([torch.from_numpy(store.image(i)).permute(2, 0, 1) for i in range(6)]))
    assert f"the batch with {names[0]} failed to decode" in capsys.readouterr().err
    broken = list(encoded)
    broken[3] = encoded[3][:40]  # a truncated JPEG
    monkeypatch.undo()
    with pytest.raises(CorruptImage, match=f"image {names[3]}"):
        decode_batch(broken, torch.device("cpu"), names)


def test_gpu_decode_is_opt_in(jpegs):
    import torch

    from ichkaggle.experiment import DataConfig
    from ichkaggle.train.data import gpu_decodes

    store, _ = jpegs
    cuda = torch.device("cuda")
    assert DataConfig().decode == "cpu"
    assert not gpu_decodes(DataConfig(), store, cuda) and not gpu_decodes(DataConfig(decode="auto"), store, cuda)
    assert gpu_decodes(DataConfig(decode="gpu"), store, cuda)
    assert not gpu_decodes(DataConfig(decode="gpu"), store, torch.device("cpu"))


# ----------------------------------------------------------------------------- processes and devices


def test_each_process_trains_on_the_gpu_of_its_local_rank(monkeypatch):
    import torch

    from ichkaggle.train.device import precision, process_device

    chosen = []
    monkeypatch.setenv("RANK", "3")  # the fourth process overall, the second on this machine
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert process_device() == torch.device("cuda", 1) and chosen == [torch.device("cuda", 1)]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert precision("auto", torch.device("cuda", 1)) == "fp16"  # a T4: fp16 and the loss scaler
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert precision("auto", torch.device("cuda", 1)) == "bf16"
    assert precision("auto", torch.device("cpu")) == "fp32" and precision("fp16", torch.device("cpu")) == "fp16"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank(rank: int, port: int, out: str) -> None:
    """One of two gloo ranks: the stop decision and an empty validation share."""
    import json

    import torch

    from ichkaggle.train.device_metrics import DeviceLogLoss  # imported before the group, as train does
    from ichkaggle.train.distributed import agree, gloo_worker_threads, leave_distributed

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    decision = agree(rank == 0, torch.device("cpu"))  # rank 0's clock allows the epoch, rank 1's does not
    metric = DeviceLogLoss(torch.device("cpu"))
    metric.reset()
    if rank == 0:  # rank 1's share of the validation set is empty: it adds nothing, and still reads

        class Learn:
            pred = torch.zeros(4, 6)
            y = torch.ones(4, 6)

        metric.accumulate(Learn())
    value = metric.value
    threads = [gloo_worker_threads()]
    leave_distributed()  # as a run ends: every rank waits for the others, then leaves
    threads.append(gloo_worker_threads())
    with open(f"{out}/rank{rank}.json", "w") as fh:
        json.dump({"decision": decision, "value": value, "threads": threads}, fh)


def test_leaving_the_group_gives_the_gil_to_gloo_until_its_threads_end(monkeypatch):
    """The abort at exit is a race (about one CPU run in ten); what prevents it is checked here
    step by step: leave, then sleep (the GIL given up) until gloo's threads are gone."""
    import torch

    from ichkaggle.train import distributed

    calls, remaining = [], [3, 3, 1, 0]
    monkeypatch.setattr(distributed, "distributed", lambda: True)
    monkeypatch.setattr(torch.distributed, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(torch.distributed, "destroy_process_group", lambda: calls.append("destroy"))
    monkeypatch.setattr(distributed, "gloo_worker_threads", lambda: remaining.pop(0))
    monkeypatch.setattr(distributed.time, "sleep", lambda s: calls.append("sleep"))
    distributed.leave_distributed()
    assert calls == ["barrier", "destroy", "sleep", "sleep", "sleep"] and remaining == []
    remaining[:] = [2] * 1000  # threads kept alive by something else: give up after settle_s
    clock = iter(range(1000))
    monkeypatch.setattr(distributed.time, "monotonic", lambda: next(clock))
    distributed.leave_distributed(settle_s=3)
    assert calls.count("sleep") == 3 + 2  # at clock 1 and 2, before the deadline at 3


def test_ranks_take_one_stop_decision_and_a_rank_without_validation_batches_does_not_hang(tmp_path):
    import json

    import torch.multiprocessing as mp

    context = mp.start_processes(_rank, args=(_free_port(), str(tmp_path)), nprocs=2, join=False,
                                 start_method="spawn")
    for process in context.processes:
        process.join(120)
    assert all(p.exitcode == 0 for p in context.processes), "a rank hung or failed"
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["decision"] for r in results] == [False, False]  # the stricter clock decides for both
    assert results[0]["value"] == pytest.approx(results[1]["value"]) == pytest.approx(np.log(2.0))
    # gloo's threads end before the process does: one still dropping a collective's tensors at
    # exit is killed inside a C++ destructor and aborts the rank (SIGABRT), about one run in ten
    assert all(r["threads"][0] > 0 and r["threads"][1] == 0 for r in results), results


# ----------------------------------------------------------------------------- the loop


def test_a_training_batch_makes_no_host_sync(prepared, tmp_path):  # noqa: F811
    """The calls that would make the host wait for a GPU, counted around two whole runs whose
    epochs differ only in their number of training batches: the difference is what the
    batches cost. Then cuDNN: fastest kernels unless asked for bitwise reproducibility."""
    import torch

    from ichkaggle.train.host_syncs import HostSyncs
    from ichkaggle.train.loop import train

    root, folds = prepared
    counts = []
    for batches in (4, 12):
        experiment = tiny_experiment(epochs=2, tta=False, batch_size=4, samples_per_epoch=float(4 * batches),
                                     valid_samples=8)
        with HostSyncs() as syncs:
            train(folds, root / "train", experiment, tmp_path / f"run{batches}")
        counts.append(syncs.total)
    assert (counts[1] - counts[0]) / (2 * 8) <= 0.1, counts
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    train(folds, root / "train", replace(experiment, train=replace(experiment.train, deterministic=True)),
          tmp_path / "bitwise")
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark


def test_augmentations_run_on_training_batches_only(prepared):  # noqa: F811
    import torch

    from ichkaggle.train.data import loader
    from ichkaggle.train.samples import slice_images

    root, folds = prepared
    experiment = tiny_experiment(max_rotate=30.0, max_zoom=1.3)
    images = slice_images(folds, root / "train", experiment)
    plain = loader(experiment, images)
    x_valid, _ = plain.one_batch()
    with plain.dataset.set_split_idx(0):  # what TTA asks for
        torch.manual_seed(0)
        x_train, _ = plain.one_batch()
    no_aug = loader(tiny_experiment(augment=False), images)
    x_none, _ = no_aug.one_batch()
    assert torch.equal(x_valid, x_none)  # validation: the pixels as they are, no resampling at all
    assert not torch.allclose(x_train, x_valid)


# ----------------------------------------------------------------------------- what a resume restores


def test_a_phase_resumed_at_its_start_gets_a_fresh_scaler_and_optimizer_as_an_uninterrupted_run():
    import random
    from types import SimpleNamespace

    import torch

    from ichkaggle.train.control import EpochControl

    loaded = []
    scaler = SimpleNamespace(load_state_dict=lambda s: loaded.append(("scaler", s)))
    opt = SimpleNamespace(load_state_dict=lambda s: loaded.append(("opt", s)), opt=SimpleNamespace(param_groups=[],
                                                                                                   state={}))
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(), "cuda": []}
    for epoch, expected in ((0, []), (2, ["opt", "scaler"])):
        loaded.clear()
        control = EpochControl(None, 1, epoch, None)
        control.learn = SimpleNamespace(scaler=scaler, opt=opt)
        control._restore({"opt": {"state": {}}, "scaler": {"scale": 8.0}, "epoch": epoch, "rng": rng})
        assert [what for what, _ in loaded] == expected


def test_a_restored_optimizer_keeps_the_implementation_it_was_built_with():
    import torch

    from ichkaggle.train import optim

    model = torch.nn.Linear(3, 2)
    foreach = optim.make_optimizer([list(model.parameters())], kind="adam", no_decay=frozenset(),
                                   device=torch.device("cpu"))
    model(torch.randn(4, 3)).sum().backward()
    foreach.opt.step()
    optim.FUSED_DEVICES, saved_devices = ("cuda", "cpu"), optim.FUSED_DEVICES  # as a GPU session builds it
    try:
        fused = optim.make_optimizer([list(model.parameters())], kind="adam", no_decay=frozenset(),
                                     device=torch.device("cpu"))
    finally:
        optim.FUSED_DEVICES = saved_devices
    optim.restore(fused, foreach.state_dict())  # a checkpoint of a CPU session, resumed on a GPU
    assert all(g["fused"] is True for g in fused.opt.param_groups)
    assert len(fused.opt.state) == len(foreach.opt.state)


def test_norm_parameters_stay_without_decay_after_the_ddp_conversion(learner):
    from ichkaggle.train.distributed import sync_batchnorm
    from ichkaggle.train.optim import norm_and_bias_params

    before = {id(p) for p in norm_and_bias_params(learner.model)}
    after = {id(p) for p in norm_and_bias_params(sync_batchnorm(learner.model))}
    assert before == after and len(before) > 40  # the same parameters (timm's converter keeps them)


def test_a_run_whose_checkpoint_or_random_states_are_missing_is_refused(prepared, tmp_path):  # noqa: F811
    from ichkaggle.errors import UserError
    from ichkaggle.train.checkpoints import checkpoint_path
    from ichkaggle.train.loop import train

    root, folds = prepared
    experiment = tiny_experiment(epochs=2, tta=False)
    train(folds, root / "train", experiment, tmp_path / "run")
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    state.update(complete=False, phase=0, epoch=1)
    (tmp_path / "run" / "state.json").write_text(json.dumps(state))
    (tmp_path / "run" / "models" / "rng-0.pth").unlink()
    with pytest.raises(UserError, match="rng-0.pth is missing"):
        train(folds, root / "train", experiment, tmp_path / "run", resume=True)
    checkpoint_path(tmp_path / "run").unlink()
    with pytest.raises(UserError, match="checkpoint.pth is missing"):
        train(folds, root / "train", experiment, tmp_path / "run", resume=True)


def test_a_validation_set_smaller_than_the_ranks_is_refused(prepared, tmp_path, monkeypatch):  # noqa: F811
    from ichkaggle.errors import UserError
    from ichkaggle.train import loop

    root, folds = prepared
    monkeypatch.setattr(loop, "world", lambda: 1000)
    with pytest.raises(UserError, match="cannot give each of 1000 processes a batch"):
        loop.train(folds, root / "train", tiny_experiment(epochs=1, tta=False), tmp_path / "run")


def test_tta_mixes_the_plain_pass_with_the_augmented_ones_as_fastai_does():
    import contextlib
    from types import SimpleNamespace

    import torch

    from ichkaggle.experiment import PredictConfig
    from ichkaggle.train.predict import slice_predictions

    head = torch.nn.Linear(2, 6)
    model = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Sequential(head))
    outputs = iter([torch.full((3, 6), 0.8), torch.full((3, 6), 0.2), torch.full((3, 6), 0.4)])  # plain, 2 augmented

    def get_preds(dl, reorder):
        head(torch.zeros(3, 2))  # the embedding hook sees the head's input
        return next(outputs), None

    learn = SimpleNamespace(model=model, get_preds=get_preds)
    dl = SimpleNamespace(dataset=SimpleNamespace(set_split_idx=lambda i: contextlib.nullcontext()))
    experiment = SimpleNamespace(predict=PredictConfig(tta=True, tta_n=2, tta_beta=0.25))
    probs, _ = slice_predictions(learn, dl, experiment)
    np.testing.assert_allclose(probs, 0.75 * 0.3 + 0.25 * 0.8, atol=1e-6)  # torch.lerp(aug, plain, beta)
