"""What a prepared study looks like to the model, in a few numbers: its grid and each sequence's intensities.

Kept with each prepared case (``CaseCache``) so that the dashboard can compare new studies with those the served
model learned from (``lib/dashboard/drift.py``) without opening any volume: a new scanner, protocol or preparation
shows as studies whose numbers lie outside the training studies' range.

Intensities are read inside the study's support (its non-zero voxels: the brain once extracted), on every second
voxel along each axis (a 1 mm study in 0.1 s on 2 cores): the median, and the 99th percentile over the median (contrast,
whatever the scanner's scale).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Sequence

import nibabel as nib
import numpy as np

SUBSAMPLE = 2  # every second voxel along each axis


def input_statistics(volume_path: Path, channels: Sequence[str]) -> Dict[str, Any]:
    """Grid (spacing, extent in mm, support in mL) and per-channel intensity of a stacked (X, Y, Z, C) volume."""
    image = nib.load(str(volume_path))
    spacing = [float(s) for s in image.header.get_zooms()[:3]]
    data = np.asanyarray(image.dataobj)[::SUBSAMPLE, ::SUBSAMPLE, ::SUBSAMPLE]
    support = (data != 0).any(axis=-1)
    voxel_ml = float(np.prod(spacing)) * SUBSAMPLE**3 / 1000.0
    stats: Dict[str, Any] = {
        "spacing_mm": [round(s, 3) for s in spacing],
        "extent_mm": [round(n * s, 1) for n, s in zip(image.shape[:3], spacing)],
        "support_ml": round(float(support.sum()) * voxel_ml, 1),
    }
    for index, channel in enumerate(channels):
        values = data[..., index][support].astype(np.float32)
        median = float(np.median(values)) if values.size else 0.0
        high = float(np.percentile(values, 99)) if values.size else 0.0
        stats[f"{channel}_median"] = round(median, 3)
        stats[f"{channel}_contrast"] = round(high / median, 3) if median > 0 else None
    return stats
