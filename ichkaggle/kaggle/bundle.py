"""The package as a Kaggle dataset: a reproducible wheel + the configs, checked for credentials.

What ``build_bundle`` writes and what it refuses is told by ``ichkaggle bundle --help``
(commands/bundle.py); the credential checks are ``CREDENTIAL_NAMES`` and ``CREDENTIAL_PATTERNS``.
The wheel is built here with :mod:`zipfile` (sorted entries, one fixed timestamp, fixed
permissions, stored uncompressed), so the same source gives the same bytes on any machine.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import io
import json
import os
import re
import time
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..files import write_atomic

SRC_DATASET = "ichkaggle-src"
#: 1980-01-01T00:00:00Z: the earliest time a zip entry can hold; SOURCE_DATE_EPOCH overrides it
DEFAULT_EPOCH = 315532800
CREDENTIAL_NAMES = frozenset({
    "kaggle.json", ".env", "access_token", "access_token.txt", "credentials.json", ".netrc", ".pypirc",
})
CREDENTIAL_PATTERNS = (
    (re.compile(rb'"key"\s*:\s*"[0-9a-fA-F]{32}"'), 'a "key": "<32 hex>" entry (a kaggle.json)'),
    (re.compile(rb'KAGGLE_KEY["\']?\s*[=:]\s*["\']?[0-9a-fA-F]{32}'), "a KAGGLE_KEY=<32 hex> assignment"),
    (re.compile(rb'KAGGLE_API_TOKEN["\']?\s*[=:]\s*["\']?KGAT_[A-Za-z0-9]{16,}'), "a KAGGLE_API_TOKEN value"),
)
DEFAULT_METADATA = {
    "title": "ichkaggle src",
    "subtitle": "The ichkaggle package as a wheel, with its experiment configs",
    "description": "Built by `ichkaggle bundle`: install offline in a kernel with "
    "`pip install --no-index --no-deps /kaggle/input/ichkaggle-src/ichkaggle-*.whl`.",
    "licenses": [{"name": "other"}],
}


# ----------------------------------------------------------------------------- the source


@dataclass(frozen=True)
class Project:
    root: Path
    name: str
    version: str
    summary: str
    requires_python: str
    license: str
    dependencies: tuple[str, ...]
    extras: dict[str, tuple[str, ...]]
    scripts: dict[str, str]
    package_data: tuple[str, ...]

    @property
    def wheel_name(self) -> str:
        return f"{self.name}-{self.version}-py3-none-any.whl"


def _is_project(root: Path) -> bool:
    path = root / "pyproject.toml"
    if not path.is_file():
        return False
    try:
        return tomllib.loads(path.read_text()).get("project", {}).get("name") == "ichkaggle"
    except tomllib.TOMLDecodeError:
        return False


def project_root(start: str | os.PathLike | None = None) -> Path:
    """The checkout to bundle: ``start`` or the cwd or a parent of it, else the package's parent."""
    if start is not None:
        root = Path(start).resolve()
        if not _is_project(root):
            raise UserError(f"{root}: no pyproject.toml of the ichkaggle project here")
        return root
    here = Path.cwd().resolve()
    for folder in (here, *here.parents, Path(__file__).resolve().parents[2]):
        if _is_project(folder):
            return folder
    raise UserError("cannot find the ichkaggle source (pyproject.toml): run from the checkout or pass --source")


def read_project(root: Path) -> Project:
    data = tomllib.loads((root / "pyproject.toml").read_text())
    project = data["project"]
    license_ = project.get("license", {})
    package_data = data.get("tool", {}).get("setuptools", {}).get("package-data", {}).get(project["name"], [])
    return Project(
        root=root,
        name=project["name"],
        version=str(project["version"]),
        summary=project.get("description", ""),
        requires_python=project.get("requires-python", ""),
        license=license_.get("text", "") if isinstance(license_, dict) else str(license_),
        dependencies=tuple(project.get("dependencies", [])),
        extras={k: tuple(v) for k, v in project.get("optional-dependencies", {}).items()},
        scripts=dict(project.get("scripts", {})),
        package_data=tuple(package_data),
    )


def package_files(project: Project) -> tuple[list[Path], list[Path]]:
    """(allow-listed files, other files) of the package tree, sorted; caches are not listed."""
    allowed, other = [], []
    base = project.root / project.name
    for path in sorted(base.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts or path.suffix in (".pyc", ".pyo"):
            continue
        rel = path.relative_to(base).as_posix()
        if path.suffix == ".py" or any(fnmatch.fnmatchcase(rel, pattern) for pattern in project.package_data):
            allowed.append(path)
        else:
            other.append(path)
    return allowed, other


# ----------------------------------------------------------------------------- credentials


def credential_reason(path: Path, secrets: list[str], check_content: bool = True) -> str | None:
    """Why ``path`` looks like a credential, or None."""
    lower = path.name.lower()
    if lower in CREDENTIAL_NAMES or lower.endswith(".env") or lower.startswith(".env."):
        return f"its name ({path.name}) is a credential file's"
    if not check_content:
        return None
    needles = [s.encode() for s in secrets if s]
    tail = b""
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(1 << 22)
            if not chunk:
                return None
            window = tail + chunk
            if any(needle in window for needle in needles):
                return "it contains the Kaggle API key in use"
            for pattern, what in CREDENTIAL_PATTERNS:
                if pattern.search(window):
                    return f"it contains {what}"
            tail = window[-256:]


def refuse_credentials(paths, secrets: list[str], base: Path | None = None, content: bool = True) -> None:
    """Raise a UserError naming every file among ``paths`` that looks like a credential."""
    found = []
    for path in paths:
        reason = credential_reason(Path(path), secrets, content)
        if reason:
            shown = Path(path).relative_to(base) if base and Path(path).is_relative_to(base) else path
            found.append(f"{shown} ({reason})")
    if found:
        raise UserError("refusing: a file looks like a credential: " + "; ".join(found)
                        + ". Move it out of the tree (keep kaggle.json in ~/.kaggle)")


# ----------------------------------------------------------------------------- the wheel


def source_epoch() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    try:
        return max(DEFAULT_EPOCH, int(value)) if value else DEFAULT_EPOCH
    except ValueError:
        raise UserError(f"SOURCE_DATE_EPOCH={value!r}: not a number of seconds") from None


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _metadata_text(project: Project) -> str:
    lines = ["Metadata-Version: 2.1", f"Name: {project.name}", f"Version: {project.version}"]
    optional = {"Summary": project.summary, "License": project.license, "Requires-Python": project.requires_python}
    lines += [f"{key}: {value}" for key, value in optional.items() if value]
    lines += [f"Requires-Dist: {dep}" for dep in project.dependencies]
    for extra, deps in project.extras.items():
        lines.append(f"Provides-Extra: {extra}")
        lines += [f'Requires-Dist: {dep}; extra == "{extra}"' for dep in deps]
    return "\n".join(lines) + "\n"


def wheel_bytes(project: Project, files: list[Path], epoch: int | None = None) -> bytes:
    """A pure-Python wheel of ``files`` (paths inside the package dir), byte-for-byte reproducible."""
    epoch = source_epoch() if epoch is None else max(DEFAULT_EPOCH, epoch)
    stamp = time.gmtime(epoch)[:6]
    dist_info = f"{project.name}-{project.version}.dist-info"
    entries = sorted((path.relative_to(project.root).as_posix(), path.read_bytes()) for path in files)
    entries.append((f"{dist_info}/METADATA", _metadata_text(project).encode()))
    entries.append((f"{dist_info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: ichkaggle.kaggle.bundle\n"
                                          b"Root-Is-Purelib: true\nTag: py3-none-any\n"))
    if project.scripts:
        scripts = "".join(f"{name} = {target}\n" for name, target in sorted(project.scripts.items()))
        entries.append((f"{dist_info}/entry_points.txt", f"[console_scripts]\n{scripts}".encode()))
    entries.append((f"{dist_info}/top_level.txt", f"{project.name}\n".encode()))
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in entries)
    entries.append((f"{dist_info}/RECORD", (record + f"{dist_info}/RECORD,,\n").encode()))

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=stamp)
            info.create_system = 3  # unix, whatever builds it
            info.external_attr = 0o100644 << 16
            archive.writestr(info, data)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- the dataset folder


@dataclass
class BundleResult:
    out: Path
    wheel: Path
    files: list[Path]
    sha256: dict[str, str]
    skipped: list[Path] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)

    def describe(self) -> str:
        lines = [f"{self.out}:"]
        lines += [f"  {name}  sha256 {digest[:16]}..." for name, digest in sorted(self.sha256.items())]
        if self.skipped:
            lines.append("  not bundled (not allow-listed): " + ", ".join(str(p) for p in self.skipped))
        if self.removed:
            lines.append("  removed stale: " + ", ".join(p.name for p in self.removed))
        return "\n".join(lines)


def render_dataset_metadata(template: dict, owner: str, slug: str | None = None) -> dict:
    """``template`` with ``id`` set to ``owner/<its slug>``."""
    meta = dict(template)
    slug = slug or str(meta.get("id", "")).split("/")[-1] or SRC_DATASET
    meta["id"] = f"{owner}/{slug}"
    return meta


def metadata_json(meta: dict) -> str:
    return json.dumps(meta, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def build_bundle(out: str | os.PathLike | None = None, owner: str | None = None,
                 source: str | os.PathLike | None = None, extra_configs: tuple[str | os.PathLike, ...] = (),
                 epoch: int | None = None, secrets: list[str] | None = None) -> BundleResult:
    """Write the ``ichkaggle-src`` dataset folder; refuses (UserError) before writing anything
    if a file of the package tree, an extra config or the folder looks like a credential."""
    if not owner:
        raise UserError("no Kaggle username for dataset-metadata.json: pass --owner or set up credentials")
    project = read_project(project_root(source))
    out = Path(out) if out is not None else project.root / "datasets" / SRC_DATASET
    if secrets is None:
        from .credentials import secret_values

        secrets = secret_values()
    allowed, other = package_files(project)
    configs = sorted(p for p in allowed if p.suffix == ".toml" and p.parent.name == "configs")
    extras = [Path(p) for p in extra_configs]
    for path in extras:
        if not path.is_file() or path.suffix != ".toml":
            raise UserError(f"--config {path}: not a TOML file")
    # every file of the tree by name, what goes in by content too; and the output folder
    refuse_credentials(other, secrets, project.root, content=False)
    refuse_credentials(allowed + extras, secrets, project.root)
    if out.is_dir():
        refuse_credentials(sorted(p for p in out.iterdir() if p.is_file()), secrets, content=False)
    if extras:
        from ..experiment import load_experiment

        for path in extras:  # a config that cannot load would fail on Kaggle, an hour in
            load_experiment(path)
    names = {}
    for path in configs + extras:
        if path.name in names and names[path.name].read_bytes() != path.read_bytes():
            raise UserError(f"--config {path}: a different {path.name} is already bundled; rename it")
        names[path.name] = path

    out.mkdir(parents=True, exist_ok=True)
    templates = (out / "dataset-metadata.json", project.root / "datasets" / SRC_DATASET / "dataset-metadata.json")
    template = next((json.loads(p.read_text()) for p in templates if p.is_file()), DEFAULT_METADATA)
    meta = render_dataset_metadata(template, owner, SRC_DATASET)

    contents = {project.wheel_name: wheel_bytes(project, allowed, epoch)}
    contents.update((name, path.read_bytes()) for name, path in sorted(names.items()))
    contents["dataset-metadata.json"] = metadata_json(meta).encode()
    sha = {name: hashlib.sha256(data).hexdigest() for name, data in contents.items()}
    contents["SHA256SUMS"] = "".join(f"{digest}  {name}\n" for name, digest in sorted(sha.items())).encode()
    written = [write_atomic(out / name, data) for name, data in contents.items()]
    removed = [path for path in sorted(out.iterdir()) if path.is_file() and path.name not in contents
               and (fnmatch.fnmatch(path.name, f"{project.name}-*.whl") or path.suffix == ".toml")]
    for path in removed:
        path.unlink()
    refuse_credentials(written, secrets, out)  # belt and braces: nothing written carries the key
    return BundleResult(out, written[0], written, sha, [p.relative_to(project.root) for p in other], removed)


def dataset_files(folder: Path, name: str) -> list[Path]:
    """The files of a dataset folder that are uploaded (allow-listed per dataset)."""
    patterns = {
        SRC_DATASET: ("ichkaggle-*.whl", "*.toml", "SHA256SUMS"),
        "ichkaggle-timm-weights": ("*.safetensors", "SHA256SUMS"),
    }.get(name)

    def uploaded(path: Path) -> bool:  # another dataset: all but its notes and scripts
        return any(fnmatch.fnmatch(path.name, p) for p in patterns) if patterns else path.suffix not in (".py", ".md")

    return [path for path in sorted(folder.iterdir()) if path.is_file() and path.name != "dataset-metadata.json"
            and not path.name.startswith(".") and uploaded(path)]


def stale_bundle(folder: str | os.PathLike) -> str | None:
    """Why the wheel in ``folder`` is not what the source builds now (None: it is, or there is
    no checkout here to compare with)."""
    try:
        project = read_project(project_root())
    except (UserError, OSError, KeyError, tomllib.TOMLDecodeError):
        return None
    wheel = Path(folder) / project.wheel_name
    if not wheel.is_file():
        return f"no {wheel}: run `ichkaggle bundle`, then `ichkaggle push dataset {SRC_DATASET}`"
    allowed, _ = package_files(project)
    if wheel.read_bytes() != wheel_bytes(project, allowed):
        return (f"{wheel} is not what the source builds now: run `ichkaggle bundle`, then "
                f"`ichkaggle push dataset {SRC_DATASET}`, or the kernels run the old code")
    return None
