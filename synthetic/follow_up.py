"""Follow-up studies of one patient: the same tumour scanned again months later, grown or shrunk, with the head
placed a little differently in the scanner.

Visit 0 is the study ``generate_study`` makes. Each later visit scales the tumour's radii (whole tumour, core and
necrosis, each by its own factor, compounded over the visits), keeps its centre and lobulation, acquires the
images anew (new noise), and moves the whole head rigidly by a few degrees and millimetres about the brain's
centre, as repositioning between sessions does; images are resampled linearly, the label by nearest neighbour,
onto the same grid. A follow-up's label is what an expert would draw on that follow-up.

Studies are named as BraTS 2023 names time points (``BraTS-GLI-<patient>-<visit>``); ``patients_table`` writes
the ``patients.csv`` a folder datastore reads, visits ``VISIT_INTERVAL_DAYS`` apart.
"""

from __future__ import annotations

import dataclasses
from datetime import date, timedelta
from typing import List, Tuple

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from .anatomy import load_anatomy
from .contrast import synthesise
from .glioma import draw_label, draw_shape
from .study import SyntheticStudy, generate_study, study_rng

VISIT_INTERVAL_DAYS = 91
FIRST_VISIT = date(2024, 1, 8)
GROWTH_PER_VISIT = (0.8, 1.3)  # radius factor per visit (volume about 0.5 to 2.2 times)
REPOSITION_DEG = 3.0  # each axis, uniform in +-
REPOSITION_MM = 3.0


def follow_up_name(index: int, visit: int) -> str:
    return f"BraTS-GLI-{index:05d}-{visit:03d}"


def _visit_rng(seed: int, index: int, visit: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, index, 3, visit]))


def radius_factors(seed: int, index: int, visit: int) -> Tuple[float, float, float]:
    """Whole-tumour, core and necrosis radius factors of ``visit`` against visit 0 (compounded visit by visit)."""
    factors = np.ones(3)
    for v in range(1, visit + 1):
        factors *= _visit_rng(seed, index, v).uniform(*GROWTH_PER_VISIT, size=3)
    return float(factors[0]), float(factors[1]), float(factors[2])


def _reposition(volume: np.ndarray, rotation: np.ndarray, shift_vox: np.ndarray, centre_vox: np.ndarray, order: int) -> np.ndarray:
    """``volume`` moved rigidly about ``centre_vox`` (a voxel grid with equal spacing on each axis)."""
    inverse = rotation.T  # output voxel -> input voxel
    offset = centre_vox - inverse @ (centre_vox + shift_vox)
    return ndimage.affine_transform(volume, inverse, offset=offset, order=order, mode="constant", cval=0.0)


def generate_follow_up(seed: int, index: int, visit: int, spacing_mm: float = 1.0, tumour_contrast: float = 1.0, noise_scale: float = 1.0) -> SyntheticStudy:
    """Visit ``visit`` (0: the baseline, as ``generate_study``) of patient ``index``."""
    name = follow_up_name(index, visit)
    if visit == 0:
        return generate_study(seed, index, spacing_mm, case_id=name, tumour_contrast=tumour_contrast, noise_scale=noise_scale)
    anatomy = load_anatomy(spacing_mm)
    rng = study_rng(seed, index)
    baseline = draw_shape(anatomy, rng)
    whole, core, necrosis = radius_factors(seed, index, visit)
    core_mm = min(baseline.core_radius_mm * core, 0.9 * baseline.whole_radius_mm * whole)
    shape = dataclasses.replace(
        baseline, whole_radius_mm=baseline.whole_radius_mm * whole, core_radius_mm=core_mm, necrosis_radius_mm=min(baseline.necrosis_radius_mm * necrosis, 0.9 * core_mm)
    )
    label = draw_label(anatomy, shape, rng)  # the baseline's stream: the same outline fields where the sizes allow
    visit_rng = _visit_rng(seed, index, visit)
    images = synthesise(anatomy, label, visit_rng, tumour_contrast, noise_scale)
    rotation = Rotation.from_euler("xyz", visit_rng.uniform(-REPOSITION_DEG, REPOSITION_DEG, size=3), degrees=True).as_matrix()
    shift_vox = visit_rng.uniform(-REPOSITION_MM, REPOSITION_MM, size=3) / spacing_mm
    centre_vox = np.argwhere(anatomy.brain).mean(axis=0)
    moved = {m: np.round(_reposition(v.astype(np.float32), rotation, shift_vox, centre_vox, order=1)).astype(v.dtype) for m, v in images.items()}
    moved_label = _reposition(label, rotation, shift_vox, centre_vox, order=0).astype(np.uint8)
    return SyntheticStudy(name, moved, moved_label, anatomy.affine.copy(), shape)


def visit_date(index: int, visit: int) -> date:
    return FIRST_VISIT + timedelta(days=index % 365 + visit * VISIT_INTERVAL_DAYS)


def patients_table(rows: List[Tuple[int, int]]) -> str:
    """``patients.csv`` for (patient index, visit) pairs: which studies are one patient's, and when each was made."""
    lines = ["study,patient,acquired"]
    lines += [f"{follow_up_name(index, visit)},synthetic-patient-{index:05d},{visit_date(index, visit).isoformat()}" for index, visit in rows]
    return "\n".join(lines) + "\n"
