"""A random glioma with the three BraTS sub-regions, nested as in real tumours.

Geometry is drawn in millimetres, so the same seed gives the same tumour at any grid spacing.
Each region is a ball whose radius is modulated by a smooth random field (lobulated outline);
edema spreads preferentially along white matter. By construction:
necrotic core and enhancing rim form the tumour core (TC), TC lies inside the whole tumour (WT),
and WT lies inside the brain.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .anatomy import Anatomy, brain_depth_mm
from .cohort import KINDS, TumourKind

# BraTS 2023 file-format label values (the format this generator writes).
NECROTIC_CORE, EDEMA, ENHANCING = 1, 2, 3


@dataclass(frozen=True)
class GliomaShape:
    """Drawn parameters of one tumour, in mm (kept for reproducibility and for the montage title)."""

    centre_mm: tuple[float, float, float]
    whole_radius_mm: float
    core_radius_mm: float
    necrosis_radius_mm: float
    lobulation: float


def draw_shape(anatomy: Anatomy, rng: np.random.Generator) -> GliomaShape:
    """Pick sizes (those of the cohort's typical glioblastoma), then a centre in white matter deep enough that most
    of the tumour stays in the brain."""
    typical = KINDS["typical"]
    whole = float(rng.uniform(*typical.whole_radius_mm))
    core = whole * float(rng.uniform(*typical.core_fraction))
    necrosis = core * float(rng.uniform(*typical.necrosis_fraction))
    depth_mm = brain_depth_mm(anatomy.spacing_mm)
    candidates = np.argwhere((anatomy.wm > 0.5) & (depth_mm > 0.6 * whole))
    if len(candidates) == 0:
        candidates = np.argwhere(depth_mm >= depth_mm.max() * 0.8)
    voxel = candidates[rng.integers(len(candidates))]
    centre = tuple(float(c) for c in (anatomy.affine @ np.append(voxel, 1.0))[:3])
    return GliomaShape(centre, whole, core, necrosis, float(rng.uniform(0.15, 0.3)))


def _smooth_noise(shape: tuple[int, ...], sigma_vox: float, rng: np.random.Generator) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox)
    return field / (field.std() + 1e-8)


def draw_label(anatomy: Anatomy, shape: GliomaShape, rng: np.random.Generator) -> np.ndarray:
    """Label map (X, Y, Z) uint8: 0 background, 1 necrotic core, 2 edema, 3 enhancing tumour."""
    spacing = anatomy.spacing_mm
    inverse = np.linalg.inv(anatomy.affine)
    centre_vox = (inverse @ np.append(shape.centre_mm, 1.0))[:3]
    # Work in a box around the tumour: the noise fields are the costly part.
    half = int(np.ceil(1.6 * shape.whole_radius_mm / spacing))
    lo = np.maximum(np.floor(centre_vox).astype(int) - half, 0)
    hi = np.minimum(np.floor(centre_vox).astype(int) + half + 1, anatomy.brain.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    box_shape = tuple(int(b - a) for a, b in zip(lo, hi))

    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), axis=-1)
    distance_mm = np.linalg.norm((grid - centre_vox) * spacing, axis=-1).astype(np.float32)

    def outline(radius_mm: float) -> np.ndarray:
        return _smooth_noise(box_shape, max(1.0, 0.35 * radius_mm / spacing), rng)

    def region(radius_mm: float, noise: np.ndarray, bias: np.ndarray | float = 0.0) -> np.ndarray:
        if radius_mm <= 0.0:  # a kind without necrosis
            return np.zeros(box_shape, dtype=bool)
        return distance_mm / radius_mm + shape.lobulation * noise - bias < 1.0

    brain = anatomy.brain[box]
    whole = region(shape.whole_radius_mm, outline(shape.whole_radius_mm), bias=0.25 * (anatomy.wm[box] - 0.5)) & brain
    # the necrosis follows the core's outline, so the enhancing rim encloses it at a thickness that varies with
    # the lobulation, as on a glioblastoma's T1c
    core_outline = outline(shape.core_radius_mm)
    core = region(shape.core_radius_mm, core_outline) & whole
    necrosis = region(shape.necrosis_radius_mm, core_outline) & core
    # keep the core one connected blob with the centre, as a real tumour core is
    labelled, _ = ndimage.label(core)
    centre_label = labelled[tuple(np.clip(np.round(centre_vox).astype(int) - lo, 0, np.array(box_shape) - 1))]
    if centre_label > 0:
        core &= labelled == centre_label
        necrosis &= core

    label_box = np.zeros(box_shape, dtype=np.uint8)
    label_box[whole] = EDEMA
    label_box[core] = ENHANCING
    label_box[necrosis] = NECROTIC_CORE
    label = np.zeros(anatomy.brain.shape, dtype=np.uint8)
    label[box] = label_box
    return label


# --- tumour kinds of a varied cohort (synthetic/cohort.py) --------------------------------------------


def _centre_candidates(anatomy: Anatomy, kind: TumourKind, whole_mm: float) -> np.ndarray:
    depth_mm = brain_depth_mm(anatomy.spacing_mm)
    if kind.placement == "periventricular":
        ventricles = (anatomy.csf > 0.6) & (depth_mm > 20.0)  # deep CSF: the lateral ventricles, not the sulci
        to_ventricle_mm = ndimage.distance_transform_edt(~ventricles) * anatomy.spacing_mm
        candidates = np.argwhere((anatomy.wm > 0.3) & (to_ventricle_mm > 2.0) & (to_ventricle_mm < 0.5 * whole_mm) & (depth_mm > 0.5 * whole_mm))
    else:
        candidates = np.argwhere((anatomy.wm > 0.5) & (depth_mm > 0.6 * whole_mm))
    if len(candidates) == 0:
        candidates = np.argwhere(depth_mm >= depth_mm.max() * 0.8)
    return candidates


def draw_shapes_of_kind(anatomy: Anatomy, kind: TumourKind, rng: np.random.Generator) -> list[GliomaShape]:
    """One shape per lesion; separate lesions do not touch (their whole-tumour balls are apart)."""
    shapes: list[GliomaShape] = []
    for _ in range(int(rng.integers(kind.foci[0], kind.foci[1] + 1))):
        whole = float(rng.uniform(*kind.whole_radius_mm))
        core = whole * float(rng.uniform(*kind.core_fraction))
        necrosis = core * float(rng.uniform(*kind.necrosis_fraction))
        candidates = _centre_candidates(anatomy, kind, whole)
        for _attempt in range(50):
            voxel = candidates[rng.integers(len(candidates))]
            centre = (anatomy.affine @ np.append(voxel, 1.0))[:3]
            if all(np.linalg.norm(centre - np.array(s.centre_mm)) > 1.3 * (whole + s.whole_radius_mm) for s in shapes):
                break
        shapes.append(GliomaShape(tuple(float(c) for c in centre), whole, core, necrosis, float(rng.uniform(0.15, 0.3))))
    return shapes


def draw_label_of_kind(anatomy: Anatomy, kind: TumourKind, shapes: list[GliomaShape], rng: np.random.Generator) -> np.ndarray:
    """Every lesion's label in one map (a core label wins over another lesion's edema); a non-enhancing kind's
    core is non-enhancing tumour (label 1) throughout."""
    label = np.zeros(anatomy.brain.shape, dtype=np.uint8)
    for shape in shapes:
        lesion = draw_label(anatomy, shape, rng)
        if not kind.enhancing:
            lesion[lesion == ENHANCING] = NECROTIC_CORE
        take = (lesion > 0) & ((label == 0) | (lesion != EDEMA))
        label[take] = lesion[take]
    return label
