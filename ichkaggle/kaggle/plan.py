"""What an experiment will cost on Kaggle before anything is pushed: GPU-hours, sessions, wall clock, parts.

Why: a Kaggle GPU session lasts at most 12 hours, an account runs at most 2 GPU sessions at
once, the weekly GPU quota is about 30 hours and one kernel keeps at most 20 GB of output;
EXP_00 as the seed ran it needs far more. The plan multiplies the images an experiment
trains and scores by a throughput, from the first source that has one (each plan line says
which): the latest finished session of that config on that accelerator (``push run``
records it), the user's ``--throughput``, the reference table :data:`REFERENCE` (which says
where its figures come from), else a reference scaled by the model's FLOPs
(:mod:`ichkaggle.kaggle.flops`, torch imported only then). No network here.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..files import write_atomic
from .contract import OUTPUT_LIMIT_BYTES
from .parts import STAGE2_TEST_IMAGES, PartsPlan, plan_parts

#: Kaggle's accelerator ids (``--accelerator``, ``machine_shape``): what each one is
ACCELERATORS = {
    "NvidiaTeslaT4": "two NVIDIA T4 (16 GB each): Kaggle's default GPU; a single T4 is not offered",
    "NvidiaTeslaP100": "one NVIDIA P100 (16 GB); the current Kaggle image's PyTorch has no kernels for it "
                       "(kaggle-cli PR #1156): prefer NvidiaTeslaT4",
}
STAGE2_TRAIN_IMAGES = 752_803
SESSION_HOURS = 12.0
#: kept free in each session: setup (install, reading labels) and saving the outputs
SESSION_MARGIN_HOURS = 0.75
#: the train kernel's saving margin (its MARGIN_MINUTES; ICHKAGGLE_MARGIN_MINUTES wins over it)
MARGIN_MINUTES = 20.0
#: a session killed at its limit is pushed again with this many times the margin
KILLED_MARGIN_FACTOR = 3.0
#: GPU batch sessions Kaggle runs at once per account (it refuses a push beyond them)
MAX_GPU_SESSIONS = 2
#: inference runs about 3x as many images a second as training (no backward pass)
INFERENCE_SPEEDUP = 3.0
#: Training img/s at 224 px with mixed precision, the whole run (loader, validation) included.
#: ESTIMATES: the model alone was measured on an H200 (EfficientNet-B5 1,345 img/s, B0
#: 5,111 img/s, batches 128 / 256, issue #9's GPU run); Kaggle's GPUs are about an order of
#: magnitude slower (no published T4/P100 figure for EfficientNet; timm's tables list B5 at
#: 456 px at ~114 img/s on an RTX 3090). T4 x2 is taken as 1/9 of the H200 with both GPUs
#: busy, P100 as 1/11; a pixel count other than 224 px scales them by (224 / size)^2.
REFERENCE = {
    ("efficientnet_b0", "NvidiaTeslaT4"): 570.0,
    ("efficientnet_b0", "NvidiaTeslaP100"): 465.0,
    ("efficientnet_b5", "NvidiaTeslaT4"): 150.0,
    ("efficientnet_b5", "NvidiaTeslaP100"): 122.0,
}
REFERENCE_SOURCE = ("estimate: H200 model-alone measurement / 9 (T4 x2) or / 11 (P100), see "
                    "ichkaggle.kaggle.plan.REFERENCE")
REFERENCE_SIZE = 224


@dataclass(frozen=True)
class Plan:
    config: str
    accelerator: str
    folds: int
    train_images: int  # per epoch
    valid_images: int  # scored per epoch
    valid_fold: int  # the whole validation fold, scored with TTA at the end
    epochs: int
    img_per_s: float
    source: str
    hours_per_fold: float
    sessions_per_fold: int
    parts: PartsPlan | None = None
    max_gpu_sessions: int = MAX_GPU_SESSIONS
    session_hours: float = SESSION_HOURS

    @property
    def total_hours(self) -> float:
        return self.hours_per_fold * self.folds

    @property
    def hours_per_session(self) -> float:
        return min(self.session_hours, self.hours_per_fold / self.sessions_per_fold)

    @property
    def rounds(self) -> int:
        return session_rounds(self.folds, self.sessions_per_fold, self.max_gpu_sessions)

    def wall_clock(self) -> str:
        """How long the run takes with at most ``max_gpu_sessions`` at once (rounds of sessions)."""
        prepare = (f", after the prepare kernel(s) (~{self.parts.hours_per_part:.1f} h each, CPU, at once)"
                   if self.parts else "")
        return (f"~{self.rounds} round(s) of <= {self.session_hours:g} h ({self.folds} fold(s) x "
                f"{self.sessions_per_fold} session(s), {self.max_gpu_sessions} at once; "
                f"~{self.hours_per_session:.1f} h each), then the infer kernel{prepare}")

    def lines(self, quota: Quota | None = None) -> list[str]:
        out = [
            f"plan for {self.config} on {self.accelerator} ({ACCELERATORS.get(self.accelerator, 'not a known id')})",
            f"  images per epoch     {self.train_images:,} train, {self.valid_images:,} validation",
            (f"  epochs               {self.epochs}, then the kept model scores its {self.valid_fold:,}-image "
             "validation fold with TTA"),
            f"  throughput           {self.img_per_s:,.0f} img/s training ({self.source})",
            f"  GPU-hours per fold   {self.hours_per_fold:.1f}",
            (f"  sessions per fold    {self.sessions_per_fold} (at most {self.session_hours:g} h each, "
             f"{session_margin_hours(self.session_hours):g} h kept free)"),
            f"  folds                {self.folds}: {self.total_hours:.1f} GPU-hours in total",
            f"  wall clock           {self.wall_clock()}",
        ]
        if self.parts is not None:
            out += self.parts.lines()
        if quota is not None:
            verdict = "fits" if self.total_hours <= quota.remaining else "does NOT fit"
            out.append(f"  weekly GPU quota     {quota.remaining:.1f} h remaining of {quota.total:.1f} h "
                       f"(refreshes {quota.refresh}): the plan {verdict}")
        return out


@dataclass(frozen=True)
class Quota:
    remaining: float
    total: float
    refresh: str


def _throughputs(out: str | os.PathLike) -> tuple[Path, list[dict]]:
    """``OUT/throughput.json`` and its records, oldest first (none when it does not exist)."""
    path = Path(out) / "throughput.json"
    return path, json.loads(path.read_text()) if path.exists() else []


def record_throughput(out: str | os.PathLike, config: str, accelerator: str, img_per_s: float, device: str) -> None:
    """Remember what a finished session measured (the plan's first source)."""
    path, records = _throughputs(out)
    records.append({"config": config, "accelerator": accelerator, "img_per_s": img_per_s, "device": device,
                    "date": time.strftime("%Y-%m-%dT%H:%M:%S")})
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(records, indent=2) + "\n").encode())


def session_margin_hours(session_hours: float = SESSION_HOURS) -> float:
    """What a session keeps free: 0.75 h of Kaggle's 12, in proportion for a shorter (rehearsal) session."""
    return SESSION_MARGIN_HOURS * min(1.0, session_hours / SESSION_HOURS)


def margin_minutes(session_hours: float = SESSION_HOURS, killed: bool = False) -> float:
    """The train kernel's saving margin: 20 minutes of a 12-hour session (in proportion for a shorter
    one), :data:`KILLED_MARGIN_FACTOR` times that when the session was killed at its limit before."""
    minutes = MARGIN_MINUTES * min(1.0, session_hours / SESSION_HOURS)
    return round(minutes * (KILLED_MARGIN_FACTOR if killed else 1.0), 3)


def session_rounds(folds: int, sessions: int, at_once: int) -> int:
    """Waves of sessions ``push run`` needs when each of ``folds`` folds is a chain of ``sessions``
    sessions of equal length and at most ``at_once`` run together: the schedule it follows (the
    lowest open fold first, a fold's next session as soon as its previous one ended), simulated."""
    return chain_rounds([sessions] * folds, at_once)


def chain_rounds(chains: list[int], at_once: int) -> int:
    """Waves of sessions for folds whose chains have these lengths (several configs' folds together)."""
    left = list(chains)
    rounds = 0
    while any(left):
        rounds += 1
        for k in [k for k, n in enumerate(left) if n][:max(1, at_once)]:
            left[k] -= 1
    return rounds


def total_lines(plans: list[Plan], max_gpu_sessions: int = MAX_GPU_SESSIONS, quota: Quota | None = None) -> list[str]:
    """What several configs' plans cost together (``push run --config A --config B``): GPU-hours summed,
    the wall clock of all their folds through the same GPU sessions, the quota against the sum."""
    hours = sum(p.total_hours for p in plans)
    rounds = chain_rounds([p.sessions_per_fold for p in plans for _ in range(p.folds)], max_gpu_sessions)
    each = ", ".join(f"{p.config} {p.total_hours:.1f} h" for p in plans)
    out = [f"all {len(plans)} configs",
           f"  GPU-hours            {hours:.1f} in total ({each})",
           f"  wall clock           ~{rounds} round(s) of sessions, {max_gpu_sessions} at once, then one infer kernel "
           "that blends the configs"]
    if quota is not None:
        verdict = "fits" if hours <= quota.remaining else "does NOT fit"
        out.append(f"  weekly GPU quota     {quota.remaining:.1f} h remaining of {quota.total:.1f} h "
                   f"(refreshes {quota.refresh}): the plans together {verdict}")
    return out


def in_channels(experiment) -> int:
    """The model's input channels (as ``training.channels`` counts them, without importing torch)."""
    n, context = len(experiment.data.windows), experiment.data.context
    return n * (2 * context + 1) if context and experiment.data.context_recipe == "all" else n


def throughput(experiment, accelerator: str, records: str | os.PathLike | None = None,
               given: float | None = None) -> tuple[float, str]:
    """(training img/s, where it comes from): a measured session, ``given``, the reference table, else
    the nearest reference arch (by FLOPs) on that accelerator scaled by the FLOPs ratio: an estimate."""
    arch, size = experiment.model.arch, experiment.data.size
    measured = [r for r in (_throughputs(records)[1] if records is not None else [])
                if r["config"] == experiment.name and r["accelerator"] == accelerator]
    if measured:
        return float(measured[-1]["img_per_s"]), f"measured by a session on {measured[-1]['date'][:10]}"
    if given:
        return float(given), "given by --throughput"
    if (arch, accelerator) in REFERENCE:
        return REFERENCE[(arch, accelerator)] * (REFERENCE_SIZE / size) ** 2, REFERENCE_SOURCE
    references = {a: ips for (a, acc), ips in REFERENCE.items() if acc == accelerator}
    if not references:
        raise UserError(f"no throughput for {arch} on {accelerator}: no session of {experiment.name} has run there "
                        f"and the reference table has no figure for that accelerator (it knows "
                        f"{', '.join(ACCELERATORS)}): pass --throughput IMG_PER_S")
    from .flops import forward_gflops

    flops = forward_gflops(arch, size, in_channels(experiment), records)
    ref_flops = {a: forward_gflops(a, REFERENCE_SIZE, 3, records) for a in sorted(references)}
    nearest = min(ref_flops, key=lambda a: abs(math.log(ref_flops[a] / flops)))
    ips = references[nearest] * ref_flops[nearest] / flops
    return ips, (f"ESTIMATE: {nearest}'s reference ({references[nearest]:g} img/s at {REFERENCE_SIZE} px) scaled by "
                 f"forward FLOPs, {arch} {flops:.3g} GFLOP at {size} px vs {ref_flops[nearest]:.3g}; FLOPs miss "
                 "memory-bound layers: a measured session or --throughput replaces it")


def make_plan(experiment, folds: int, accelerator: str, *, records: str | os.PathLike | None = None,
              train_images: int = STAGE2_TRAIN_IMAGES, test_images: int = STAGE2_TEST_IMAGES,
              throughput_given: float | None = None, max_gpu_sessions: int = MAX_GPU_SESSIONS,
              session_hours: float = SESSION_HOURS, part_limit: float = OUTPUT_LIMIT_BYTES,
              max_parts: int | None = None, parts: int | None = None) -> Plan:
    """The plan of ``experiment`` over ``folds`` folds of a ``train_images`` training set (and its
    ``test_images`` prepared too, in parts of at most ``part_limit`` bytes; ``parts`` forces a count,
    ``max_parts`` is what a kernel can attach besides its other sources)."""
    data = experiment.data
    ips, source = throughput(experiment, accelerator, records, throughput_given)
    parts_plan = None
    if data.source != "dicom":  # the kernels decode the DICOMs themselves: nothing to prepare
        from .parts import MAX_SOURCES

        fmt = "jpg" if len(data.windows) in (1, 3) else "png"  # as the prepare kernel picks it
        parts_plan = plan_parts(fmt, len(data.windows), data.size, train_images + test_images, limit=part_limit,
                                max_parts=max_parts or MAX_SOURCES, parts=parts)
    fold_train = round(train_images * (data.n_folds - 1) / data.n_folds)
    valid_fold = train_images - fold_train
    per_epoch = data.epoch_samples(fold_train)
    valid = data.valid_samples or valid_fold
    epochs = sum(p.epochs for p in experiment.phases)
    tta = (experiment.predict.tta_n + 1) if experiment.predict.tta else 1
    seconds = epochs * (per_epoch / ips + valid / (ips * INFERENCE_SPEEDUP)) + valid_fold * tta / (
        ips * INFERENCE_SPEEDUP)
    hours = seconds / 3600
    margin = session_margin_hours(session_hours)
    sessions = max(1, math.ceil(hours / (session_hours - margin)))
    return Plan(experiment.name, accelerator, folds, per_epoch, valid, valid_fold, epochs, ips, source,
                hours + sessions * margin, sessions, parts_plan, max_gpu_sessions, session_hours)
