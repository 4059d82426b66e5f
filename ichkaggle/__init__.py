"""ichkaggle: RSNA Intracranial Hemorrhage Detection as tested software.

The core (DICOM, windowing, labels, folds, metric, submission) needs only numpy,
pandas, pydicom and OpenCV; training lives behind the ``train`` extra and the
Kaggle API behind the ``kaggle`` extra, both imported lazily.
"""

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
