"""A fake Kaggle API server for tests: the real ``kaggle`` client talks to it over HTTP.

It speaks the wire protocol of kaggle 2.2.5 / kagglesdk 0.1.38 (see KAGGLE_API_NOTES.md):
``POST /v1/<Service>/<Method>`` with a camelCase JSON body, Basic auth; signed upload URLs
(``PUT /upload/<token>``) and download URLs (``GET /files/<id>``) without auth. It runs
in a thread on 127.0.0.1 on an ephemeral port, records every request, keeps what was
uploaded, and can be told to fail: a status for the next N calls of a method, kernels that
end in ERROR, submissions that end in ERROR, a SaveKernel ``error`` field, Kaggle's cap on GPU
sessions at once.

Its kernels follow scripted statuses and outputs, unless :meth:`FakeKaggle.run_kernels` is
called: then every pushed kernel really runs, in :class:`ichkaggle.kaggle.sandbox.Sandbox`
(the executor ``push run --local`` uses), with the datasets made through this server as the
folders it mounts, its statuses, outputs and log as Kaggle reports them, Kaggle's GPU cap as
SaveKernel's ``error``, and submissions scored against the competition's test labels.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit


@dataclass
class Recorded:
    method: str
    path: str
    rpc: str  # the method name for API calls ("SaveKernel"), "" for uploads/downloads
    headers: dict
    body: bytes

    @property
    def json(self) -> dict:
        return json.loads(self.body or b"{}")


@dataclass
class Kernel:
    slug: str  # owner/slug
    versions: list = field(default_factory=list)  # SaveKernel bodies
    statuses: list = field(default_factory=list)  # status script of the current version
    failure_message: str = ""
    outputs: dict = field(default_factory=dict)  # file name -> bytes
    log: str = ""
    gpu: bool = False

    @property
    def running(self) -> bool:
        """Its version has not reached the end of its status script yet (nobody looked that far)."""
        return bool(self.statuses) and self.statuses[0] not in ("COMPLETE", "ERROR", "CANCEL_ACKNOWLEDGED")


@dataclass
class Submission:
    ref: int
    file_name: str
    description: str
    data: bytes
    statuses: list
    public_score: str = ""
    private_score: str = ""
    error_description: str = ""


class FakeKaggle:
    """``with FakeKaggle(user, key) as fake: fake.url`` -> ``http://127.0.0.1:PORT``."""

    def __init__(self, username: str = "alice", key: str = "0" * 32, token: str | None = None, port: int = 0):
        self.username, self.key, self.port = username, key, port
        self.token = token  # also accept "Bearer <token>" (KAGGLE_API_TOKEN credentials)
        self.requests: list[Recorded] = []
        self.failures: dict[str, list[tuple[int, dict | None]]] = {}
        self.kernels: dict[str, Kernel] = {}
        #: status script given to each newly pushed version, per slug (default below); a list of
        #: lists in kernel_script_queue is used up one per push first
        self.kernel_scripts: dict[str, list[str]] = {}
        self.kernel_script_queue: dict[str, list[list[str]]] = {}
        #: the weekly GPU quota (hours) and what each pushed GPU kernel uses of it
        self.quota_total, self.quota_used, self.hours_per_gpu_session = 1000.0, 0.0, 0.0
        self.default_kernel_script = ["QUEUED", "RUNNING", "COMPLETE"]
        #: outputs each newly pushed version of a kernel ends with, per slug (callable or dict)
        self.kernel_outputs: dict[str, object] = {}
        self.kernel_failure: dict[str, str] = {}
        self.save_kernel_error: str = ""
        #: Kaggle's cap on GPU batch sessions at once (None: no cap); the next ``busy_pushes`` GPU pushes
        #: are refused as if another notebook of the account held the sessions
        self.gpu_cap: int | None = None
        self.busy_pushes = 0
        self.most_gpu_running = 0  # the most GPU versions running at once, as pushes saw it
        self.datasets: dict[str, list[dict]] = {}  # ref -> versions: {"files": {name: bytes}, "notes": str}
        self.dataset_status_answer = "Ok"
        self.blobs: dict[str, dict] = {}
        self.files: dict[str, bytes] = {}
        self.submissions: list[Submission] = []
        self.submission_script = ["PENDING", "COMPLETE"]
        self.submission_scores = ("0.07123", "0.07456")
        self.submission_error = "Submission CSV has the wrong number of rows"
        self.create_submission_message = "Successfully submitted to RSNA Intracranial Hemorrhage Detection"
        #: GetSubmissionLimits' answer (camelCase fields); None: counted from the submissions made here
        #: against ``submissions_per_day`` (a fresh account, before its first submission, answers all zero)
        self.submission_limits: dict | None = None
        self.submissions_per_day = 5
        #: ListSubmissions: rows per page at most (the client asks for 20), the account's earlier
        #: submissions (made before the ones here) and the order (Kaggle's: newest first)
        self.list_page_size = 20
        self.earlier_submissions = 0
        self.list_newest_first = True
        #: set by run_kernels: pushed kernels really run there (see the module docstring)
        self.sandbox = None
        self.competition_dir: Path | None = None
        self.dataset_folders: dict[str, Path] = {}
        self._tokens = itertools.count(1)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeKaggle:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        host, port = self._server.server_address[:2]
        self.url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        if self.sandbox is not None:
            self.sandbox.stop_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeKaggle:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ configuration

    def fail(self, rpc: str, status: int = 503, times: int = 1, body: dict | None = None,
             retry_after: str | None = None) -> None:
        """The next ``times`` calls of ``rpc`` (e.g. "SaveKernel") answer ``status`` (with a
        ``Retry-After`` header when given)."""
        self.failures.setdefault(rpc, []).extend([(status, body, retry_after)] * times)

    def run_kernels(self, root, competition, limits=None, overrides: dict | None = None):
        """From now on pushed kernels really run, under ``root``, with ``competition`` attached as
        Kaggle's; ``overrides``: the sandbox's per-kernel test hooks. Returns the sandbox."""
        from ichkaggle.competition import SLUG as COMPETITION
        from ichkaggle.kaggle.sandbox import Limits, Sandbox

        self.competition_dir = Path(competition)
        self.sandbox = Sandbox(Path(root), limits or Limits(), competitions={COMPETITION: self.competition_dir},
                               datasets=self.dataset_folders, overrides=overrides or {})
        for ref, versions in self.datasets.items():
            self._materialise(ref, versions[-1]["files"])
        return self.sandbox

    def _materialise(self, ref: str, files: dict[str, bytes]) -> None:
        """A dataset version as the folder a kernel mounts."""
        if self.sandbox is None:
            return
        folder = self.sandbox.root / "datasets" / ref
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
        self.dataset_folders[ref] = folder

    def calls(self, rpc: str) -> list[Recorded]:
        return [r for r in self.requests if r.rpc == rpc]

    def all_text(self) -> str:
        """Every request line, header and body the server saw, as text (for secret checks)."""
        parts = []
        for r in self.requests:
            headers = {k: v for k, v in r.headers.items() if k.lower() != "authorization"}
            parts.append(f"{r.method} {r.path}\n{json.dumps(headers)}\n{r.body.decode('utf-8', 'replace')}")
        return "\n".join(parts)

    # ------------------------------------------------------------------ handlers

    def _serve_file(self, data: bytes | Path) -> str:
        token = f"f{next(self._tokens)}"
        self.files[token] = data  # a path is read when downloaded
        return f"{self.url}/files/{token}"

    def _new_upload(self, name: str, length: int) -> dict:
        token = f"blob{next(self._tokens)}"
        self.blobs[token] = {"name": name, "length": length, "data": None}
        return {"token": token, "createUrl": f"{self.url}/upload/{token}"}

    def rpc(self, name: str, body: dict) -> tuple[int, dict]:
        handler = getattr(self, f"_rpc_{name}", None)
        if handler is None:
            return 404, {"code": 404, "message": f"fake: no method {name}"}
        return 200, handler(body)

    def _gpu_refusal(self, body: dict) -> str:
        if not body.get("enableGpu"):
            return ""
        running = sum(k.gpu and k.running for k in self.kernels.values())
        if self.busy_pushes > 0 or (self.gpu_cap is not None and running >= self.gpu_cap):
            self.busy_pushes = max(0, self.busy_pushes - 1)
            return f"Maximum batch GPU session count of {self.gpu_cap or 2} reached."
        self.most_gpu_running = max(self.most_gpu_running, running + 1)
        return ""

    def _run_kernel(self, body: dict) -> dict:
        """SaveKernel when kernels really run: what the client sent, as a folder, started in the sandbox."""
        from ichkaggle.kaggle.sandbox import Refused

        slug = body["slug"]
        folder = self.sandbox.root / "pushed" / slug / str(len(self.calls("SaveKernel")))
        folder.mkdir(parents=True)
        (folder / "script.py").write_text(body.get("text", ""))
        meta = {"id": slug, "title": body.get("newTitle"), "code_file": "script.py", "language": body.get("language"),
                "kernel_type": body.get("kernelType"), "enable_gpu": bool(body.get("enableGpu")),
                "enable_internet": bool(body.get("enableInternet")), "machine_shape": body.get("machineShape"),
                "dataset_sources": body.get("datasetDataSources", []),
                "competition_sources": body.get("competitionDataSources", []),
                "kernel_sources": body.get("kernelDataSources", [])}
        (folder / "kernel-metadata.json").write_text(json.dumps(meta))
        try:
            version = self.sandbox.start(folder)
        except Refused as refused:
            if refused.error:
                return {"error": refused.error}
            names = {"dataset_sources": "invalidDatasetSources", "competition_sources": "invalidCompetitionSources",
                     "kernel_sources": "invalidKernelSources"}
            return {names[k]: v for k, v in refused.invalid.items()}
        kernel = self.kernels.setdefault(slug, Kernel(slug))
        kernel.versions.append(body)
        kernel.gpu = meta["enable_gpu"]
        return {"ref": f"/code/{slug}", "url": f"https://www.kaggle.com/code/{slug}", "versionNumber": version}

    def _rpc_SaveKernel(self, body: dict) -> dict:
        if self.save_kernel_error:
            return {"error": self.save_kernel_error}
        if self.sandbox is not None:
            return self._run_kernel(body)
        refusal = self._gpu_refusal(body)
        if refusal:
            return {"error": refusal}
        slug = body["slug"]
        kernel = self.kernels.setdefault(slug, Kernel(slug))
        kernel.gpu = bool(body.get("enableGpu"))
        kernel.versions.append(body)
        name = slug.split("/")[1]
        queued = self.kernel_script_queue.get(name)
        kernel.statuses = list(queued.pop(0) if queued else self.kernel_scripts.get(name, self.default_kernel_script))
        if body.get("enableGpu"):
            self.quota_used += self.hours_per_gpu_session
        kernel.failure_message = self.kernel_failure.get(slug.split("/")[1], "")
        outputs = self.kernel_outputs.get(slug.split("/")[1], {"result.txt": b"done\n"})
        kernel.outputs = dict(outputs(body) if callable(outputs) else outputs)
        kernel.log = f'[{{"stream_name":"stdout","time":1.0,"data":"version {len(kernel.versions)} ran"}}]'
        version = len(kernel.versions)
        return {"ref": f"/code/{slug}", "url": f"https://www.kaggle.com/code/{slug}", "versionNumber": version}

    def _kernel(self, body: dict) -> Kernel | None:
        return self.kernels.get(f"{body.get('userName')}/{body.get('kernelSlug')}")

    def _version(self, body: dict) -> int | None:
        label = str(body.get("versionLabel") or "")
        return int(label[1:]) if label.startswith("v") and label[1:].isdigit() else None

    def _rpc_GetKernelSessionStatus(self, body: dict):
        kernel = self._kernel(body)
        if kernel is None:
            return _Error(404, "kernel not found")
        if self.sandbox is not None:
            status, failure = self.sandbox.status(kernel.slug, self._version(body))
            return {"status": status, **({"failureMessage": failure} if failure else {})}
        status = kernel.statuses.pop(0) if len(kernel.statuses) > 1 else kernel.statuses[0]
        answer = {"status": status}
        if status == "ERROR" and kernel.failure_message:
            answer["failureMessage"] = kernel.failure_message
        return answer

    def _rpc_ListKernelSessionOutput(self, body: dict):
        kernel = self._kernel(body)
        if kernel is None:
            return _Error(404, "kernel not found")
        if self.sandbox is not None:
            version = self._version(body)
            files = [{"fileName": name, "url": self._serve_file(path)}
                     for name, path in self.sandbox.output_files(kernel.slug, version)]
            return {"files": files, "log": self.sandbox.log_json(kernel.slug, version)}
        files = [{"fileName": name, "url": self._serve_file(data)} for name, data in sorted(kernel.outputs.items())]
        return {"files": files, "log": kernel.log}

    def _rpc_GetAcceleratorQuotaStatistics(self, body: dict) -> dict:
        hours = lambda h: f"{int(round(h * 3600))}s"  # noqa: E731 - a protobuf Duration
        used = self.quota_used + (self.sandbox.gpu_hours_used() if self.sandbox is not None else 0.0)
        return {"quotaRefreshTime": "2026-12-01T00:00:00.000Z",
                "gpuQuota": {"timeUsed": hours(used), "totalTimeAllowed": hours(self.quota_total)}}

    def _rpc_StartBlobUpload(self, body: dict) -> dict:
        return self._new_upload(body["name"], int(body.get("contentLength", 0)))

    def _rpc_StartSubmissionUpload(self, body: dict) -> dict:
        return self._new_upload(body["fileName"], int(body.get("contentLength", 0)))

    def _uploaded(self, tokens: list[str]) -> dict[str, bytes] | _Error:
        files = {}
        for token in tokens:
            blob = self.blobs.get(token)
            if blob is None or blob["data"] is None:
                return _Error(400, f"blob {token} was not uploaded")
            files[blob["name"]] = blob["data"]
        return files

    def _rpc_GetDatasetStatus(self, body: dict):
        ref = f"{body['ownerSlug']}/{body['datasetSlug']}"
        if ref not in self.datasets:
            return _Error(404, f"dataset {ref} not found")
        return {"status": "READY"}

    def _rpc_CreateDatasetVersion(self, body: dict):
        ref = f"{body['ownerSlug']}/{body['datasetSlug']}"
        if ref not in self.datasets:
            return _Error(404, f"dataset {ref} not found")
        inner = body.get("body", {})
        files = self._uploaded([f["token"] for f in inner.get("files", [])])
        if isinstance(files, _Error):
            return files
        if self.dataset_status_answer.lower() != "ok":
            return {"status": self.dataset_status_answer, "error": "fake: the dataset version was refused"}
        self.datasets[ref].append({"files": files, "notes": inner.get("versionNotes", "")})
        self._materialise(ref, files)
        return {"ref": f"/datasets/{ref}", "url": f"https://www.kaggle.com/datasets/{ref}", "status": "Ok"}

    def _rpc_CreateDataset(self, body: dict):
        ref = f"{body['ownerSlug']}/{body['slug']}"
        files = self._uploaded([f["token"] for f in body.get("files", [])])
        if isinstance(files, _Error):
            return files
        self.datasets[ref] = [{"files": files, "notes": "initial", "title": body.get("title"),
                               "private": body.get("isPrivate", False)}]
        self._materialise(ref, files)
        return {"ref": f"/datasets/{ref}", "url": f"https://www.kaggle.com/datasets/{ref}", "status": "Ok"}

    def _rpc_CreateSubmission(self, body: dict):
        files = self._uploaded([body["blobFileTokens"]])
        if isinstance(files, _Error):
            return files
        (name, data), = files.items()
        ref = 1000 + len(self.submissions)
        sub = Submission(ref, name, body.get("submissionDescription", ""), data, list(self.submission_script))
        if self.competition_dir is not None:  # scored for real, as Kaggle scores a competition's submission
            from ichkaggle.kaggle.local import score_submission

            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / name).write_bytes(data)
                sub.public_score, sub.private_score, sub.error_description = score_submission(
                    Path(tmp) / name, self.competition_dir)
            sub.statuses = ["PENDING", "ERROR" if sub.error_description else "COMPLETE"]
        self.submissions.append(sub)
        return {"message": self.create_submission_message, "ref": ref}

    def _rpc_GetSubmissionLimits(self, body: dict) -> dict:
        if self.submission_limits is not None:
            return dict(self.submission_limits)
        made = len(self.submissions) + self.earlier_submissions
        if not made:
            return {}  # not on a team yet: every count is zero
        return {"numToday": len(self.submissions), "numTotal": made,
                "numAllowedNow": max(0, self.submissions_per_day - len(self.submissions))}

    def _row(self, sub: Submission) -> dict:
        """A submission as the API describes it; each look advances its status script."""
        status = sub.statuses.pop(0) if len(sub.statuses) > 1 else sub.statuses[0]
        row = {"ref": sub.ref, "date": "2024-01-01T00:00:00.000Z", "description": sub.description,
               "fileName": sub.file_name, "status": status, "totalBytes": len(sub.data)}
        if status == "COMPLETE":
            row.update(publicScore=sub.public_score or self.submission_scores[0],
                       privateScore=sub.private_score or self.submission_scores[1])
        if status == "ERROR":
            row["errorDescription"] = sub.error_description or self.submission_error
        return row

    def _rpc_GetSubmission(self, body: dict):
        sub = next((s for s in self.submissions if s.ref == int(body.get("ref", 0))), None)
        if sub is None:
            return _Error(404, f"submission {body.get('ref')} not found")
        return self._row(sub)

    def _rpc_ListSubmissions(self, body: dict) -> dict:
        start = int(body.get("pageToken") or 0)
        size = min(int(body.get("pageSize") or 20), self.list_page_size)
        listed = list(range(self.earlier_submissions)) + list(self.submissions)  # oldest first
        listed = listed[::-1] if self.list_newest_first else listed
        rows = [self._row(item) if isinstance(item, Submission) else
                {"ref": 100 + item, "date": "2023-01-01T00:00:00.000Z", "description": f"earlier {item}",
                 "fileName": "old.csv", "status": "COMPLETE", "publicScore": "0.1", "privateScore": "0.1"}
                for item in listed[start:start + size]]
        more = start + size < len(listed)
        return {"submissions": rows, **({"nextPageToken": str(start + size)} if more else {})}


@dataclass
class _Error:
    status: int
    message: str


class _Handler(BaseHTTPRequestHandler):
    fake: FakeKaggle
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, payload: dict | bytes, content_type: str = "application/json",
              headers: dict | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self, rpc: str, body: bytes) -> None:
        with self.fake._lock:
            self.fake.requests.append(Recorded(self.command, self.path, rpc, dict(self.headers), body))

    def _authorized(self) -> bool:
        expected = base64.b64encode(f"{self.fake.username}:{self.fake.key}".encode()).decode()
        given = self.headers.get("Authorization", "")
        return given == f"Basic {expected}" or (self.fake.token is not None and given == f"Bearer {self.fake.token}")

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        body = self._body()
        parts = path.strip("/").split("/")
        rpc = parts[-1] if len(parts) >= 3 and parts[-3] == "v1" else ""
        self._record(rpc, body)
        if not rpc:
            return self._send(404, {"code": 404, "message": f"fake: no route {path}"})
        if not self._authorized():
            return self._send(401, {"code": 401, "message": "Unauthenticated"})
        with self.fake._lock:
            queue = self.fake.failures.get(rpc)
            failure = queue.pop(0) if queue else None
        if failure is not None:
            status, payload, wait = failure
            return self._send(status, payload or {"code": status, "message": f"fake: {rpc} failed with {status}"},
                              headers={"Retry-After": wait} if wait is not None else None)
        with self.fake._lock:
            status, answer = self.fake.rpc(rpc, json.loads(body or b"{}"))
        if isinstance(answer, _Error):
            return self._send(answer.status, {"code": answer.status, "message": answer.message})
        self._send(status, answer)

    def do_PUT(self) -> None:
        path = urlsplit(self.path).path
        body = self._body()
        self._record("", body)
        token = path.rsplit("/", 1)[-1]
        blob = self.fake.blobs.get(token) if path.startswith("/upload/") else None
        if blob is None:
            return self._send(404, {"code": 404, "message": "no such upload"})
        if self.headers.get("Content-Range", "").startswith("bytes */"):
            return self._send(404, {"code": 404, "message": "upload expired"})  # no resumes here
        blob["data"] = body
        self._send(200, {})

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        self._record("", b"")
        data = self.fake.files.get(path.rsplit("/", 1)[-1]) if path.startswith("/files/") else None
        if isinstance(data, Path):
            data = data.read_bytes() if data.is_file() else None
        if data is None:
            return self._send(404, {"code": 404, "message": "no such file"})
        self._send(200, data, "application/octet-stream")


# ----------------------------------------------------------------------------- pytest fixture


def _fixture():
    import secrets
    import tempfile

    import pytest

    @pytest.fixture
    def kaggle_env(tmp_path, monkeypatch):
        """A fake Kaggle server, credentials for it in the environment (a fresh random key),
        HOME and the temp dir inside ``tmp_path``, no proxy, no token: the real client,
        configured by ``ichkaggle.kaggle.api``, talks only to 127.0.0.1, pointed there the
        first way KAGGLE_API_NOTES.md documents (kagglesdk's endpoint table, in-process)."""
        from kagglesdk.kaggle_env import KaggleEnv, _env_to_endpoint

        key = secrets.token_hex(16)
        home = tmp_path / "home"
        home.mkdir()
        (tmp_path / "tmp").mkdir()
        monkeypatch.setenv("HOME", str(home))
        for name in ("KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR", "XDG_CONFIG_HOME", "VERBOSE", "VERBOSE_OUTPUT",
                     "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
                     "KAGGLE_API_ENVIRONMENT", "SOURCE_DATE_EPOCH"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        monkeypatch.setenv("KAGGLE_USERNAME", "alice")
        monkeypatch.setenv("KAGGLE_KEY", key)
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
        with FakeKaggle("alice", key) as fake:
            monkeypatch.setitem(_env_to_endpoint, KaggleEnv.PROD, fake.url)
            yield fake

    return kaggle_env


kaggle_env = _fixture()


def files_containing(root, needle: str) -> list:
    """Every file under ``root`` whose bytes contain ``needle``."""
    from pathlib import Path

    hits = []
    for path in Path(root).rglob("*"):
        if path.is_file() and not path.is_symlink() and needle.encode() in path.read_bytes():
            hits.append(path)
    return hits
