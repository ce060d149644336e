"""One preparation for everything the model reads: a study's four series made into the 4-channel input.

    series on their own grids (scanner's planes, slice thicknesses, patient motion, whole head)
      -> T1, T2, FLAIR registered rigidly to the T1c and resampled onto the T1c's grid (alignment.py)
      -> the brain extracted on the T1c's grid, zero outside it (brain_mask.py)

The T1c's grid is kept: it is the grid annotators see and correct on, and the grid labels and SEGs refer to, so
a label needs no mapping between spaces. A study that is already prepared (all series on one grid, the
background zero) costs a header comparison and a count of zero voxels. The report says what was done, in
numbers a reader can check, and goes into the case's info.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from ..config import CHANNELS, GEOMETRY_TOLERANCE_MM, REFERENCE_CHANNEL, PreparationSettings
from .alignment import register_rigid, resample_onto
from .brain_mask import extract_brain_with_method, looks_skull_stripped
from .sitk_images import to_numpy, to_sitk

Series = Tuple[np.ndarray, np.ndarray]  # (X, Y, Z) voxels and their 4x4 RAS affine


@dataclass
class PreparedStudy:
    """``channels`` in CHANNELS order, each (X, Y, Z) on the reference grid (``affine``); ``brain`` (X, Y, Z) bool
    when this preparation extracted it (None: the study came skull-stripped); ``report`` for the case's info."""

    channels: list
    affine: np.ndarray
    brain: Optional[np.ndarray]
    report: Dict[str, Any] = field(default_factory=dict)
    transforms: Dict[str, np.ndarray] = field(default_factory=dict)  # channel -> 4x4 RAS, T1c point -> series point


def voxel_ml(affine: np.ndarray) -> float:
    """Volume of one voxel of a grid (mm affine) in millilitres."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3]))) / 1000.0


def on_grid(series: Series, reference: Series) -> bool:
    return series[0].shape == reference[0].shape and bool(np.allclose(series[1], reference[1], atol=GEOMETRY_TOLERANCE_MM))


def needs_preparation(series: Mapping[str, Series], settings: PreparationSettings) -> bool:
    """False for a study as BraTS delivers it: every series on the reference grid and the brain already extracted."""
    reference = series[REFERENCE_CHANNEL]
    return not (all(on_grid(s, reference) for s in series.values()) and looks_skull_stripped(reference[0], voxel_ml(reference[1]), settings))


def prepare_study(series: Mapping[str, Series], settings: PreparationSettings) -> PreparedStudy:
    """Align, extract the brain, and say what was done. Raises alignment.RegistrationRefused (a ValueError) when a
    series cannot be aligned: the study is then a listed problem, never used unaligned."""
    started = time.monotonic()
    reference_volume, reference_affine = series[REFERENCE_CHANNEL]
    voxel = voxel_ml(reference_affine)
    fixed = to_sitk(reference_volume, reference_affine)
    channels: Dict[str, np.ndarray] = {REFERENCE_CHANNEL: reference_volume}
    alignment: Dict[str, Any] = {}
    transforms: Dict[str, np.ndarray] = {}
    for channel in CHANNELS:
        if channel == REFERENCE_CHANNEL:
            continue
        volume, affine = series[channel]
        if on_grid(series[channel], series[REFERENCE_CHANNEL]):
            channels[channel] = volume
            alignment[channel] = {"method": "none: on the T1c's grid already"}
            continue
        moving = to_sitk(volume, affine)
        transform, found = register_rigid(fixed, moving, settings, f"{channel.upper()} series")
        channels[channel] = to_numpy(resample_onto(moving, fixed, transform))
        transforms[channel] = found.ras
        alignment[channel] = {
            "method": "rigid registration to the T1c (mutual information)",
            **found.summary(),
            # a point of the series as the scanner placed it -> the same anatomy in the T1c's space: where a click on
            # this series lands, and where an answer drawn on it comes from
            "series_to_study_ras": np.round(np.linalg.inv(found.ras), 6).tolist(),
        }

    brain: Optional[np.ndarray] = None
    if looks_skull_stripped(reference_volume, voxel, settings):
        brain_report: Dict[str, Any] = {"method": "none: skull-stripped already", "volume_ml": round(np.count_nonzero(reference_volume) * voxel, 1)}
    else:
        brain, method = extract_brain_with_method(fixed, reference_volume.astype(np.float32), settings)
        for channel, volume in channels.items():
            channels[channel] = np.where(brain, volume, 0).astype(volume.dtype)
        brain_report = {"method": f"{method} (SRI24 atlas registered to the T1c)", "volume_ml": round(int(brain.sum()) * voxel, 1)}
    report = {
        "reference": f"{REFERENCE_CHANNEL.upper()} grid, as stored",
        "alignment": alignment,
        "brain": brain_report,
        "seconds": round(time.monotonic() - started, 1),
    }
    return PreparedStudy([channels[c] for c in CHANNELS], reference_affine, brain, report, transforms)


def already_prepared_report(series: Mapping[str, Series]) -> Dict[str, Any]:
    """The report of a study that needed nothing (for the case's info, so every case says how it was prepared)."""
    reference_volume, reference_affine = series[REFERENCE_CHANNEL]
    return {
        "reference": f"{REFERENCE_CHANNEL.upper()} grid, as stored",
        "alignment": {c: {"method": "none: on the T1c's grid already"} for c in CHANNELS if c != REFERENCE_CHANNEL},
        "brain": {"method": "none: skull-stripped already", "volume_ml": round(np.count_nonzero(reference_volume) * voxel_ml(reference_affine), 1)},
        "seconds": 0.0,
    }
