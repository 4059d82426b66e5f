"""`ichkaggle bundle`: a reproducible wheel + configs, allow-listed, refused if credentials show up."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ichkaggle.cli import main
from ichkaggle.errors import UserError
from ichkaggle.kaggle.bundle import build_bundle, dataset_files, project_root, read_project

from .fake_kaggle import files_containing

ROOT = Path(__file__).resolve().parents[1]
KEY = "3f2a9c0d8b7e6f5a4c3b2a1908f7e6d5"


@pytest.fixture
def source(tmp_path) -> Path:
    """A copy of the checkout's package and pyproject (so tests can plant files in it)."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(ROOT / "pyproject.toml", src / "pyproject.toml")
    shutil.copytree(ROOT / "ichkaggle", src / "ichkaggle", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return src


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_same_source_gives_the_same_bytes(source, tmp_path):
    first = build_bundle(tmp_path / "a", "alice", source, secrets=[KEY])
    for path in (source / "ichkaggle").rglob("*.py"):  # other mtimes, same content
        os.utime(path, (1_700_000_000, 1_700_000_000))
    second = build_bundle(tmp_path / "b", "alice", source, secrets=[KEY])
    assert _digests(first.out) == _digests(second.out)
    assert first.wheel.name == f"ichkaggle-{read_project(source).version}-py3-none-any.whl"
    with zipfile.ZipFile(first.wheel) as archive:
        names = archive.namelist()
        assert names == sorted(n for n in names if not n.startswith("ichkaggle-")) + [
            n for n in names if n.startswith("ichkaggle-")]  # package sorted, dist-info last
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    (source / "ichkaggle" / "windowing.py").write_text("# changed\n", encoding="utf-8")
    third = build_bundle(tmp_path / "c", "alice", source, secrets=[KEY])
    assert _digests(third.out)[first.wheel.name] != _digests(first.out)[first.wheel.name]


def test_only_allow_listed_files_go_in(source, tmp_path):
    (source / "ichkaggle" / "notes.txt").write_text("scratch")
    (source / "ichkaggle" / "configs" / "draft.yaml").write_text("a: 1")
    result = build_bundle(tmp_path / "out", "alice", source, secrets=[KEY])
    with zipfile.ZipFile(result.wheel) as archive:
        names = archive.namelist()
    package = [n for n in names if n.startswith("ichkaggle/")]
    assert package and all(n.endswith(".py") or (n.startswith("ichkaggle/configs/") and n.endswith((".toml", ".json")))
                           for n in package)
    assert "ichkaggle/configs/exp_00.toml" in names and "ichkaggle/cli.py" in names
    assert not any("notes.txt" in n or "draft.yaml" in n or "__pycache__" in n for n in names)
    record = [n for n in names if n.endswith("/RECORD")]
    assert record and {n for n in names if n.endswith((".dist-info/METADATA", ".dist-info/WHEEL"))}
    configs = ["b0_baseline.toml", "b5_t4x2.toml", "demo.toml", "demo_rotated.toml", "exp_00.toml", "rehearsal.toml"]
    assert {p.name for p in result.files} == {result.wheel.name, *configs, "dataset-metadata.json", "SHA256SUMS"}
    assert [p.name for p in dataset_files(result.out, "ichkaggle-src")] == sorted(
        [result.wheel.name, "SHA256SUMS", *configs])
    assert "notes.txt" in result.describe()  # the skipped file is named


@pytest.mark.parametrize("where, name, content, reason", [
    ("ichkaggle", "kaggle.json", '{"username": "a", "key": "x"}', "kaggle.json"),
    ("ichkaggle/configs", ".env", "A=1", ".env"),
    ("ichkaggle", "prod.env", "A=1", "prod.env"),
    ("ichkaggle", "leak.py", f"TOKEN = '{KEY}'\n", "Kaggle API key in use"),
    ("ichkaggle/configs", "exp_leak.toml", 'name = "x"\n# {"key": "0123456789abcdef0123456789abcdef"}\n',
     '"key": "<32 hex>"'),
    ("ichkaggle", "env_example.py", "KAGGLE_KEY=0123456789abcdef0123456789abcdef\n", "KAGGLE_KEY=<32 hex>"),
])
def test_a_credential_is_refused_naming_the_file(source, tmp_path, where, name, content, reason):
    (source / where / name).write_text(content)
    with pytest.raises(UserError) as info:
        build_bundle(tmp_path / "out", "alice", source, secrets=[KEY])
    assert name in str(info.value) and reason in str(info.value)
    assert KEY not in str(info.value)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())  # nothing written


def test_a_credential_in_the_output_folder_or_an_extra_config_is_refused(source, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "kaggle.json").write_text("{}")
    with pytest.raises(UserError, match="kaggle.json"):
        build_bundle(out, "alice", source, secrets=[KEY])
    extra = tmp_path / "mine.toml"
    extra.write_text((ROOT / "ichkaggle" / "configs" / "demo.toml").read_text() + f"\n# {KEY}\n")
    with pytest.raises(UserError, match="mine.toml"):
        build_bundle(tmp_path / "out2", "alice", source, extra_configs=(extra,), secrets=[KEY])


def test_extra_configs_are_validated_and_shipped(source, tmp_path):
    good = tmp_path / "tiny.toml"
    good.write_text((ROOT / "ichkaggle" / "configs" / "demo.toml").read_text().replace('name = "demo"',
                                                                                    'name = "tiny"'))
    result = build_bundle(tmp_path / "out", "alice", source, extra_configs=(good,), secrets=[KEY])
    assert (result.out / "tiny.toml").read_bytes() == good.read_bytes()
    assert "tiny.toml" in (result.out / "SHA256SUMS").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[data]\nsize = "big"\nunknown = 1\n')
    with pytest.raises(UserError, match="unknown"):
        build_bundle(tmp_path / "out3", "alice", source, extra_configs=(bad,), secrets=[KEY])


def test_stale_wheels_and_configs_are_removed(source, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "ichkaggle-0.0.1-py3-none-any.whl").write_bytes(b"old")
    (out / "gone.toml").write_text("x")
    result = build_bundle(out, "alice", source, secrets=[KEY])
    assert {p.name for p in result.removed} == {"ichkaggle-0.0.1-py3-none-any.whl", "gone.toml"}
    assert not (out / "gone.toml").exists()


def test_the_wheel_installs_offline_and_carries_the_configs(source, tmp_path):
    result = build_bundle(tmp_path / "out", "alice", source, secrets=[KEY])
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet",
                    "--disable-pip-version-check", "--target", str(target), str(result.wheel)],
                   check=True, capture_output=True)
    code = ("import sys, ichkaggle, ichkaggle.experiment as e; "
            f"assert ichkaggle.__file__.startswith({str(target)!r}), ichkaggle.__file__; "
            "print(ichkaggle.__version__, ','.join(e.available()))")
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-S", "-c", code], env=env, capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    configs = "b0_baseline,b5_t4x2,demo,demo_rotated,exp_00,rehearsal"
    assert out.stdout.split() == [read_project(source).version, configs]
    scripts = (target / "bin" / "ichkaggle")
    assert scripts.exists() and "ichkaggle.cli" in scripts.read_text()


def test_bundle_command_takes_the_owner_from_the_credentials(source, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KAGGLE_USERNAME", "bob")
    monkeypatch.setenv("KAGGLE_KEY", KEY)
    monkeypatch.delenv("KAGGLE_CONFIG_DIR", raising=False)
    out = tmp_path / "datasets" / "ichkaggle-src"
    assert main(["bundle", "--out", str(out), "--source", str(source)]) == 0
    meta = json.loads((out / "dataset-metadata.json").read_text())
    assert meta["id"] == "bob/ichkaggle-src" and 6 <= len(meta["title"]) <= 50 and len(meta["licenses"]) == 1
    assert 20 <= len(meta["subtitle"]) <= 80
    printed = capsys.readouterr()
    assert "push dataset ichkaggle-src" in printed.out
    assert KEY not in printed.out + printed.err and not files_containing(tmp_path / "datasets", KEY)
    assert main(["bundle", "--out", str(out), "--source", str(source), "--owner", "carol"]) == 0
    assert json.loads((out / "dataset-metadata.json").read_text())["id"] == "carol/ichkaggle-src"


def test_bundle_without_any_owner_is_a_clear_error(source, tmp_path, monkeypatch, capsys):
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "nowhere"))
    assert main(["bundle", "--out", str(tmp_path / "o"), "--source", str(source)]) == 2
    assert "--owner" in capsys.readouterr().err


def test_project_root_is_the_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT / "ichkaggle")
    assert project_root() == ROOT
    with pytest.raises(UserError, match="pyproject"):
        project_root(tmp_path)


def test_repository_templates_hold_no_credentials_and_keep_the_placeholder():
    for path in [*(ROOT / "kernels").rglob("*"), *(ROOT / "datasets").glob("*/dataset-metadata.json")]:
        if path.is_file():
            text = path.read_text()
            assert '"key"' not in text and "KAGGLE_KEY=" not in text
    for name in ("train", "infer"):
        meta = json.loads((ROOT / "kernels" / name / "kernel-metadata.json").read_text())
        assert meta["id"].startswith("KAGGLE_USERNAME/")
        assert meta["enable_internet"] is False and meta["is_private"] is True and meta["enable_gpu"] is True
        assert meta["competition_sources"] == ["rsna-intracranial-hemorrhage-detection"]
        assert "KAGGLE_USERNAME/ichkaggle-src" in meta["dataset_sources"]
        script = (ROOT / "kernels" / name / meta["code_file"]).read_text()
        assert "--no-index" in script and "--no-deps" in script and len(script.splitlines()) < 50
