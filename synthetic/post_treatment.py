"""Post-operative studies: the glioma ``draw_shape`` makes, after its resection, labelled as BraTS 2024's
post-treatment task labels them.

Surgery removes the tumour core: a **resection cavity** (label 4) of fluid stands where the core was (radius 0.8 to
1.1 times the core's, its outline the core's lobulation), bright on T2 and dark on T1, T1c and FLAIR as CSF is. Round
it a thin, patchy **enhancing** rim (label 3, 1 to 3 mm where present, over 40 to 90 % of the wall: residual tumour
or post-surgical enhancement), here and there a nodule of **non-enhancing tumour core** (label 1: dark-grey on T1,
bright on T2 and FLAIR, no enhancement), and the **surrounding FLAIR hyperintensity** (label 2: edema and infiltrated
tissue, reaching 0.6 to 1.2 times the pre-operative edema's thickness beyond the cavity). Images come from ``contrast.synthesise`` with the
post-treatment regions' intensities.

``generate_post_treatment(seed, index, visit)``: visit 1 is the first post-operative scan; each later visit keeps the
cavity (shrinking a little as it fills, 0.9 to 1.0 of its radius per visit), lets the residual tumour and the FLAIR
hyperintensity grow or shrink (0.8 to 1.4 of their radii), acquires anew and repositions the head as
``follow_up.generate_follow_up`` does: the pairs a follow-up pre-label is tested on.
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from .anatomy import load_anatomy
from .contrast import synthesise
from .follow_up import REPOSITION_DEG, REPOSITION_MM, _reposition, follow_up_name
from .glioma import draw_shape
from .study import SyntheticStudy, study_rng

# BraTS 2024 post-treatment label values
NON_ENHANCING_CORE, SURROUNDING_FLAIR, ENHANCING_TISSUE, RESECTION_CAVITY = 1, 2, 3, 4
POST_TREATMENT_REGIONS: Dict[int, str] = {NON_ENHANCING_CORE: "non_enhancing", SURROUNDING_FLAIR: "edema", ENHANCING_TISSUE: "enhancing", RESECTION_CAVITY: "cavity"}

CAVITY_OF_CORE = (0.8, 1.1)  # cavity radius / the pre-operative core's
RIM_MM = (1.0, 3.0)
RIM_COVERAGE = (0.4, 0.9)  # share of the cavity wall that enhances
NODULES = (0, 2)  # non-enhancing nodules at the cavity's wall
NODULE_MM = (3.0, 7.0)
FLAIR_OF_EDEMA = (0.6, 1.2)  # FLAIR hyperintensity beyond the cavity's wall / the pre-operative edema's thickness
CAVITY_PER_VISIT = (0.9, 1.0)
RESIDUAL_PER_VISIT = (0.8, 1.4)


def _visit_rng(seed: int, index: int, visit: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, index, 5, visit]))


def visit_factors(seed: int, index: int, visit: int) -> Tuple[float, float]:
    """Cavity and residual (rim, nodules, FLAIR) radius factors of ``visit`` against the first post-operative scan."""
    cavity, residual = 1.0, 1.0
    for v in range(2, visit + 1):
        rng = _visit_rng(seed, index, v)
        cavity *= float(rng.uniform(*CAVITY_PER_VISIT))
        residual *= float(rng.uniform(*RESIDUAL_PER_VISIT))
    return cavity, residual


def draw_post_treatment_label(seed: int, index: int, visit: int, spacing_mm: float) -> np.ndarray:
    """(X, Y, Z) uint8 in BraTS 2024 post-treatment values, on the anatomy's grid."""
    anatomy = load_anatomy(spacing_mm)
    rng = study_rng(seed, index)
    shape = draw_shape(anatomy, rng)  # the tumour that was operated on
    drawn = np.random.default_rng(np.random.SeedSequence([seed, index, 4]))  # the operation: the same at every visit
    cavity_factor, residual_factor = visit_factors(seed, index, visit)
    cavity_mm = shape.core_radius_mm * float(drawn.uniform(*CAVITY_OF_CORE)) * cavity_factor
    rim_mm = float(drawn.uniform(*RIM_MM)) * residual_factor
    flair_mm = cavity_mm + (shape.whole_radius_mm - shape.core_radius_mm) * float(drawn.uniform(*FLAIR_OF_EDEMA)) * residual_factor
    coverage = min(1.0, float(drawn.uniform(*RIM_COVERAGE)) * residual_factor)

    centre_vox = (np.linalg.inv(anatomy.affine) @ np.append(shape.centre_mm, 1.0))[:3]
    grid = np.indices(anatomy.brain.shape, dtype=np.float32)
    offset_mm = (grid - centre_vox.reshape(3, 1, 1, 1)) * spacing_mm
    distance_mm = np.linalg.norm(offset_mm, axis=0)
    lobes = ndimage.gaussian_filter(drawn.standard_normal(anatomy.brain.shape).astype(np.float32), max(1.0, 0.35 * cavity_mm / spacing_mm))
    lobes /= lobes.std() + 1e-8
    warped = distance_mm * (1.0 + shape.lobulation * 0.5 * lobes)
    brain = anatomy.brain > 0

    cavity = (warped < cavity_mm) & brain
    wall = (warped >= cavity_mm) & (warped < cavity_mm + rim_mm) & brain
    patches = ndimage.gaussian_filter(drawn.standard_normal(anatomy.brain.shape).astype(np.float32), 4.0 / spacing_mm)
    enhancing = wall & (patches > np.quantile(patches[wall], 1.0 - coverage)) if wall.any() else wall
    flair = (warped < flair_mm + rim_mm) & brain & ~cavity
    nodules = np.zeros_like(cavity)
    wall_voxels = np.argwhere(wall)
    for _ in range(int(drawn.integers(NODULES[0], NODULES[1] + 1))):
        if len(wall_voxels) == 0:
            break
        at = wall_voxels[drawn.integers(len(wall_voxels))]
        radius = float(drawn.uniform(*NODULE_MM)) * residual_factor
        nodules |= np.linalg.norm((grid - at.reshape(3, 1, 1, 1)) * spacing_mm, axis=0) < radius
    nodules &= brain & ~cavity

    label = np.zeros(anatomy.brain.shape, np.uint8)
    label[flair] = SURROUNDING_FLAIR
    label[nodules] = NON_ENHANCING_CORE
    label[enhancing] = ENHANCING_TISSUE
    label[cavity] = RESECTION_CAVITY
    return label


def generate_post_treatment(seed: int, index: int, visit: int = 1, spacing_mm: float = 1.0) -> SyntheticStudy:
    """Post-operative scan ``visit`` (1: the first) of patient ``index``; later visits are repositioned in the
    scanner as follow-ups are."""
    anatomy = load_anatomy(spacing_mm)
    label = draw_post_treatment_label(seed, index, visit, spacing_mm)
    rng = _visit_rng(seed, index, visit)
    images = synthesise(anatomy, label, rng, regions=POST_TREATMENT_REGIONS)
    name = follow_up_name(index, visit)
    shape = draw_shape(anatomy, study_rng(seed, index))
    if visit <= 1:
        return SyntheticStudy(name, images, label, anatomy.affine.copy(), shape)
    rotation = Rotation.from_euler("xyz", rng.uniform(-REPOSITION_DEG, REPOSITION_DEG, size=3), degrees=True).as_matrix()
    shift_vox = rng.uniform(-REPOSITION_MM, REPOSITION_MM, size=3) / spacing_mm
    centre_vox = np.argwhere(anatomy.brain).mean(axis=0)
    moved = {m: np.round(_reposition(v.astype(np.float32), rotation, shift_vox, centre_vox, order=1)).astype(v.dtype) for m, v in images.items()}
    return SyntheticStudy(name, moved, _reposition(label, rotation, shift_vox, centre_vox, order=0).astype(np.uint8), anatomy.affine.copy(), shape)
