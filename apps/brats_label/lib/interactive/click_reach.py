"""The guided network's answer where the annotator clicked, its answer with no clicks elsewhere.

A click is a statement about the tissue near it, and an annotator must be able to trust that a click never changes
a region far from where it was put. A network guarantees no such thing (its receptive field spans the brain, and a
few minutes of training from the segmentation weights teach it little about where a click matters). So clicks
change the answer only within ``ClickGrowth.radius_mm`` of a click; beyond, it is the answer to no clicks (one more
pass of the network, only on a request with clicks, and none for a network whose guidance weights are all zero).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from monai.inferers import Inferer
from scipy import ndimage

from ..config import GUIDANCE_PEAK

CLICK_CORE = float(np.exp(-0.5))  # a click's own voxels: its Gaussian above this share of its peak (within one width)


class ClickReachInferer(Inferer):
    """Wraps the sliding-window inferer of a guided network (inputs: ``sequences`` channels, then the guidance)."""

    def __init__(self, inferer: Inferer, sequences: int, spacing_mm: Sequence[float], radius_mm: float):
        self.inferer = inferer
        self.sequences = sequences
        self.spacing = np.asarray(spacing_mm, dtype=float)
        self.radius_mm = radius_mm

    def near_clicks(self, guidance: torch.Tensor) -> np.ndarray:
        """(X, Y, Z) voxels within the reach of a click, from one sample's guidance channels."""
        clicked = guidance.amax(dim=0).cpu().numpy() >= CLICK_CORE * GUIDANCE_PEAK
        return ndimage.distance_transform_edt(~clicked, sampling=self.spacing) <= self.radius_mm

    def reads_guidance(self, network: Any) -> bool:
        """False for a segmentation model's weights served as the refinement model (guidance weights all zero): its
        answer is the same with or without clicks, one pass is enough."""
        first = getattr(getattr(getattr(network, "convInit", None), "conv", None), "weight", None)
        return first is None or bool(first[:, self.sequences :].abs().sum() > 0)

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        guided = self.inferer(inputs, network, *args, **kwargs)
        guidance = inputs[:, self.sequences :]
        if self.radius_mm <= 0 or not bool((guidance > 0).any()) or not self.reads_guidance(network):
            return guided
        plain = inputs.clone()
        plain[:, self.sequences :] = 0
        unclicked = self.inferer(plain, network, *args, **kwargs)
        near = torch.as_tensor(np.stack([self.near_clicks(g) for g in guidance]), device=guided.device)[:, None]
        return torch.where(near, guided, unclicked)
