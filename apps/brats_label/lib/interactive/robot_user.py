"""The robot user's session with the refinement model: the model answers the clicks so far, the robot clicks again.

Shared by the refinement model's version comparison (``trainers/evaluation.evaluate_on`` with ``clicks``) and
``bench/interactive.py``, so that a version is promoted on the same protocol the benchmark reports.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from monai.inferers import Inferer

from ..config import GUIDANCE_LABELS, REGION_THRESHOLD, ClickGrowth
from ..model.transforms import KeepWithinInputd
from .click_growth import GrownRegions, follow_clicks
from .click_reach import ClickReachInferer, UnclickedAnswers
from .click_rounds import add_click, region_channels_to_label
from .simulated_clicks import next_click

REGIONS_IN_TURN = ("WT", "TC", "ET")  # the order an annotator corrects in: the whole tumour, then inside it


class GuidedSession:
    """A guided network answering one study's clicks so far, as the server answers them (same windows, kept to the
    brain, each click grown as ``growth`` says). ``image``: the four prepared sequences (C, X, Y, Z) on the network's
    grid."""

    def __init__(self, network: torch.nn.Module, inferer: Inferer, image: torch.Tensor, spacing_mm: Sequence[float], growth: ClickGrowth = ClickGrowth()):
        self.network = network
        # one study, one network: the answer to no clicks is computed once, as the server keeps it per study
        kept = UnclickedAnswers(max_entries=1)
        self.inferer = ClickReachInferer(inferer, image.shape[0], spacing_mm, growth.network_radius_mm, kept, key="study", on_unclicked=self._keep_unclicked)
        self.image = image
        self.spacing = np.asarray(spacing_mm, dtype=float)
        self.growth = growth
        self.guidance = np.zeros((len(GUIDANCE_LABELS), *image.shape[1:]), dtype=np.float32)
        self.clicks: Dict[str, List[Tuple[int, int, int]]] = {}
        self._keep = KeepWithinInputd(keys="pred", ref_key="image")
        self.grow_on_unclicked = True  # the clicks grow over the answer to no clicks, as served (False: the guided answer)
        self._unclicked: Optional[torch.Tensor] = None
        self.kept = GrownRegions()  # each click's region, grown again only where a later click changed its surroundings

    def _keep_unclicked(self, answer: torch.Tensor) -> None:
        self._unclicked = answer

    def answer(self) -> np.ndarray:
        """The label map the model gives for the clicks so far."""
        device = next(self.network.parameters()).device
        inputs = torch.cat([self.image, torch.as_tensor(self.guidance)], dim=0)[None].to(device)
        self._unclicked = None
        with torch.no_grad():
            logits = self.inferer(inputs, self.network)
        labels = self._labels(logits)
        before = None
        if self._unclicked is not None and self.grow_on_unclicked:
            # the answer to no clicks is the answer itself where the guided one is used nowhere: labelled once
            before = labels if self._unclicked is logits else self._labels(self._unclicked)
        return follow_clicks(labels, self.image.numpy(), self.clicks, self.spacing, self.growth, before, self.kept, study="study")

    def _labels(self, logits: torch.Tensor) -> np.ndarray:
        probabilities = torch.sigmoid(logits)[0].cpu()
        return region_channels_to_label(self._keep({"image": self.image, "pred": probabilities})["pred"] > REGION_THRESHOLD)

    def click(self, label: str, at: Sequence[int]) -> np.ndarray:
        add_click(self.guidance, label, at, self.spacing)
        self.remember(label, at)
        return self.answer()

    def remember(self, label: str, at: Sequence[int]) -> None:
        """Keep the click for its growth (``follow_clicks``), which every answer applies again."""
        self.clicks.setdefault(label, []).append((int(at[0]), int(at[1]), int(at[2])))


def after_robot_clicks(session: GuidedSession, truth: np.ndarray, clicks: int, labels: Optional[np.ndarray] = None) -> np.ndarray:
    """The label map after ``clicks`` robot clicks, the regions in turn (``REGIONS_IN_TURN``; any error when the
    region's own are all corrected), as the refinement model's validation clicks; from ``labels`` (the model's answer
    with no clicks when None)."""
    labels = session.answer() if labels is None else labels
    for number in range(clicks):
        region = REGIONS_IN_TURN[number % len(REGIONS_IN_TURN)]
        click = next_click(truth, labels, region, session.spacing) or next_click(truth, labels, None, session.spacing)
        if click is None:
            break
        labels = session.click(*click)
    return labels
