"""Healthy brain anatomy on a BraTS-like grid, from the MNI ICBM152 2009 template shipped in nilearn.

The template (1 mm, 197x233x189, RAS) and its grey/white-matter probability maps are read from the
nilearn wheel, so nothing is downloaded. They are placed on the BraTS grid (240x240x155 at 1 mm,
skull-stripped) and optionally resampled to a coarser spacing for fast tests.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

BRATS_SHAPE_1MM = (240, 240, 155)
# MNI z (mm) of the first BraTS slice: keeps brainstem-to-vertex, drops the empty slices above the head.
FIRST_SLICE_Z_MM = -72.0

TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


@dataclass(frozen=True)
class Anatomy:
    """Tissue maps on one grid. Arrays are (X, Y, Z) float32 in [0, 1]; ``affine`` maps voxels to RAS mm."""

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray  # bool
    affine: np.ndarray

    @property
    def spacing_mm(self) -> float:
        return float(abs(self.affine[0, 0]))


def template_dir() -> Path:
    import nilearn.datasets

    return Path(nilearn.datasets.__file__).parent / "data"


def _read_template(key: str) -> tuple[np.ndarray, np.ndarray]:
    path = template_dir() / TEMPLATE_FILES[key]
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the nilearn wheel ships it; reinstall nilearn (pip install nilearn)")
    img = nib.load(str(path))
    return np.asarray(img.dataobj, dtype=np.float32) / 255.0, img.affine


def _to_brats_grid(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre the template in x/y and crop z so that it covers the BraTS 240x240x155 field of view."""
    out = np.zeros(BRATS_SHAPE_1MM, dtype=np.float32)
    z0 = int(round(FIRST_SLICE_Z_MM - affine[2, 3]))
    src = [slice(0, volume.shape[0]), slice(0, volume.shape[1]), slice(z0, z0 + BRATS_SHAPE_1MM[2])]
    offsets = [(BRATS_SHAPE_1MM[i] - volume.shape[i]) // 2 for i in range(2)]
    out[offsets[0] : offsets[0] + volume.shape[0], offsets[1] : offsets[1] + volume.shape[1], :] = volume[tuple(src)]
    new_affine = affine.copy()
    new_affine[:3, 3] = affine[:3, 3] - np.array([offsets[0], offsets[1], -z0], dtype=float)
    return out, new_affine


@functools.lru_cache(maxsize=4)
def load_anatomy(spacing_mm: float = 1.0) -> Anatomy:
    """Template tissue maps on the BraTS grid at ``spacing_mm`` (1 mm gives 240x240x155)."""
    maps = {}
    affine = None
    for key in TEMPLATE_FILES:
        volume, template_affine = _read_template(key)
        maps[key], affine = _to_brats_grid(volume, template_affine)
    assert affine is not None

    brain = ndimage.binary_fill_holes(ndimage.binary_closing(maps["gm"] + maps["wm"] > 0.3, iterations=3))
    brain = ndimage.binary_erosion(brain, iterations=1)
    if spacing_mm != 1.0:
        zoom = 1.0 / spacing_mm
        for key in maps:
            maps[key] = ndimage.zoom(maps[key], zoom, order=1).astype(np.float32)
        brain = ndimage.zoom(brain.astype(np.float32), zoom, order=1) > 0.5
        affine = affine.copy()
        affine[:3, :3] = affine[:3, :3] * spacing_mm
        # voxel centres of the coarse grid sit at the centre of the fine voxels they cover
        affine[:3, 3] = affine[:3, 3] + (spacing_mm - 1.0) / 2.0
    gm = np.clip(maps["gm"], 0, 1) * brain
    wm = np.clip(maps["wm"], 0, 1) * brain
    csf = np.clip(1.0 - gm - wm, 0, 1) * brain
    return Anatomy(t1=maps["t1"] * brain, gm=gm, wm=wm, csf=csf, brain=brain, affine=affine)


@functools.lru_cache(maxsize=4)
def brain_depth_mm(spacing_mm: float = 1.0) -> np.ndarray:
    """Distance (mm) of each voxel from the brain surface; 0 outside the brain."""
    anatomy = load_anatomy(spacing_mm)
    return ndimage.distance_transform_edt(anatomy.brain).astype(np.float32) * anatomy.spacing_mm
