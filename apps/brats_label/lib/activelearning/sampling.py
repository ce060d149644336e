"""Several stochastic predictions of one case: Monte Carlo dropout and test-time flips.

SegResNet has dropout after its first convolution; keeping only the dropout layers in training mode
samples from the model's approximate posterior (Gal and Ghahramani, 2016). Flipping the input along
spatial axes and flipping the output back adds the spread of the model under symmetries it was
trained with (augmentation flips on all three axes).
"""

from __future__ import annotations

import itertools
from typing import Callable, List, Sequence, Tuple

import torch
from torch import nn

SPATIAL_DIMS = (2, 3, 4)  # of a (B, C, X, Y, Z) batch
FLIPS: List[Tuple[int, ...]] = [combo for r in range(len(SPATIAL_DIMS) + 1) for combo in itertools.combinations(SPATIAL_DIMS, r)]


def enable_mc_dropout(network: nn.Module) -> nn.Module:
    """Evaluation mode everywhere except the dropout layers (normalisation stays deterministic)."""
    network.eval()
    for module in network.modules():
        if isinstance(module, (nn.Dropout, nn.Dropout2d, nn.Dropout3d)):
            module.train()
    return network


def stochastic_predictions(image: torch.Tensor, network: nn.Module, inferer: Callable, samples: int, mc_dropout: bool = True, flips: bool = True) -> torch.Tensor:
    """(1, C_in, X, Y, Z) prepared input -> (samples, C_out, X, Y, Z) sigmoid probabilities."""
    if mc_dropout:
        enable_mc_dropout(network)
    else:
        network.eval()
    chosen: Sequence[Tuple[int, ...]] = [FLIPS[i % len(FLIPS)] if flips else () for i in range(samples)]
    outputs = []
    with torch.no_grad():
        for axes in chosen:
            x = image.flip(axes) if axes else image
            p = torch.sigmoid(inferer(x, network))
            outputs.append((p.flip(axes) if axes else p)[0])
    network.eval()
    return torch.stack(outputs)
