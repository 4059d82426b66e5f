"""ichkaggle infer kernel: the train kernels' folds averaged (TTA) into a checked submission.csv.

Installs the package from the ichkaggle-src dataset (the bundled wheel, no index, no
dependencies) and calls ichkaggle.kaggle.kernel.kaggle_infer, which reads the attached train
kernels' outputs (kernel_sources). `ichkaggle push` writes FOLDS below and, for a run of
several configs, CONFIGS (each config's folds predicted, then blended on their out-of-fold
predictions); the ICHKAGGLE_* variables let a local run point it at another tree than /kaggle.
"""
import glob
import importlib
import os
import subprocess
import sys

FOLDS = [0, 1, 2, 3, 4]
CONFIGS = []

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
from ichkaggle.kaggle.kernel import kaggle_infer  # noqa: E402

folds = os.environ.get("ICHKAGGLE_FOLDS")
configs = os.environ.get("ICHKAGGLE_CONFIGS")
kaggle_infer(INPUT, OUTPUT, [int(f) for f in folds.split(",")] if folds else FOLDS,
             configs=configs.split(",") if configs else CONFIGS)
