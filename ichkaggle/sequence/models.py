"""The sequence stage: a small bidirectional GRU over each series' per-slice CNN outputs (train extra).

Why: every top solution's last large step came from the slices around each slice; the 1st
place ran a bi-GRU over the per-slice embeddings of each series, ordered by position. Here a
series is a sequence of slices; each slice contributes its CNN logits, a projection of its
embedding and how far it is from its neighbours (the gaps along the slice normal). The GRU
adds a correction to the CNN's logits (a residual that starts at zero), so it can only learn
what the neighbours say. Series are packed, never padded into each other: a series'
predictions do not depend on the other series in its batch.

Trained k-fold by patient on the out-of-fold table (each slice's features come from the CNN
that did not train on it); the test predictions average the k sequence models.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .. import LABELS
from ..errors import UserError
from ..prepared.series import sequences
from ..tables.metric import WEIGHTS, weighted_log_loss
from ..train.calibration import logit
from ..train.slice_table import SliceTable


def gap_features(position: np.ndarray) -> np.ndarray:
    """(T, 2): the distance to the previous and the next slice of one series, in units of
    the series' median spacing (0 at the ends): a gap says a slice is missing or far."""
    gaps = np.abs(np.diff(position))  # a series read backwards (augmentation) has the same gaps
    scale = np.median(gaps) if len(gaps) else 1.0
    scale = scale if scale > 0 else 1.0
    return (np.stack([np.r_[0.0, gaps], np.r_[gaps, 0.0]], axis=1) / scale).astype(np.float32)  # before, after


class SeriesGRU(nn.Module):
    """Per slice [projected embedding, CNN logits, gaps] -> bi-GRU -> a correction to the logits."""

    def __init__(self, embedding_dims: int, projection: int, hidden: int, layers: int, dropout: float):
        super().__init__()
        self.project = nn.Linear(embedding_dims, projection) if projection and embedding_dims else None
        width = (projection if self.project is not None else 0) + len(LABELS) + 2
        self.inputs = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.gru = nn.GRU(hidden, hidden, num_layers=layers, batch_first=True, bidirectional=True,
                          dropout=dropout if layers > 1 else 0.0)
        self.out = nn.Linear(2 * hidden, len(LABELS))
        nn.init.zeros_(self.out.weight)  # the stage starts as the identity on the CNN's logits
        nn.init.zeros_(self.out.bias)

    def forward(self, embeddings, logits, gaps, lengths):
        parts = ([self.project(embeddings)] if self.project is not None else []) + [logits, gaps]
        x = self.inputs(torch.cat(parts, dim=-1))
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        hidden, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=x.shape[1])
        return logits + self.out(hidden)


class SeriesConv(nn.Module):
    """Per slice [projected embedding, CNN logits, gaps] -> two 1D convolutions along the series
    -> a correction to the logits: each slice sees ``2 * (kernel // 2)`` neighbours a side. Zero
    padding, as the batch's padding is zeros: a series' output does not depend on its batch."""

    def __init__(self, embedding_dims: int, projection: int, hidden: int, layers: int, dropout: float,
                 kernel: int = 5):
        super().__init__()
        self.project = nn.Linear(embedding_dims, projection) if projection and embedding_dims else None
        width = (projection if self.project is not None else 0) + len(LABELS) + 2
        self.convs = nn.ModuleList(nn.Conv1d(width if i == 0 else hidden, hidden, kernel, padding=kernel // 2)
                                   for i in range(layers))
        self.drop = nn.Dropout(dropout)
        self.out = nn.Conv1d(hidden, len(LABELS), kernel, padding=kernel // 2)
        nn.init.zeros_(self.out.weight)  # the stage starts as the identity on the CNN's logits
        nn.init.zeros_(self.out.bias)

    def forward(self, embeddings, logits, gaps, lengths):
        mask = (torch.arange(logits.shape[1])[None, :] < lengths[:, None]).unsqueeze(1).float()  # (B, 1, T)
        parts = ([self.project(embeddings)] if self.project is not None else []) + [logits, gaps]
        h = torch.cat(parts, dim=-1).transpose(1, 2) * mask
        for conv in self.convs:  # padded steps back to exactly zero after every layer (biases would fill them)
            h = self.drop(torch.relu(conv(h))) * mask
        return logits + (self.out(h) * mask).transpose(1, 2)


def _batch(table: SliceTable, seqs: list[np.ndarray]):
    """Padded tensors of some series (each in slice order) and their lengths."""
    n, longest = len(seqs), max(len(s) for s in seqs)
    emb, lg, gp, tg = (np.zeros((n, longest, width), np.float32)
                       for width in (table.embeddings.shape[1], len(LABELS), 2, len(LABELS)))
    for i, rows in enumerate(seqs):
        k = len(rows)
        emb[i, :k] = table.embeddings[rows]
        lg[i, :k] = logit(table.calibrated[rows])
        gp[i, :k] = gap_features(table.position[rows])
        if table.targets is not None:
            tg[i, :k] = table.targets[rows]
    lengths = torch.tensor([len(s) for s in seqs])
    return torch.from_numpy(emb), torch.from_numpy(lg), torch.from_numpy(gp), torch.from_numpy(tg), lengths


def predict_series(model: nn.Module, table: SliceTable, batch_series: int = 64, tta: bool = False) -> np.ndarray:
    """(N, 6) probabilities for every slice of ``table``, in its row order; with ``tta`` each series
    is also read backwards (as training reads half of them) and the two readings averaged."""
    model.eval()
    out = np.zeros((len(table.ids), len(LABELS)))
    seqs = sequences(table.series, table.position, table.ids)
    readings = (False, True) if tta else (False,)
    with torch.no_grad():
        for start in range(0, len(seqs), batch_series):
            for backwards in readings:
                chunk = [rows[::-1] if backwards else rows for rows in seqs[start:start + batch_series]]
                emb, lg, gp, _, lengths = _batch(table, chunk)
                probs = torch.sigmoid(model(emb, lg, gp, lengths)).numpy()
                for i, rows in enumerate(chunk):
                    out[rows] += probs[i, :len(rows)] / len(readings)
    return out


def fit_series(table: SliceTable, cfg, seed: int) -> SeriesGRU:
    """One sequence model trained on every series of ``table`` (BCE, the labels weighted as the metric
    weighs them unless ``[sequence] loss = "equal"``)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_model(cfg, table.embeddings.shape[1])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    seqs = sequences(table.series, table.position, table.ids)
    label_weights = WEIGHTS if cfg.loss == "metric" else np.ones_like(WEIGHTS)
    weights = torch.tensor(label_weights, dtype=torch.float32) / float(label_weights.sum())
    steps = cfg.epochs * max(1, -(-len(seqs) // cfg.batch_series))
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    model.train()
    for _ in range(cfg.epochs):
        order = rng.permutation(len(seqs))
        for start in range(0, len(order), cfg.batch_series):
            chunk = [seqs[i][::-1] if rng.random() < 0.5 else seqs[i]  # read backwards half the time:
                     for i in order[start:start + cfg.batch_series]]  # a bleed looks the same either way
            emb, lg, gp, tg, lengths = _batch(table, chunk)
            mask = (torch.arange(lg.shape[1])[None, :] < lengths[:, None]).float()
            loss = nn.functional.binary_cross_entropy_with_logits(model(emb, lg, gp, lengths), tg, reduction="none")
            loss = ((loss * weights).sum(-1) * mask).sum() / mask.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
    return model


def build_model(cfg, embedding_dims: int) -> nn.Module:
    kind = {"gru": SeriesGRU, "conv": SeriesConv}[cfg.model]
    return kind(embedding_dims, cfg.embedding_dims, cfg.hidden, cfg.layers, cfg.dropout)


@dataclass
class SequenceResult:
    models: list  # one per fold of the out-of-fold table
    oof: np.ndarray  # (N, 6) the sequence stage's out-of-fold probabilities
    scores: dict  # out-of-fold weighted log loss: the CNN alone, with the sequence stage
    seconds: float


def train_sequence(table: SliceTable, cfg) -> SequenceResult:
    """k-fold by patient on the out-of-fold table (the CNN's own folds): each fold's series are
    predicted by a model trained on the other folds' series only."""
    started = time.time()
    if len(np.unique(table.fold)) < 2:
        raise UserError("the sequence stage trains on out-of-fold outputs of at least two folds: train (and "
                        "attach) every fold, or set [sequence] enabled = false")
    oof = np.zeros_like(table.calibrated, dtype=np.float64)
    models = []
    for k, fold in enumerate(np.unique(table.fold)):
        held = table.fold == fold
        model = fit_series(table.take(np.flatnonzero(~held)), cfg, cfg.seed + k)
        oof[held] = predict_series(model, table.take(np.flatnonzero(held)), cfg.batch_series, cfg.tta)
        models.append(model)
    scores = {"cnn_oof": weighted_log_loss(table.targets, table.calibrated),
              "sequence_oof": weighted_log_loss(table.targets, oof)}
    return SequenceResult(models, oof, scores, time.time() - started)


def predict_test(models: list, table: SliceTable, batch_series: int = 64, tta: bool = False) -> np.ndarray:
    """The test slices' probabilities: the fold models' predictions averaged."""
    return np.mean([predict_series(m, table, batch_series, tta) for m in models], axis=0)
