"""Bytes of one prepared image at each size and format, measured on real slices: the plan's part sizes.

Why: Kaggle keeps at most 20 GB of a kernel's output, so how many prepare kernels ("parts") a
setting needs is (train + test images) x bytes per image / the per-part limit. The bytes depend
on the content (the scan circle, bone, noise), so synthetic phantoms would not do: this encodes
each real slice exactly as ``prepare`` writes it (``render`` + ``encode``, JPEG quality 95 4:2:0,
PNG compression 1 without filter) and prints, per size and format, the mean and the 95th
percentile, and the milliseconds the render + encode took per slice on one thread (prepare's
time per part: the plan adds the read, measured here too), with the date and the machine.
``--json`` writes the figures the plan reads (``ichkaggle/configs/image_bytes.json``).

    python benchmarks/bench_image_bytes.py [--real ../shared/real-sample] [--json ichkaggle/configs/image_bytes.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

#: 32 and 64: what a rehearsal (``push run --local``) prepares; the rest: what a Kaggler would pick
SIZES = (32, 64, 128, 224, 256, 320, 384, 448, 512)
#: (format, windows): the default three windows in both formats, and PNG's four-channel case
SETTINGS = (("jpg", ("brain", "subdural", "bone")), ("png", ("brain", "subdural", "bone")),
            ("png", ("brain", "subdural", "bone", "soft_tissue")))


def measure(files: list[Path], size: int, fmt: str, windows: tuple[str, ...], decoded: list) -> dict:
    from ichkaggle.ct.windowing import parse_windows
    from ichkaggle.prepared.prepare import encode, render
    from ichkaggle.prepared.reader import PrepareSettings

    settings = PrepareSettings(size=size, windows=parse_windows(list(windows)), format=fmt)
    started = time.perf_counter()
    sizes = np.array([len(encode(render(stored, rescale, settings), settings)) for stored, rescale in decoded])
    ms = (time.perf_counter() - started) / len(decoded) * 1000
    return {"format": fmt, "channels": len(windows), "size": size, "mean": round(float(sizes.mean())),
            "p95": round(float(np.percentile(sizes, 95))), "max": int(sizes.max()), "encode_ms": round(ms, 2),
            "slices": len(files)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = Path(__file__).resolve().parents[2] / "shared" / "real-sample"
    parser.add_argument("--real", type=Path, default=default, help="a folder of real RSNA DICOM slices")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as the plan's data file")
    args = parser.parse_args(argv)

    from ichkaggle.ct.dicom import read_stored
    from ichkaggle.prepared.prepare import one_thread

    files = sorted(args.real.glob("*.dcm"))
    if not files:
        print(f"no *.dcm under {args.real}", file=sys.stderr)
        return 2
    one_thread()  # as each prepare worker runs
    started = time.perf_counter()
    for _ in range(3):
        decoded = [read_stored(path)[:2] for path in files]
    read_ms = (time.perf_counter() - started) / (3 * len(files)) * 1000
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}, python {platform.python_version()}"
    date = time.strftime("%Y-%m-%d")
    rows = [measure(files, size, fmt, windows, decoded) for fmt, windows in SETTINGS for size in SIZES]
    print(f"bytes per prepared image, {len(files)} real slices from {args.real.name}, {date}, {machine}")
    print(f"read + parse one slice: {read_ms:.2f} ms (page cache warm)")
    print("| format | channels | size px | mean bytes | p95 bytes | max bytes | render + encode ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['format']} | {row['channels']} | {row['size']} | {row['mean']:,} | {row['p95']:,} | "
              f"{row['max']:,} | {row['encode_ms']:.2f} |")
    if args.json is not None:
        import cv2

        data = {"date": date, "source": f"{len(files)} real RSNA stage-2 slices ({args.real.name}), encoded as "
                                        "ichkaggle prepare writes them (benchmarks/bench_image_bytes.py)",
                "machine": f"{machine}, opencv {cv2.__version__}", "read_ms": round(read_ms, 2), "figures": rows}
        args.json.write_text(json.dumps(data, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
