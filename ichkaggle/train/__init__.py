"""Training, prediction and what they need on a GPU (the ``train`` extra: torch, fastai, timm)."""

from .. import hub_offline

hub_offline()  # before any module of this package imports timm
