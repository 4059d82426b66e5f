"""Experiments as data: a TOML file -> a validated, resolved Experiment (no torch here).

Why: the seed's EXP blocks lived in notebook cells; as files they can be diffed, reviewed,
bundled to Kaggle and written next to the weights they produced.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from .errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
OPTIMIZERS = ("adam", "radam", "sgd", "adamw")
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
    tta_n: int = 4
    tta_beta: float = 0.25


@dataclass(frozen=True)
class Experiment:
    name: str
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    phases: tuple[Phase, ...] = ()
    predict: PredictConfig = field(default_factory=PredictConfig)
    description: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def to_toml(self) -> str:
        """The resolved experiment as TOML (written next to the weights it made)."""
        data = self.to_dict()
        lines = [f"name = {_toml_value(data.pop('name'))}", f"description = {_toml_value(data.pop('description'))}"]
        phases = data.pop("phases")
        for section, values in data.items():
            lines += ["", f"[{section}]"] + [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
        for phase in phases:
            lines += ["", "[[phases]]"] + [f"{k} = {_toml_value(v)}" for k, v in phase.items() if v is not None]
        return "\n".join(lines) + "\n"


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _build(cls, values: dict, where: str):
    known = {f.name: f for f in fields(cls)}
    unknown = set(values) - set(known)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    clean = {}
    for key, value in values.items():
        if key == "windows":
            value = tuple(value) if isinstance(value, (list, tuple)) else tuple(str(value).split(","))
        clean[key] = value
    try:
        return cls(**clean)
    except TypeError as err:
        raise UserError(f"{where}: {err}") from None


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
    top = {"name", "description", "model", "data", "phases", "predict"}
    unknown = set(raw) - top
    if unknown:
        raise UserError(f"{where}: unknown section(s) {sorted(unknown)}; known: {sorted(top)}")
    experiment = Experiment(
        name=str(raw.get("name", path.stem)),
        description=str(raw.get("description", "")),
        model=_build(ModelConfig, raw.get("model", {}), f"{where} [model]"),
        data=_build(DataConfig, raw.get("data", {}), f"{where} [data]"),
        phases=tuple(_build(Phase, p, f"{where} [[phases]] #{i + 1}") for i, p in enumerate(raw.get("phases", []))),
        predict=_build(PredictConfig, raw.get("predict", {}), f"{where} [predict]"),
    )
    if data_overrides:
        experiment = replace(experiment, data=replace(experiment.data, **data_overrides))
    validate(experiment, where)
    return experiment


def validate(experiment: Experiment, where: str = "experiment") -> None:
    """Errors that name the key, before any minute of training is spent."""
    data = experiment.data
    if not experiment.phases:
        raise UserError(f"{where}: no [[phases]]: nothing to train")
    for i, phase in enumerate(experiment.phases, 1):
        if phase.optimizer not in OPTIMIZERS:
            raise UserError(f"{where} phase {i} optimizer {phase.optimizer!r}: choose from {OPTIMIZERS}")
        if phase.schedule not in SCHEDULES:
            raise UserError(f"{where} phase {i} schedule {phase.schedule!r}: choose from {SCHEDULES}")
        if phase.epochs < 1 or not phase.lr > 0:
            raise UserError(f"{where} phase {i}: epochs must be >= 1 and lr > 0")
    if not 0 <= data.fold < data.n_folds:
        raise UserError(f"{where} [data] fold {data.fold}: must be in 0..{data.n_folds - 1}")
    if data.size < 16 or data.batch_size < 1:
        raise UserError(f"{where} [data]: size >= 16 and batch_size >= 1 required")
    if not 0 < data.negative_fraction <= 1:
        raise UserError(f"{where} [data] negative_fraction {data.negative_fraction}: must be in (0, 1]")
    if data.source not in ("images", "dicom"):
        raise UserError(f"{where} [data] source {data.source!r}: 'images' or 'dicom'")
    if experiment.model.normalize not in ("imagenet", "none"):
        raise UserError(f"{where} [model] normalize {experiment.model.normalize!r}: 'imagenet' or 'none'")
    from .windowing import parse_windows

    parse_windows(list(data.windows))
