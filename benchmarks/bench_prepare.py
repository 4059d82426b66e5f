"""Throughput of ``ichkaggle prepare`` against the seed notebook's way, in the same run, as ratios.

The seed's way per slice: pydicom ``pixel_array``, float rescale, one window, a PIL PNG at
512 px; then a second pass that opens it, resizes to 256 and saves again. ichkaggle's
way, as a user runs it: the CLI in a fresh process (start-up included), fast header parse,
three windows, one area-resized 256 px image, written as its own file or packed into shards.

    python benchmarks/bench_prepare.py [--slices 1500] [--size 256] [--real DIR] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def seed_way(files: list[Path], out: Path, size: int) -> float:
    """The notebook's two passes; returns seconds."""
    import pydicom
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in files:
            ds = pydicom.dcmread(path)
            hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            image = (np.clip((hu - 0.0) / 80.0, 0, 1) * 255).astype(np.uint8)  # brain window 40/80
            Image.fromarray(image).save(out / f"{path.stem}_512.png")
        for path in files:
            with Image.open(out / f"{path.stem}_512.png") as image:
                image.resize((size, size)).save(out / f"{path.stem}.png")
    return time.perf_counter() - start


def ichkaggle_way(src: Path, out: Path, size: int, fmt: str, workers: int, pack: bool) -> float:
    import subprocess

    command = [sys.executable, "-m", "ichkaggle.cli", "prepare", str(src), str(out), "--size", str(size),
               "--format", fmt, "--workers", str(workers), "--quiet"] + (["--pack"] if pack else [])
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    assert done.returncode == 0 and " 0 failed" in done.stdout, done.stdout + done.stderr
    return elapsed


def breakdown(src: Path, size: int) -> None:
    """Where a packed JPEG slice's time goes: start-up, then each step in one process."""
    import subprocess

    from ichkaggle.ct.dicom import read_stored
    from ichkaggle.prepared.prepare import encode, one_thread, render
    from ichkaggle.prepared.reader import PrepareSettings

    empty = Path(tempfile.mkdtemp(prefix="empty-"))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ichkaggle.cli", "prepare", str(empty), str(empty / "out"), "--quiet",
                    "--pack", "--format", "jpg"], check=True, capture_output=True)
    startup = time.perf_counter() - start
    files = sorted(src.glob("*.dcm"))
    settings = PrepareSettings(size=size, format="jpg")
    one_thread()
    steps = {"read + parse the header": lambda f: read_stored(f)}
    t = {}
    for name, fn in steps.items():
        start = time.perf_counter()
        decoded = [fn(f) for f in files]
        t[name] = (time.perf_counter() - start) / len(files) * 1000
    start = time.perf_counter()
    images = [render(stored, rescale, settings) for stored, rescale, _ in decoded]
    t["rescale + area resize + 3 windows"] = (time.perf_counter() - start) / len(files) * 1000
    start = time.perf_counter()
    for image in images:
        encode(image, settings)
    t["JPEG encode"] = (time.perf_counter() - start) / len(files) * 1000
    print(f"\nwhere a packed JPEG slice's time goes ({len(files)} slices, one process):")
    print(f"- CLI start-up and the end (imports, metadata.csv, index), once: {startup:.2f} s "
          f"= {startup / len(files) * 1000:.2f} ms a slice here")
    for name, ms in t.items():
        print(f"- {name}: {ms:.2f} ms")
    shutil.rmtree(empty, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=1500, help="synthetic 512x512 slices to time")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--real", type=Path, default=None, help="also time a folder of real slices")
    parser.add_argument("--real-copies", type=int, default=10, help="copies of each real slice to time")
    parser.add_argument("--repeat", type=int, default=2, help="best of N runs")
    args = parser.parse_args(argv)

    from ichkaggle.synth.dataset import load_config, synthesize

    work = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    try:
        sources = {}
        synthesize(work / "synth", args.slices, 0, seed=1, config=load_config(size=512), show_progress=False)
        sources["synthetic 512x512"] = work / "synth" / "stage_2_train"
        if args.real is not None:  # copies under new names, so the pool has enough files to share
            real = work / "real"
            real.mkdir()
            originals = sorted(args.real.glob("*.dcm"))
            for i in range(args.real_copies):
                for path in originals:
                    shutil.copy(path, real / f"{path.stem}_{i}.dcm")
            sources[f"real ({len(originals)} slices x {args.real_copies})"] = real
        print(f"cores: {os.cpu_count()}  python: {sys.version.split()[0]}")
        print("| source | way | format | layout | workers | ms/slice | speed-up vs seed |")
        print("|---|---|---|---|---|---|---|")
        for label, src in sources.items():
            files = sorted(src.glob("*.dcm"))

            def best(fn, count=len(files)):
                times = []
                for _ in range(args.repeat):
                    target = work / f"run{time.perf_counter_ns()}"
                    times.append(fn(target))
                    shutil.rmtree(target, ignore_errors=True)
                return min(times) / count * 1000

            seed_ms = best(lambda target, files=files: seed_way(files, target, args.size))
            print(f"| {label} | seed notebook | png | files | 1 | {seed_ms:.2f} | 1.0x |")
            one = {}
            for fmt, pack in (("png", False), ("jpg", False), ("png", True), ("jpg", True)):
                layout = "packed" if pack else "files"
                for workers in (1, 2):
                    ms = best(lambda target, src=src, fmt=fmt, workers=workers, pack=pack:
                              ichkaggle_way(src, target, args.size, fmt, workers, pack))
                    one.setdefault((fmt, pack), ms)
                    print(f"| {label} | ichkaggle prepare | {fmt} | {layout} | {workers} | {ms:.2f} | "
                          f"{seed_ms / ms:.1f}x |")
                    if workers == 2:
                        print(f"| {label} | (1 -> 2 workers) | {fmt} | {layout} | | | {one[(fmt, pack)] / ms:.2f}x |")
            if label.startswith("synthetic"):
                breakdown(src, args.size)
        per_slice = one[("jpg", True)] / 1000
        print(f"\nstage 2 (874,035 slices) at the 1-worker JPEG rate on a 4-core Kaggle session (~3.6x): "
              f"{874_035 * per_slice / 3.6 / 60:.0f} min")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
