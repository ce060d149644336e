"""Teaching the segmentation network to follow an annotator's clicks (the ``refinement`` model, type deepedit).

Every run starts from the served segmentation weights with one zero-weighted input channel per label
(``build_guided_network``): before its first step it answers exactly as the segmentation model. Samples and
augmentations are the segmentation trainer's, with boxes of the sequences blanked (where only clicks can tell);
inside each step the robot user clicks on what the network gets wrong
(``lib/interactive/click_rounds.ClickRounds``), and the step learns from the guidance of the last round. Validation,
on the segmentation model's held-out studies, picks the run's best epoch on the answer that is served: the guided
network's after ``click_rounds`` robot clicks where the server uses it (``ClickGrowth.network_radius_mm`` > 0), its
answer to no clicks where it does not (the default: the clicks then act through their growth over that answer). With
``versions`` each run is a version, served only if, after ``click_rounds`` robot clicks answered as served (grown),
it is not worse than the served refinement model (the segmentation model's guard, ``promotion.compare``).
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
from monai.transforms import RandScaleIntensityd
from monailabel.tasks.train.basic_train import BasicTrainTask, Context

from ..config import NetworkProfile, RefinementSettings, TrainSettings
from ..errors import ModelNotReady
from ..interactive.blank_boxes import RandBlankBoxesd
from ..interactive.click_rounds import ClickRounds
from ..interactive.guidance import AddGuidanceChannelsd
from ..model.network import build_guided_network, read_state_dict
from .evaluation import evaluate_on, evaluation_transforms
from .held_out import HeldOutSet
from .segmentation import BratsSegmentationTrainer
from .versions import ModelVersions


class BratsRefinementTrainer(BratsSegmentationTrainer):
    def __init__(
        self,
        model_dir: Path,
        profile: NetworkProfile,
        settings: TrainSettings,
        refinement: RefinementSettings,
        publish_path: Path,
        segmentation_weights: Callable[[], Optional[Path]],
        versions: Optional[ModelVersions] = None,
        held_out: Optional[HeldOutSet] = None,
    ):
        """``segmentation_weights`` gives the served segmentation model's file (None before there is one);
        ``held_out`` is the segmentation model's held-out set, so no study it learnt from judges clicks."""
        one_rate = dataclasses.replace(
            settings,
            max_epochs=refinement.max_epochs,
            max_epochs_from_scratch=refinement.max_epochs,
            learning_rate=refinement.learning_rate,
            fine_tune_learning_rate=refinement.learning_rate,
            val_interval=refinement.val_interval,
        )
        super().__init__(model_dir, profile, one_rate, publish_path, description="Teach the segmentation model to follow clicks (robot user)", versions=versions)
        self._config.pop("max_epochs_from_scratch", None)  # no first model of its own: every run is a fine-tune
        self.refinement = refinement
        self.segmentation_weights = segmentation_weights
        if held_out is not None:
            self.held_out = held_out

    def __call__(self, request, datastore):
        """``max_epochs`` whatever else the request names (Slicer sends every key it shows)."""
        return BasicTrainTask.__call__(self, {**request, "max_epochs": int(request.get("max_epochs", self._config["max_epochs"]))}, datastore)

    def network(self, context: Context) -> torch.nn.Module:
        path = self.segmentation_weights()
        if path is None or not Path(path).exists():
            raise ModelNotReady("The refinement model starts from the segmentation model: train that first (POST /train/segmentation)")
        return build_guided_network(self.profile, read_state_dict(Path(path)))

    def load_path(self, output_dir, pretrained=True):
        """Nothing to load: ``network`` already holds the served segmentation weights, the newest the lab has. (So the
        run warms up its learning rate as a first model does: the guidance weights and the optimiser's state are new.)"""
        return None

    def compared_with(self, context: Context) -> Optional[str]:
        """The served refinement model (not the segmentation weights every run starts from)."""
        return str(self.versions.serving_path) if self.versions is not None and self.versions.serving_path.exists() else None

    def judge(self, weights: Path, items: list) -> Dict[str, Any]:
        """Dice after the robot user's ``click_rounds`` clicks (the regions in turn), on the held-out studies."""
        return evaluate_on(self.profile, weights, items, evaluation_transforms(self.profile), clicks=self.refinement.click_rounds, growth=self.refinement.growth)

    def partition_datalist(self, context: Context, shuffle=False):
        if not self.held_out.chosen():
            return super().partition_datalist(context, shuffle)
        holdout = set(self.held_out.studies())
        return [d for d in context.datalist if d["id"] not in holdout], [d for d in context.datalist if d["id"] in holdout]

    def _deterministic(self) -> list:
        return [*evaluation_transforms(self.profile), AddGuidanceChannelsd(keys="image")]  # zero until the robot clicks

    def train_pre_transforms(self, context: Context) -> list:
        """The segmentation trainer's samples, with boxes of the sequences blanked before the intensity augmentation
        (``RefinementSettings.blank_*``, ``lib/interactive/blank_boxes``): inside a box only the clicks tell."""
        spacing = np.asarray(self.profile.spacing_mm, dtype=float)
        sides = tuple([int(round(mm / s)) for s in spacing] for mm in self.refinement.blank_box_mm)
        blank = RandBlankBoxesd(
            keys="image",
            label_key="label",
            sequences=self.profile.in_channels,
            boxes=self.refinement.blank_boxes,
            side_voxels=(sides[0], sides[1]),
            prob=self.refinement.blank_probability,
        )
        samples = super().train_pre_transforms(context)
        first_intensity = next(i for i, t in enumerate(samples) if isinstance(t, RandScaleIntensityd))
        return [*samples[:first_intensity], blank, *samples[first_intensity:]]

    def _click_rounds(self, context: Context, train: bool) -> ClickRounds:
        rng = random.Random(int(context.request["seed"]) + (0 if train else 1))
        guided_served = self.refinement.growth.network_radius_mm > 0
        rounds = self.refinement.click_rounds if train or guided_served else 0  # validated on the answer served
        return ClickRounds(self.profile.spacing_mm, rounds, train, self.refinement.click_probability, rng)

    def train_iteration_update(self, context: Context):
        return self._click_rounds(context, train=True)

    def val_iteration_update(self, context: Context):
        return self._click_rounds(context, train=False)
