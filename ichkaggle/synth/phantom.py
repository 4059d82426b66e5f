"""Head-CT-like phantom series with hemorrhages where they occur in real heads (pure, seeded).

Why phantoms: the real data is 180 GB behind a licence; tests, the demo and the benchmarks
need slices with the same anatomy in HU (skull, brain, ventricles, sulci, air) and with
bleeds a CNN can actually see, each subtype in its real place and shape:
epidural = lens at the inner table, subdural = crescent along it, intraparenchymal = blob
in the brain, intraventricular = blood in a ventricle, subarachnoid = blood in the sulci.
A slice's labels come from the drawn masks, so they are true by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from .. import LABELS, SUBTYPES

AIR_HU = -1000.0
BRAIN_HU = 34.0
WHITE_MATTER_HU = 27.0
CSF_HU = 6.0
BONE_HU = 1300.0
BLOOD_HU = (62.0, 85.0)


@dataclass(frozen=True)
class PhantomConfig:
    """Rates and sizes of the phantoms; plain data, read from TOML by the synth command."""

    size: int = 512
    slices_min: int = 24
    slices_max: int = 36
    #: Per series, the chance of one lesion of each subtype.
    subtype_rates: dict = field(default_factory=lambda: {
        "epidural": 0.3, "intraparenchymal": 0.4, "intraventricular": 0.35, "subarachnoid": 0.4, "subdural": 0.4})
    #: How many adjacent slices one lesion spans (real bleeds: a few to a dozen 5 mm slices).
    lesion_slices_min: int = 3
    lesion_slices_max: int = 12
    noise_hu: float = 4.0

    def __post_init__(self):
        unknown = set(self.subtype_rates) - set(SUBTYPES)
        if unknown:
            raise ValueError(f"subtype_rates: unknown subtype(s) {sorted(unknown)}; known: {list(SUBTYPES)}")
        if self.size < 32:
            raise ValueError(f"size {self.size}: phantoms need at least 32 pixels")
        if not 1 <= self.slices_min <= self.slices_max:
            raise ValueError("slices_min must be >= 1 and <= slices_max")


@dataclass(frozen=True)
class Lesion:
    subtype: str
    first: int  # first slice index
    count: int  # slices spanned
    angle: float  # where around the head (radians)
    extent: float  # size relative to the head
    hu: float
    offset: float = 0.5  # radial position for blobs, 0..1


@dataclass(frozen=True)
class SeriesPlan:
    """Everything random about one series, fixed up front so slices render independently."""

    n_slices: int
    center: tuple[float, float]
    axes: tuple[float, float]  # head half-axes in pixels at the widest slice
    rotation: float  # degrees
    skull: float  # skull thickness, pixels
    lesions: tuple[Lesion, ...]
    seed: int


def plan_series(rng: np.random.Generator, config: PhantomConfig) -> SeriesPlan:
    """Draw one patient's head geometry and lesions."""
    s = config.size
    n = int(rng.integers(config.slices_min, config.slices_max + 1))
    lesions = []
    for subtype in SUBTYPES:
        if rng.random() >= config.subtype_rates.get(subtype, 0.0):
            continue
        # ventricles only exist mid-head; the other bleeds sit anywhere above the base
        lo, hi = _ventricle_range(n) if subtype == "intraventricular" else (int(round(0.15 * n)), int(round(0.9 * n)))
        count = int(rng.integers(config.lesion_slices_min, config.lesion_slices_max + 1))
        count = max(1, min(count, hi - lo))
        first = int(rng.integers(lo, max(lo + 1, hi - count + 1)))
        # keyword arguments evaluate left to right: the draws keep their order
        lesions.append(Lesion(subtype, first, count, angle=float(rng.uniform(0, 2 * np.pi)),
                              extent=float(rng.uniform(0.7, 1.3)), hu=float(rng.uniform(*BLOOD_HU)),
                              offset=float(rng.uniform(0.35, 0.65))))
    return SeriesPlan(
        n_slices=n,
        center=(s / 2 + rng.normal(0, s * 0.015), s / 2 + rng.normal(0, s * 0.015)),
        axes=(s * rng.uniform(0.33, 0.37), s * rng.uniform(0.40, 0.44)),
        rotation=float(rng.normal(0, 4)),
        skull=s * rng.uniform(0.018, 0.026),
        lesions=tuple(lesions),
        seed=int(rng.integers(0, 2**31 - 1)),
    )


def _ventricle_range(n: int) -> tuple[int, int]:
    return int(round(0.35 * n)), int(round(0.72 * n))


def _profile(k: int, n: int) -> float:
    """Cross-section scale of the head at slice k: small at the base and the vertex."""
    t = (k + 0.5) / n
    return float(np.clip(np.sqrt(max(0.0, 1.0 - ((t - 0.45) / 0.62) ** 2)), 0.45, 1.0))


def _ellipse(mask_shape, center, axes, angle, start=0, end=360) -> np.ndarray:
    mask = np.zeros(mask_shape, np.uint8)
    cv2.ellipse(mask, (int(round(center[0] * 16)), int(round(center[1] * 16))),
                (max(1, int(round(axes[0] * 16))), max(1, int(round(axes[1] * 16)))),
                angle, start, end, 1, thickness=-1, lineType=cv2.LINE_8, shift=4)  # shift=4: 1/16 px
    return mask.astype(bool)


def _on_ellipse(center, axes, rotation_deg, theta) -> tuple[float, float]:
    r = np.deg2rad(rotation_deg)
    x, y = axes[0] * np.cos(theta), axes[1] * np.sin(theta)
    return center[0] + x * np.cos(r) - y * np.sin(r), center[1] + x * np.sin(r) + y * np.cos(r)


def render_slice(plan: SeriesPlan, k: int, config: PhantomConfig) -> tuple[np.ndarray, dict[str, bool]]:
    """Slice k of a series -> (HU float32 S x S, {label: present}); deterministic per plan."""
    s = config.size
    shape = (s, s)
    rng = np.random.default_rng([plan.seed, k])
    scale = _profile(k, plan.n_slices)
    cx, cy = plan.center
    outer_axes = (plan.axes[0] * scale, plan.axes[1] * scale)
    inner_axes = (outer_axes[0] - plan.skull, outer_axes[1] - plan.skull)
    rot = plan.rotation

    hu = np.full(shape, AIR_HU, np.float32)
    outer = _ellipse(shape, (cx, cy), outer_axes, rot)
    inner = _ellipse(shape, (cx, cy), inner_axes, rot)
    hu[outer] = BONE_HU
    hu[inner] = BRAIN_HU
    white = _ellipse(shape, (cx, cy), (inner_axes[0] * 0.72, inner_axes[1] * 0.75), rot)
    hu[white] = WHITE_MATTER_HU

    # Sulci: short CSF clefts running in from the cortex.
    n_sulci = 26
    sulcus_angles = np.linspace(0, 2 * np.pi, n_sulci, endpoint=False) + rng.uniform(0, 2 * np.pi / n_sulci)
    sulcus_width = max(1, int(round(s * 0.008)))
    sulci = []
    for theta in sulcus_angles:
        p0 = _on_ellipse((cx, cy), (inner_axes[0] * 0.99, inner_axes[1] * 0.99), rot, theta)
        p1 = _on_ellipse((cx, cy), (inner_axes[0] * 0.86, inner_axes[1] * 0.86), rot, theta + rng.normal(0, 0.03))
        sulci.append((theta, p0, p1))
        cv2.line(hu, _pt(p0), _pt(p1), CSF_HU, sulcus_width, lineType=cv2.LINE_8)

    # Lateral ventricles: two tilted ellipses either side of the midline, mid-head only.
    ventricles = np.zeros(shape, bool)
    v_lo, v_hi = _ventricle_range(plan.n_slices)
    if v_lo <= k < v_hi:
        v_scale = np.sin(np.pi * (k - v_lo + 0.5) / (v_hi - v_lo)) * 0.6 + 0.4
        for side in (-1, 1):
            vc = (cx + side * inner_axes[0] * 0.13, cy - inner_axes[1] * 0.02)
            va = (inner_axes[0] * 0.07 * v_scale, inner_axes[1] * 0.30 * v_scale)
            ventricles |= _ellipse(shape, vc, va, rot + side * 12)
        hu[ventricles] = CSF_HU

    present = dict.fromkeys(LABELS, False)
    min_pixels = max(2, int((s / 128) ** 2 * 2))
    for lesion in plan.lesions:
        if not lesion.first <= k < lesion.first + lesion.count:
            continue
        fade = lesion_profile(k - lesion.first, lesion.count)
        mask = _lesion_mask(lesion, fade, shape, (cx, cy), inner_axes, rot, ventricles, sulci, sulcus_width, s)
        mask &= inner
        if mask.sum() >= min_pixels:  # partial volume at the ends: smaller and closer to the tissue around
            hu[mask] = hu[mask] + (lesion.hu - hu[mask]) * (0.6 + 0.4 * fade)
            present[lesion.subtype] = True
    present["any"] = any(present[t] for t in SUBTYPES)

    hu[outer & ~inner] = BONE_HU + rng.normal(0, 60, size=int((outer & ~inner).sum())).astype(np.float32)
    hu += rng.standard_normal(shape, dtype=np.float32) * np.float32(config.noise_hu)
    hu[~outer] = AIR_HU + rng.normal(0, 3, size=int((~outer).sum())).astype(np.float32)
    return hu, present


def lesion_profile(j: int, count: int) -> float:
    """How much of a lesion slice j (0..count-1) cuts: 1 in the middle, fading to ~0.3 at the
    ends, as a blob cut by slices of a fixed thickness."""
    return float(0.25 + 0.75 * np.sin(np.pi * (j + 0.5) / count))


def _pt(p) -> tuple[int, int]:
    return int(round(p[0])), int(round(p[1]))


def _lesion_mask(lesion, grow, shape, center, inner_axes, rot, ventricles, sulci, sulcus_width, s) -> np.ndarray:
    size = lesion.extent * grow
    if lesion.subtype == "epidural":
        # Biconvex lens: an ellipse centred on the inner table, clipped by it.
        p = _on_ellipse(center, inner_axes, rot, lesion.angle)
        tangent_deg = np.rad2deg(np.arctan2(p[1] - center[1], p[0] - center[0])) + 90
        return _ellipse(shape, p, (s * 0.10 * size, s * 0.05 * size), tangent_deg)
    if lesion.subtype == "subdural":
        # Crescent: the rim just inside the inner table over an arc of the head.
        thickness = s * 0.026 * size
        inside = (inner_axes[0] - thickness, inner_axes[1] - thickness)
        rim = _ellipse(shape, center, inner_axes, rot) & ~_ellipse(shape, center, inside, rot)
        half_arc = 45 + 25 * size
        start = np.rad2deg(lesion.angle)
        sector = _ellipse(shape, center, (s, s), rot, start - half_arc, start + half_arc)
        return rim & sector
    if lesion.subtype == "intraparenchymal":
        p = _on_ellipse(center, (inner_axes[0] * lesion.offset, inner_axes[1] * lesion.offset), rot, lesion.angle)
        return _ellipse(shape, p, (s * 0.045 * size, s * 0.035 * size), np.rad2deg(lesion.angle))
    if lesion.subtype == "intraventricular":
        # Blood settles in the dependent (posterior, larger y) part of the ventricles.
        if not ventricles.any():
            return np.zeros(shape, bool)
        ys = np.nonzero(ventricles)[0]
        level = ys.min() + (ys.max() - ys.min()) * (0.75 - 0.35 * min(1.0, size))
        rows = np.arange(shape[0])[:, None] >= level
        return ventricles & rows
    if lesion.subtype == "subarachnoid":
        # Blood in the sulci of one region (thicker than the CSF clefts it fills).
        mask = np.zeros(shape, np.uint8)
        reach = 0.9 + 0.5 * size
        for theta, p0, p1 in sulci:
            if abs(np.angle(np.exp(1j * (theta - lesion.angle)))) <= reach:
                cv2.line(mask, _pt(p0), _pt(p1), 1, sulcus_width + max(1, int(round(s * 0.006))), lineType=cv2.LINE_8)
        return mask.astype(bool)
    raise ValueError(f"unknown subtype {lesion.subtype!r}")
