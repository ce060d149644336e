"""Dice of a weights file on labelled cases: how two model versions are compared on the held-out set."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch
from monai.inferers import SlidingWindowInferer
from monai.metrics import DiceMetric
from monai.transforms import Compose

from ..config import REGION_THRESHOLD, REGIONS, NetworkProfile
from ..network import load_network


def evaluate_on(profile: NetworkProfile, weights: Path, items: Sequence[Dict], transforms: List) -> Dict[str, float]:
    """Mean Dice per region (tc, wt, et) and their mean over ``items`` ({"image", "label"} paths)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    network = load_network(profile, weights, device).eval()
    inferer = SlidingWindowInferer(profile.roi_size, overlap=profile.sw_overlap, sw_batch_size=1, mode="gaussian")
    metric = DiceMetric(include_background=True, reduction="mean_batch", ignore_empty=False)
    prepare = Compose(transforms)
    with torch.no_grad():
        for item in items:
            data = prepare({"image": item["image"], "label": item["label"]})
            image = torch.as_tensor(data["image"])[None].to(device)
            prediction = (torch.sigmoid(inferer(image, network)) > REGION_THRESHOLD).float()
            metric(prediction, torch.as_tensor(data["label"])[None].to(device))
    values = metric.aggregate().cpu().tolist()
    dice = {name.lower(): round(float(v), 4) for name, v in zip(REGIONS, values)}
    return {**dice, "mean": round(float(np.mean(values)), 4)}
