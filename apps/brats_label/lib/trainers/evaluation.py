"""A weights file scored on labelled cases: how two model versions are compared on the held-out set.

Each study gets the BraTS scores per region (``brats_metrics``: Dice, HD95, lesion-wise Dice and HD95) at the
profile's resolution; the means over studies go into the version's record, the per-study scores too, so that
two versions can be compared study by study.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import numpy as np
import torch
from monai.transforms import Compose, EnsureTyped

from ..config import REGION_THRESHOLD, ClickGrowth, NetworkProfile
from ..infers.segmentation import preprocessing
from ..interactive.click_rounds import region_channels_to_label
from ..interactive.robot_user import GuidedSession, after_robot_clicks
from ..model.brats_metrics import label_dice, region_scores
from ..model.network import load_network, sliding_window_inferer
from ..model.transforms import KeepWithinInputd, LabelToRegionsd

SCORES = ("dice", "hd95", "lesion_dice", "lesion_hd95")


def evaluation_transforms(profile: NetworkProfile) -> list:
    """Image and label as validation sees them: inference's pre-processing, the label as the network's regions."""
    return [
        *preprocessing(profile, keys=("image", "label"), modes=("bilinear", "nearest")),
        LabelToRegionsd(keys="label", label_set=profile.label_set),
        EnsureTyped(keys=("image", "label"), dtype=torch.float32),
    ]


def predict_regions(
    profile: NetworkProfile, weights: Path, items: Sequence[Dict], transforms: List, clicks: int = 0, growth: ClickGrowth = ClickGrowth()
) -> Iterator[Tuple[str, np.ndarray, Dict[str, np.ndarray], Dict[str, np.ndarray]]]:
    """For each item: its id, the network's input (C, X, Y, Z), and the predicted and reference region masks.
    ``clicks``: ``weights`` are a refinement model's, and the prediction is its answer after that many robot clicks
    (``interactive/robot_user``, each click grown as ``growth`` says); ``transforms`` then give the four sequences only."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    network = load_network(profile, weights, device, guided=clicks > 0).eval()
    inferer = sliding_window_inferer(profile)
    prepare = Compose(transforms)
    keep_within_input = KeepWithinInputd(keys="pred", ref_key="image")
    label_set = profile.label_set
    names = [region.name.lower() for region in label_set.regions]
    with torch.no_grad():
        for number, item in enumerate(items):
            data = prepare({"image": item["image"], "label": item["label"]})
            expected = np.asarray(torch.as_tensor(data["label"]).cpu()) > 0
            if clicks > 0:
                session = GuidedSession(network, inferer, torch.as_tensor(data["image"]), profile.spacing_mm, growth)
                labels = after_robot_clicks(session, region_channels_to_label(torch.as_tensor(expected)), clicks)
                predicted = label_set.to_regions(labels)
                yield str(item.get("id", number)), np.asarray(data["image"]), dict(zip(names, predicted)), dict(zip(names, expected))
                continue
            image = torch.as_tensor(data["image"])[None].to(device)
            # kept to the input's brain as inference keeps it
            probabilities = keep_within_input({"image": data["image"], "pred": torch.sigmoid(inferer(image, network))[0]})["pred"]
            predicted = (probabilities > REGION_THRESHOLD).cpu().numpy()
            yield str(item.get("id", number)), np.asarray(image[0].cpu()), dict(zip(names, predicted)), dict(zip(names, expected))


def evaluate_on(profile: NetworkProfile, weights: Path, items: Sequence[Dict], transforms: List, clicks: int = 0, growth: ClickGrowth = ClickGrowth()) -> Dict[str, Any]:
    """Mean Dice per region (tc, wt, et) and their mean (``mean``, what promotion compares), the mean of every
    BraTS score per region (``brats``) and each study's scores (``studies``), over ``items`` ({"id", "image",
    "label"} paths); for a refinement model, after ``clicks`` robot clicks. ``labels`` and ``label_studies``: Dice
    per label (necrotic core, edema, enhancing tumour), mean and per study, which the regions hide."""
    studies, label_studies = {}, {}
    for case, _, predicted, expected in predict_regions(profile, weights, items, transforms, clicks, growth):
        studies[case] = region_scores(predicted, expected, profile.spacing_mm)
        label_studies[case] = label_dice(predicted, expected, profile.label_set)
    regions = [region.name.lower() for region in profile.label_set.regions]
    brats = {region: {score: round(float(np.mean([s[region][score] for s in studies.values()])), 4) for score in SCORES} for region in regions} if studies else {}
    dice = {region: brats[region]["dice"] for region in brats}
    labels = {name: round(float(np.mean([s[name] for s in label_studies.values()])), 4) for name in profile.label_set.foreground} if label_studies else {}
    mean = round(float(np.mean(list(dice.values()))), 4)
    return {**dice, "mean": mean, "brats": brats, "studies": studies, "labels": labels, "label_studies": label_studies}
