"""The rehearsal's executor: one kernel version as Kaggle runs it, with Kaggle's limits (no torch, seconds)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ichkaggle.kaggle.sandbox import GPU_CAP_TEXT, Limits, Refused, Sandbox
from ichkaggle.kaggle.schedule import KILLED_AT_LIMIT

SLUG = "rsna-intracranial-hemorrhage-detection"


def _kernel(base: Path, slug: str, script: str, gpu: bool = False, **sources) -> Path:
    """A rendered kernel folder, as `push` writes it."""
    folder = base / "pushed" / slug
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"id": f"alice/{slug}", "title": slug.replace("-", " "), "code_file": "script.py", "language": "python",
            "kernel_type": "script", "enable_gpu": gpu, "enable_internet": False,
            **{key: list(value) for key, value in sources.items()}}
    (folder / "kernel-metadata.json").write_text(json.dumps(meta))
    (folder / "script.py").write_text(script)
    return folder


def _wait(sandbox: Sandbox, ref: str, version: int | None = None, timeout: float = 60) -> tuple[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = sandbox.status(ref, version)
        if status[0] in ("COMPLETE", "ERROR"):
            return status
        time.sleep(0.05)
    raise AssertionError(f"{ref} still {status} after {timeout}s")


@pytest.fixture
def world(tmp_path):
    competition = tmp_path / "competition"
    competition.mkdir()
    (competition / "stage_2_train.csv").write_text("ID,Label\n")
    (competition / "test_labels.csv").write_text("hidden\n")
    dataset = tmp_path / "datasets" / "ichkaggle-src"
    dataset.mkdir(parents=True)
    (dataset / "ichkaggle-0.1.0-py3-none-any.whl").write_bytes(b"a wheel")
    sandbox = Sandbox(tmp_path / "rehearsal", Limits(max_gpu_sessions=2, session_hours=1.0, output_bytes=10_000),
                      competitions={SLUG: competition}, datasets={"alice/ichkaggle-src": dataset})
    yield sandbox
    sandbox.stop_all()


PROBE = '''
import json, os, socket
from pathlib import Path
out = {"env": dict(os.environ), "cwd": os.getcwd(), "inputs": sorted(os.listdir(os.environ["ICHKAGGLE_INPUT"]))}
inputs = Path(os.environ["ICHKAGGLE_INPUT"])
out["competition"] = sorted(os.listdir(inputs / "rsna-intracranial-hemorrhage-detection"))
out["earlier"] = (inputs / "ichkaggle-first").joinpath("made.txt").read_text()
for name, call in (("connect", lambda: socket.socket().connect(("10.255.255.1", 80))),
                   ("create", lambda: socket.create_connection(("10.255.255.1", 80), timeout=2)),
                   ("lookup", lambda: socket.getaddrinfo("www.kaggle.com", 443))):
    try:
        call()
        out[name] = "connected"
    except OSError as err:
        out[name] = str(err)
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(1)
socket.create_connection(server.getsockname(), timeout=2).close()
out["loopback"] = "ok"
Path("probe.json").write_text(json.dumps(out))
print("probed", flush=True)
import sys
print("to stderr", file=sys.stderr, flush=True)
'''


def test_a_kernel_runs_in_its_tree_offline_with_its_sources_and_no_credentials(world, tmp_path, monkeypatch):
    for name, value in (("KAGGLE_KEY", "k" * 32), ("KAGGLE_USERNAME", "alice"), ("KAGGLE_API_TOKEN", "KGAT_x" * 4),
                        ("AWS_SECRET_ACCESS_KEY", "s3cr3t"), ("GITHUB_TOKEN", "ghp_x"), ("ICHKAGGLE_EXTRA", "1")):
        monkeypatch.setenv(name, value)
    first = world.start(_kernel(tmp_path, "ichkaggle-first", "open('made.txt', 'w').write('by the first')\n"))
    assert first == 1 and _wait(world, "alice/ichkaggle-first") == ("COMPLETE", "")
    version = world.start(_kernel(tmp_path, "ichkaggle-probe", PROBE, competition_sources=[SLUG],
                                  dataset_sources=["alice/ichkaggle-src"], kernel_sources=["alice/ichkaggle-first"]))
    assert _wait(world, "alice/ichkaggle-probe") == ("COMPLETE", "")
    folder = world.folder("alice/ichkaggle-probe", version)
    probe = json.loads((folder / "working" / "probe.json").read_text())
    env = probe["env"]
    assert not [k for k in env if k.startswith("KAGGLE") or "TOKEN" in k or "SECRET" in k or k.endswith("_KEY")]
    assert "s3cr3t" not in json.dumps(env) and "ICHKAGGLE_EXTRA" not in env
    assert env["ICHKAGGLE_INPUT"] == str(folder / "input") and env["ICHKAGGLE_OUTPUT"] == str(folder / "working")
    assert env["HOME"].startswith(str(folder / "tmp")) and env["ICHKAGGLE_SESSION_HOURS"] == "1"
    assert env["ICHKAGGLE_NPROC"] == "1" and env["HF_HUB_OFFLINE"] == "1" and probe["cwd"] == str(folder / "working")
    assert probe["inputs"] == ["ichkaggle-first", "ichkaggle-src", SLUG]
    assert probe["competition"] == ["stage_2_train.csv"]  # the test labels stay hidden, as on Kaggle
    assert probe["earlier"] == "by the first"
    assert "internet is off" in probe["connect"] and "10.255.255.1:80" in probe["connect"]
    assert "internet is off" in probe["lookup"] and "internet is off" in probe["create"]
    assert probe["loopback"] == "ok"
    log = json.loads(world.log_json("alice/ichkaggle-probe"))
    assert {"stream_name": "stdout", "data": "probed\n"} in [{k: e[k] for k in ("stream_name", "data")} for e in log]
    assert any(e["stream_name"] == "stderr" and e["data"] == "to stderr\n" and e["time"] >= 0 for e in log)
    assert [name for name, _ in world.output_files("alice/ichkaggle-probe")] == ["probe.json"]


WAIT_FOR_STOP = "import pathlib, time\nwhile not pathlib.Path('{stop}').exists():\n    time.sleep(0.05)\n"


def test_a_gpu_start_beyond_the_cap_is_refused_with_kaggles_text(world, tmp_path):
    stop = tmp_path / "stop"
    script = WAIT_FOR_STOP.format(stop=stop)
    for k in range(2):
        world.start(_kernel(tmp_path, f"gpu-{k}", script, gpu=True))
    with pytest.raises(Refused) as info:
        world.start(_kernel(tmp_path, "gpu-2", script, gpu=True))
    assert info.value.error == GPU_CAP_TEXT.format(n=2) == "Maximum batch GPU session count of 2 reached."
    assert world.start(_kernel(tmp_path, "cpu-0", script)) == 1  # CPU sessions are not capped here
    stop.touch()
    for ref in ("alice/gpu-0", "alice/gpu-1", "alice/cpu-0"):
        assert _wait(world, ref)[0] == "COMPLETE"
    assert world.start(_kernel(tmp_path, "gpu-2", script, gpu=True)) == 1  # a slot is free again
    assert _wait(world, "alice/gpu-2")[0] == "COMPLETE"
    assert 0 < world.gpu_hours_used() < 0.1  # three GPU versions' wall time, charged to the ledger
    gpu = [(r["started"], r["ended"]) for r in world.timeline() if r["gpu"]]
    assert max(sum(s <= t < e for s, e in gpu) for t, _ in gpu) <= 2


def test_a_version_is_killed_at_its_session_limit_and_keeps_no_output(world, tmp_path):
    world.overrides["slow"] = {"session_hours": 1 / 3600}  # one second
    version = world.start(_kernel(tmp_path, "slow", "open('partial.txt', 'w').write('x')\nimport time\n"
                                                    "time.sleep(60)\n", gpu=True))
    started = time.monotonic()
    status, failure = _wait(world, "alice/slow", version)
    assert status == "ERROR" and KILLED_AT_LIMIT.search(failure) and time.monotonic() - started < 20
    assert world.output_files("alice/slow") == [] and world.latest("alice/slow", complete=True) is None
    assert 0 < world.gpu_hours_used() < 10 / 3600  # charged for the second or so it ran


def test_an_output_over_the_limit_is_an_error_naming_its_size(world, tmp_path):
    world.start(_kernel(tmp_path, "big", "open('big.bin', 'wb').write(b'0' * 12345)\n"))
    status, failure = _wait(world, "alice/big")
    assert status == "ERROR" and "12,345 bytes exceeds the 10,000-byte limit" in failure
    assert world.output_files("alice/big") == []


def test_a_failing_script_is_an_error_and_a_missing_source_refuses_the_start(world, tmp_path):
    world.start(_kernel(tmp_path, "broken", "raise SystemExit('no wheel')\n"))
    status, failure = _wait(world, "alice/broken")
    assert status == "ERROR" and "exited with code 1" in failure and "no wheel" in world.log_json("alice/broken")
    with pytest.raises(Refused) as info:
        world.start(_kernel(tmp_path, "orphan", "pass\n", dataset_sources=["alice/nope"],
                            kernel_sources=["alice/broken", "alice/never"]))
    assert info.value.invalid == {"dataset_sources": ["alice/nope"],
                                  "kernel_sources": ["alice/broken", "alice/never"]}  # broken never completed
