"""The click a careful annotator makes next: at the centre of the largest error, saying what the voxel truly is.

The standard robot user of interactive-segmentation papers (and of MONAI's DeepEdit training, whose
``FindDiscrepancyRegionsDeepEditd``/``AddRandomGuidanceDeepEditd`` draw clicks at random inside the errors instead):
the errors of one region, or of all labels, are split into connected components; the largest is corrected with a
click at its innermost voxel (farthest from the component's edge, in mm). The click's label is the true label there,
background included, so a missed region and a false one are corrected alike. ``bench/interactive.py`` and the
training of the refinement model both draw their clicks here.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np
from scipy import ndimage

from ..config import LABELS, REGIONS

LABEL_NAME_OF_VALUE = {value: name for name, value in LABELS.items()}


def error_mask(truth: np.ndarray, predicted: np.ndarray, region: Optional[str] = None) -> np.ndarray:
    """Voxels wrong in ``region`` (a key of ``REGIONS``: missed or falsely included), or wrong in label when None."""
    if region is None:
        return truth != predicted
    values = REGIONS[region]
    return np.isin(truth, values) != np.isin(predicted, values)


def next_click(
    truth: np.ndarray, predicted: np.ndarray, region: Optional[str] = None, spacing_mm: Union[Sequence[float], np.ndarray] = (1.0, 1.0, 1.0)
) -> Optional[Tuple[str, Tuple[int, int, int]]]:
    """(label name, voxel index) of the next click on label maps ``truth`` and ``predicted`` (same grid), or None
    when there is nothing left to correct."""
    errors = error_mask(truth, predicted, region)
    if not errors.any():
        return None
    components, count = ndimage.label(errors)
    sizes = np.bincount(components.ravel())[1:]
    largest = components == (int(np.argmax(sizes)) + 1)
    # the innermost voxel: distance to the nearest voxel outside the component, padded so the volume edge is an edge
    depth = ndimage.distance_transform_edt(np.pad(largest, 1), sampling=spacing_mm)[1:-1, 1:-1, 1:-1]
    i, j, k = (int(v) for v in np.unravel_index(int(np.argmax(depth)), depth.shape))
    return LABEL_NAME_OF_VALUE[int(truth[i, j, k])], (i, j, k)
