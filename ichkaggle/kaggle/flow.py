"""Kaggle runs from this machine: render, push, follow, fetch, submit (the whole resumable job
built on these is ``kaggle_pipeline``).

- :func:`render_kernel` / :func:`render_dataset`: a template folder (``kernels/<name>``,
  ``datasets/<name>``) -> a temporary folder with the user's slug in the metadata, the
  run's variables (``CONFIG``, ``FOLD``, ``FOLDS``) in the script, only allow-listed files,
  and no credential (checked);
- :func:`push_kernels` / :func:`push_dataset`: push through :class:`~.kaggle_api.KaggleSession`,
  follow the versions with bounded backoff, download the outputs and the log;
- submissions (:func:`check_csv` / :func:`submit_csv`) are :mod:`ichkaggle.kaggle.submit`'s.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..competition import SLUG as COMPETITION
from ..errors import UserError
from ..experiment import CONFIG_DIR, load_experiment
from .api import PLACEHOLDER_OWNER, KaggleSession
from .bundle import (
    SRC_DATASET,
    dataset_files,
    metadata_json,
    refuse_credentials,
    render_dataset_metadata,
    stale_bundle,
)
from .credentials import secret_values
from .failures import KaggleError
from .results import DEFAULT_POLLING, KERNEL_FAILED, KernelStatus, Polling, PushedKernel, poll

TRAIN = "train"
INFER = "infer"
_print = functools.partial(print, flush=True)  # the default ``log``: progress shows at once


def warn_if_stale(layout: Layout) -> None:
    """The kernels install the pushed bundle: say so when the local one lags the source."""
    reason = stale_bundle(layout.datasets / SRC_DATASET)
    if reason:
        print(f"warning: {reason}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- options


@dataclass(frozen=True)
class Layout:
    """Where the templates are and where fetched outputs go."""

    kernels: Path
    datasets: Path
    out: Path

    @classmethod
    def find(cls, kernels=None, datasets=None, out=None) -> Layout:
        """Templates from the checkout holding the cwd (else the package's own checkout),
        outputs in its ``runs/kaggle`` (else the cwd's)."""
        here = _project_dir(Path.cwd().resolve())
        base = here or _project_dir(Path(__file__).resolve().parent) or Path.cwd()
        return cls(Path(kernels) if kernels else base / "kernels",
                   Path(datasets) if datasets else base / "datasets",
                   Path(out) if out else (here or Path.cwd()) / "runs" / "kaggle")


def _project_dir(start: Path) -> Path | None:
    """``start`` or the first parent holding both kernels/ and datasets/."""
    return next((folder for folder in (start, *start.parents)
                 if (folder / "kernels").is_dir() and (folder / "datasets").is_dir()), None)


def parse_folds(spec: str | None) -> list[int] | None:
    """``"0-4"``, ``"0,2,4"``, ``"1"``, ``"0-1,3"`` -> sorted fold numbers."""
    if spec is None:
        return None
    folds = set()
    for part in str(spec).replace(" ", "").split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise UserError(f"--folds {spec!r}: use numbers and ranges, e.g. 0-4 or 0,2,4")
        lo, hi = int(match.group(1)), int(match.group(2) or match.group(1))
        if hi < lo:
            raise UserError(f"--folds {spec!r}: the range {part} is empty")
        folds.update(range(lo, hi + 1))
    return sorted(folds)


def experiment_folds(config: str, folds: list[int] | None) -> tuple[object, list[int]]:
    """The experiment (validated here, before any GPU minute) and the folds to run."""
    experiment = load_experiment(config)
    folds = folds if folds is not None else [experiment.data.fold]
    bad = [f for f in folds if not 0 <= f < experiment.data.n_folds]
    if bad:
        raise UserError(f"--folds {bad}: {experiment.name} has n_folds = {experiment.data.n_folds}")
    return experiment, folds


def kernel_config_name(config: str, layout: Layout) -> str:
    """The name the kernel finds the config by: a bundled config, or a TOML in the src dataset."""
    stem = Path(config).stem if Path(config).suffix == ".toml" else Path(config).name
    for known in (CONFIG_DIR / f"{stem}.toml", layout.datasets / SRC_DATASET / f"{stem}.toml"):
        if known.is_file() and (not Path(config).is_file() or Path(config).read_bytes() == known.read_bytes()):
            return stem
    raise UserError(f"config {config} is not in the bundle the kernels install: run "
                    f"`ichkaggle bundle --config {config}` and `ichkaggle push dataset {SRC_DATASET}` first")


# ----------------------------------------------------------------------------- rendering


def _template_dir(base: Path, name: str, metadata: str) -> Path:
    for folder in (Path(name), base / name):
        if (folder / metadata).is_file():
            return folder
    known = sorted(p.name for p in base.iterdir() if (p / metadata).is_file()) if base.is_dir() else []
    raise UserError(f"{name}: no {metadata} in {base / name} (known: {', '.join(known) or 'none'})")


def render_refs(refs, owner: str) -> list[str]:
    """``KAGGLE_USERNAME/slug`` -> ``owner/slug``; other owners are left alone."""
    out = []
    for ref in refs or []:
        first, _, rest = str(ref).partition("/")
        out.append(f"{owner}/{rest}" if first == PLACEHOLDER_OWNER and rest else str(ref))
    return out


def set_variables(script: str, variables: dict, where: str = "script") -> str:
    """Replace the top-level ``NAME = ...`` line of each variable with its value."""
    for name, value in variables.items():
        pattern = re.compile(rf"^{re.escape(name)} = .*$", re.MULTILINE)
        if len(pattern.findall(script)) != 1:
            raise UserError(f"{where}: expected exactly one line `{name} = ...` to set")
        script = pattern.sub(lambda _, line=f"{name} = {value!r}": line, script)
    return script


def _secrets(session: KaggleSession | None) -> list[str]:
    return list(session.secrets) if session is not None else secret_values()


def render_kernel(job: KernelJob, dest: Path, owner: str, secrets: list[str]) -> Path:
    """Write ``kernel-metadata.json`` and the code file of ``job``'s template into ``dest``, rendered."""
    template = job.template
    meta = json.loads((template / "kernel-metadata.json").read_text())
    code_file = meta.get("code_file", "")
    if not code_file or not (template / code_file).is_file() or Path(code_file).name != code_file:
        raise UserError(f"{template}/kernel-metadata.json: code_file {code_file!r} is not a file beside it")
    meta["id"], meta["title"] = job.ref(owner), job.title
    for key in ("dataset_sources", "kernel_sources", "model_sources"):
        meta[key] = render_refs(meta.get(key, []), owner)
    if job.kernel_sources is not None:
        meta["kernel_sources"] = list(job.kernel_sources)
    meta["enable_internet"] = bool(meta.get("enable_internet", False))  # explicit: the client's default is on
    meta["is_private"] = bool(meta.get("is_private", True))
    meta.setdefault("competition_sources", [COMPETITION])
    script = set_variables((template / code_file).read_text(), job.variables, str(template / code_file))
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "kernel-metadata.json").write_text(metadata_json(meta))
    (dest / code_file).write_text(script)
    refuse_credentials([dest / "kernel-metadata.json", dest / code_file], secrets)
    return dest


def render_dataset(folder: Path, dest: Path, owner: str, secrets: list[str]) -> tuple[Path, list[Path]]:
    """The upload folder of a dataset: rendered metadata + its allow-listed files (linked)."""
    meta = render_dataset_metadata(json.loads((folder / "dataset-metadata.json").read_text()), owner)
    files = dataset_files(folder, folder.name)
    if not files:
        hint = "run `ichkaggle bundle`" if folder.name.endswith("-src") else f"see {folder / 'README.md'}"
        raise UserError(f"{folder}: nothing to upload ({hint})")
    refuse_credentials(files, secrets, folder)
    dest.mkdir(parents=True, exist_ok=True)
    for path in files:
        try:
            os.link(path, dest / path.name)
        except OSError:
            shutil.copy2(path, dest / path.name)
    (dest / "dataset-metadata.json").write_text(metadata_json(meta))
    refuse_credentials([dest / "dataset-metadata.json"], secrets)
    return dest, files


# ----------------------------------------------------------------------------- kernels


@dataclass(frozen=True)
class KernelJob:
    """One kernel to push: its template, slug, title, script variables and attached outputs."""

    name: str
    template: Path
    slug: str
    title: str
    variables: dict = field(default_factory=dict)
    kernel_sources: tuple[str, ...] | None = None
    #: the outputs worth downloading: a regex of file names (None: all but weights)
    fetch: str | None = None

    def ref(self, owner: str) -> str:
        return f"{owner}/{self.slug}"

    @property
    def gpu(self) -> bool:
        return bool(json.loads((self.template / "kernel-metadata.json").read_text()).get("enable_gpu", False))


def kernel_template(layout: Layout, name: str) -> tuple[Path, str, str]:
    """(folder, slug, title) of the kernel template ``name``."""
    template = _template_dir(layout.kernels, name, "kernel-metadata.json")
    meta = json.loads((template / "kernel-metadata.json").read_text())
    slug = str(meta.get("id", "")).split("/")[-1]
    return template, slug, str(meta.get("title") or slug)


def kernel_jobs(name: str, owner: str, layout: Layout, config: str, folds: list[int]) -> list[KernelJob]:
    """The kernels of template ``name``: one per fold when its script has ``FOLD``; one
    attached to each fold's train kernel when it has ``FOLDS``; else the template as is."""
    template, slug, title = kernel_template(layout, name)
    meta = json.loads((template / "kernel-metadata.json").read_text())
    script = (template / meta["code_file"]).read_text() if meta.get("code_file") else ""
    names = set(re.findall(r"^(CONFIG|FOLDS|FOLD) = ", script, re.MULTILINE))
    common = {"CONFIG": kernel_config_name(config, layout)} if "CONFIG" in names else {}
    if "FOLD" in names:
        return [KernelJob(template.name, template, f"{slug}-fold{k}", f"{title} fold{k}", {**common, "FOLD": k})
                for k in folds]
    if "FOLDS" in names:
        train_slug = kernel_template(layout, TRAIN)[1]
        sources = tuple(f"{owner}/{train_slug}-fold{k}" for k in folds)
        return [KernelJob(template.name, template, slug, title, {**common, "FOLDS": list(folds)}, sources)]
    return [KernelJob(template.name, template, slug, title, common)]


def push_job(session: KaggleSession, job: KernelJob, owner: str, accelerator: str | None = None,
             keep: Path | None = None) -> PushedKernel | Path:
    """Render ``job`` and push it; with ``keep`` only render into that folder (a dry run)."""
    if keep is not None:
        if (keep / job.slug).exists():
            shutil.rmtree(keep / job.slug)
        return render_kernel(job, keep / job.slug, owner, _secrets(session))
    with tempfile.TemporaryDirectory(prefix="ichkaggle-kernel-") as tmp:
        folder = render_kernel(job, Path(tmp) / job.slug, owner, session.secrets)
        return session.push_kernel(folder, accelerator=accelerator if job.gpu else None)


def log_text(path: Path) -> str:
    """Kaggle's log (a JSON list of {stream_name, time, data}) as plain text."""
    raw = path.read_text(errors="replace")
    try:
        entries = json.loads(raw)
        return "".join(str(e.get("data", "")) for e in entries if isinstance(e, dict))
    except ValueError:
        return raw


def fetch_outputs(session: KaggleSession, kernel: PushedKernel, out: Path, weights: bool = False,
                  log: Callable[[str], None] = _print, pattern: str | None = None) -> None:
    """Download a finished version's outputs (weights only if asked, only ``pattern`` if given) and its log."""
    slug = kernel.ref.split("/")[1]
    dest = out / slug / f"v{kernel.version}"
    files, log_path = session.kernel_output(kernel.ref, dest, kernel.version, skip_weights=not weights,
                                            pattern=pattern)
    kernel.output = str(dest)
    if log_path is not None:
        text_path = log_path.with_name(log_path.name + ".txt")
        text_path.write_text(session.scrub(log_text(log_path)))
        kernel.log = str(text_path)
    log(f"  {slug} v{kernel.version}: {len(files)} output file(s) in {dest}"
        + (f"; log: {kernel.log}" if kernel.log else "; no log"))


def log_tail(path: str, lines: int = 15) -> str:
    if not path or not Path(path).is_file():
        return ""
    tail = Path(path).read_text(errors="replace").rstrip().splitlines()[-lines:]
    return "\n".join("    | " + line for line in tail)


def follow(session: KaggleSession, kernels: list[PushedKernel], polling: Polling, out: Path,
           weights: bool = False, save: Callable[[], None] = lambda: None,
           log: Callable[[str], None] = _print, patterns: dict | None = None, hint: str = "") -> None:
    """Poll the versions until each ends, fetch each one's outputs (``patterns``: ref -> the
    file names worth having) and log; a UserError names the failed ones (their log's tail, then ``hint``)."""
    by_ref = {k.ref: k for k in kernels}

    def changed(ref: str, status: KernelStatus) -> None:
        kernel = by_ref[ref]
        kernel.status, kernel.failure_message = status.status, status.failure_message
        log(f"  {ref} v{kernel.version}: {status}")
        save()

    pending = {k.ref: k.version for k in kernels if k.status not in ("COMPLETE", *KERNEL_FAILED)}
    if pending:
        session.follow_kernels(pending, first=polling.first, longest=polling.longest, timeout=polling.timeout,
                               on_change=changed)
    for kernel in kernels:
        if not kernel.output or not Path(kernel.output).is_dir():
            try:
                fetch_outputs(session, kernel, out, weights and kernel.status == "COMPLETE", log,
                              (patterns or {}).get(kernel.ref))
            except UserError as err:
                if kernel.status == "COMPLETE":
                    raise
                log(f"  {kernel.ref} v{kernel.version}: no outputs or log to fetch ({err})")
            save()
    failed = [failure_text(k) for k in kernels if k.status != "COMPLETE"]
    if failed:
        raise UserError("kernel run(s) failed:\n" + "\n".join(failed) + hint)


def failure_text(kernel: PushedKernel) -> str:
    """How a version ended, where its log is, and the log's last lines."""
    text = f"{kernel.ref} v{kernel.version} ended {kernel.status}"
    if kernel.failure_message:
        text += f": {kernel.failure_message}"
    text += f" (log: {kernel.log})" if kernel.log else f" (see {kernel.url})"
    tail = log_tail(kernel.log)
    return text + (f"\n  last lines of the log:\n{tail}" if tail else "")


def last_words(path: str) -> str:
    """The last line a kernel printed: what it did (its scripts end on a summary line)."""
    if not path or not Path(path).is_file():
        return ""
    lines = [line.strip() for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def push_kernels(session: KaggleSession, name: str, owner: str, layout: Layout, config: str,
                 folds: list[int] | None, *, wait: bool, polling: Polling = DEFAULT_POLLING,
                 accelerator: str | None = None, weights: bool = True, dry_run: Path | None = None,
                 log: Callable[[str], None] = _print) -> list[PushedKernel]:
    """``ichkaggle push kernel NAME``: push (one version per fold for train), and with ``wait``
    follow them to the end and download the outputs; raises if any ended in ERROR."""
    _, folds = experiment_folds(config, folds)
    jobs = kernel_jobs(name, owner, layout, config, folds)
    warn_if_stale(layout)
    if dry_run is not None:
        for job in jobs:
            folder = push_job(session, job, owner, keep=dry_run)
            log(f"would push {job.ref(owner)} from {folder}:")
            log("  " + (folder / "kernel-metadata.json").read_text().rstrip().replace("\n", "\n  "))
        return []
    pushed = []
    for job in jobs:
        try:
            kernel = push_job(session, job, owner, accelerator)
        except KaggleError as err:
            if err.kind != "busy":
                raise
            raise UserError(f"{err}: Kaggle runs at most 2 GPU sessions of an account at once; push the rest when "
                            "one has ended, or let `ichkaggle push run` queue them") from None
        log(f"pushed {kernel.ref} version {kernel.version}: {kernel.url}")
        pushed.append(kernel)
    if not wait:
        log(f"follow with: ichkaggle push kernel {name} ... --wait, or open the URLs above")
        return pushed
    follow(session, pushed, polling, layout.out, weights=weights, log=log)
    return pushed


# ----------------------------------------------------------------------------- datasets


def push_dataset(session: KaggleSession, name: str, owner: str, layout: Layout, *, notes: str = "",
                 wait: bool = False, polling: Polling = DEFAULT_POLLING, dry_run: Path | None = None,
                 log: Callable[[str], None] = _print) -> str:
    """``ichkaggle push dataset NAME``: a new private dataset the first time, else a new version."""
    folder = _template_dir(layout.datasets, name, "dataset-metadata.json")
    if folder.resolve() == (layout.datasets / SRC_DATASET).resolve():
        warn_if_stale(layout)
    if dry_run is not None:
        dest = dry_run / folder.name
        if dest.exists():
            shutil.rmtree(dest)
        dest, files = render_dataset(folder, dest, owner, _secrets(session))
        log(f"would upload {len(files)} file(s) from {dest}: " + ", ".join(p.name for p in files))
        log("  " + (dest / "dataset-metadata.json").read_text().rstrip().replace("\n", "\n  "))
        return str(dest)
    with tempfile.TemporaryDirectory(prefix="ichkaggle-dataset-") as tmp:
        dest, files = render_dataset(folder, Path(tmp) / folder.name, owner, session.secrets)
        ref = json.loads((dest / "dataset-metadata.json").read_text())["id"]
        exists = session.dataset_status(ref) is not None
        size = sum(p.stat().st_size for p in files)
        log(f"{'new version of' if exists else 'creating'} dataset {ref}: {len(files)} file(s), "
            f"{size / 2**20:.1f} MiB")
        url = session.push_dataset(dest, notes or f"ichkaggle {time.strftime('%Y-%m-%d %H:%M')}", create=not exists)
    log(f"pushed dataset {ref}: {url}")
    if wait:
        status = poll(lambda: session.dataset_status(ref) or "missing",
                      lambda s: s in ("ready", "failed", "deleted"), what=f"dataset {ref}",
                      first=polling.first, longest=polling.longest, timeout=polling.timeout,
                      sleep=session.sleep, clock=session.clock, on_change=lambda s: log(f"  {ref}: {s}"))
        if status != "ready":
            raise UserError(f"dataset {ref} ended {status}: see {url}")
    return url

