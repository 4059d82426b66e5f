"""Time the table commands at stage-2 size against the naive way, in the same run.

Synthetic tables of the real shapes (752,803 train images -> 4,516,842 long rows with
four images repeated; 121,232 test images -> 727,392 submission rows) are written to a
temp dir. Each task is timed the ichkaggle way and the way the top solutions' scripts do
it -- a Python loop over ``itertuples`` that groups labels per image (or builds rows one
by one) -- and a markdown table of seconds and ratios is printed.

    python benchmarks/bench_tables.py [--scale 1.0] [--repeat 3] [--naive-max-rows N]

The CLI column runs ``python -m ichkaggle.cli`` in a fresh process (interpreter start-up
and imports included: what a user waits for); the library column makes the same calls
in this process, like the naive loop, and the ratio compares those two. ichkaggle
figures are the median of ``--repeat`` runs, naive ones a single run. With ``--naive-max-rows`` a naive task
on more rows runs on a prefix and is extrapolated linearly (marked in the table).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from ichkaggle import LABELS
from ichkaggle.tables.csv_io import long_ids
from ichkaggle.tables.labels import FILE_ORDER, read_long_csv, write_wide_csv
from ichkaggle.tables.metric import score_files
from ichkaggle.tables.submission import _read_sample_file, check_submission, write_submission

N_TRAIN = 752_803
N_TEST = 121_232
REPEATED_IMAGES = 4
#: stage-1 positive rates of the subtypes (docs/data.md); any = their OR
RATES = {"epidural": 0.004, "intraparenchymal": 0.048, "intraventricular": 0.035,
         "subarachnoid": 0.048, "subdural": 0.063}


# ---------------------------------------------------------------------------- data


def _image_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    values = rng.choice(16**9, size=n, replace=False)
    hexes = np.char.mod("%09x", values)
    return np.strings.add("ID_", hexes).astype(object)


def _labels(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 6) 0/1 in LABELS order with any = OR of the subtypes."""
    sub = np.c_[[rng.random(n) < RATES[name] for name in LABELS[1:]]].T
    return np.c_[sub.any(axis=1), sub].astype(np.int8)


def _write_long(path: Path, ids: np.ndarray, values: np.ndarray) -> None:
    """Long ``ID,Label`` CSV; values are ints (0/1) or probabilities."""
    pd.DataFrame({"ID": ids, "Label": values}).to_csv(path, index=False, float_format="%.6g")


def make_tables(folder: Path, scale: float, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    n_train, n_test = max(int(N_TRAIN * scale), REPEATED_IMAGES), max(int(N_TEST * scale), 1)
    ids = _image_ids(rng, n_train + n_test)
    train_ids, test_ids = ids[:n_train], ids[n_train:]
    order = [LABELS.index(name) for name in FILE_ORDER]

    train = _labels(rng, n_train)
    long_train = long_ids(train_ids, FILE_ORDER)
    values = train[:, order].ravel()
    repeat = slice(0, 6 * REPEATED_IMAGES)  # the real file repeats four images
    _write_long(folder / "stage_2_train.csv", np.r_[long_train, long_train[repeat]],
                np.r_[values, values[repeat]])

    long_test = long_ids(test_ids, FILE_ORDER)
    pd.DataFrame({"ID": long_test, "Label": 0.5}).to_csv(folder / "sample.csv", index=False)
    truth = _labels(rng, n_test)
    _write_long(folder / "test_labels.csv", long_test, truth[:, order].ravel())
    probs = np.clip(0.7 * truth + 0.3 * rng.random((n_test, 6)), 0.001, 0.999)
    shuffle = rng.permutation(len(long_test))  # the metric must not care about row order
    _write_long(folder / "pred.csv", long_test[shuffle], probs[:, order].ravel()[shuffle])
    return {"train_rows": len(values) + 6 * REPEATED_IMAGES, "test_ids": test_ids, "probs": probs,
            "test_rows": len(long_test)}


# ---------------------------------------------------------------------------- the naive way


def naive_labels(train_csv: Path, out_csv: Path, max_rows: int | None) -> None:
    """Group labels per image in a loop over itertuples, as the top solutions' scripts do."""
    df = pd.read_csv(train_csv, nrows=max_rows)
    images: dict[str, dict[str, int]] = {}
    for row in df.itertuples(index=False):
        _, hex_id, label = row.ID.split("_")
        images.setdefault("ID_" + hex_id, {})[label] = row.Label
    rows = []
    for image, labels in images.items():
        positives = " ".join(name for name in LABELS if labels.get(name, 0))
        rows.append([image] + [labels.get(name, 0) for name in LABELS] + [positives])
    pd.DataFrame(rows, columns=["ID", *LABELS, "labels"]).to_csv(out_csv, index=False)


def naive_score(pred_csv: Path, truth_csv: Path, max_rows: int | None) -> float:
    truth_df = pd.read_csv(truth_csv)
    pred = pd.read_csv(pred_csv, nrows=max_rows)
    truth = {row.ID: row.Label for row in truth_df.itertuples(index=False)}
    total, images, eps = 0.0, set(), 1e-7
    for row in pred.itertuples(index=False):
        y = truth[row.ID]
        p = min(max(row.Label, eps), 1 - eps)
        weight = 2.0 if row.ID.endswith("_any") else 1.0
        total += weight * -(y * math.log(p) + (1 - y) * math.log(1 - p))
        images.add(row.ID.rsplit("_", 1)[0])
    return total / 7.0 / len(images)


def naive_write(path: Path, ids, probs: np.ndarray, sample_csv: Path, max_images: int | None) -> None:
    rows = []
    for i, image in enumerate(ids[:max_images]):
        for j, name in enumerate(LABELS):
            rows.append([f"{image}_{name}", probs[i, j]])
    sub = pd.DataFrame(rows, columns=["ID", "Label"])
    sample = pd.read_csv(sample_csv)
    sub = sample[["ID"]].merge(sub, on="ID", how="left" if max_images is None else "inner")
    sub.to_csv(path, index=False)


def naive_check(sub_csv: Path, sample_csv: Path, max_rows: int | None) -> list[str]:
    sub = pd.read_csv(sub_csv, nrows=max_rows, dtype={"Label": object})
    sample_ids = set(pd.read_csv(sample_csv)["ID"])
    seen, per_image = set(), Counter()
    duplicates = extra = bad = 0
    for row in sub.itertuples(index=False):
        if row.ID in seen:
            duplicates += 1
        seen.add(row.ID)
        if row.ID not in sample_ids:
            extra += 1
        per_image[row.ID.rsplit("_", 1)[0]] += 1
        try:
            value = float(row.Label)
            if not (math.isfinite(value) and 0 <= value <= 1):
                bad += 1
        except ValueError:
            bad += 1
    problems = [f"{duplicates} duplicates"] if duplicates else []
    problems += [f"{extra} extra"] if extra else []
    problems += [f"{bad} bad values"] if bad else []
    if max_rows is None:
        missing = len(sample_ids - seen)
        problems += [f"{missing} missing"] if missing else []
        odd = sum(1 for count in per_image.values() if count != 6)
        problems += [f"{odd} images without six rows"] if odd else []
    return problems


# ---------------------------------------------------------------------------- timing


#: Runs the CLI as its own child and reports that child's time and peak RSS. The extra
#: hop matters: Linux counts a forked copy of this (large) process in the peak RSS of
#: whatever it spawns, so the CLI must be started from a small process.
LAUNCHER = """
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.call(sys.argv[1:])
elapsed = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(f"@@bench {code} {elapsed} {peak}", file=sys.stderr)
"""


def run_cli(args: list[str]) -> tuple[float, float, str]:
    """Seconds, peak RSS in MB and stdout of one ``python -m ichkaggle.cli`` process."""
    cmd = [sys.executable, "-c", LAUNCHER, sys.executable, "-m", "ichkaggle.cli", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    marker = [line for line in proc.stderr.splitlines() if line.startswith("@@bench ")]
    code, elapsed, peak_kb = marker[-1].split()[1:] if marker else (proc.returncode, 0, 0)
    if int(code) != 0:
        raise SystemExit(f"ichkaggle {' '.join(args)} failed ({code}):\n{proc.stderr}")
    return float(elapsed), int(peak_kb) / 1024, proc.stdout


def lib_labels(train_csv: Path, out_csv: Path) -> None:
    write_wide_csv(read_long_csv(train_csv), out_csv)


def lib_score(pred_csv: Path, truth_csv: Path) -> float:
    return score_files(pred_csv, truth_csv).score


def uncached(fn):
    """``fn`` with the sample submission read anew each call: a process reads it once, so a
    repeat must not find it cached from the one before."""

    def call(*args):
        _read_sample_file.cache_clear()
        return fn(*args)

    return call


def timed(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def median_of(repeat: int, fn) -> float:
    return statistics.median(fn() for _ in range(repeat))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the stage-2 sizes")
    parser.add_argument("--repeat", type=int, default=3, help="ichkaggle runs per task (median)")
    parser.add_argument("--naive-max-rows", type=int, default=None,
                        help="run naive tasks on at most this many rows and extrapolate")
    parser.add_argument("--keep", type=Path, default=None, help="write the tables here and keep them")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_tables_") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        data = make_tables(folder, args.scale)
        print(f"synthetic tables: {data['train_rows']:,} train rows, {data['test_rows']:,} "
              f"submission rows ({time.perf_counter() - t0:.1f} s to make)", file=sys.stderr, flush=True)
        train, sample, truth, pred = (folder / n for n in
                                      ("stage_2_train.csv", "sample.csv", "test_labels.csv", "pred.csv"))
        sub = folder / "submission.csv"
        limit = args.naive_max_rows
        rows: list[tuple] = []

        def naive_rows(total: int) -> tuple[int | None, float]:
            """(row limit or None, extrapolation factor) for a naive task on ``total`` rows."""
            if limit is None or limit >= total:
                return None, 1.0
            return limit, total / limit

        # labels: CLI first (peak memory of this child), library call, then the naive loop
        runs = [run_cli(["labels", str(train), str(folder / "wide.csv")]) for _ in range(args.repeat)]
        cli = statistics.median(r[0] for r in runs)
        peak_mb = max(r[1] for r in runs)
        lib = median_of(args.repeat, lambda: timed(lib_labels, train, folder / "wide_lib.csv")[0])
        n, factor = naive_rows(data["train_rows"])
        naive = timed(naive_labels, train, folder / "wide_naive.csv", n)[0] * factor
        same = (folder / "wide.csv").read_text() == (folder / "wide_naive.csv").read_text() if n is None else None
        rows.append(("labels: long CSV -> wide CSV", data["train_rows"], cli, lib, naive, factor > 1, same))

        # score: both must give the same number
        runs = [run_cli(["score", str(pred), str(truth)]) for _ in range(args.repeat)]
        cli = statistics.median(r[0] for r in runs)
        cli_value = float(runs[0][2].strip().splitlines()[-1])
        lib = median_of(args.repeat, lambda: timed(lib_score, pred, truth)[0])
        n, factor = naive_rows(data["test_rows"])
        seconds, naive_value = timed(naive_score, pred, truth, n)
        same = abs(naive_value - cli_value) < 1e-5 if n is None else None
        rows.append(("score: two long CSVs", data["test_rows"], cli, lib, seconds * factor, factor > 1, same))

        # write: library call vs building rows one by one
        ids, probs = data["test_ids"], data["probs"]
        lib_write = median_of(args.repeat, lambda: timed(uncached(write_submission), sub, ids, probs, sample)[0])
        n, factor = naive_rows(data["test_rows"])
        images = None if n is None else max(n // 6, 1)
        naive_w = timed(naive_write, folder / "sub_naive.csv", ids, probs, sample, images)[0] * factor
        same = np.allclose(pd.read_csv(sub)["Label"], pd.read_csv(folder / "sub_naive.csv")["Label"],
                           rtol=5e-6) if n is None else None
        rows.append(("write submission", data["test_rows"], None, lib_write, naive_w, factor > 1, same))

        # check, and write + check (the 3 s budget)
        runs = [run_cli(["check", str(sub), "--sample", str(sample)]) for _ in range(args.repeat)]
        cli = statistics.median(r[0] for r in runs)
        lib = median_of(args.repeat, lambda: timed(uncached(check_submission), sub, sample)[0])
        seconds, problems = timed(naive_check, sub, sample, n)
        naive_c = seconds * factor
        rows.append(("check submission", data["test_rows"], cli, lib, naive_c, factor > 1, not problems))

        def write_and_check() -> float:
            _read_sample_file.cache_clear()
            start = time.perf_counter()
            write_submission(sub, ids, probs, sample)
            report = check_submission(sub, sample)
            assert report.ok, report.lines()
            return time.perf_counter() - start

        both = median_of(args.repeat, write_and_check)
        rows.append(("write + check", data["test_rows"], None, both, naive_w + naive_c, factor > 1, None))

    print(f"\nStage-2-sized synthetic tables (scale {args.scale}); {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, numpy {np.__version__}, pandas {pd.__version__}.\n")
    print("| task | rows | ichkaggle CLI s | ichkaggle library s | naive s | naive / library |")
    print("|---|---:|---:|---:|---:|---:|")
    for task, n_rows, cli, lib, naive, extrapolated, _ in rows:
        mark = " (extrapolated)" if extrapolated else ""
        cli_text = "-" if cli is None else f"{cli:.2f}"
        print(f"| {task} | {n_rows:,} | {cli_text} | {lib:.2f} | {naive:.2f}{mark} | {naive / lib:.1f}x |")
    print(f"\nPeak memory of `ichkaggle labels`: {peak_mb:,.0f} MB (max RSS of the child process).")
    agree = [task for task, *_, same in rows if same]
    if agree:
        print("Same output as the naive way: " + "; ".join(agree) + ".")
    print(f"ichkaggle: median of {args.repeat} runs; the CLI column is a fresh `python -m ichkaggle.cli` "
          "process (start-up and imports included), the library column the same work called in-process. "
          "naive: one in-process run of an itertuples loop.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
