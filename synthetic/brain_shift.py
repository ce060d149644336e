"""Brain shift: the brain settling into the space a resected or shrunk tumour left, which no rigid registration follows.

``shift_towards_lesion(study, magnitude_mm)`` moves every tissue towards the lesion's centre ``c`` (the centre of
its labelled voxels) along the smooth radial field

    u(x) = -m (x - c) / s  exp(1/2 - |x - c|^2 / (2 s^2)),

largest (``m`` mm) at ``s = SHIFT_REACH_MM`` from the centre, nothing at the centre and fading within a few ``s``;
its steepest slope, 1.65 m / s, stays below 1 for any ``m`` under ``s / 1.65``, so nothing folds. Near the centre
the field pulls inwards in proportion to the distance, so the lesion itself shrinks (by about 1 / (1 + 1.65 m / s)
in radius: a cavity collapsing). Images are resampled linearly and the label by nearest neighbour, so the study's
truth moves with its images.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from .study import SyntheticStudy

SHIFT_REACH_MM = 20.0


def radial_pull(shape: tuple, centre_vox: np.ndarray, spacing_mm: np.ndarray, magnitude_mm: float) -> np.ndarray:
    """(3, X, Y, Z) voxel offsets to sample at: an output voxel shows the tissue ``u`` further out, so tissue moves in."""
    grid = np.indices(shape, dtype=np.float32)
    offset_mm = (grid - centre_vox.reshape(3, 1, 1, 1)) * spacing_mm.reshape(3, 1, 1, 1)
    squared = (offset_mm**2).sum(axis=0) / SHIFT_REACH_MM**2
    pull_mm = magnitude_mm * offset_mm / SHIFT_REACH_MM * np.exp(0.5 - squared / 2.0)
    return pull_mm / spacing_mm.reshape(3, 1, 1, 1)


def shift_towards_lesion(study: SyntheticStudy, magnitude_mm: float) -> SyntheticStudy:
    """``study`` with its brain shifted towards its lesion by up to ``magnitude_mm`` (unchanged without a lesion)."""
    lesion = np.argwhere(study.label > 0)
    if magnitude_mm <= 0 or len(lesion) == 0:
        return study
    spacing = np.linalg.norm(study.affine[:3, :3], axis=0)
    if magnitude_mm >= SHIFT_REACH_MM / 1.65:
        raise ValueError(f"a shift of {magnitude_mm} mm folds the brain; at most {SHIFT_REACH_MM / 1.65:.1f} mm")
    grid = np.indices(study.label.shape, dtype=np.float32)
    sample_at = grid + radial_pull(study.label.shape, lesion.mean(axis=0), spacing, magnitude_mm)
    images = {m: np.round(ndimage.map_coordinates(v.astype(np.float32), sample_at, order=1, mode="constant")).astype(v.dtype) for m, v in study.images.items()}
    label = ndimage.map_coordinates(study.label, sample_at, order=0, mode="constant").astype(np.uint8)
    return dataclasses.replace(study, images=images, label=label)
