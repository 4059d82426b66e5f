"""ichkaggle: RSNA Intracranial Hemorrhage Detection as tested software.

The core (DICOM, windowing, labels, folds, metric, submission) needs only numpy,
pandas, pydicom and OpenCV; training lives behind the ``train`` extra and the
Kaggle API behind the ``kaggle`` extra, both imported lazily.
"""

import os

__version__ = "0.1.0"

#: The six labels in the order every wide table and array in the package uses.
LABELS = (
    "any",
    "epidural",
    "intraparenchymal",
    "intraventricular",
    "subarachnoid",
    "subdural",
)
#: The five subtypes (``any`` is their OR).
SUBTYPES = LABELS[1:]


def hub_offline() -> None:
    """Never ask the Hugging Face hub for anything: weights come from local files only, and timm
    retries an unreachable hub for ~47 s. It must run before timm is first imported (the hub
    client reads the setting then): the train package and the architecture check call it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
