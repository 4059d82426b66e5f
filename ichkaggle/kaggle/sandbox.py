"""One kernel version run on this machine the way Kaggle runs it: a /kaggle-shaped tree, offline, limited.

Why: the pipeline is only as good as the kernels it pushes, and Kaggle's limits (2 GPU sessions
at once, the session length, 20 GB of output, the weekly quota) are where a first real run
breaks. :class:`Sandbox` takes what a push sends (the rendered ``kernel-metadata.json`` and its
script) and runs it in ``ROOT/kernels/<slug>/v<N>/``:

- ``input/``: every source mounted as Kaggle mounts it (links): the competition at
  ``input/<competition>/`` (without ``test_labels.csv``, which a real competition hides), each
  dataset at ``input/<slug>/``, each attached kernel's latest COMPLETE version's output at
  ``input/<kernel-slug>/``; a source that does not exist refuses the start, as SaveKernel does;
- ``working/`` (the output, cwd) and ``tmp/`` (HOME, scratch, the package's pip target);
- the script in its own process group, with an environment built from nothing (no credential
  can leak in: no ``KAGGLE_*``, no token or key), the ``ICHKAGGLE_*`` variables pointed into the
  tree, internet off (dead proxies and a ``sitecustomize`` that refuses any non-loopback
  connect or lookup), stdout and stderr in Kaggle's JSON log format;
- Kaggle's limits: a GPU start beyond ``max_gpu_sessions`` running is refused with Kaggle's
  own text; the process group is killed at the session limit (ERROR, outputs not kept); an
  output over the limit is an ERROR naming its size; each GPU version's wall time is charged
  to a quota ledger.

Each version is run by a small supervisor process (``python -m ichkaggle.kaggle.sandbox DIR``)
that writes ``status.json`` as the version goes, so a status is read like Kaggle's, also by a
later process (a re-run of ``push run --local`` follows what an earlier one started).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..files import write_atomic

#: SaveKernel's error beyond the cap, as Kaggle words it (kaggle_api.GPU_SESSION_CAP recognises it)
GPU_CAP_TEXT = "Maximum batch GPU session count of {n} reached."
#: the failure message of a version killed at its limit (kaggle_schedule.KILLED_AT_LIMIT recognises it)
KILLED_TEXT = "Notebook exceeded its maximum run time of {hours:g} hours and was stopped; its outputs were not kept"
OUTPUT_TEXT = ("Notebook output of {size:,} bytes exceeds the {limit:,}-byte limit of /kaggle/working; its outputs "
               "were not kept")
TERMINAL = ("COMPLETE", "ERROR", "CANCEL_ACKNOWLEDGED")
LEDGER = "gpu-quota.jsonl"
#: names a kernel's environment never holds, whatever an override says
CREDENTIAL_LIKE = re.compile(r"^KAGGLE|TOKEN|SECRET|PASSW|CREDENTIAL|(^|_)KEY($|_)|(^|_)AUTH", re.IGNORECASE)
DEAD_PROXY = "http://127.0.0.1:9"  # nothing listens there
SITECUSTOMIZE = '''"""Internet off in a rehearsed kernel (ichkaggle.kaggle.sandbox): loopback only."""
import ipaddress
import socket

_connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo


def _loopback(host):
    if host in (None, "", "localhost"):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _refuse(host, port):
    return OSError(101, f"internet is off in this kernel (an ichkaggle rehearsal, enable_internet false): "
                        f"a connection to {host}:{port} is refused")


def connect(self, address):
    if isinstance(address, tuple) and not _loopback(address[0]):
        raise _refuse(*address[:2])
    return _connect(self, address)


def connect_ex(self, address):
    if isinstance(address, tuple) and not _loopback(address[0]):
        return 101
    return _connect_ex(self, address)


def getaddrinfo(host, port, *args, **kwargs):
    if not _loopback(host):
        raise socket.gaierror(-2, f"internet is off in this kernel: {host} is not looked up")
    return _getaddrinfo(host, port, *args, **kwargs)


socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
'''


class Refused(Exception):
    """A start refused as SaveKernel would refuse it: ``error`` (Kaggle's text) or ``invalid`` sources."""

    def __init__(self, error: str = "", invalid: dict | None = None):
        super().__init__(error or "; ".join(f"{k}: {v}" for k, v in (invalid or {}).items()))
        self.error, self.invalid = error, invalid or {}


@dataclass(frozen=True)
class Limits:
    """Kaggle's limits as the sandbox applies them."""

    max_gpu_sessions: int = 2
    session_hours: float = 12.0
    output_bytes: float = 20e9


@dataclass
class Sandbox:
    """Runs kernel versions under ``root`` (see the module docstring).

    ``competitions``: slug -> folder; ``datasets``: ``owner/slug`` -> folder (a dict, or any object
    with ``get``, filled as datasets are made); ``overrides``: per ``slug`` or ``slug/v<N>``, a test
    hook: ``session_hours`` (this version's limit) and ``env`` (extra variables, never credentials)."""

    root: Path
    limits: Limits = field(default_factory=Limits)
    competitions: dict = field(default_factory=dict)
    datasets: dict = field(default_factory=dict)
    overrides: dict = field(default_factory=dict)
    _children: list = field(default_factory=list)

    def __post_init__(self):
        self.root = Path(self.root)
        (self.root / "kernels").mkdir(parents=True, exist_ok=True)
        self.site = self.root / "sandbox-site"
        self.site.mkdir(exist_ok=True)
        (self.site / "sitecustomize.py").write_text(SITECUSTOMIZE)

    # ------------------------------------------------------------------ versions

    def folder(self, ref: str, version: int | None = None) -> Path:
        slug = ref.split("/")[-1]
        version = version or self.latest(ref)
        return self.root / "kernels" / slug / f"v{version}"

    def versions(self, ref: str) -> list[int]:
        base = self.root / "kernels" / ref.split("/")[-1]
        return sorted(int(p.name[1:]) for p in base.glob("v*") if p.name[1:].isdigit()) if base.is_dir() else []

    def latest(self, ref: str, complete: bool = False) -> int | None:
        for version in reversed(self.versions(ref)):
            if not complete or self.status(ref, version)[0] == "COMPLETE":
                return version
        return None

    def record(self, ref: str, version: int | None = None) -> dict:
        path = self.folder(ref, version) / "status.json"
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return {"status": "QUEUED"}
        if record["status"] not in TERMINAL and not _alive(record.get("supervisor")):
            record.update(status="ERROR", failure="the rehearsal's supervisor of this version is gone (killed?)",
                          ended=record.get("ended") or time.time())
            write_atomic(path, json.dumps(record).encode())
        return record

    def status(self, ref: str, version: int | None = None) -> tuple[str, str]:
        """(QUEUED | RUNNING | COMPLETE | ERROR, the failure message)."""
        for child in self._children:
            child.poll()  # reap finished supervisors
        record = self.record(ref, version)
        return record["status"], record.get("failure", "")

    def running_gpu(self) -> list[str]:
        refs = []
        for folder in sorted((self.root / "kernels").glob("*/v*")):
            ref = f"_/{folder.parent.name}"
            record = self.record(ref, int(folder.name[1:]))
            if record.get("gpu") and record["status"] not in TERMINAL:
                refs.append(f"{folder.parent.name}/{folder.name}")
        return refs

    def timeline(self) -> list[dict]:
        """Every version: slug, version, gpu, status, started and ended (epoch seconds; None while not)."""
        rows = []
        for folder in sorted((self.root / "kernels").glob("*/v*")):
            record = self.record(f"_/{folder.parent.name}", int(folder.name[1:]))
            rows.append({"slug": folder.parent.name, "version": int(folder.name[1:]), **{
                k: record.get(k) for k in ("gpu", "status", "started", "ended", "pushed", "failure")}})
        return rows

    def gpu_hours_used(self) -> float:
        """The ledger's GPU hours plus what the running GPU versions used so far."""
        path = self.root / LEDGER
        ended = sum(json.loads(line)["hours"] for line in path.read_text().splitlines() if line) \
            if path.is_file() else 0.0
        now = time.time()
        running = sum((now - r["started"]) / 3600 for r in self.timeline()
                      if r["gpu"] and r["status"] not in TERMINAL and r.get("started"))
        return ended + running

    # ------------------------------------------------------------------ outputs

    def output_files(self, ref: str, version: int | None = None) -> list[tuple[str, Path]]:
        """(name relative to the output, path) of every file the version left."""
        working = self.folder(ref, version) / "working"
        return sorted((p.relative_to(working).as_posix(), p) for p in working.rglob("*")
                      if p.is_file() and not p.is_symlink()) if working.is_dir() else []

    def log_json(self, ref: str, version: int | None = None) -> str:
        """The version's log in Kaggle's format: a JSON list of {stream_name, time, data}."""
        path = self.folder(ref, version) / "log.jsonl"
        entries = [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []
        return json.dumps(entries)

    # ------------------------------------------------------------------ starting one

    def start(self, pushed: str | os.PathLike) -> int:
        """Run a rendered kernel folder as its next version; returns the version number, or raises
        :class:`Refused` as SaveKernel refuses (the GPU cap, a source that does not exist)."""
        pushed = Path(pushed)
        meta = json.loads((pushed / "kernel-metadata.json").read_text())
        ref, code = str(meta["id"]), pushed / meta["code_file"]
        slug = ref.split("/")[-1]
        gpu = bool(meta.get("enable_gpu") or meta.get("machine_shape"))
        mounts = self._mounts(meta)
        if gpu and len(self.running_gpu()) >= self.limits.max_gpu_sessions:
            raise Refused(GPU_CAP_TEXT.format(n=self.limits.max_gpu_sessions))
        version = (self.versions(ref) or [0])[-1] + 1
        folder = self.folder(ref, version)
        for name in ("input", "working", "tmp/home", "src"):
            (folder / name).mkdir(parents=True)
        for name, target in mounts.items():
            (folder / "input" / name).symlink_to(target, target_is_directory=True)
        shutil.copyfile(code, folder / "src" / code.name)
        shutil.copyfile(pushed / "kernel-metadata.json", folder / "src" / "kernel-metadata.json")
        override = {**self.overrides.get(slug, {}), **self.overrides.get(f"{slug}/v{version}", {})}
        hours = float(override.get("session_hours", self.limits.session_hours))
        run = {"command": [sys.executable, str(folder / "src" / code.name)], "cwd": str(folder / "working"),
               "env": self.environment(folder, hours, override.get("env", {})), "seconds": hours * 3600,
               "hours": hours, "output_bytes": self.limits.output_bytes, "gpu": gpu, "ref": ref, "version": version,
               "ledger": str(self.root / LEDGER)}
        write_atomic(folder / "run.json", json.dumps(run, indent=1).encode())
        status = {"status": "QUEUED", "gpu": gpu, "pushed": time.time()}
        write_atomic(folder / "status.json", json.dumps(status).encode())
        supervisor = {k: v for k, v in os.environ.items() if not CREDENTIAL_LIKE.search(k)}  # it imports this module
        with open(folder / "supervisor.log", "wb") as out:  # the child keeps its own copy of the descriptor
            child = subprocess.Popen([sys.executable, "-m", "ichkaggle.kaggle.sandbox", str(folder)], env=supervisor,
                                     stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self._children.append(child)
        write_atomic(folder / "status.json", json.dumps({**status, "supervisor": child.pid}).encode())
        return version

    def _mounts(self, meta: dict) -> dict[str, Path]:
        mounts, invalid = {}, {}
        for key, find in (("competition_sources", self._competition), ("dataset_sources", self._dataset),
                          ("kernel_sources", self._kernel_output)):
            for source in meta.get(key) or []:
                target = find(str(source))
                if target is None:
                    invalid.setdefault(key, []).append(str(source))
                else:
                    mounts[str(source).split("/")[-1]] = target
        if invalid:
            raise Refused(invalid=invalid)
        return mounts

    def _competition(self, slug: str) -> Path | None:
        """The competition as a kernel sees it: every file but the hidden test labels."""
        source = self.competitions.get(slug)
        if source is None or not Path(source).is_dir():
            return None
        view = self.root / "competitions" / slug
        if not view.is_dir():
            view.mkdir(parents=True)
            for entry in Path(source).iterdir():
                if entry.name != "test_labels.csv":
                    (view / entry.name).symlink_to(entry.resolve())
        return view

    def _dataset(self, ref: str) -> Path | None:
        folder = self.datasets.get(ref)
        return Path(folder) if folder is not None and Path(folder).is_dir() else None

    def _kernel_output(self, ref: str) -> Path | None:
        version = self.latest(ref, complete=True)
        return None if version is None else self.folder(ref, version) / "working"

    def environment(self, folder: Path, hours: float, extra: dict) -> dict:
        """A kernel's environment, built from nothing: paths into its tree, offline, no credential."""
        tmp = folder / "tmp"
        threads = str(max(1, (os.cpu_count() or 1) // max(1, self.limits.max_gpu_sessions)))
        env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(tmp / "home"), "TMPDIR": str(tmp),
               "LANG": "C.UTF-8", "PYTHONPATH": str(self.site), "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
               "HF_HUB_OFFLINE": "1", "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "MPLBACKEND": "Agg",
               "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "NO_PROXY": "", "no_proxy": "",
               "ICHKAGGLE_INPUT": str(folder / "input"), "ICHKAGGLE_OUTPUT": str(folder / "working"),
               "ICHKAGGLE_SCRATCH": str(tmp / "scratch"), "ICHKAGGLE_PIP_TARGET": str(tmp / "site"),
               "ICHKAGGLE_SESSION_HOURS": f"{hours:g}", "ICHKAGGLE_NPROC": "1", "ICHKAGGLE_WORKERS": "1"}
        env.update(dict.fromkeys(("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"), DEAD_PROXY))
        env.update({str(k): str(v) for k, v in extra.items()})
        return {k: v for k, v in env.items() if not CREDENTIAL_LIKE.search(k)}

    def stop_all(self) -> None:
        """Kill every version still running (a test's teardown; a rehearsal leaves them to finish)."""
        for folder in (self.root / "kernels").glob("*/v*"):
            record = self.record(f"_/{folder.parent.name}", int(folder.name[1:]))
            if record["status"] not in TERMINAL:
                for key in ("kernel", "supervisor"):
                    _kill_group(record.get(key))
        for child in self._children:
            child.wait(timeout=30)


def _alive(pid) -> bool:
    if not pid:
        return True  # not started yet: its supervisor writes the pid first thing
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_group(pid, sig=signal.SIGKILL) -> None:
    if pid:
        try:
            os.killpg(int(pid), sig)
        except (ProcessLookupError, PermissionError):
            pass


# ----------------------------------------------------------------------------- the supervisor of one version


def _output_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def supervise(folder: Path) -> None:
    """Run the version of ``folder`` to its end under its limits, writing status.json and log.jsonl."""
    run = json.loads((folder / "run.json").read_text())
    status_path = folder / "status.json"
    status = json.loads(status_path.read_text())
    with open(folder / "log.jsonl", "a", buffering=1) as log:
        started = time.time()
        child = subprocess.Popen(run["command"], cwd=run["cwd"], env=run["env"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, start_new_session=True)
        status.update(status="RUNNING", started=started, kernel=child.pid, supervisor=os.getpid())
        write_atomic(status_path, json.dumps(status).encode())
        code, killed = _run_logged(child, run["seconds"], log, started)
    ended = time.time()
    working = Path(run["cwd"])
    size = _output_bytes(working)
    if killed:
        result, failure = "ERROR", KILLED_TEXT.format(hours=run["hours"])
    elif code != 0:
        result, failure = "ERROR", f"the script exited with code {code}: see its log"
    elif size > run["output_bytes"]:
        result, failure = "ERROR", OUTPUT_TEXT.format(size=size, limit=int(run["output_bytes"]))
    else:
        result, failure = "COMPLETE", ""
    if killed or (result == "ERROR" and size > run["output_bytes"]):  # Kaggle keeps nothing of such a version
        shutil.rmtree(working)
        working.mkdir()
    if run["gpu"]:
        with open(run["ledger"], "a") as ledger:
            ledger.write(json.dumps({"ref": run["ref"], "version": run["version"],
                                     "hours": (ended - started) / 3600}) + "\n")
    status.update(status=result, failure=failure, ended=ended, code=code, output_bytes=size)
    write_atomic(status_path, json.dumps(status).encode())


def _run_logged(child: subprocess.Popen, seconds: float, log, started: float) -> tuple[int, bool]:
    """Wait for ``child`` at most ``seconds`` (then kill its process group), its lines into ``log``
    as Kaggle's log entries; (exit code, killed)."""
    lock = threading.Lock()

    def pump(stream, name: str) -> None:
        for line in iter(stream.readline, b""):
            entry = {"stream_name": name, "time": round(time.time() - started, 3),
                     "data": line.decode("utf-8", "replace")}
            with lock:
                log.write(json.dumps(entry) + "\n")

    readers = [threading.Thread(target=pump, args=(child.stdout, "stdout")),
               threading.Thread(target=pump, args=(child.stderr, "stderr"))]
    for reader in readers:
        reader.start()
    killed = False
    try:
        child.wait(timeout=max(seconds, 0.0))
    except subprocess.TimeoutExpired:
        killed = True
        _kill_group(child.pid, signal.SIGTERM)
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _kill_group(child.pid)
            child.wait()
    _kill_group(child.pid)  # whatever the script left running in its group
    for reader in readers:
        reader.join(timeout=10)
    return child.returncode, killed


if __name__ == "__main__":
    supervise(Path(sys.argv[1]))
