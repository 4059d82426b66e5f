"""Push a dataset or a kernel to Kaggle, follow it, fetch its outputs; or run the whole job.

  ichkaggle push dataset ichkaggle-src          the package (after `ichkaggle bundle`)
  ichkaggle push dataset ichkaggle-timm-weights the ImageNet weights (after fetch_weights.py)
  ichkaggle push kernel train --folds 0-4       one private GPU kernel per fold, internet off
  ichkaggle push kernel infer --folds 0-4       attaches those folds' outputs and averages them
  ichkaggle push run --folds 0-4 -m MESSAGE     the whole job, resumable: prepare once (CPU kernels),
                                                each fold in chained 12-hour sessions, infer, submit
  ichkaggle push run --config A --config B --folds 0-4
                                                several configs: each one's folds trained, the prepare
                                                shared where the image settings agree, ONE infer kernel
                                                that blends them (docs/ensembles.md)
  ichkaggle push run --config rehearsal --folds 0-4 --local DIR
                                                the same job rehearsed here first: the real kernels run
                                                on this CPU under Kaggle's limits, no credentials needed

The templates (kernels/NAME, datasets/NAME) keep the placeholder owner KAGGLE_USERNAME; the
metadata is rendered with your username into a temporary folder, checked for credentials
and pushed with the Kaggle Python API, whose answers are checked (the kaggle CLI exits 0 on
several failures). --wait polls with bounded backoff until the version ends, downloads its
outputs to --out/<kernel>/v<version>/ and prints where the log is; a version that ends in
ERROR is a non-zero exit with the end of its log. `push run` always waits, keeps its state
in a JSON file (--state) and, run again, resumes where it stopped: finished kernels are
kept, failed ones pushed again, a fold that is not complete gets its next session (attached
to the one before), a submitted file is not submitted twice. Kaggle runs at most 2 GPU
sessions of an account at once: `push run` keeps at most --max-gpu-sessions in flight,
pushes the next when one ends, and waits out Kaggle's "Maximum batch GPU session count"
refusal. A session Kaggle killed at its time limit is pushed again once with a larger saving
margin. Image settings too large for one kernel's 20 GB output are prepared in parts (see
`ichkaggle plan`). It refuses a plan larger than the weekly GPU quota left, stops, state
kept, when the quota cannot pay for the next session (unless --force), and does not upload
when the day's submissions are spent.

--local DIR rehearses `push run` on this machine: the same rendered kernels, each run in its
own process in DIR/kernels/<slug>/v<N>/ (input/ with the competition, the datasets and the
attached kernels' outputs mounted as Kaggle mounts them; working/; tmp/), internet off, no
credentials in their environment, on CPU, with Kaggle's limits: --max-gpu-sessions at once,
--session-hours a session (shorten it to see sessions chained and killed), --output-limit,
--quota-hours of GPU charged by session time, --submissions-per-day. The competition is
--data (the real one or a subset), else a small synthetic one made once under DIR; its
submission is scored against its test_labels.csv. The package dataset is the checkout's
datasets/ichkaggle-src, or built into DIR when that is missing or stale. Rehearse a tiny
config (`--config rehearsal`) before spending GPU hours.
"""

from __future__ import annotations

import argparse

KINDS = ("dataset", "kernel", "run")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=KINDS, help="what to push")
    parser.add_argument("name", nargs="?", default=None,
                        help="dataset or kernel folder name (datasets/NAME, kernels/NAME) or a path to one")
    parser.add_argument("--wait", action="store_true", help="follow the run to its end and fetch its outputs")
    parser.add_argument("--config", action="append", default=None, metavar="CONFIG",
                        help="experiment the kernels run (a bundled name or a TOML; default: exp_00); run: repeat it "
                             "to train several configs and blend them in one infer kernel")
    parser.add_argument("--folds", default=None, metavar="SPEC",
                        help="folds, e.g. 0-4 or 0,2; None: the config's fold")
    parser.add_argument("-m", "--message", default=None, help="run: the submission's description")
    parser.add_argument("--no-submit", action="store_true", help="run: stop after the infer kernel")
    parser.add_argument("--sample", default=None, metavar="SAMPLE_CSV",
                        help="run: check the submission against this sample before submitting")
    parser.add_argument("--state", default=None, metavar="JSON",
                        help="run: the state file; None: OUT/<config>-folds<...>.json (several configs: "
                             "OUT/<a>+<b>-folds<...>.json)")
    parser.add_argument("--owner", default=None, help="Kaggle username for the slugs; None: the credentials' username")
    parser.add_argument("--notes", default="", help="dataset: the version notes")
    parser.add_argument("--accelerator", default="NvidiaTeslaT4",
                        help="GPU kernels: Kaggle's id, NvidiaTeslaT4 (GPU T4 x2) or NvidiaTeslaP100 (see `ichkaggle "
                             "plan --help`); the prepare kernel always runs on CPU")
    parser.add_argument("--force", action="store_true",
                        help="run: start (or go on) even when the plan needs more than the weekly GPU quota left")
    parser.add_argument("--max-gpu-sessions", type=int, default=2, metavar="N",
                        help="run: GPU kernels in flight at once (Kaggle runs 2 per account and refuses a push "
                             "beyond them: the folds' sessions are queued, a refusal is waited out)")
    parser.add_argument("--throughput", type=float, default=None, metavar="IMG_PER_S",
                        help="run: the training throughput the plan assumes until a session has measured one "
                             "(see `ichkaggle plan --help`)")
    parser.add_argument("--weights", action="store_true", help="kernel: download the weights files too")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="where outputs and logs go; None: runs/kaggle of the checkout (--local: DIR/runs)")
    parser.add_argument("--kernels-dir", default=None, metavar="DIR",
                        help="kernel templates; None: kernels/ of the checkout")
    parser.add_argument("--datasets-dir", default=None, metavar="DIR",
                        help="dataset folders; None: datasets/ of the checkout")
    parser.add_argument("--poll", type=float, default=None, metavar="SECONDS",
                        help="first polling interval (it grows to 120 s); None: 15 s (--local: 1 s, up to 5 s)")
    parser.add_argument("--max-wait", type=float, default=None, metavar="SECONDS",
                        help="give up following a version after it has run this long (run again to resume); "
                             "None: a whole session and an hour for its outputs (--session-hours + 1 h)")
    parser.add_argument("--dry-run", nargs="?", const="", default=None, metavar="DIR",
                        help="only render the folders (into DIR, else a new temporary folder) and show them")
    local = parser.add_argument_group("run --local: a rehearsal on this machine (see above)")
    local.add_argument("--local", default=None, metavar="DIR",
                       help="run: rehearse here, the kernels really running, everything under DIR")
    local.add_argument("--data", default=None, metavar="COMPETITION_DIR",
                       help="--local: the competition the kernels see; None: a synthetic one made in DIR")
    local.add_argument("--session-hours", type=float, default=12.0, metavar="H",
                       help="--local: a session's limit (Kaggle's: 12); a version past it is killed")
    local.add_argument("--output-limit", default="20GB", metavar="SIZE",
                       help="--local: what one kernel's output may hold (Kaggle's: 20GB)")
    local.add_argument("--quota-hours", type=float, default=30.0, metavar="H",
                       help="--local: the weekly GPU quota, charged by each GPU kernel's wall time")
    local.add_argument("--submissions-per-day", type=int, default=5, metavar="N",
                       help="--local: the daily submission allowance")


def polling_for(poll: float | None, max_wait: float | None, session_hours: float, local: bool):
    """How a run follows its kernels. A version is followed for a whole session and an hour for
    its outputs unless ``--max-wait`` says otherwise: one that uses its full session is not given up on."""
    from ..kaggle.results import Polling

    first = poll if poll is not None else (1.0 if local else 15.0)
    longest = max(first, 5.0 if local else 120.0)
    timeout = max_wait if max_wait is not None else (session_hours + 1) * 3600
    return Polling(first=first, longest=longest, timeout=timeout, submission_timeout=min(timeout, 2 * 3600))


def main(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from ..errors import UserError
    from ..kaggle.api import KaggleSession
    from ..kaggle.credentials import find_credentials
    from ..kaggle.flow import Layout, parse_folds, push_dataset, push_kernels
    if args.kind in ("dataset", "kernel") and not args.name:
        raise UserError(f"push {args.kind}: which one? e.g. ichkaggle push "
                        + ("dataset ichkaggle-src" if args.kind == "dataset" else "kernel train --folds 0-4"))
    if args.kind == "run" and args.name:
        raise UserError("push run takes no NAME: it pushes kernels/train (per fold) and kernels/infer")
    if args.kind == "run" and args.dry_run is not None:
        raise UserError("push run --dry-run: dry-run `push kernel train` and `push kernel infer` instead, or rehearse "
                        "with --local DIR")
    if args.local is not None and args.kind != "run":
        raise UserError("--local rehearses `push run` only")
    if args.max_gpu_sessions < 1:
        raise UserError("--max-gpu-sessions: at least 1")
    args.configs = args.config or ["exp_00"]
    if len(args.configs) > 1 and args.kind != "run":
        raise UserError(f"push {args.kind} takes one --config; several are for `push run`")
    args.config = args.configs[0]
    local = args.local is not None
    polling = polling_for(args.poll, args.max_wait, args.session_hours, local)
    folds = parse_folds(args.folds)
    layout = Layout.find(args.kernels_dir, args.datasets_dir,
                         args.out or (Path(args.local) / "runs" if local else None))
    if local:
        return _rehearse(args, layout, folds, polling)
    dry_run = None if args.dry_run is None else Path(args.dry_run or tempfile.mkdtemp(prefix="ichkaggle-render-"))
    credentials = find_credentials(owner=args.owner, required=dry_run is None)
    owner = args.owner or (credentials.username if credentials else None)
    if not owner:
        raise UserError("no Kaggle username: pass --owner or set up credentials")
    session = KaggleSession(credentials) if credentials else None
    if args.kind == "dataset":
        push_dataset(session, args.name, owner, layout, notes=args.notes, wait=args.wait, polling=polling,
                     dry_run=dry_run)
    elif args.kind == "kernel":
        push_kernels(session, args.name, owner, layout, args.config, folds, wait=args.wait, polling=polling,
                     accelerator=args.accelerator, weights=args.weights, dry_run=dry_run)
    else:
        _run(session, args, owner, layout, folds, polling)
    return 0


def _run(session, args, owner: str, layout, folds, polling) -> None:
    from ..kaggle.pipeline import run_pipeline

    run_pipeline(session, owner, layout, args.configs, folds, message=args.message, submit=not args.no_submit,
                 sample=args.sample, state_path=args.state, polling=polling, accelerator=args.accelerator,
                 force=args.force, max_gpu_sessions=args.max_gpu_sessions, throughput=args.throughput)


def _rehearse(args, layout, folds, polling) -> int:
    """``push run --local DIR``: the session is the rehearsal's, no credentials involved."""
    from ..kaggle.local import parse_bytes, rehearsal
    from ..kaggle.sandbox import Limits

    limits = Limits(max_gpu_sessions=args.max_gpu_sessions, session_hours=args.session_hours,
                    output_bytes=parse_bytes(args.output_limit))
    owner = args.owner or "local"
    session, layout = rehearsal(args.local, layout, args.configs, owner, data=args.data, limits=limits,
                                quota_hours=args.quota_hours, submissions_per_day=args.submissions_per_day)
    args.sample = args.sample or str(session.competition / "stage_2_sample_submission.csv")
    _run(session, args, owner, layout, folds, polling)
    return 0
