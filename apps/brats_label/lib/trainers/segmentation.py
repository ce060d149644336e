"""Fine-tuning (or training from scratch) on the labelled studies.

Same pre-processing as inference; the label becomes the three overlapping regions (TC, WT, ET) with
MONAI's BraTS transform; random patches centred on tumour or brain; Dice + BCE loss on the sigmoid
outputs as the model-zoo bundle trains. Validation on a held-out split reports Dice for TC, WT and ET
with MONAI's metric each epoch; the best model is published atomically where inference picks it up.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from ignite.engine import Events
from ignite.metrics import Metric
from monai.handlers import LrScheduleHandler, MeanDice, from_engine
from monai.inferers import SimpleInferer, SlidingWindowInferer
from monai.losses import DiceCELoss
from monai.transforms import (
    Activationsd,
    AsDiscreted,
    ConvertToMultiChannelBasedOnBratsClassesd,
    EnsureTyped,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SpatialPadd,
)
from monailabel.tasks.train.basic_train import BasicTrainTask, Context

from ..config import ENHANCING_LABEL, REGION_THRESHOLD, REGIONS, NetworkProfile, TrainSettings
from ..infers.segmentation import preprocessing
from ..network import build_network, set_foreground_prior
from .publish import AtomicPublishStatsAndModel

logger = logging.getLogger(__name__)

REGION_METRIC_PREFIX = "val_dice_"


def _region(index: int):
    """Ignite output transform selecting one region channel of a batch of (C, X, Y, Z) tensors."""

    def select(output):
        preds, labels = from_engine(["pred", "label"])(output)
        return [p[index : index + 1] for p in preds], [y[index : index + 1] for y in labels]

    return select


class BratsSegmentationTrainer(BasicTrainTask):
    def __init__(
        self,
        model_dir: Path,
        profile: NetworkProfile,
        settings: TrainSettings,
        publish_path: Path,
        load_path: Optional[Path] = None,
        description: str = "Fine-tune the glioma segmentation on the labelled studies",
    ):
        patch = settings.patch_size or profile.patch_size
        config = {
            "max_epochs": settings.max_epochs,
            "learning_rate": settings.learning_rate,
            "fine_tune_learning_rate": settings.fine_tune_learning_rate,
            "train_batch_size": settings.batch_size,
            "val_batch_size": 1,
            "val_split": settings.val_split,
            "patch_size": ",".join(str(p) for p in patch),
            "samples_per_case": settings.samples_per_case,
            "dataset": "CacheDataset",
            "dataloader": "DataLoader",
            "multi_gpu": False,
            "tracking": "None",
        }
        super().__init__(
            str(model_dir),
            description,
            config=config,
            amp=torch.cuda.is_available(),
            load_path=str(load_path) if load_path else None,
            publish_path=str(publish_path),
            labels=list(REGIONS),
            load_strict=True,
        )
        self.profile = profile
        self.settings = settings

    # --- network and optimisation ---------------------------------------------------------------------
    def network(self, context: Context) -> torch.nn.Module:
        return set_foreground_prior(build_network(self.profile), self.settings.foreground_prior)

    def starts_from_weights(self, context: Context) -> bool:
        """True when this run loads weights (the last run's best model, or the starting weights)."""
        path = self.load_path(context.output_dir, context.pretrained)
        return bool(path and os.path.exists(path))

    def optimizer(self, context: Context) -> torch.optim.Optimizer:
        key = "fine_tune_learning_rate" if self.starts_from_weights(context) else "learning_rate"
        lr = float(context.request[key])
        logger.info(f"{'Fine-tuning' if key != 'learning_rate' else 'Training from scratch'} with learning rate {lr}")
        return torch.optim.AdamW(context.network.parameters(), lr=lr, weight_decay=1e-5)

    def loss_function(self, context: Context) -> torch.nn.Module:
        return DiceCELoss(sigmoid=True, smooth_nr=0.0, smooth_dr=1e-5, squared_pred=True)

    def lr_scheduler_handler(self, context: Context) -> Any:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(context.optimizer, T_max=int(context.max_epochs))
        return LrScheduleHandler(lr_scheduler=scheduler, print_lr=True)

    # --- data -----------------------------------------------------------------------------------------
    def _patch_size(self, context: Context):
        value = context.request.get("patch_size", self.profile.patch_size)
        return tuple(int(v) for v in value.split(",")) if isinstance(value, str) else tuple(int(v) for v in value)

    def _deterministic(self) -> list:
        return [
            *preprocessing(self.profile, keys=("image", "label"), modes=("bilinear", "nearest")),
            ConvertToMultiChannelBasedOnBratsClassesd(keys="label", et_label=ENHANCING_LABEL),
            EnsureTyped(keys=("image", "label"), dtype=torch.float32),
        ]

    def train_pre_transforms(self, context: Context) -> list:
        patch = self._patch_size(context)
        samples = int(context.request.get("samples_per_case", self.settings.samples_per_case))
        positive = self.settings.foreground_ratio
        return [
            *self._deterministic(),
            SpatialPadd(keys=("image", "label"), spatial_size=patch),
            RandCropByPosNegLabeld(
                keys=("image", "label"),
                label_key="label",
                spatial_size=patch,
                pos=positive,
                neg=1.0 - positive,
                num_samples=samples,
                image_key="image",
                image_threshold=0.0,  # background patches come from the brain, not the empty margin
            ),
            RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=0),
            RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=1),
            RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=2),
            RandScaleIntensityd(keys="image", factors=0.1, prob=1.0),
            RandShiftIntensityd(keys="image", offsets=0.1, prob=1.0),
            # plain tensors into the network: no metadata bookkeeping around every op of the step
            EnsureTyped(keys=("image", "label"), track_meta=False),
        ]

    def train_post_transforms(self, context: Context) -> list:
        return [Activationsd(keys="pred", sigmoid=True), AsDiscreted(keys="pred", threshold=REGION_THRESHOLD)]

    def val_pre_transforms(self, context: Context) -> list:
        return self._deterministic()

    def train_inferer(self, context: Context):
        return SimpleInferer()

    def val_inferer(self, context: Context):
        return SlidingWindowInferer(roi_size=self.profile.roi_size, overlap=self.profile.sw_overlap, sw_batch_size=1, mode="gaussian")

    def finalize(self, context: Context) -> None:
        """Publish the best model atomically after every epoch (replaces MONAI Label's in-place copy)."""
        publisher = AtomicPublishStatsAndModel(
            self._stats_path,
            self._publish_path,
            self._key_metric_filename,
            context.start_ts,
            context.run_id,
            context.output_dir,
            context.trainer,
            context.evaluator,
        )
        (context.evaluator or context.trainer).add_event_handler(Events.EPOCH_COMPLETED, publisher)

    # --- metrics --------------------------------------------------------------------------------------
    def train_key_metric(self, context: Context) -> Dict[str, Metric]:
        return {self.TRAIN_METRIC_MEAN_DICE: MeanDice(output_transform=from_engine(["pred", "label"]), include_background=True)}

    def val_key_metric(self, context: Context) -> Dict[str, Metric]:
        return {self.VAL_METRIC_MEAN_DICE: MeanDice(output_transform=from_engine(["pred", "label"]), include_background=True)}

    def val_additional_metrics(self, context: Context) -> Dict[str, Metric]:
        return {
            f"{REGION_METRIC_PREFIX}{name.lower()}": MeanDice(output_transform=_region(i), include_background=True)
            for i, name in enumerate(REGIONS)
        }
