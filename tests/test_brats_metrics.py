"""BraTS scores on shapes whose answers are known by hand: whole-region Dice and HD95, lesion-wise Dice and HD95."""

from __future__ import annotations

import numpy as np
import pytest

from lib.config import BRATS_2023
from lib.model.brats_metrics import HD95_MISSING_MM, brats_scores, label_dice, lesion_wise, region_masks

SHAPE = (64, 64, 40)
ONE_MM = (1.0, 1.0, 1.0)


def cube(corner, size, shape=SHAPE) -> np.ndarray:
    mask = np.zeros(shape, bool)
    x, y, z = corner
    mask[x : x + size, y : y + size, z : z + size] = True
    return mask


def test_a_perfect_segmentation_scores_dice_1_and_hd95_0_in_every_region():
    label = np.zeros(SHAPE, np.uint8)
    label[10:30, 10:30, 5:25] = 2
    label[15:25, 15:25, 10:20] = 3
    label[18:22, 18:22, 13:17] = 1
    scores = brats_scores(label, label, ONE_MM, BRATS_2023)
    for region in ("et", "tc", "wt"):
        assert scores[region]["dice"] == 1.0 and scores[region]["hd95"] == 0.0
        assert scores[region]["lesion_dice"] == 1.0 and scores[region]["lesion_hd95"] == 0.0 and scores[region]["lesions"] == 1


def test_a_necrotic_core_called_enhancing_tumour_scores_0_for_the_core_though_the_regions_stay_whole():
    truth = np.zeros(SHAPE, np.uint8)
    truth[10:30, 10:30, 5:25] = 2
    truth[15:25, 15:25, 10:20] = 3
    truth[18:22, 18:22, 13:17] = 1
    called_enhancing = np.where(truth == 1, 3, truth)
    regions = brats_scores(called_enhancing, truth, ONE_MM, BRATS_2023)
    assert regions["tc"]["dice"] == 1.0 and regions["wt"]["dice"] == 1.0, "TC and WT hide the mistake"
    labels = label_dice(region_masks(called_enhancing, BRATS_2023), region_masks(truth, BRATS_2023), BRATS_2023)
    assert labels["necrotic_core"] == 0.0 and labels["edema"] == 1.0
    assert 0.9 < labels["enhancing_tumour"] < 1.0, "ET is too large by the core's 64 voxels"


def test_a_region_empty_in_both_counts_as_agreement():
    label = np.zeros(SHAPE, np.uint8)
    label[10:30, 10:30, 5:25] = 2  # edema only: no enhancing tumour, no core
    scores = brats_scores(label, label, ONE_MM, BRATS_2023)
    assert scores["et"] == {"dice": 1.0, "hd95": 0.0, "lesion_dice": 1.0, "lesion_hd95": 0.0, "lesions": 0, "detected": 0, "false_positives": 0}


def test_a_shifted_lesion_keeps_its_dice_and_moves_hd95_by_the_shift():
    reference = cube((10, 10, 10), 10)
    shifted = cube((12, 10, 10), 10)  # 2 mm along x: overlap 8 of 10 slabs
    scores = lesion_wise(shifted, reference, np.array([1.0, 1.0, 1.0], np.float32))  # as a NIfTI header gives it
    assert scores["lesion_dice"] == pytest.approx(0.8) and 0 < scores["lesion_hd95"] <= 2.0


def test_a_false_positive_lesion_halves_the_lesion_wise_scores_not_the_whole_dice():
    reference = cube((10, 10, 10), 10)
    prediction = reference | cube((50, 50, 30), 3)  # a separate blob far from the lesion
    label_p, label_r = prediction.astype(np.uint8) * 2, reference.astype(np.uint8) * 2
    wt = brats_scores(label_p, label_r, ONE_MM, BRATS_2023)["wt"]
    assert wt["false_positives"] == 1 and wt["lesion_dice"] == pytest.approx(0.5) and wt["lesion_hd95"] == pytest.approx(HD95_MISSING_MM / 2)
    assert wt["dice"] > 0.97


def test_a_missed_lesion_counts_as_dice_0_and_the_missing_distance():
    reference = cube((5, 5, 5), 8) | cube((45, 45, 25), 8)  # two lesions of 512 mm3, far apart
    prediction = cube((5, 5, 5), 8)
    scores = lesion_wise(prediction, reference, ONE_MM)
    assert scores["lesions"] == 2 and scores["detected"] == 1
    assert scores["lesion_dice"] == pytest.approx(0.5) and scores["lesion_hd95"] == pytest.approx(HD95_MISSING_MM / 2)


def test_lesions_up_to_50_mm3_are_left_out_and_spacing_decides_their_volume():
    reference = cube((5, 5, 5), 10) | cube((50, 50, 30), 2)  # 1000 mm3 and 8 voxels
    prediction = cube((5, 5, 5), 10)  # the small one missed
    at_1mm = lesion_wise(prediction, reference, ONE_MM)
    assert at_1mm["lesions"] == 1 and at_1mm["lesion_dice"] == 1.0, "8 mm3 is under the threshold"
    at_2mm = lesion_wise(prediction, reference, (2.0, 2.0, 2.0))
    assert at_2mm["lesions"] == 2 and at_2mm["lesion_dice"] == pytest.approx(0.5), "the same 8 voxels are 64 mm3 at 2 mm"


def test_lesions_within_three_dilations_are_one_lesion():
    reference = cube((10, 10, 10), 6) | cube((18, 10, 10), 6)  # a gap of 2 voxels
    prediction = cube((10, 10, 10), 6)
    scores = lesion_wise(prediction, reference, ONE_MM)
    assert scores["lesions"] == 1 and scores["lesion_dice"] == pytest.approx(2 * 216 / (216 + 432))
