"""BraTS scores of a segmentation against a reference, per region (ET, TC, WT; and RC after treatment), as the
challenge reports them.

- **Dice and HD95** of the whole region (MONAI's ``compute_dice`` and ``compute_hausdorff_distance`` at the
  95th percentile, in millimetres from the voxel spacing);
- **lesion-wise Dice and HD95** (BraTS 2023, glioma): reference lesions are 26-connected components, merged when
  they lie within 3 dilations (18-connected) of each other; each is scored against the predicted components
  that touch its dilated extent. Predicted components touching no reference lesion are false positives (Dice
  0, HD95 ``HD95_MISSING_MM``); reference lesions of at most ``LESION_MIN_VOLUME_MM3`` are left out. The score is
  the sum over lesions divided by the number of lesions plus false positives (no lesion and no false positive:
  Dice 1, HD95 0).

The definitions follow the challenge's published evaluation (Saluja et al., BraTS 2023 lesion-wise metrics);
volumes are in mm³ from the spacing, as there.
"""

from __future__ import annotations

import math
from typing import Dict, Sequence, Tuple

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from scipy import ndimage

from ..labels.label_set import LabelSet

HD95_MISSING_MM = 374.0  # BraTS's HD95 when one side is empty (the diagonal of its 240x240x155 mm volume)
LESION_DILATIONS = 3  # BraTS-GLI
LESION_MIN_VOLUME_MM3 = 50.0  # BraTS-GLI
_CONNECTED_26 = ndimage.generate_binary_structure(3, 3)
_DILATION_18 = ndimage.generate_binary_structure(3, 2)


def region_masks(label: np.ndarray, label_set: LabelSet) -> Dict[str, np.ndarray]:
    """Project label values as the set's regions (et, tc, wt; and rc after treatment), keyed in lower case."""
    return {region.name.lower(): np.isin(label, region.values) for region in label_set.regions}


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """MONAI's Dice; both empty counts as agreement (1)."""
    if not prediction.any() and not reference.any():
        return 1.0
    value = compute_dice(_batch(prediction), _batch(reference), include_background=True, ignore_empty=False)
    return float(value[0, 0])


def hd95(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> float:
    """MONAI's 95th-percentile Hausdorff distance in mm; both empty 0, one empty ``HD95_MISSING_MM``.

    Computed on the two masks' joint bounding box (plus a margin), which leaves the distances unchanged."""
    if not prediction.any() and not reference.any():
        return 0.0
    if not prediction.any() or not reference.any():
        return HD95_MISSING_MM
    box = _bounding_box(prediction | reference, margin=2)
    value = compute_hausdorff_distance(_batch(prediction[box]), _batch(reference[box]), include_background=True, percentile=95, spacing=[float(s) for s in spacing])
    distance = float(value[0, 0])
    return HD95_MISSING_MM if math.isinf(distance) or math.isnan(distance) else distance


def lesion_wise(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> Dict[str, float]:
    """Lesion-wise Dice and HD95 of one region, with the counts behind them."""
    voxel_mm3 = float(np.prod(spacing))
    lesions = _reference_lesions(reference)
    predicted, _ = ndimage.label(prediction, structure=_CONNECTED_26)
    matched: set = set()
    scores: list = []
    for index in range(1, int(lesions.max()) + 1):
        lesion = lesions == index
        if not lesion.any():
            continue
        extent = ndimage.binary_dilation(lesion, structure=_DILATION_18, iterations=LESION_DILATIONS)
        touching = set(np.unique(predicted[extent]).tolist()) - {0}
        matched |= touching
        found = np.isin(predicted, list(touching)) if touching else np.zeros_like(lesion)
        scores.append((float(lesion.sum()) * voxel_mm3, dice(found, lesion), hd95(found, lesion, spacing)))
    false_positives = len(set(range(1, int(predicted.max()) + 1)) - matched)
    kept = [(d, h) for volume, d, h in scores if volume > LESION_MIN_VOLUME_MM3]
    counted = len(kept) + false_positives
    return {
        "lesion_dice": sum(d for d, _ in kept) / counted if counted else 1.0,
        "lesion_hd95": (sum(h for _, h in kept) + false_positives * HD95_MISSING_MM) / counted if counted else 0.0,
        "lesions": len(kept),
        "detected": sum(1 for d, _ in kept if d > 0),
        "false_positives": false_positives,
    }


def brats_scores(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float], label_set: LabelSet) -> Dict[str, Dict[str, float]]:
    """Per region of the set (et, tc, wt, and rc) of two label maps: dice, hd95, lesion_dice, lesion_hd95 and lesion
    counts."""
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction {prediction.shape} and reference {reference.shape} are not on one grid")
    return region_scores(region_masks(prediction, label_set), region_masks(reference, label_set), spacing)


def region_scores(predicted: Dict[str, np.ndarray], expected: Dict[str, np.ndarray], spacing: Sequence[float]) -> Dict[str, Dict[str, float]]:
    """As ``brats_scores``, from region masks (what the network outputs: one channel per region), rounded for records.

    Everything is computed inside the bounding box of all the masks, with room for the lesion dilations: the
    scores are the same, the volume a tumour's size rather than the head's (3.3 s to 0.5 s at 1 mm)."""
    union = np.zeros(next(iter(predicted.values())).shape, bool)
    for mask in (*predicted.values(), *expected.values()):
        union |= mask
    if union.any():
        box = _bounding_box(union, margin=LESION_DILATIONS + 2)
        predicted = {region: mask[box] for region, mask in predicted.items()}
        expected = {region: mask[box] for region, mask in expected.items()}
    scores = {}
    for region in predicted:
        p, r = predicted[region], expected[region]
        scores[region] = {"dice": dice(p, r), "hd95": hd95(p, r, spacing), **lesion_wise(p, r, spacing)}
    return {region: {k: round(v, 4) if isinstance(v, float) else v for k, v in s.items()} for region, s in scores.items()}


def label_dice(predicted: Dict[str, np.ndarray], expected: Dict[str, np.ndarray], label_set: LabelSet) -> Dict[str, float]:
    """Dice per label of two sets of region masks, rounded for records. The region scores hide a missed label inside
    its region (a necrotic core called enhancing tumour leaves TC and WT whole); the labels the regions paint
    (``LabelSet.label_masks``) show it."""
    ours, theirs = label_set.label_masks(predicted), label_set.label_masks(expected)
    return {name: round(dice(ours[name], theirs[name]), 4) for name in label_set.foreground}


def _reference_lesions(reference: np.ndarray) -> np.ndarray:
    """Reference components (26-connected), those within ``LESION_DILATIONS`` of each other merged into one."""
    components, _ = ndimage.label(reference, structure=_CONNECTED_26)
    dilated, _ = ndimage.label(ndimage.binary_dilation(reference, structure=_DILATION_18, iterations=LESION_DILATIONS), structure=_CONNECTED_26)
    return np.where(components > 0, dilated, 0)


def _batch(mask: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(mask), dtype=torch.float32)[None, None]


def _bounding_box(mask: np.ndarray, margin: int) -> Tuple[slice, ...]:
    coords = np.argwhere(mask)
    low = np.maximum(coords.min(axis=0) - margin, 0)
    high = np.minimum(coords.max(axis=0) + margin + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))
