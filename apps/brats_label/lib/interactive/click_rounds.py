"""Rounds of simulated clicks inside a training or validation step of the refinement model.

MONAI Label's DeepEdit (``monailabel.deepedit.interaction.Interaction``) does the same between the batch and the
step: predict with the current guidance, click where the prediction is wrong, repeat, then take the step on the last
guidance. Its clicks come from ``monai.apps.deepedit`` transforms that pick a random voxel of the errors of one-hot
labels; here they come from the robot user (``simulated_clicks.next_click``: the innermost voxel of the largest error,
labelled with the true label there), so the model learns from clicks placed as ``bench/interactive.py`` and an
annotator place them, and BraTS's nested regions (sigmoid channels TC, WT, ET) stay nested through ``RegionsToLabeld``.
"""

from __future__ import annotations

import random
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.engines.utils import IterationEvents

from ..config import BRATS_2023, GUIDANCE_LABELS, GUIDANCE_SIGMA_MM, REGION_THRESHOLD, REGIONS
from ..model.transforms import RegionsToLabeld
from .guidance import guidance_channel
from .simulated_clicks import next_click

_TO_LABEL = RegionsToLabeld(keys="x", label_set=BRATS_2023)  # the refinement model knows the pre-operative set only


def region_channels_to_label(regions: torch.Tensor) -> np.ndarray:
    """(3, X, Y, Z) region masks (TC, WT, ET) as one label map, nested as inference nests them."""
    return _TO_LABEL({"x": regions})["x"][0].cpu().numpy()


def add_click(guidance: np.ndarray, label: str, voxel: Sequence[int], spacing_mm: np.ndarray, sigma_mm: float = GUIDANCE_SIGMA_MM) -> None:
    """Draw one click into ``guidance`` ((len(GUIDANCE_LABELS), X, Y, Z), on the network's grid), in place."""
    channel = GUIDANCE_LABELS.index(label)
    drawn = guidance_channel(guidance.shape[1:], np.eye(4), np.asarray([voxel], dtype=float), spacing_mm, sigma_mm)
    np.maximum(guidance[channel], drawn, out=guidance[channel])


def click_on_errors(truth: np.ndarray, predicted: np.ndarray, guidance: np.ndarray, spacing_mm: np.ndarray, region: Optional[str]) -> bool:
    """One robot click on the errors of ``region`` (all labels when None) drawn into ``guidance``; False when the
    prediction has nothing left to correct there."""
    click = next_click(truth, predicted, region, spacing_mm)
    if click is None:
        return False
    add_click(guidance, click[0], click[1], spacing_mm)
    return True


class ClickRounds:
    """Ignite iteration function: rounds of robot clicks, then the engine's own step on the last guidance.

    The batch's image carries the four sequences and, after them, one zero guidance channel per label
    (``AddGuidanceChannelsd`` with no clicks in the pre-transforms); ``label`` is the three region channels.
    Training: with probability ``click_probability`` a sample gets 1 to ``max_rounds`` rounds, each on the errors of
    a region drawn at random (so the model also learns to answer without clicks, as the auto-segmentation).
    Validation: always ``max_rounds`` rounds, the regions in turn (WT, TC, ET), so the validation Dice is the Dice
    after that many clicks, comparable from run to run."""

    def __init__(self, spacing_mm: Sequence[float], max_rounds: int, train: bool, click_probability: float = 0.5, rng: Optional[random.Random] = None):
        self.spacing_mm = np.asarray(spacing_mm, dtype=float)
        self.max_rounds = int(max_rounds)
        self.train = train
        self.click_probability = click_probability
        self.rng = rng or random.Random()
        self.order = ("WT", "TC", "ET")

    def _rounds(self) -> int:
        if not self.train:
            return self.max_rounds
        return self.rng.randint(1, self.max_rounds) if self.rng.random() < self.click_probability else 0

    def __call__(self, engine: SupervisedTrainer | SupervisedEvaluator, batchdata: Dict[str, Any]):
        image = batchdata["image"]
        sequences = image.shape[1] - len(GUIDANCE_LABELS)
        # zero before any click: intensity augmentation shifts every channel, the empty guidance ones included
        guidance = np.zeros((image.shape[0], len(GUIDANCE_LABELS), *image.shape[2:]), dtype=np.float32)
        rounds = self._rounds()
        if rounds:
            truths = [region_channels_to_label(torch.as_tensor(label) > 0) for label in batchdata["label"]]
            for number in range(rounds):
                engine.fire_event(IterationEvents.INNER_ITERATION_STARTED)
                inputs = torch.cat([image[:, :sequences], torch.as_tensor(guidance, dtype=image.dtype)], dim=1).to(engine.state.device)
                engine.network.eval()
                with torch.no_grad():
                    probabilities = torch.sigmoid(engine.inferer(inputs, engine.network))
                for sample, truth in enumerate(truths):
                    predicted = region_channels_to_label(probabilities[sample] > REGION_THRESHOLD)
                    region = self.order[number % len(self.order)] if not self.train else self.rng.choice(list(REGIONS))
                    if not click_on_errors(truth, predicted, guidance[sample], self.spacing_mm, region):
                        click_on_errors(truth, predicted, guidance[sample], self.spacing_mm, None)
                engine.fire_event(IterationEvents.INNER_ITERATION_COMPLETED)
        image = image.clone()
        image[:, sequences:] = torch.as_tensor(guidance, dtype=image.dtype)
        batchdata = {**batchdata, "image": image}
        engine.state.batch = batchdata
        return engine._iteration(engine, batchdata)
