"""The sequences of a study aligned to its T1c by their images, not only by their headers.

A patient moves between series: a few degrees and millimetres, each series its own. The headers place every
series in the scanner's space, so they give the starting point; a rigid registration (6 degrees of freedom)
driven by Mattes mutual information, which compares T1, T2 and FLAIR with the T1c whatever their contrast,
finds the remaining motion, coarse to fine. A result beyond what a patient can move is refused, never used.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict

import numpy as np
import SimpleITK as sitk

from ..config import PreparationSettings
from .sitk_images import transform_to_ras

OUTLINE_FRACTION = 0.1  # of the 99th percentile: the air's noise floor lies below, every tissue but bone above
REGISTRATION_SEED = 20  # random metric samples: the same study registers the same way every time


class RegistrationRefused(ValueError):
    """A registration failed or found a motion no patient makes; the message names the series and the numbers."""


@dataclass(frozen=True)
class RigidAlignment:
    """What the registration corrected, in units a reader checks: degrees, and millimetres at the head's centre.

    ``ras`` (4x4) takes a point of the T1c to the same anatomy in the series' scanner space."""

    rotation_deg: float
    translation_mm: float
    shift_mm: tuple  # (R, A, S) displacement of the fixed image's centre
    metric: float  # final Mattes mutual information (negative: lower is better)
    overlap: float  # Dice of the head (or brain) outlines of T1c and aligned series, within the series' field of view
    iterations: int
    ras: np.ndarray

    def summary(self) -> Dict[str, Any]:
        fields = asdict(self)
        fields.pop("ras")
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in fields.items()} | {"shift_mm": [round(float(v), 2) for v in self.shift_mm]}


def coarse(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """The image averaged down to about ``spacing_mm`` along each axis that is finer (a thick-slice axis stays):
    the registration's finest level needs no more, and every level costs a fraction of the full grid's."""
    factors = [max(1, int(round(spacing_mm / s))) for s in image.GetSpacing()]
    return sitk.BinShrink(sitk.Cast(image, sitk.sitkFloat32), factors) if max(factors) > 1 else sitk.Cast(image, sitk.sitkFloat32)


def register_rigid(
    fixed: sitk.Image, moving: sitk.Image, settings: PreparationSettings, name: str, onto: str = "the T1c", from_centres_of_mass: bool = False
) -> tuple[sitk.Transform, RigidAlignment]:
    """The rigid transform (fixed -> moving points, as ``sitk.Resample`` takes it) that best aligns ``moving`` to
    ``fixed`` (named ``onto`` in messages). It starts from the headers' placement, or, ``from_centres_of_mass``, with
    the two images' centres of mass on each other (two sessions: the head was placed anew). Raises
    RegistrationRefused when it fails or lands beyond ``settings``' limits."""
    centre = fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in fixed.GetSize()])
    initial = sitk.Euler3DTransform()
    initial.SetCenter(centre)  # identity: the headers' placement is the starting point
    if from_centres_of_mass:
        initial = sitk.CenteredTransformInitializer(
            sitk.Cast(fixed, sitk.sitkFloat32), sitk.Cast(moving, sitk.sitkFloat32), sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
        )
        centre = initial.GetCenter()
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(settings.histogram_bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(settings.sampling_fraction, REGISTRATION_SEED)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=settings.iterations, relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(settings.shrink_factors))
    method.SetSmoothingSigmasPerLevel(list(settings.smoothing_mm))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(initial, inPlace=False)
    try:
        small_fixed, small_moving = coarse(fixed, settings.finest_mm), coarse(moving, settings.finest_mm)
        transform = method.Execute(small_fixed, small_moving)
    except RuntimeError as e:  # ITK: too few samples in the overlap, and similar
        raise RegistrationRefused(f"{name}: registration to {onto} failed ({str(e).strip().splitlines()[-1]})") from None
    ras = transform_to_ras(transform)
    rotation = np.degrees(np.arccos(np.clip((np.trace(ras[:3, :3]) - 1.0) / 2.0, -1.0, 1.0)))
    centre_ras = np.array([-centre[0], -centre[1], centre[2]])
    shift = ras[:3, :3] @ centre_ras + ras[:3, 3] - centre_ras
    overlap = outline_overlap(small_fixed, small_moving, moving, transform)
    result = RigidAlignment(
        float(rotation), float(np.linalg.norm(shift)), tuple(float(v) for v in shift), float(method.GetMetricValue()), overlap, int(method.GetOptimizerIteration()), ras
    )
    if not np.isfinite(result.metric) or rotation > settings.max_rotation_deg or result.translation_mm > settings.max_translation_mm:
        raise RegistrationRefused(
            f"{name}: registration to {onto} found {rotation:.1f} degrees and {result.translation_mm:.1f} mm, beyond what a patient moves "
            f"between series (at most {settings.max_rotation_deg:g} degrees, {settings.max_translation_mm:g} mm). Check that the series belongs "
            "to this study and covers the head, or export the study co-registered."
        )
    if overlap < settings.min_overlap:
        raise RegistrationRefused(
            f"{name}: registration to {onto} failed: the aligned outline overlaps {onto}'s by Dice {overlap:.2f} "
            f"(at least {settings.min_overlap:g} when aligned; the patient probably moved beyond what registration recovers, about 20 degrees). "
            "Check that the series belongs to this study, or export the study co-registered."
        )
    return transform, result


def outline_overlap(small_fixed: sitk.Image, small_moving: sitk.Image, moving: sitk.Image, transform: sitk.Transform) -> float:
    """Dice of the two images' outlines (head or brain against background) after alignment, on the coarse grid the
    registration ran on and within the moving series' field of view (``moving``: the series at full size). It is
    near 1 whatever the contrasts when the registration succeeded; a registration that stopped in a wrong optimum
    leaves part of each outline outside the other (0.98 to 1.0 aligned; 0.84 at 60 degrees, 0.93 where a 30 degree
    turn stopped at 18)."""
    aligned = sitk.Resample(small_moving, small_fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    view = sitk.GetArrayFromImage(_field_of_view(moving, small_fixed, transform)) > 0.5
    a, b = _outline(sitk.GetArrayFromImage(small_fixed)), _outline(sitk.GetArrayFromImage(aligned))
    a, b = a & view, b & view
    total = int(a.sum()) + int(b.sum())
    return float(2 * int((a & b).sum()) / total) if total else 0.0


def _outline(volume: np.ndarray) -> np.ndarray:
    """Head (or brain) against background: above a tenth of the bright end (Otsu splits a head's tissues instead)."""
    return volume > OUTLINE_FRACTION * float(np.percentile(volume, 99))


def _field_of_view(moving: sitk.Image, grid: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    ones = sitk.Image(moving.GetSize(), sitk.sitkFloat32) + 1.0
    ones.CopyInformation(moving)
    return sitk.Resample(ones, grid, transform, sitk.sitkNearestNeighbor, 0.0, sitk.sitkFloat32)


def resample_onto(moving: sitk.Image, fixed: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    """``moving`` on ``fixed``'s grid through ``transform``, linearly; zero outside the moving series' field of view."""
    return sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def register_deformable(fixed: sitk.Image, moving: sitk.Image, initial: sitk.Transform, mesh_points: int, iterations: int, histogram_bins: int) -> sitk.Transform:
    """``initial`` (fixed -> moving points) refined by a cubic B-spline of ``mesh_points`` control points per axis over
    ``fixed``, by Mattes mutual information: what no rigid or affine transform follows (an atlas's brain onto a
    patient's; a brain that settled after surgery). Returns both, composed, as ``sitk.Resample`` takes them."""
    mesh = sitk.BSplineTransformInitializer(fixed, [mesh_points] * 3)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(histogram_bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.1, REGISTRATION_SEED)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=iterations)
    method.SetShrinkFactorsPerLevel([2, 1])
    method.SetSmoothingSigmasPerLevel([2.0, 0.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetMovingInitialTransform(initial)
    method.SetInitialTransform(mesh, inPlace=True)
    method.Execute(fixed, moving)
    return sitk.CompositeTransform([initial, mesh])


def register_demons(fixed: sitk.Image, moving: sitk.Image, initial: sitk.Transform, iterations: int, smoothing_mm: float) -> sitk.Transform:
    """``initial`` (fixed -> moving points) refined by a dense displacement field: Thirion's demons (symmetric
    forces), ``moving`` resampled through ``initial`` and its histogram matched to ``fixed``'s first, the field
    smoothed by ``smoothing_mm`` at every step. For two scans of one sequence of one patient (a follow-up onto its
    earlier study), where intensities correspond: on a 2 mm study whose brain settled 5 mm it found 4.8 mm in 7 s, where
    a B-spline of 6 control points per axis by mutual information took 240 s and found 5.3 mm. Returns both, composed, as ``sitk.Resample`` takes them."""
    moved = sitk.Resample(moving, fixed, initial, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    matched = sitk.HistogramMatching(moved, sitk.Cast(fixed, sitk.sitkFloat32), 128, 7, True)
    demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
    demons.SetNumberOfIterations(iterations)
    demons.SetStandardDeviations(smoothing_mm)
    field = demons.Execute(sitk.Cast(fixed, sitk.sitkFloat32), matched)
    return sitk.CompositeTransform([initial, sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))])


def largest_deformation_mm(transform: sitk.Transform, reference: sitk.Image, within: sitk.Image) -> float:
    """The largest displacement the deformable part (the last) of a composed transform adds, over the
    non-zero voxels of ``within`` (on ``reference``'s grid): what a reader checks of a deformable stage."""
    composed = sitk.CompositeTransform(transform)
    deformable = composed.GetNthTransform(composed.GetNumberOfTransforms() - 1)
    field = sitk.TransformToDisplacementField(deformable, sitk.sitkVectorFloat64, reference.GetSize(), reference.GetOrigin(), reference.GetSpacing(), reference.GetDirection())
    lengths = np.linalg.norm(sitk.GetArrayFromImage(field), axis=-1)
    inside = sitk.GetArrayFromImage(within) != 0
    return float(lengths[inside].max()) if inside.any() else 0.0
