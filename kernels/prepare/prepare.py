"""ichkaggle prepare kernel: train and test prepared once, packed, at a config's image settings (CPU).

Runs without a GPU (no GPU quota spent on DICOM decoding) and with the internet off. Installs
the package from the ichkaggle-src dataset and calls ichkaggle.kaggle.kernel.kaggle_prepare;
its output (two packed folders + ichkaggle_prepare.json, ~11 GB for stage 2 at 224 px JPEG)
is attached to the train and infer kernels. A setting too large for one kernel's 20 GB output
is split over PARTS kernels, each preparing the image ids of its PART. `ichkaggle push` writes
CONFIG, PART and PARTS below.
"""
import glob
import importlib
import os
import subprocess
import sys

CONFIG = "exp_00"
PART = 0
PARTS = 1

INPUT = os.environ.get("ICHKAGGLE_INPUT", "/kaggle/input")
OUTPUT = os.environ.get("ICHKAGGLE_OUTPUT", "/kaggle/working")


def install_package():
    wheels = sorted({w for depth in ("*", "*/*", "*/*/*") for w in glob.glob(f"{INPUT}/{depth}/ichkaggle-*.whl")})
    if not wheels:
        sys.exit(f"no ichkaggle wheel under {INPUT}: attach the ichkaggle-src dataset (ichkaggle bundle + push)")
    command = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet", wheels[-1]]
    target = os.environ.get("ICHKAGGLE_PIP_TARGET")  # a local run installs into a folder, not the environment
    if target:
        command += ["--target", target]
        sys.path.insert(0, target)
    print("installing", wheels[-1], flush=True)
    subprocess.check_call(command)
    importlib.invalidate_caches()


install_package()
from ichkaggle.kaggle.kernel import kaggle_prepare  # noqa: E402

part, parts = int(os.environ.get("ICHKAGGLE_PART", PART)), int(os.environ.get("ICHKAGGLE_PARTS", PARTS))
kaggle_prepare(os.environ.get("ICHKAGGLE_CONFIG", CONFIG), INPUT, OUTPUT, part=part, parts=parts)
