"""One synthetic BraTS-like study: four co-registered modalities and a ground-truth label."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import numpy as np

from .anatomy import load_anatomy
from .cohort import KINDS, CaseDesign
from .contrast import synthesise
from .glioma import GliomaShape, draw_label, draw_label_of_kind, draw_shape, draw_shapes_of_kind


@dataclass(frozen=True)
class SyntheticStudy:
    """``images`` maps t1, t1c, t2, flair to (X, Y, Z) int16; ``label`` is (X, Y, Z) uint8, BraTS 2023 values."""

    case_id: str
    images: Dict[str, np.ndarray]
    label: np.ndarray
    affine: np.ndarray
    shape: GliomaShape  # the first lesion's
    design: CaseDesign | None = None  # kind and site, in a varied cohort


def study_rng(seed: int, index: int) -> np.random.Generator:
    """Independent stream per (seed, case) so case i is the same whether or not other cases were made."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


# Per-case acquisition quality for a "multi-site" pool: how far the tumour's contrast is pulled towards
# healthy tissue, and how much extra noise; drawn from a stream separate from the anatomy and tumour.
VARIED_TUMOUR_CONTRAST = (0.5, 1.0)
VARIED_NOISE_SCALE = (1.0, 2.5)


def varied_acquisition(seed: int, index: int) -> Dict[str, float]:
    """Contrast and noise of case ``index`` in a varied pool; the same case keeps its tumour at any quality."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, 1]))
    return {"tumour_contrast": float(rng.uniform(*VARIED_TUMOUR_CONTRAST)), "noise_scale": float(rng.uniform(*VARIED_NOISE_SCALE))}


def generate_study(
    seed: int, index: int, spacing_mm: float = 1.0, case_id: str | None = None, tumour_contrast: float = 1.0, noise_scale: float = 1.0, design: CaseDesign | None = None
) -> SyntheticStudy:
    """Deterministic in all its arguments; the same (seed, index) has the same tumour at any contrast. With a
    cohort ``design``, the case is of its tumour kind, acquired as its site acquires."""
    anatomy = load_anatomy(spacing_mm)
    rng = study_rng(seed, index)
    if design is None:
        shape = draw_shape(anatomy, rng)
        label = draw_label(anatomy, shape, rng)
        images = synthesise(anatomy, label, rng, tumour_contrast, noise_scale)
        return SyntheticStudy(case_id or f"{index:05d}", images, label, anatomy.affine.copy(), shape)
    kind = KINDS[design.kind]
    shapes = draw_shapes_of_kind(anatomy, kind, rng)
    label = draw_label_of_kind(anatomy, kind, shapes, rng)
    images = synthesise(anatomy, label, rng, design.tumour_contrast, design.noise_scale, design.bias_strength, design.in_plane_mm, design.slice_thickness_mm)
    return SyntheticStudy(case_id or f"{index:05d}", images, label, anatomy.affine.copy(), shapes[0], design)
