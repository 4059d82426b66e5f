"""The Kaggle edge: credentials, scrubbing, retries and errors, with the REAL client against a fake server."""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

if importlib.util.find_spec("kaggle") is None:  # find, not import: `import kaggle` prints at import
    pytest.skip("the kaggle extra is not installed", allow_module_level=True)

from ichkaggle.errors import UserError  # noqa: E402
from ichkaggle.kaggle.api import KaggleSession
from ichkaggle.kaggle.credentials import Credentials, basic_auth_header, find_credentials, scrub, secret_values
from ichkaggle.kaggle.failures import KaggleError
from ichkaggle.kaggle.results import SubmissionLimits, poll

from .fake_kaggle import kaggle_env  # noqa: E402,F401,F811  (a fixture)

ROOT = Path(__file__).resolve().parents[1]


def _session(fake, **kwargs) -> KaggleSession:
    kwargs.setdefault("first_delay", 0.05)
    return KaggleSession(find_credentials(), **kwargs)


def _kernel_folder(tmp_path: Path, slug: str = "ichkaggle-train-fold0") -> Path:
    folder = tmp_path / "k" / slug
    folder.mkdir(parents=True)
    meta = {"id": f"alice/{slug}", "title": slug.replace("-", " "), "code_file": "train.py",
            "language": "python", "kernel_type": "script", "is_private": True, "enable_gpu": True,
            "enable_internet": False, "dataset_sources": ["alice/ichkaggle-src"],
            "competition_sources": ["rsna-intracranial-hemorrhage-detection"]}
    (folder / "kernel-metadata.json").write_text(json.dumps(meta))
    (folder / "train.py").write_text("print('hello')\n")
    return folder


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ----------------------------------------------------------------------------- credentials


def test_credentials_come_from_env_then_kaggle_json_then_token(tmp_path):
    env = {"HOME": str(tmp_path), "KAGGLE_USERNAME": "alice", "KAGGLE_KEY": "k" * 32}
    assert find_credentials(env=env) == Credentials("alice", "k" * 32, "KAGGLE_USERNAME/KAGGLE_KEY")
    (tmp_path / ".config" / "kaggle").mkdir(parents=True)
    (tmp_path / ".config" / "kaggle" / "kaggle.json").write_text('{"username": "xdg", "key": "x2x2x2x2x2"}')
    creds = find_credentials(env={"HOME": str(tmp_path)})
    assert (creds.username, creds.source) == ("xdg", str(tmp_path / ".config" / "kaggle" / "kaggle.json"))
    (tmp_path / ".kaggle").mkdir()
    (tmp_path / ".kaggle" / "kaggle.json").write_text('{"username": "bob", "key": "b1b1b1b1b1"}')
    assert find_credentials(env={"HOME": str(tmp_path)}).username == "bob"
    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "kaggle.json").write_text('{"username": "carol", "key": "c3c3c3c3c3"}')
    assert find_credentials(env={"HOME": str(tmp_path), "KAGGLE_CONFIG_DIR": str(custom)}).username == "carol"
    token_env = {"HOME": str(tmp_path / "empty"), "KAGGLE_API_TOKEN": "KGAT_abcdefabcdef1234"}
    with pytest.raises(UserError, match="KAGGLE_USERNAME"):
        find_credentials(env=token_env)
    creds = find_credentials(env={**token_env, "KAGGLE_USERNAME": "dan"})
    assert creds.token and creds.username == "dan" and creds.key == "KGAT_abcdefabcdef1234"
    assert "KGAT" not in repr(creds) and "k" * 32 not in repr(find_credentials(env=env))
    # a token wins over a legacy key, as in the client itself; its user comes from the key's
    both = find_credentials(env={**env, "KAGGLE_API_TOKEN": "KGAT_abcdefabcdef1234"})
    assert both.token and both.username == "alice" and both.source == "KAGGLE_API_TOKEN"
    (tmp_path / ".kaggle" / "access_token").write_text("KGAT_fromafile0123456\n")
    from_file = find_credentials(env={"HOME": str(tmp_path)})
    assert from_file.token and from_file.key == "KGAT_fromafile0123456" and from_file.username == "bob"


def test_missing_or_broken_credentials_are_clear_and_do_not_echo_the_key(tmp_path):
    with pytest.raises(UserError, match="KAGGLE_USERNAME and KAGGLE_KEY.*kaggle.json"):
        find_credentials(env={"HOME": str(tmp_path)})
    assert find_credentials(env={"HOME": str(tmp_path)}, required=False) is None
    (tmp_path / ".kaggle").mkdir()
    (tmp_path / ".kaggle" / "kaggle.json").write_text('{"user": "x", "secret": "s3cr3ts3cr3t"')
    with pytest.raises(UserError) as info:
        find_credentials(env={"HOME": str(tmp_path)})
    assert "kaggle.json" in str(info.value) and "s3cr3t" not in str(info.value)


def test_scrub_hides_keys_and_auth_headers():
    creds = Credentials("alice", "0123456789abcdef0123456789abcdef")
    header = basic_auth_header(creds)
    text = f"key {creds.key} in a url ?k={creds.key}; Authorization: {header}; 'Authorization': 'Bearer abc.def'"
    clean = scrub(text, [creds.key])
    assert creds.key not in clean and header.split()[1] not in clean and "abc.def" not in clean
    assert clean.count("[REDACTED]") == 4
    assert secret_values(creds, env={"HOME": "/nonexistent"}) == [creds.key]


def test_importing_the_package_does_not_import_the_client():
    code = ("import sys, ichkaggle.cli, ichkaggle.kaggle.api, ichkaggle.kaggle.flow, ichkaggle.kaggle.kernel, "
            "ichkaggle.kaggle.bundle, ichkaggle.commands.push, ichkaggle.commands.submit, ichkaggle.commands.bundle; "
            "bad = [m for m in ('kaggle', 'kagglesdk', 'torch', 'requests') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# ----------------------------------------------------------------------------- the real client, happy paths


def test_kernel_push_status_and_output_download(kaggle_env, tmp_path):
    fake = kaggle_env
    fake.kernel_outputs["ichkaggle-train-fold0"] = {"fold0/metrics.json": b'{"loss": 0.1}',
                                                     "ichkaggle_train.json": b"{}"}
    session = _session(fake)
    pushed = session.push_kernel(_kernel_folder(tmp_path))
    assert (pushed.ref, pushed.version) == ("alice/ichkaggle-train-fold0", 1)
    body = fake.calls("SaveKernel")[0].json
    assert body["slug"] == "alice/ichkaggle-train-fold0" and body["text"] == "print('hello')\n"
    assert body["isPrivate"] is True and body["enableGpu"] is True
    assert body.get("enableInternet", False) is False  # false is the default: omitted on the wire
    assert body["competitionDataSources"] == ["rsna-intracranial-hemorrhage-detection"]
    assert body["datasetDataSources"] == ["alice/ichkaggle-src"]
    seen = [str(session.kernel_status(pushed.ref, pushed.version)) for _ in range(4)]
    assert seen == ["QUEUED", "RUNNING", "COMPLETE", "COMPLETE"]
    assert fake.calls("GetKernelSessionStatus")[0].json["versionLabel"] == "v1"
    files, log = session.kernel_output(pushed.ref, tmp_path / "out", pushed.version)
    assert (tmp_path / "out" / "fold0" / "metrics.json").read_bytes() == b'{"loss": 0.1}'
    assert len(files) == 2 and log == tmp_path / "out" / "ichkaggle-train-fold0.log"
    assert "version 1 ran" in log.read_text()


def test_follow_kernels_polls_until_each_ends(kaggle_env, tmp_path):
    fake = kaggle_env
    fake.kernel_scripts["ichkaggle-train-fold1"] = ["QUEUED", "RUNNING", "RUNNING", "ERROR"]
    fake.kernel_failure["ichkaggle-train-fold1"] = "CUDA out of memory"
    session = _session(fake)
    refs = {}
    for slug in ("ichkaggle-train-fold0", "ichkaggle-train-fold1"):
        pushed = session.push_kernel(_kernel_folder(tmp_path, slug))
        refs[pushed.ref] = pushed.version
    changes = []
    final = session.follow_kernels(refs, first=0.01, on_change=lambda ref, s: changes.append((ref, str(s))))
    assert final["alice/ichkaggle-train-fold0"].status == "COMPLETE"
    assert str(final["alice/ichkaggle-train-fold1"]) == "ERROR (CUDA out of memory)"
    assert changes[-1] == ("alice/ichkaggle-train-fold1", "ERROR (CUDA out of memory)")
    assert len(fake.calls("GetKernelSessionStatus")) == 3 + 4  # none after a version ended


def test_dataset_create_then_version_upload_the_exact_bytes(kaggle_env, tmp_path):
    fake = kaggle_env
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "dataset-metadata.json").write_text(json.dumps(
        {"id": "alice/ichkaggle-src", "title": "ichkaggle src", "licenses": [{"name": "other"}]}))
    wheel = bytes(range(256)) * 40
    (folder / "ichkaggle-0.1.0-py3-none-any.whl").write_bytes(wheel)
    (folder / "exp_00.toml").write_text("name = 'x'\n")
    session = _session(fake)
    assert session.dataset_status("alice/ichkaggle-src") is None
    session.push_dataset(folder, "first", create=True)
    assert fake.datasets["alice/ichkaggle-src"][0]["private"] is True
    assert session.dataset_status("alice/ichkaggle-src") == "ready"
    (folder / "exp_00.toml").write_text("name = 'y'\n")
    url = session.push_dataset(folder, "second", create=False)
    version = fake.datasets["alice/ichkaggle-src"][-1]
    assert url.endswith("alice/ichkaggle-src") and version["notes"] == "second"
    assert version["files"] == {"ichkaggle-0.1.0-py3-none-any.whl": wheel, "exp_00.toml": b"name = 'y'\n"}


def test_submit_uploads_the_exact_bytes_and_the_listing_reports_scores(kaggle_env, tmp_path):
    fake = kaggle_env
    csv = tmp_path / "submission.csv"
    csv.write_bytes(b"ID,Label\nID_000000001_any,0.25\n")
    session = _session(fake)
    ref = session.submit(csv, "first try")
    assert ref == 1000 and fake.submissions[0].data == csv.read_bytes()
    body = fake.calls("CreateSubmission")[0].json
    assert body["competitionName"] == "rsna-intracranial-hemorrhage-detection"
    assert body["submissionDescription"] == "first try"
    listing = session.submissions()
    assert [(s.ref, s.description, s.file_name) for s in listing] == [(1000, "first try", "submission.csv")]
    info = session.wait_submission(ref, first=0.01)
    assert (info.status, info.public_score, info.private_score) == ("COMPLETE", "0.07123", "0.07456")


# ----------------------------------------------------------------------------- failure paths


def test_an_api_token_is_sent_as_bearer(kaggle_env, monkeypatch):
    fake = kaggle_env
    fake.token = "KGAT_0123456789abcdef0123"
    monkeypatch.delenv("KAGGLE_KEY")
    monkeypatch.setenv("KAGGLE_API_TOKEN", fake.token)
    creds = find_credentials()
    assert creds.token and creds.username == "alice"
    assert _session(fake).submissions() == []
    assert fake.requests[-1].headers["Authorization"] == f"Bearer {fake.token}"


def test_the_credential_described_is_the_one_sent(kaggle_env, monkeypatch):
    fake = kaggle_env
    monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_not_the_right_one_at_all")
    session = _session(fake)
    assert session.credentials.source == "KAGGLE_API_TOKEN"  # the client's order: a token first
    with pytest.raises(KaggleError, match="401.*credentials from KAGGLE_API_TOKEN"):
        session.submissions()
    assert fake.requests[-1].headers["Authorization"] == "Bearer KGAT_not_the_right_one_at_all"
    monkeypatch.delenv("KAGGLE_API_TOKEN")
    assert _session(fake).submissions() == []
    assert fake.requests[-1].headers["Authorization"].startswith("Basic ")


def test_verbose_never_prints_the_auth_header(kaggle_env, monkeypatch, capfd):
    monkeypatch.setenv("VERBOSE", "1")
    _session(kaggle_env).submissions()
    printed = capfd.readouterr()
    assert "Authorization" not in printed.out + printed.err and kaggle_env.key not in printed.out + printed.err


def test_401_names_the_credential_source_and_never_the_key(kaggle_env, tmp_path):
    fake = kaggle_env
    wrong = Credentials("alice", "ffffffffffffffffffffffffffffffff", "KAGGLE_USERNAME/KAGGLE_KEY")
    session = KaggleSession(wrong, first_delay=0.01)
    for call in (lambda: session.push_kernel(_kernel_folder(tmp_path)),
                 lambda: session.kernel_status("alice/ichkaggle-train-fold0", 1),
                 lambda: session.submissions()):
        with pytest.raises(KaggleError) as info:
            call()
        assert info.value.kind == "auth" and "401" in str(info.value)
        assert "KAGGLE_USERNAME/KAGGLE_KEY" in str(info.value) and wrong.key not in str(info.value)
    assert len(fake.calls("SaveKernel")) == 1  # a 401 is not retried


def test_403_explains_the_usual_causes(kaggle_env, tmp_path):
    fake = kaggle_env
    fake.fail("StartSubmissionUpload", 403, body={"code": 403, "message": "You must accept the rules"})
    fake.fail("ListSubmissions", 403, body={"code": 403, "message": "You must accept the rules"})
    csv = tmp_path / "s.csv"
    csv.write_text("ID,Label\n")
    with pytest.raises(KaggleError, match="403.*accept the rules.*competitions/rsna-intracranial"):
        _session(fake).submit(csv, "x")


def test_a_5xx_then_success_is_retried(kaggle_env, tmp_path):
    fake = kaggle_env
    fake.fail("SaveKernel", 503)
    fake.fail("GetKernelSessionStatus", 500, times=2)
    logged = []
    session = _session(fake, log=logged.append)
    pushed = session.push_kernel(_kernel_folder(tmp_path))
    assert pushed.version == 1 and len(fake.calls("SaveKernel")) == 2
    assert session.kernel_status(pushed.ref).status == "QUEUED"
    assert any("HTTP 503" in line and "retrying" in line for line in logged)


def test_a_5xx_on_create_submission_does_not_submit_twice(kaggle_env, tmp_path):
    fake = kaggle_env
    csv = tmp_path / "submission.csv"
    csv.write_bytes(b"ID,Label\n")
    fake.fail("CreateSubmission", 502)
    assert _session(fake).submit(csv, "retry me") == 1000
    assert len(fake.submissions) == 1 and len(fake.calls("CreateSubmission")) == 2


def test_retry_after_is_honoured_on_429_and_503(kaggle_env, tmp_path):
    fake = kaggle_env
    fake.fail("SaveKernel", 429, retry_after="7")
    fake.fail("SaveKernel", 503, retry_after="Wed, 21 Oct 2015 07:28:00 GMT")  # a date in the past: at once
    fake.fail("SaveKernel", 500)  # no header: our own backoff
    waits, logged = [], []
    session = _session(fake, sleep=waits.append, log=logged.append, attempts=5)
    assert session.push_kernel(_kernel_folder(tmp_path)).version == 1
    assert waits == [7.0, 0.0, 0.2]  # Retry-After, Retry-After, then backoff (0.05 doubled twice)
    assert sum("as its Retry-After asks" in line for line in logged) == 2
    fake.fail("ListSubmissions", 429, retry_after="3600")  # longer than this command waits
    with pytest.raises(KaggleError, match="retry after 3600s, beyond the 600s"):
        _session(fake, sleep=waits.append).submissions()
    assert waits[-1] == 0.2 and len(fake.calls("ListSubmissions")) == 1


def test_retries_are_bounded(kaggle_env, tmp_path):
    fake = kaggle_env
    fake.fail("SaveKernel", 503, times=10)
    with pytest.raises(KaggleError, match="HTTP 503.*gave up after 3 attempt"):
        _session(fake, attempts=3).push_kernel(_kernel_folder(tmp_path))
    assert len(fake.calls("SaveKernel")) == 3


def test_save_kernel_error_field_is_an_error(kaggle_env, tmp_path):
    fake = kaggle_env
    fake.save_kernel_error = "Notebook exceeds the maximum GPU quota"
    with pytest.raises(KaggleError, match="refused it: Notebook exceeds the maximum GPU quota") as info:
        _session(fake).push_kernel(_kernel_folder(tmp_path))
    assert info.value.kind == "refused"


def test_a_dataset_status_that_is_not_ok_is_an_error(kaggle_env, tmp_path):
    fake = kaggle_env
    fake.datasets["alice/weights-data"] = []
    fake.dataset_status_answer = "Error"
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "dataset-metadata.json").write_text(json.dumps({"id": "alice/weights-data"}))
    (folder / "a.safetensors").write_bytes(b"\0" * 10)
    with pytest.raises(KaggleError, match="status Error.*refused"):
        _session(fake).push_dataset(folder, "v2", create=False)


def test_a_submission_scored_error_is_an_error(kaggle_env, tmp_path):
    fake = kaggle_env
    fake.submission_script = ["PENDING", "ERROR"]
    csv = tmp_path / "s.csv"
    csv.write_text("ID,Label\n")
    session = _session(fake)
    ref = session.submit(csv, "x")
    with pytest.raises(KaggleError, match="scored ERROR: Submission CSV has the wrong number of rows"):
        session.wait_submission(ref, first=0.01)


def test_a_refused_submission_is_an_error(kaggle_env, tmp_path):
    fake = kaggle_env
    fake.create_submission_message = "You have reached your daily submission limit"
    original = fake._rpc_CreateSubmission
    fake._rpc_CreateSubmission = lambda body: {k: v for k, v in original(body).items() if k != "ref"}
    csv = tmp_path / "s.csv"
    csv.write_text("ID,Label\n")
    with pytest.raises(KaggleError, match="refused the submission: You have reached your daily submission limit"):
        _session(fake).submit(csv, "x")


def test_a_down_server_fails_in_seconds(kaggle_env, tmp_path, monkeypatch):
    from kagglesdk.kaggle_env import KaggleEnv, _env_to_endpoint

    monkeypatch.setitem(_env_to_endpoint, KaggleEnv.PROD, f"http://127.0.0.1:{_free_port()}")
    session = KaggleSession(find_credentials())  # the default policy
    started = time.monotonic()
    with pytest.raises(KaggleError, match="cannot connect to 127.0.0.1.*gave up after 4 attempt"):
        session.kernel_status("alice/ichkaggle-train-fold0")
    assert time.monotonic() - started < 15


def test_a_hanging_server_times_out(kaggle_env, monkeypatch):
    from kagglesdk.kaggle_env import KaggleEnv, _env_to_endpoint

    with socket.socket() as sock:  # accepts connections, never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        monkeypatch.setitem(_env_to_endpoint, KaggleEnv.PROD, f"http://127.0.0.1:{sock.getsockname()[1]}")
        session = KaggleSession(find_credentials(), timeout=0.3, attempts=2, first_delay=0.05)
        started = time.monotonic()
        with pytest.raises(KaggleError, match="no answer.*within 0.3s.*gave up after 2"):
            session.kernel_status("alice/ichkaggle-train-fold0")
        assert time.monotonic() - started < 5


def test_poll_backs_off_to_a_bound_and_gives_up():
    now = [0.0]
    sleeps = []

    def sleep(seconds):
        sleeps.append(seconds)
        now[0] += seconds

    values = iter(["QUEUED"] * 3 + ["COMPLETE"])
    assert poll(lambda: next(values), lambda v: v == "COMPLETE", what="k", first=10, factor=2, longest=25,
                sleep=sleep, clock=lambda: now[0]) == "COMPLETE"
    assert sleeps == [10, 20, 25]
    sleeps.clear()
    with pytest.raises(KaggleError, match="still RUNNING after .* run the same command again"):
        poll(lambda: "RUNNING", lambda v: False, what="k", first=10, longest=60, timeout=100, sleep=sleep,
             clock=lambda: now[0])
    assert sum(sleeps) <= 100


# ----------------------------------------------------------------------------- Kaggle's limits at the edge


def test_the_gpu_session_cap_is_busy_not_a_refusal(kaggle_env, tmp_path):
    fake = kaggle_env
    fake.save_kernel_error = "Maximum batch GPU session count of 2 reached."
    with pytest.raises(KaggleError, match="Maximum batch GPU session count of 2 reached") as info:
        _session(fake).push_kernel(_kernel_folder(tmp_path))
    assert info.value.kind == "busy"


def test_a_submission_is_followed_by_its_ref_whatever_page_the_list_shows_it_on(kaggle_env, tmp_path):
    fake = kaggle_env
    session = _session(fake)
    assert session.submission_limits() == SubmissionLimits(0, 0, 0, False)  # not on a team yet: allowed
    assert not session.submission_limits().exhausted
    fake.earlier_submissions, fake.list_newest_first = 25, False  # ours is on the list's second page
    fake.submission_script = ["PENDING", "PENDING", "COMPLETE"]
    csv = tmp_path / "s.csv"
    csv.write_text("ID,Label\n")
    ref = session.submit(csv, "beyond the first page")
    assert ref not in {s.ref for s in session.submissions()} and len(session.submissions()) == 20
    info = session.wait_submission(ref, first=0.01)
    assert (info.ref, info.status, info.public_score, info.private_score) == (ref, "COMPLETE", "0.07123", "0.07456")
    assert info.date.startswith("2024-01-01") and [c.json["ref"] for c in fake.calls("GetSubmission")][-1] == ref
    limits = session.submission_limits()
    assert (limits.num_today, limits.num_total, limits.num_allowed_now) == (1, 26, 4) and not limits.exhausted
    fake.submission_limits = {"numToday": 5, "numTotal": 30}  # the day's allowance is spent
    assert session.submission_limits().exhausted and "5 today, 30 in all, 0 allowed now" in \
        session.submission_limits().describe()


def test_a_timed_out_call_never_prints_to_the_real_streams(kaggle_env, capsys):
    """The worker of a call that timed out prints later (the key, say): it must go nowhere visible,
    while the main thread's own output still shows."""
    import threading

    fake = kaggle_env
    logged = []
    session = KaggleSession(find_credentials(), timeout=0.2, attempts=1, log=logged.append)
    release, printed = threading.Event(), threading.Event()

    def slow():
        release.wait(10)
        print(f"late output with the key {fake.key}")
        print(f"and on stderr {fake.key}", file=sys.stderr)
        printed.set()

    with pytest.raises(KaggleError, match="no answer.*within 0.2s"):
        session.call("a slow call", slow)
    print("the main thread goes on")
    release.set()
    assert printed.wait(10)
    print("and still prints")
    out = capsys.readouterr()
    assert "the main thread goes on" in out.out and "and still prints" in out.out
    assert fake.key not in out.out + out.err and "late output" not in out.out + out.err
    assert all(fake.key not in line for line in logged)


def test_what_a_call_prints_is_scrubbed_and_logged(kaggle_env, capsys):
    fake = kaggle_env
    logged = []
    session = KaggleSession(find_credentials(), log=logged.append)

    def chatty():
        print(f"progress with the key {fake.key}")
        return 42

    assert session.call("a chatty call", chatty) == 42
    out = capsys.readouterr()
    assert "progress" not in out.out + out.err and fake.key not in out.out + out.err
    assert logged == ["progress with the key [REDACTED]"]
