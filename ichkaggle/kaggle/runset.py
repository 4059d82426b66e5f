"""The configs of one ``push run``: checked to blend, named for their kernels, grouped by image settings.

Why its own module: ``push run --config A --config B`` trains every config's folds and blends
them in one infer kernel. That only works if the configs agree on the folds. Their kernels
need names that do not collide, and the prepare kernels can be shared wherever the image
settings agree. All of it is decided here from the configs alone, before anything is
pushed. With one config nothing changes: today's slugs, state file name and state keys,
so runs already started resume.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..prepared.reader import settings_for
from .flow import experiment_folds, kernel_config_name
from .parts import MAX_SLUG

#: a config's part of its kernels' slugs (several configs): lowercase letters, digits and hyphens
TAG_LENGTH = 16


@dataclass(frozen=True)
class RunConfig:
    """One config of a run: the name the kernels find it by, the experiment, its slug tag ("" alone)."""

    name: str
    experiment: object
    tag: str = ""


def slug_tag(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:TAG_LENGTH].strip("-") or "config"


def run_configs(configs, folds: list[int] | None, layout) -> tuple[list[RunConfig], list[int]]:
    """The run's configs (each validated, each in the bundle) and its folds. Several configs must
    share the folds (``[data] n_folds`` and ``seed``): the blend is fitted on their out-of-fold rows."""
    configs = [configs] if isinstance(configs, str) else list(configs)
    if not configs:
        raise UserError("push run: at least one --config")
    loaded = [experiment_folds(c, folds) for c in configs]
    folds = loaded[0][1]
    names = [kernel_config_name(c, layout) for c in configs]
    if len(set(names)) != len(names):
        raise UserError(f"--config {names}: a config given twice")
    if len(configs) == 1:
        return [RunConfig(names[0], loaded[0][0])], folds
    first = loaded[0][0]
    for name, (experiment, _) in zip(names[1:], loaded[1:]):
        mine, theirs = experiment.data, first.data
        if (mine.n_folds, mine.seed) != (theirs.n_folds, theirs.seed):
            raise UserError(f"config {name} has [data] n_folds = {mine.n_folds}, seed = {mine.seed} and {names[0]} "
                            f"n_folds = {theirs.n_folds}, seed = {theirs.seed}: a blend needs the same folds (a "
                            "slice one config trained on would be held out by the other)")
    experiment_names = [e.name for e, _ in loaded]
    if len(set(experiment_names)) != len(experiment_names):
        raise UserError(f"configs {names} have the experiment names {experiment_names}: the kernels tell their runs "
                        "apart by `name`; give each config its own")
    tags = [slug_tag(n) for n in names]
    if len(set(tags)) != len(tags):
        raise UserError(f"configs {names} give the kernel slug parts {tags}: rename one")
    return [RunConfig(n, e, t) for n, (e, _), t in zip(names, loaded, tags)], folds


def several(configs: list[RunConfig]) -> bool:
    return len(configs) > 1


def state_identity(configs: list[RunConfig], folds: list[int], owner: str) -> dict:
    """What a state file belongs to: one config keeps today's ``config`` key, several are ``configs``."""
    key = {"configs": [c.name for c in configs]} if several(configs) else {"config": configs[0].name}
    return {**key, "folds": folds, "owner": owner}


def state_name(configs: list[RunConfig], folds: list[int]) -> str:
    """``<a>-folds0-1.json``; several configs ``<a>+<b>-folds0-1.json`` (in the order given)."""
    return f"{'+'.join(c.name for c in configs)}-folds{'-'.join(map(str, folds))}.json"


def fold_key(config: RunConfig, fold: int) -> str:
    """A fold's key in the state: ``"3"`` for a run of one config (as before), ``"<config>/3"`` for several."""
    return f"{config.name}/{fold}" if config.tag else str(fold)


def fold_slug(train_slug: str, config: RunConfig, fold: int, session: int) -> str:
    return f"{train_slug}{'-' + config.tag if config.tag else ''}-fold{fold}-s{session}"


def infer_slug(infer: str, configs: list[RunConfig]) -> str:
    """The infer kernel's slug: the template's for one config; for several one named after them all."""
    if not several(configs):
        return infer
    return f"{infer}-blend-{hashlib.sha1('+'.join(c.name for c in configs).encode()).hexdigest()[:6]}"


def check_slugs(train_slug: str, configs: list[RunConfig], folds: list[int]) -> None:
    """Kaggle answers HTTP 500 for a slug (a title) over 50 characters: refuse one before pushing."""
    longest = max((fold_slug(train_slug, c, max(folds), 99) for c in configs), key=len)
    if len(longest) > MAX_SLUG:
        raise UserError(f"the train kernels' slugs would be up to {len(longest)} characters ({longest}); Kaggle takes "
                        f"at most {MAX_SLUG}: shorten the config's file name")


def prepare_key(experiment) -> str:
    """The image settings' part of a prepare kernel's slug: configs with one key share the prepared data."""
    settings = settings_for(experiment.data)
    digest = hashlib.sha1(json.dumps(settings.as_json(), sort_keys=True).encode()).hexdigest()[:6]
    return f"{settings.size}px-{settings.format}-{digest}"


def settings_groups(configs: list[RunConfig]) -> dict[str, list[RunConfig]]:
    """The configs by image settings (prepare key), in the order given."""
    groups: dict[str, list[RunConfig]] = {}
    for config in configs:
        groups.setdefault(prepare_key(config.experiment), []).append(config)
    return groups


def fixed_sources(template: Path, competition: str) -> int:
    """A kernel template's own sources: its datasets and the competition."""
    meta = json.loads((template / "kernel-metadata.json").read_text())
    return len(meta.get("dataset_sources", [])) + len(meta.get("competition_sources", [competition]))
