"""Experiments as data: a TOML file -> a validated, resolved Experiment (no torch here).

Why: the seed's EXP blocks lived in notebook cells; as files they can be diffed, reviewed,
bundled to Kaggle and written next to the weights they produced. Every key is checked for
its type and range before any minute of training is spent, and a mistake names the file,
the table and the key.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import tomllib
import typing
import warnings
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path

from .errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
#: a phase's ``optimizer`` -> the ``torch.optim`` class that runs it and the defaults of fastai's
#: optimizer of that name (``ichkaggle.train.optim`` builds them). fastai's Adam decouples weight decay,
#: so "adam" and "adamw" are both AdamW; SGD's weight decay is torch's (L2).
OPTIMIZERS = {
    "adam": ("AdamW", {"betas": (0.9, 0.99), "eps": 1e-5, "weight_decay": 0.01}),
    "adamw": ("AdamW", {"betas": (0.9, 0.99), "eps": 1e-5, "weight_decay": 0.01}),
    "radam": ("RAdam", {"betas": (0.9, 0.99), "eps": 1e-5, "weight_decay": 0.0, "decoupled_weight_decay": True}),
    "sgd": ("SGD", {"momentum": 0.0, "weight_decay": 0.0}),
}
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
LOSSES = ("metric", "equal")
DECODERS = ("cpu", "gpu", "auto")
SCHEDULES = ("one_cycle", "flat_cos")


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "efficientnet_b0"
    #: a local weights file (timm's pretrained_cfg_overlay); "" = random init, no download ever
    weights: str = ""
    normalize: str = "imagenet"


@dataclass(frozen=True)
class DataConfig:
    size: int = 224
    batch_size: int = 64
    fold: int = 0
    n_folds: int = 5
    seed: int = 0
    windows: tuple[str, ...] = ("brain", "subdural", "bone")
    #: the prepared images' format: "jpg", "png", "npy", or "auto" (JPEG for 1 or 3 windows, else
    #: PNG, when preparing; any format of the right size and windows, when reading)
    image_format: str = "auto"
    source: str = "images"  # "images" (prepare's output) or "dicom" (decode in the loader)
    flip: bool = True
    max_rotate: float = 10.0
    max_zoom: float = 1.1
    max_warp: float = 0.0
    max_lighting: float = 0.0
    #: share of negative (any = 0) training slices kept each epoch; 1.0 = all
    negative_fraction: float = 1.0
    weighted_sampler: bool = False
    num_workers: int = -1  # -1: 0 on CPU (2 workers halve throughput on 2 cores), 4 on GPU
    #: images per training epoch: 1.0 = all, a fraction of them, or a count (> 1); each epoch
    #: takes the next ones of a fresh permutation, so short epochs still cover the data
    samples_per_epoch: float = 1.0
    #: validation images scored after each epoch (a fixed subset; 0 = all); the kept model is
    #: evaluated on the whole fold at the end
    valid_samples: int = 0
    #: neighbouring slices on each side stacked with each slice (2.5D input); 0 = the slice alone
    context: int = 0
    #: "window_per_slice": channel j = window j of neighbour j (needs 2 * context + 1 windows);
    #: "all": every window of every neighbour
    context_recipe: str = "window_per_slice"
    #: JPEG decoding: "cpu" in the loader's workers (enough for Kaggle's T4s); "gpu": nvJPEG on the
    #: training GPU, the stream drained before each batch's decode; "auto": the safe default, "cpu"
    decode: str = "cpu"

    def epoch_samples(self, n: int) -> int:
        """Training images in one epoch of a set of ``n`` (what ``samples_per_epoch`` means)."""
        return int(self.samples_per_epoch if self.samples_per_epoch > 1 else round(self.samples_per_epoch * n))


@dataclass(frozen=True)
class TrainConfig:
    """How the CNN learns, whatever the data and the phases."""

    #: "equal": every label alike (the seed's loss); "metric": binary cross-entropy with the
    #: metric's label weights (any x2, normalised to a mean of 1). "equal" is the default because
    #: on the demo "metric" made what is submitted (the sequence stage) worse out of fold on both
    #: seeds (README, the figures); on real data 3rd place trained with it: try it in the ledger
    loss: str = "equal"
    #: an exponential moving average of the weights (timm's ModelEmaV3), this decay a step (with
    #: warm-up); the kept epoch is the better of the plain and the averaged model. 0: none. 0.99
    #: averages about the last 100 steps (one demo epoch); runs of thousands of steps an epoch
    #: may want 0.999
    ema: float = 0.99
    #: "auto": bf16 on GPUs that have it, fp16 (with a loss scaler) on older ones, fp32 on a CPU
    precision: str = "auto"
    #: bitwise-reproducible GPU kernels (cuDNN deterministic) instead of the fastest (cuDNN benchmark)
    deterministic: bool = False


@dataclass(frozen=True)
class Phase:
    name: str
    epochs: int
    lr: float
    freeze: bool = False
    optimizer: str = "adam"
    schedule: str = "one_cycle"
    pct_start: float = 0.25
    weight_decay: float | None = None


@dataclass(frozen=True)
class PredictConfig:
    tta: bool = True
    tta_n: int = 4  # augmented passes, averaged
    tta_beta: float = 0.25  # the plain pass's weight in the mix (fastai's ``beta``)


@dataclass(frozen=True)
class SequenceConfig:
    """The sequence stage over each series (``ichkaggle seq``): a bi-GRU or 1-D convolutions on the CNN's outputs."""

    enabled: bool = False
    model: str = "gru"  # "gru": a bidirectional GRU over the series; "conv": two 1D convolutions along it
    embedding_dims: int = 32  # the CNN embedding projected to this many values; 0: logits and gaps only
    hidden: int = 64
    layers: int = 1
    dropout: float = 0.1
    epochs: int = 20
    lr: float = 0.003
    batch_series: int = 32
    seed: int = 0
    #: "metric": the metric's label weights in the loss; "equal": every label alike
    loss: str = "metric"
    #: each series also read backwards, the two predictions averaged
    tta: bool = True


@dataclass(frozen=True)
class Experiment:
    name: str
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    phases: tuple[Phase, ...] = ()
    predict: PredictConfig = field(default_factory=PredictConfig)
    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    description: str = ""

    def to_toml(self) -> str:
        """The resolved experiment as TOML (written next to the weights it made)."""
        data = asdict(self)
        lines = [f"name = {_toml_value(data.pop('name'))}", f"description = {_toml_value(data.pop('description'))}"]
        phases = data.pop("phases")
        for section, values in data.items():
            lines += ["", f"[{section}]"] + [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
        for phase in phases:
            lines += ["", "[[phases]]"] + [f"{k} = {_toml_value(v)}" for k, v in phase.items() if v is not None]
        return "\n".join(lines) + "\n"


def _toml_value(value) -> str:
    """JSON's literals and string escapes are TOML's too, but for inf and nan."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return json.dumps(value, ensure_ascii=False)


# ----------------------------------------------------------------------------- reading


_EXPECTED = {bool: "true or false", int: "a whole number", float: "a number", str: "a string in quotes",
             tuple: "a list of strings, e.g. [\"brain\", \"subdural\"]"}


def _typed(value, annotation, where: str):
    """``value`` as the field's type (an int may stand for a float), or a UserError naming ``where``."""
    args = typing.get_args(annotation)
    if type(None) in args:  # "X | None": TOML has no null, so a given value must be an X
        annotation = next(a for a in args if a is not type(None))
    kind = typing.get_origin(annotation) or annotation
    if kind is tuple and isinstance(value, str):
        value = [part.strip() for part in value.split(",")]  # windows = "brain,subdural,bone"
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
        tuple: isinstance(value, list) and all(isinstance(v, str) for v in value),
    }[kind]
    _check(ok, where, value, f"expected {_EXPECTED[kind]}")
    return float(value) if kind is float else tuple(value) if kind is tuple else value


def _build(cls, values, where: str):
    if not isinstance(values, dict):
        raise UserError(f"{where}: expected a table of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {unknown}; known: {known}")
    missing = [f.name for f in fields(cls)
               if f.name not in values and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise UserError(f"{where}: missing key(s) {missing}")
    return cls(**{key: _typed(value, hints[key], f"{where} {key}") for key, value in values.items()})


def resolve_path(name_or_path: str | os.PathLike) -> Path:
    """A config path, or a bare name looked up in ./configs and the package's configs."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    stem = path.name if path.suffix == ".toml" else f"{path.name}.toml"
    for folder in (Path("configs"), CONFIG_DIR):
        if (folder / stem).is_file():
            return folder / stem
    raise UserError(f"config {name_or_path}: no such file (bundled: {', '.join(available())})")


def available() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def load_experiment(name_or_path: str | os.PathLike, **data_overrides) -> Experiment:
    """Read and validate an experiment; ``data_overrides`` replace [data] keys (e.g. fold=2)."""
    path = resolve_path(name_or_path)
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{path}: not valid TOML: {err}") from None
    where = str(path)
    top = [f.name for f in fields(Experiment)]
    unknown = set(raw) - set(top)
    if unknown:
        raise UserError(f"{where}: unknown section(s) {sorted(unknown)}; known: {sorted(top)}")
    phases = raw.get("phases", [])
    if not isinstance(phases, list):
        raise UserError(f"{where} phases: expected [[phases]] tables")
    tables = {f.name: f.default_factory for f in fields(Experiment) if f.default_factory is not MISSING}
    experiment = Experiment(
        name=_typed(raw.get("name", path.stem), str, f"{where} name"),
        description=_typed(raw.get("description", ""), str, f"{where} description"),
        phases=tuple(_build(Phase, p, f"{where} [[phases]] #{i + 1}") for i, p in enumerate(phases)),
        **{key: _build(cls, raw.get(key, {}), f"{where} [{key}]") for key, cls in tables.items()},
    )
    if data_overrides:
        experiment = replace(experiment, data=replace(experiment.data, **data_overrides))
    validate(experiment, where)
    return experiment


# ----------------------------------------------------------------------------- ranges


def _check(ok: bool, where: str, value, expected: str) -> None:
    if not ok:
        raise UserError(f"{where} = {value!r}: {expected}")


def validate(experiment: Experiment, where: str = "experiment") -> None:
    """Ranges and names, each error naming the table and key, before any training starts."""
    data, model, predict = experiment.data, experiment.model, experiment.predict
    if not experiment.phases:
        raise UserError(f"{where}: no [[phases]]: nothing to train")
    for i, phase in enumerate(experiment.phases, 1):
        at = f"{where} [[phases]] #{i}"
        _check(phase.optimizer in OPTIMIZERS, f"{at} optimizer", phase.optimizer, f"choose one of {tuple(OPTIMIZERS)}")
        _check(phase.schedule in SCHEDULES, f"{at} schedule", phase.schedule, f"choose one of {SCHEDULES}")
        _check(phase.epochs >= 1, f"{at} epochs", phase.epochs, "must be >= 1")
        _check(phase.lr > 0, f"{at} lr", phase.lr, "must be > 0")
        _check(0 < phase.pct_start < 1, f"{at} pct_start", phase.pct_start, "must be in (0, 1)")
        _check(phase.weight_decay is None or phase.weight_decay >= 0, f"{at} weight_decay", phase.weight_decay,
               "must be >= 0")
    at = f"{where} [data]"
    _check(data.n_folds >= 2, f"{at} n_folds", data.n_folds, "must be >= 2")
    _check(0 <= data.fold < data.n_folds, f"{at} fold", data.fold, f"must be in 0..{data.n_folds - 1}")
    _check(data.size >= 16, f"{at} size", data.size, "must be >= 16 pixels")
    _check(data.batch_size >= 1, f"{at} batch_size", data.batch_size, "must be >= 1")
    _check(0 < data.negative_fraction <= 1, f"{at} negative_fraction", data.negative_fraction, "must be in (0, 1]")
    _check(data.source in ("images", "dicom"), f"{at} source", data.source, "'images' or 'dicom'")
    _check(data.max_rotate >= 0 and data.max_warp >= 0 and data.max_lighting >= 0, f"{at} max_rotate/warp/lighting",
           (data.max_rotate, data.max_warp, data.max_lighting), "must be >= 0")
    _check(data.max_zoom >= 1, f"{at} max_zoom", data.max_zoom, "must be >= 1")
    _check(data.num_workers >= -1, f"{at} num_workers", data.num_workers, "must be >= 0, or -1 for automatic")
    _check(data.samples_per_epoch > 0 and (data.samples_per_epoch <= 1 or data.samples_per_epoch.is_integer()),
           f"{at} samples_per_epoch", data.samples_per_epoch, "a fraction in (0, 1] or a whole count")
    _check(data.valid_samples >= 0, f"{at} valid_samples", data.valid_samples, "must be >= 0 (0: all)")
    _check(data.context >= 0, f"{at} context", data.context, "must be >= 0")
    _check(data.context_recipe in ("window_per_slice", "all"), f"{at} context_recipe", data.context_recipe,
           "'window_per_slice' or 'all'")
    _check(not data.context or data.context_recipe == "all" or len(data.windows) == 2 * data.context + 1,
           f"{at} windows", list(data.windows), f"context_recipe 'window_per_slice' with context = {data.context} "
           f"needs {2 * data.context + 1} windows, one per slice")
    _check(data.image_format in ("auto", "jpg", "png", "npy"), f"{at} image_format", data.image_format,
           "'auto', 'jpg', 'png' or 'npy'")
    _check(data.decode in DECODERS, f"{at} decode", data.decode, f"one of {DECODERS}")
    train = experiment.train
    _check(train.precision in PRECISIONS, f"{where} [train] precision", train.precision, f"one of {PRECISIONS}")
    _check(train.loss in LOSSES, f"{where} [train] loss", train.loss, f"one of {LOSSES}")
    _check(0 <= train.ema < 1, f"{where} [train] ema", train.ema, "a decay in [0, 1) (0: no average)")
    _check(experiment.sequence.loss in LOSSES, f"{where} [sequence] loss", experiment.sequence.loss,
           f"one of {LOSSES}")
    _check(model.normalize in ("imagenet", "none"), f"{where} [model] normalize", model.normalize,
           "'imagenet' or 'none'")
    _check(predict.tta_n >= 1, f"{where} [predict] tta_n", predict.tta_n, "must be >= 1")
    seq = experiment.sequence
    for key in ("hidden", "layers", "epochs", "batch_series"):
        _check(getattr(seq, key) >= 1, f"{where} [sequence] {key}", getattr(seq, key), "must be >= 1")
    _check(seq.model in ("gru", "conv"), f"{where} [sequence] model", seq.model, "'gru' or 'conv'")
    _check(seq.embedding_dims >= 0, f"{where} [sequence] embedding_dims", seq.embedding_dims, "must be >= 0")
    _check(0 <= seq.dropout < 1 and seq.lr > 0, f"{where} [sequence] dropout/lr", (seq.dropout, seq.lr),
           "dropout in [0, 1) and lr > 0")
    _check(0 <= predict.tta_beta <= 1, f"{where} [predict] tta_beta", predict.tta_beta, "must be in [0, 1]")
    from .ct.windowing import parse_windows

    try:
        parse_windows(list(data.windows))
    except UserError as err:
        raise UserError(f"{at} windows: {err}") from None
    check_arch(model.arch, f"{where} [model] arch")


def check_arch(arch: str, where: str) -> None:
    """An unknown timm name is an error here, not an hour into a Kaggle session (needs timm;
    without the train extra there is no model to build, so nothing to check)."""
    if importlib.util.find_spec("timm") is None:
        return
    from . import hub_offline

    hub_offline()
    with warnings.catch_warnings():  # timm's layers use torch.jit.script, which torch now deprecates
        warnings.simplefilter("ignore", FutureWarning)
        import timm

    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:8]
        raise UserError(f"{where} = {arch!r}: not a timm model name" + (f" (e.g. {', '.join(close)})" if close else ""))
