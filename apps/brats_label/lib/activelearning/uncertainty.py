"""How unsure the model is about a case, from several stochastic predictions of it.

Per voxel: the predictive entropy of the mean sigmoid probability of each region (TC, WT, ET),
averaged over the regions: the uncertainty of the probabilities, not of an argmax.

Per case: the mean voxel entropy over the *tumour region of interest*: voxels that any sample
calls tumour (WT probability above ``roi_threshold``), grown by ``margin_vox``. A glioma is a few
percent of the brain; averaged over the whole volume, the near-zero entropy of healthy background
would swamp the score, and a case would rank by tumour size rather than by doubt. Where no sample
sees any tumour, the case scores the mean of its ``fallback_top`` most uncertain voxels, so a faint
lesion the model half-sees still ranks above a case it is confidently calling clean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import REGIONS

EPS = 1e-6
WT_CHANNEL = list(REGIONS).index("WT")


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of Bernoulli(p), elementwise."""
    p = p.clamp(EPS, 1.0 - EPS)
    return -(p * torch.log(p) + (1.0 - p) * torch.log(1.0 - p))


def voxel_entropy(samples: torch.Tensor) -> torch.Tensor:
    """(T, C, X, Y, Z) sigmoid probabilities from T passes -> (X, Y, Z) entropy of the mean, averaged over C."""
    return binary_entropy(samples.mean(0)).mean(0)


def tumour_roi(samples: torch.Tensor, roi_threshold: float, margin_vox: int) -> torch.Tensor:
    """(X, Y, Z) bool: voxels any sample calls whole tumour, dilated by ``margin_vox``."""
    seen = (samples[:, WT_CHANNEL] > roi_threshold).any(0).float()
    if margin_vox > 0:
        size = 2 * margin_vox + 1
        seen = F.max_pool3d(seen[None, None], kernel_size=size, stride=1, padding=margin_vox)[0, 0]
    return seen > 0


@dataclass(frozen=True)
class CaseUncertainty:
    score: float  # mean voxel entropy over the region of interest (nats, 0 to ln 2)
    roi_voxels: int  # 0 when the fallback was used
    tumour_ml: float  # mean-probability whole tumour volume, for the record


def case_uncertainty(samples: torch.Tensor, voxel_ml: float, roi_threshold: float = 0.5, margin_vox: int = 3, fallback_top: int = 250) -> CaseUncertainty:
    entropy = voxel_entropy(samples)
    roi = tumour_roi(samples, roi_threshold, margin_vox)
    tumour_ml = float((samples.mean(0)[WT_CHANNEL] > 0.5).sum()) * voxel_ml
    if roi.any():
        return CaseUncertainty(float(entropy[roi].mean()), int(roi.sum()), tumour_ml)
    top = torch.topk(entropy.flatten(), k=min(fallback_top, entropy.numel())).values
    return CaseUncertainty(float(top.mean()), 0, tumour_ml)
