"""The refinement model: the auto-segmentation that follows an annotator's clicks (MONAI Label type ``deepedit``).

OHIF's Point Prompts and Slicer's DeepEdit call any model of this type with ``params[<label name>] = [[i, j, k], ...]``.
The server turns those indices into world points through the grid the client clicked on before this task runs
(``main.py``: ``request["clicks_world"]``, from ``lib/interactive/clicks.clicks_in_world``); here they become guidance
channels on the network's own grid, after the study is reoriented, resampled and cropped, so each click lands where it
was put whatever the orientation of the series. Each click grows over the tissue it landed on
(``interactive/click_growth``), starting from the network's answer to no clicks; the network's guided answer replaces
that answer near the clicks only where ``ClickGrowth.network_radius_mm`` says (``interactive/click_reach``; 0 by
default: measured to add nothing to the growth, and most of a click's time). With no clicks it answers as an
auto-segmentation.

Offered as soon as there is a segmentation model: until a refinement model is trained (``POST /train/refinement``)
the network is the segmentation model's, its guidance weights zero. A trained refinement network answers better with
no clicks than the segmentation model it started from (robot-user sets on 2026-12-07: whole tumour Dice 0.75-0.85
against 0.68-0.77 on eight sets), and the clicks grow over that answer. The answer to no clicks is kept per study
(``interactive/click_reach``; ``warm`` computes it after the study's auto-segmentation): a click costs its growth.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from monai.inferers import Inferer
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.utils.others.generic import name_to_device

from ..config import CHANNELS, LABELS, ClickGrowth, NetworkProfile
from ..errors import ModelNotReady
from ..interactive.click_growth import FollowClicksd, GrownRegions
from ..interactive.click_reach import ClickReachInferer, UnclickedAnswers
from ..interactive.guidance import AddGuidanceChannelsd
from ..model.transforms import KeepWithinInputd
from .segmentation import BratsSegmentation

UNCLICKED_KEY = "pred_unclicked"  # the network's logits for no clicks, from the inferer to the clicks' growth


class BratsRefinement(BratsSegmentation):
    guided = True

    def __init__(
        self,
        profile: NetworkProfile,
        model_path: Path,
        segmentation_paths: Sequence[Optional[Path]] = (),
        version_fn: Optional[Callable[[], Optional[str]]] = None,
        growth: ClickGrowth = ClickGrowth(),
    ):
        """``segmentation_paths``: the segmentation model's weights, in the order it prefers them (its starting weights,
        then its published model): the network until ``model_path`` is trained."""
        super().__init__(
            profile,
            model_path,
            None,
            description=f"Glioma sub-regions that follow your clicks: a point per label, background included ({profile.description})",
            version_fn=version_fn,
        )
        self.growth = growth
        self.unclicked = UnclickedAnswers()  # the answer to no clicks per study: computed once
        self.grown_regions = GrownRegions()  # each click's region per study: a later answer grows only what changed
        self.path = [str(p) for p in (*segmentation_paths, model_path) if p is not None]  # the last that exists is served
        self.type = InferType.DEEPEDIT
        self.labels = dict(LABELS)  # DeepEdit's clients ask for one point list per label, background included

    def is_valid(self) -> bool:
        return self.get_path() is not None

    @property
    def trained_on_clicks(self) -> bool:
        """Whether the served weights are a refinement model's (they read the clicks), not the segmentation model's."""
        path = self.get_path()
        return path is not None and Path(path) == self.model_path

    def warm(self, image: str) -> None:
        """Compute and keep a study's answer to no clicks (``UnclickedAnswers``) before its first click, so that the
        first click costs what the ones after it do."""
        data = {**copy.deepcopy(self._config), "image": image, "image_path": image, "case_version": self._case_version(image), "clicks_world": {}}
        self.run_inferer(self.run_pre_transforms(data, self.pre_transforms(data)), device=str(name_to_device("cuda")))

    def pre_transforms(self, data=None) -> Sequence[Callable]:
        # after the prepared-input cache: the study is read and resampled once, the clicks drawn on every request
        return [*super().pre_transforms(data), AddGuidanceChannelsd(keys="image", clicks_key="clicks_world")]

    def inferer(self, data=None) -> Inferer:
        """Clicks change the answer only near them (``interactive/click_reach``); the answer to no clicks is kept per
        study version (the prepared-input cache's key)."""
        key = (data or {}).get("case_version")
        unclicked = self.unclicked if key is not None else None

        def hand_on(answer: torch.Tensor) -> None:  # the clicks grow over the answer to no clicks (FollowClicksd)
            if data is not None:
                data[UNCLICKED_KEY] = answer[0]

        return ClickReachInferer(super().inferer(data), len(CHANNELS), self.profile.spacing_mm, self.growth.network_radius_mm, unclicked, key, on_unclicked=hand_on)

    def post_transforms(self, data=None) -> Sequence[Callable]:
        """Each click grown on the network's grid (``interactive/click_growth``), after the answer is kept to the brain."""
        transforms = list(super().post_transforms(data))
        at = next(i for i, t in enumerate(transforms) if isinstance(t, KeepWithinInputd)) + 1
        return [
            *transforms[:at],
            FollowClicksd(keys="pred", ref_key="image", clicks_key="clicks_world", growth=self.growth, unclicked_key=UNCLICKED_KEY, kept=self.grown_regions),
            *transforms[at:],
        ]

    def writer(self, data: Dict[str, Any], extension=None, dtype=None) -> Tuple[Any, Any]:
        """The result says where each click was placed (RAS mm): what the network was told, for a viewer or a person
        to check against where they clicked."""
        path, result = super().writer(data, extension, dtype)
        clicks = data.get("clicks_world") or {}
        result["clicks_ras_mm"] = {label: np.round(np.asarray(points, dtype=float), 2).tolist() for label, points in clicks.items() if len(points)}
        return path, result

    def _get_network(self, device, data):
        if self.get_path() is None:
            raise ModelNotReady("The refinement model starts from the segmentation model: train that first (POST /train/segmentation)")
        return super()._get_network(device, data)
