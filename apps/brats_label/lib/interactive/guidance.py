"""Guidance channels: the clicks of each label drawn on the network's own grid, after the image is reoriented and
resampled, from world points (``clicks.clicks_in_world``), so that a click lands where it was put."""

from __future__ import annotations

from typing import Dict, Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from ..config import GUIDANCE_LABELS, GUIDANCE_PEAK, GUIDANCE_SIGMA_MM

TRUNCATE_SIGMAS = 3.0  # a click's Gaussian is drawn out to this many widths; beyond, it is below 0.012


def guidance_channel(shape, world_to_voxel: np.ndarray, points: np.ndarray, spacing_mm: np.ndarray, sigma_mm: float) -> np.ndarray:
    """One label's channel: at each voxel, ``GUIDANCE_PEAK`` times the largest exp(-d²/2σ²) over the clicks (d in mm),
    so each click peaks at that value however many there are. Points off the grid (clicked outside the brain the
    network sees) draw nothing."""
    channel = np.zeros(shape, dtype=np.float32)
    reach = np.ceil(TRUNCATE_SIGMAS * sigma_mm / spacing_mm).astype(int)
    for point in points:
        centre = (world_to_voxel @ np.append(point, 1.0))[:3]
        lo = np.maximum(np.floor(centre).astype(int) - reach, 0)
        hi = np.minimum(np.ceil(centre).astype(int) + reach + 1, shape)
        if (hi <= lo).any():
            continue
        grid = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij")
        squared_mm = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing_mm))
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        channel[box] = np.maximum(channel[box], GUIDANCE_PEAK * np.exp(-squared_mm / (2.0 * sigma_mm**2)))
    return channel


class AddGuidanceChannelsd(MapTransform):
    """Append one channel per label (``GUIDANCE_LABELS`` order, background included) to the image, from the world
    clicks in ``data[clicks_key]`` (label -> (N, 3) RAS mm). Use after ``Orientationd``/``Spacingd``: the image's
    affine then is the network's grid, and the clicks follow it."""

    def __init__(self, keys: KeysCollection = "image", clicks_key: str = "clicks_world", sigma_mm: float = GUIDANCE_SIGMA_MM):
        super().__init__(keys)
        self.clicks_key = clicks_key
        self.sigma_mm = sigma_mm

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> Dict[Hashable, torch.Tensor]:
        d = dict(data)
        clicks: Mapping[str, np.ndarray] = d.get(self.clicks_key) or {}
        for key in self.key_iterator(d):
            image = d[key]
            affine = np.asarray(image.affine if isinstance(image, MetaTensor) else np.eye(4), dtype=float)
            world_to_voxel = np.linalg.inv(affine)
            spacing = np.linalg.norm(affine[:3, :3], axis=0)
            shape = tuple(image.shape[1:])
            channels = [guidance_channel(shape, world_to_voxel, np.asarray(clicks.get(label, np.empty((0, 3)))), spacing, self.sigma_mm) for label in GUIDANCE_LABELS]
            guidance = torch.as_tensor(np.stack(channels), dtype=image.dtype, device=image.device)
            d[key] = torch.cat([image, guidance], dim=0)  # a MetaTensor stays one, with the image's affine
        return d
