"""Several experiments as one: per-label weights fitted with the metric on their out-of-fold tables (no torch).

- :mod:`.blend`: the weights (:class:`Blend`, :func:`fit`, :func:`cross_fitted`) and
  :func:`blend_tables`, which blends out-of-fold and test tables into the sequence stage's input;
- :mod:`.align`: the bookkeeping across experiments (same slices, same folds, same targets);
- :mod:`.folder`: ``ichkaggle embed`` folders in, a blend folder out (itself an ``--embeddings`` folder).
"""

from .align import align
from .blend import DEFAULT_SCALE, SCALES, Blend, BlendResult, blend_tables, cross_fitted, features, fit
from .folder import BLEND_JSON, blend_folders, load_blend, read_embeddings, save_blend

__all__ = [
    "BLEND_JSON", "DEFAULT_SCALE", "SCALES", "Blend", "BlendResult", "align", "blend_folders", "blend_tables",
    "cross_fitted", "features", "fit", "load_blend", "read_embeddings", "save_blend",
]
