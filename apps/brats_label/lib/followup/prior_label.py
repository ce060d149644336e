"""A follow-up study's pre-label from the same patient's earlier final label, where the images did not change.

An expert already drew the tumour on the earlier study; on the follow-up most of it looks the same, and redrawing it
is the work a follow-up pre-label saves. The rule, per voxel of the follow-up:

1. The earlier study is registered onto this one (rigid, 6 degrees of freedom, mutual information on T1, both
   brain-extracted, started from their centres of mass; then, ``deformable``, demons for the brain's own
   shift) and its final label carried over (nearest neighbour).
2. A voxel *changed* where T1c or FLAIR differs between the two studies by more than ``change_sd`` standard
   deviations (each sequence z-scored over its brain, smoothed by ``change_smoothing_mm``): new or grown
   enhancement, edema, necrosis or a cavity, or tumour gone.
3. The answer is the earlier label where nothing changed, and the segmentation model's answer where something did
   or where the earlier study does not reach.

A study with no earlier final label, or whose earlier study cannot be registered, gets the model's answer and is
told why (never a silently misplaced label).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..config import CHANNELS, FollowUpSettings, PreparationSettings
from ..errors import BratsLabelError
from ..preparation.alignment import RegistrationRefused, coarse, largest_deformation_mm, register_demons, register_rigid
from ..preparation.sitk_images import to_numpy, to_sitk
from ..studies.study_datastore import FINAL

REGISTRATION_CHANNEL = "t1"  # what the tumour changes least
CHANGE_CHANNELS = ("t1c", "flair")  # where enhancement, necrosis, cavity and edema show


@dataclass(frozen=True)
class PriorStudy:
    """The patient's most recent earlier study with a final label."""

    case: str
    acquired: str
    image_path: Path  # its 4-channel model input (CHANNELS order), on its grid
    label_path: Path
    label_saved_at: str


def earlier_final_label(datastore: Any, case: str) -> Tuple[Optional[PriorStudy], str]:
    """The most recent earlier study of ``case``'s patient that has a final label, or None and why there is none."""
    studies = datastore.patient_studies(case)
    own = datastore.case_id(case)
    if not studies:
        return None, "the source says nothing of this study's patient (an archive's PatientID, or a folder's patients.csv)"
    position = [study for study, _ in studies].index(own)
    acquired = studies[position][1].acquired
    if not acquired:
        return None, "this study has no date, so no study is known to be earlier"
    earlier = [(study, moment) for study, moment in studies[:position] if moment.acquired and moment.acquired < acquired]
    for study, moment in reversed(earlier):
        uri = datastore.get_label_uri(study, FINAL)
        if uri:
            info = datastore.get_label_info(study, FINAL)
            try:
                image = datastore.get_image_uri(study)  # its model input, prepared now if it never was
            except BratsLabelError as e:  # the earlier study's problem stays with it: this one gets the model's answer
                return None, f"the earlier study {study} with a final label cannot be opened ({e})"
            return PriorStudy(study, moment.acquired, Path(image), Path(uri), str(info.get("saved_at", ""))), ""
    return None, f"none of this patient's {len(earlier)} earlier {'study has' if len(earlier) == 1 else 'studies have'} a final label"


def _zscored(channel: np.ndarray, smoothing_vox: np.ndarray) -> np.ndarray:
    brain = channel != 0
    values = channel[brain]
    if values.size < 2:
        return np.zeros_like(channel, dtype=np.float32)
    normed = np.where(brain, (channel - values.mean()) / (values.std() + 1e-6), 0.0).astype(np.float32)
    return ndimage.gaussian_filter(normed, smoothing_vox)


def carry_prior(current: nib.Nifti1Image, prior: PriorStudy, settings: FollowUpSettings) -> Tuple[np.ndarray, np.ndarray, np.ndarray, Dict[str, Any]]:
    """The earlier label on this study's grid, where the images changed, where the earlier study reaches, and what
    the registration found. Raises RegistrationRefused with the reason."""
    earlier = nib.load(str(prior.image_path))
    label_image = nib.load(str(prior.label_path))
    now_data, then_data = np.asarray(current.dataobj, dtype=np.float32), np.asarray(earlier.dataobj, dtype=np.float32)
    index = CHANNELS.index(REGISTRATION_CHANNEL)
    fixed, moving = to_sitk(now_data[..., index], current.affine), to_sitk(then_data[..., index], earlier.affine)
    limits = dataclasses.replace(
        PreparationSettings(), max_rotation_deg=settings.max_rotation_deg, max_translation_mm=settings.max_translation_mm, min_overlap=settings.min_overlap
    )
    transform, found = register_rigid(fixed, moving, limits, f"earlier study {prior.case}", onto="this study", from_centres_of_mass=True)
    registration: Dict[str, Any] = {"method": "rigid, mutual information on T1", **found.summary()}
    if settings.deformable:
        small_fixed = coarse(fixed, settings.deformable_spacing_mm)
        transform = register_demons(small_fixed, coarse(moving, settings.deformable_spacing_mm), transform, settings.deformable_iterations, settings.deformable_smoothing_mm)
        registration["method"] = "rigid, mutual information on T1; then deformable (demons on T1)"
        registration["largest_deformation_mm"] = round(largest_deformation_mm(transform, small_fixed, small_fixed), 2)

    def onto_current(volume: np.ndarray, affine: np.ndarray, interpolator: int) -> np.ndarray:
        return to_numpy(sitk.Resample(to_sitk(volume, affine), fixed, transform, interpolator, 0.0, sitk.sitkFloat32))

    label = np.rint(onto_current(np.asarray(label_image.dataobj, dtype=np.float32), label_image.affine, sitk.sitkNearestNeighbor)).astype(np.uint8)
    reach = onto_current(np.ones(then_data.shape[:3], np.float32), earlier.affine, sitk.sitkNearestNeighbor) > 0.5
    spacing = np.linalg.norm(current.affine[:3, :3], axis=0)
    smoothing = settings.change_smoothing_mm / spacing
    difference = np.zeros(now_data.shape[:3], np.float32)
    for channel in CHANGE_CHANNELS:
        c = CHANNELS.index(channel)
        then = onto_current(then_data[..., c], earlier.affine, sitk.sitkLinear)
        difference = np.maximum(difference, np.abs(_zscored(now_data[..., c], smoothing) - _zscored(then, smoothing)))
    changed = difference > settings.change_sd
    return label, changed, reach, {"registration": registration}


def merge_with_prior(model: np.ndarray, prior: np.ndarray, changed: np.ndarray, reach: np.ndarray) -> np.ndarray:
    """The rule of this module: the earlier label where nothing changed and the earlier study reaches, else the model."""
    return np.where(changed | ~reach, model, prior).astype(np.uint8)


def follow_up_answer(
    model_label: np.ndarray, current: nib.Nifti1Image, prior: Optional[PriorStudy], why_none: str, settings: FollowUpSettings
) -> Tuple[np.ndarray, Dict[str, Any]]:
    """The follow-up's pre-label and the record of how it was made (for the result and the audit)."""
    if prior is None:
        return model_label, {"prior_case": None, "answer": f"the segmentation model's: {why_none}"}
    try:
        label, changed, reach, record = carry_prior(current, prior, settings)
    except RegistrationRefused as e:
        return model_label, {"prior_case": prior.case, "answer": f"the segmentation model's: the earlier study could not be registered onto this one ({e})"}
    if label.shape != model_label.shape:
        return model_label, {"prior_case": prior.case, "answer": "the segmentation model's: the earlier label is not on this study's grid after registration"}
    merged = merge_with_prior(model_label, label, changed, reach)
    voxel_ml = float(abs(np.linalg.det(current.affine[:3, :3]))) / 1000.0
    from_model = changed | ~reach
    record.update(
        {
            "prior_case": prior.case,
            "prior_acquired": prior.acquired,
            "prior_label_saved_at": prior.label_saved_at,
            "answer": "the earlier final label where the images did not change, the segmentation model where they did",
            "changed_ml": round(float(changed.sum()) * voxel_ml, 2),
            "tumour_from_earlier_label_ml": round(float((~from_model & (label > 0)).sum()) * voxel_ml, 2),
            "tumour_from_model_ml": round(float((from_model & (model_label > 0)).sum()) * voxel_ml, 2),
        }
    )
    return merged, record
