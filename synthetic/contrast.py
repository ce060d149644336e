"""Synthesise T1, T1c, T2 and FLAIR from tissue maps and a tumour label.

Intensities are relative (white matter on T1 near 1) and follow the usual clinical appearance:
CSF dark on T1 and FLAIR, bright on T2; edema bright on T2 and FLAIR; the enhancing rim bright on
T1c only; the necrotic core dark on T1 and T1c, bright on T2. Healthy T1 keeps the template's own
texture. Each modality then gets a smooth multiplicative bias field and Rician noise, like a real
magnitude image, and is skull-stripped as BraTS data are (zero outside the brain).
"""

from __future__ import annotations

from typing import Dict

import numpy as np
from scipy import ndimage

from .anatomy import Anatomy
from .glioma import EDEMA, ENHANCING, NECROTIC_CORE

MODALITIES = ("t1", "t1c", "t2", "flair")

# Mean relative intensity per (modality, tissue or tumour region).
INTENSITY: Dict[str, Dict[str, float]] = {
    "t1": {"csf": 0.30, "gm": 0.62, "wm": 0.90, "necrotic": 0.28, "edema": 0.55, "enhancing": 0.60, "non_enhancing": 0.45, "cavity": 0.26},
    "t1c": {"csf": 0.30, "gm": 0.64, "wm": 0.90, "necrotic": 0.28, "edema": 0.55, "enhancing": 1.40, "non_enhancing": 0.47, "cavity": 0.26},
    "t2": {"csf": 1.00, "gm": 0.60, "wm": 0.40, "necrotic": 0.95, "edema": 0.85, "enhancing": 0.65, "non_enhancing": 0.82, "cavity": 1.05},
    "flair": {"csf": 0.12, "gm": 0.58, "wm": 0.45, "necrotic": 0.50, "edema": 1.00, "enhancing": 0.78, "non_enhancing": 0.92, "cavity": 0.16},
}  # after treatment: non-enhancing tumour (no contrast uptake, bright on T2 and FLAIR) and the resection cavity's fluid
REGION_OF_LABEL = {NECROTIC_CORE: "necrotic", EDEMA: "edema", ENHANCING: "enhancing"}

OUTPUT_SCALE = 1000.0  # relative intensity 1.0 is stored as 1000 (int16)
PARTIAL_VOLUME_MM = 0.8  # blur of region edges, as a finite point-spread would give
TUMOUR_TEXTURE = 0.08  # relative heterogeneity inside the tumour
BIAS_STRENGTH = (0.08, 0.2)  # range of the log-amplitude of the bias field
NOISE_LEVEL = (0.015, 0.035)  # range of the Rician sigma, relative to white matter on T1


def _bias_field(shape: tuple[int, ...], strength: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative field: exp of a random second-order polynomial in normalised coordinates."""
    x, y, z = (np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape)
    x, y, z = x[:, None, None], y[None, :, None], z[None, None, :]
    terms = (x, y, z, x * x, y * y, z * z, x * y, x * z, y * z)
    coefficients = rng.uniform(-1.0, 1.0, len(terms)).astype(np.float32)
    log_field = sum(c * t for c, t in zip(coefficients, terms))
    return np.exp(strength * log_field / float(np.abs(coefficients).sum())).astype(np.float32)


def _rician(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    real = image + rng.normal(0.0, sigma, image.shape).astype(np.float32)
    imaginary = rng.normal(0.0, sigma, image.shape).astype(np.float32)
    return np.sqrt(real * real + imaginary * imaginary)


def healthy_t1(anatomy: Anatomy) -> np.ndarray:
    """The template's T1, rescaled so that white matter sits at the table's white-matter level."""
    wm_level = float(np.median(anatomy.t1[anatomy.wm > 0.9]))
    return anatomy.t1 * (INTENSITY["t1"]["wm"] / wm_level)


def _acquired_resolution(image: np.ndarray, spacing_mm: float, in_plane_mm: float, slice_thickness_mm: float) -> np.ndarray:
    """Blur to the resolution a scanner acquired before the study was resampled to the grid (thick 2D slices
    come out blurred across slices): a Gaussian of the FWHM that takes the grid's resolution to the acquired one."""
    fwhm = [np.sqrt(max(r * r - spacing_mm * spacing_mm, 0.0)) for r in (in_plane_mm, in_plane_mm, slice_thickness_mm)]
    sigma_vox = [f / 2.355 / spacing_mm for f in fwhm]
    return ndimage.gaussian_filter(image, sigma_vox) if any(s > 0.1 for s in sigma_vox) else image


def synthesise(
    anatomy: Anatomy,
    label: np.ndarray,
    rng: np.random.Generator,
    tumour_contrast: float = 1.0,
    noise_scale: float = 1.0,
    bias_strength: tuple[float, float] = BIAS_STRENGTH,
    in_plane_mm: float = 0.0,
    slice_thickness_mm: float = 0.0,
    regions: Dict[int, str] = REGION_OF_LABEL,
) -> Dict[str, np.ndarray]:
    """Return {modality: (X, Y, Z) int16}, one image per modality, on the anatomy's grid.

    ``tumour_contrast`` < 1 pulls the tumour's intensities towards the healthy tissue it replaces and
    ``noise_scale`` > 1 adds noise: together they make a case an expert would find ambiguous. A site's
    scanner sets the bias field's strength and the resolution it acquired at (0: the grid's). ``regions``: which
    row of ``INTENSITY`` each label value takes (the post-treatment labels' differ from the pre-operative ones').
    """
    sigma_vox = PARTIAL_VOLUME_MM / anatomy.spacing_mm
    region_weights = {name: np.clip(ndimage.gaussian_filter((label == value).astype(np.float32), sigma_vox), 0, 1) for value, name in regions.items()}
    total_weight = sum(region_weights.values())
    tumour_weight = np.clip(total_weight, 0, 1)
    texture = ndimage.gaussian_filter(rng.standard_normal(label.shape).astype(np.float32), 1.5 / anatomy.spacing_mm)
    texture /= texture.std() + 1e-8
    noise_sigma = float(rng.uniform(*NOISE_LEVEL)) * noise_scale
    t1_template = healthy_t1(anatomy)

    images = {}
    for modality in MODALITIES:
        table = INTENSITY[modality]
        if modality in ("t1", "t1c"):
            healthy = t1_template * (1.0 if modality == "t1" else table["gm"] / INTENSITY["t1"]["gm"])
        else:
            healthy = table["csf"] * anatomy.csf + table["gm"] * anatomy.gm + table["wm"] * anatomy.wm
        # where blurred region edges overlap, the tumour intensity is their weighted mean
        tumour = sum(table[name] * weight for name, weight in region_weights.items()) / np.maximum(total_weight, 1e-6)
        tumour = tumour * (1.0 + TUMOUR_TEXTURE * texture)
        tumour = healthy + tumour_contrast * (tumour - healthy)
        image = healthy * (1.0 - tumour_weight) + tumour * tumour_weight
        image = image * _bias_field(label.shape, float(rng.uniform(*bias_strength)), rng)
        image = _rician(image, noise_sigma, rng) * anatomy.brain
        # thick slices and coarse matrices, resampled to the grid: signal and noise blurred alike
        image = _acquired_resolution(image, anatomy.spacing_mm, in_plane_mm, slice_thickness_mm) * anatomy.brain
        images[modality] = np.clip(image * OUTPUT_SCALE, 0, np.iinfo(np.int16).max).astype(np.int16)
    return images
