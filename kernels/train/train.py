"""ichkaggle train kernel: one session of one fold of one experiment on Kaggle's GPUs, internet off.

Installs the package from the ichkaggle-src dataset (the bundled wheel, no index, no
dependencies: Kaggle's image has them) and calls ichkaggle.kaggle.kernel.kaggle_train, which
uses the attached prepare kernel's output, continues an attached earlier session of the
fold, trains on every GPU until the session is nearly over and says whether the fold is
complete. `ichkaggle push` writes CONFIG, FOLD and MARGIN_MINUTES (the minutes kept free for
saving; larger when a session was killed at its limit) below; the ICHKAGGLE_* variables, which
win over them, let a local run point it at another tree than /kaggle.
"""
import time

STARTED = time.time()  # the session's clock: the time limit counts setup too

import glob  # noqa: E402
import importlib  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

CONFIG = "exp_00"
FOLD = 0
MARGIN_MINUTES = 20

INPUT = os.environ.get("ICHKAGGLE_INPUT", "/kaggle/input")
OUTPUT = os.environ.get("ICHKAGGLE_OUTPUT", "/kaggle/working")
os.environ.setdefault("ICHKAGGLE_MARGIN_MINUTES", str(MARGIN_MINUTES))


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
from ichkaggle.kaggle.kernel import kaggle_train  # noqa: E402

kaggle_train(os.environ.get("ICHKAGGLE_CONFIG", CONFIG), int(os.environ.get("ICHKAGGLE_FOLD", FOLD)), INPUT, OUTPUT,
             started=STARTED)
