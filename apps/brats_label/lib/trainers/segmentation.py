"""Fine-tuning (or training from scratch) on the labelled studies.

Same pre-processing as inference; the label becomes the three overlapping regions (TC, WT, ET) with
MONAI's BraTS transform; random patches centred on tumour or brain; Dice on each region's sigmoid output plus a
cross-entropy across the regions (``loss_function``). Validation on a held-out split reports Dice for TC, WT and ET
with MONAI's metric every ``val_interval`` epochs (and after the last); the best model is published atomically where inference picks it up.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Dict, Optional

import ignite.distributed
import torch
from ignite.engine import Events
from ignite.handlers import EarlyStopping
from ignite.metrics import Metric
from monai.handlers import LrScheduleHandler, MeanDice, from_engine, stopping_fn_from_metric
from monai.inferers import SimpleInferer
from monai.losses import DiceCELoss
from monai.optimizers import WarmupCosineSchedule
from monai.transforms import (
    Activationsd,
    AsDiscreted,
    EnsureTyped,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SpatialPadd,
)
from monai.utils import set_determinism
from monailabel.tasks.train.basic_train import BasicTrainTask, Context

from ..config import REGION_THRESHOLD, NetworkProfile, TrainSettings
from ..model.network import build_network, set_foreground_prior, sliding_window_inferer
from ..model.transforms import KeepWithinInputd
from ..runtime.clock import utc_now
from .evaluation import evaluate_on, evaluation_transforms
from .held_out import HeldOutSet
from .progress import TrainingProgress
from .promotion import compare
from .publish import AtomicPublishStatsAndModel
from .versions import ModelVersions

logger = logging.getLogger(__name__)


def in_process_group() -> bool:
    """True in a rank of a distributed training of more than one process."""
    return torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1


REGION_METRIC_PREFIX = "val_dice_"


def _dice_only(scores: Dict[str, Any]) -> Dict[str, float]:
    """The Dice per region (tc, wt, et; rc after treatment) and their mean, from ``evaluate_on``'s scores."""
    return {k: v for k, v in scores.items() if k == "mean" or k in scores.get("brats", {})}


def _region(index: int):
    """Ignite output transform selecting one region channel of a batch of (C, X, Y, Z) tensors."""

    def select(output):
        preds, labels = from_engine(["pred", "label"])(output)
        return [p[index : index + 1] for p in preds], [y[index : index + 1] for y in labels]

    return select


def _log_weights_digest(context: Context) -> None:
    """Each rank's final weights, hashed: DDP keeps the ranks identical, and the log shows it."""
    network = context.network.module if isinstance(context.network, torch.nn.parallel.DistributedDataParallel) else context.network
    digest = hashlib.sha256()
    for name, value in sorted(network.state_dict().items()):
        digest.update(name.encode() + value.detach().cpu().contiguous().numpy().tobytes())
    logger.info(f"rank {torch.distributed.get_rank()} of {torch.distributed.get_world_size()}: final weights {digest.hexdigest()[:16]}")


class ClippedAdamW(torch.optim.AdamW):
    """AdamW that clips the gradients' global norm before each step. Adam scales a step by the gradient's running
    size, so a spike far above it moves every weight by many learning rates at once."""

    def __init__(self, params, max_norm: float, **kwargs):
        super().__init__(list(params), **kwargs)
        self.max_norm = max_norm

    def step(self, closure=None):
        if self.max_norm > 0:
            torch.nn.utils.clip_grad_norm_([p for group in self.param_groups for p in group["params"]], self.max_norm)
        return super().step(closure)


def validation_interval(epochs: int, asked: Any, default: int) -> int:
    """Epochs between validations: the largest divisor of ``epochs`` not above the interval asked (``default`` when
    none is), so the last epoch, where the run's best model is chosen among those validated, is always validated."""
    most = max(1, int(asked) if asked not in (None, "") else default)
    return max(d for d in range(1, most + 1) if epochs % d == 0)


class BratsSegmentationTrainer(BasicTrainTask):
    def __init__(
        self,
        model_dir: Path,
        profile: NetworkProfile,
        settings: TrainSettings,
        publish_path: Path,
        load_path: Optional[Path] = None,
        description: str = "Fine-tune the glioma segmentation on the labelled studies",
        versions: Optional[ModelVersions] = None,
        promote_tolerance: float = 0.0,
        promote_alpha: float = 0.05,
    ):
        """With ``versions``, each run becomes a version, served only if not worse than its parent."""
        patch = settings.patch_size or profile.patch_size
        config = {
            "max_epochs": settings.max_epochs,
            "max_epochs_from_scratch": settings.max_epochs_from_scratch,
            "learning_rate": settings.learning_rate,
            "fine_tune_learning_rate": settings.fine_tune_learning_rate,
            "train_batch_size": settings.batch_size,
            "val_batch_size": 1,
            "val_split": settings.val_split,
            "patch_size": ",".join(str(p) for p in patch),
            "samples_per_case": settings.samples_per_case,
            "early_stop_patience": settings.early_stop_patience,
            "val_interval": settings.val_interval,
            "seed": settings.seed,
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
            labels=list(profile.label_set.region_values),
            load_strict=True,
        )
        self.profile = profile
        self.settings = settings
        self.versions = versions
        self.promote_tolerance = promote_tolerance
        self.promote_alpha = promote_alpha
        self.held_out = HeldOutSet(Path(model_dir) / "holdout.json")
        self.progress_path = Path(model_dir) / "training_progress.json"

    def __call__(self, request, datastore):
        """A run from no weights takes ``max_epochs_from_scratch`` (from the request, else the settings) unless the
        request names only ``max_epochs``; a run from weights takes ``max_epochs``. Slicer sends both as shown."""
        merged = {**self._config, **request}
        from_scratch = not self._loads_weights(os.path.join(self._model_dir, merged["name"]), merged["pretrained"])
        if from_scratch and ("max_epochs_from_scratch" in request or "max_epochs" not in request):
            epochs = merged["max_epochs_from_scratch"]
        else:
            epochs = merged["max_epochs"]
        return super().__call__({**request, "max_epochs": int(epochs)}, datastore)

    def train(self, rank, world_size, request, datalist):
        """Seeded: the request's ``seed``, or one drawn now and kept in the version record, so that any run
        (its network's start, patches, augmentations) can be repeated. Validated every ``val_interval`` epochs at
        most, and always after the last (the best model is chosen among them): the largest divisor of the run's
        epochs not above it."""
        seed = request.get("seed")
        request["seed"] = int(seed) if seed not in (None, "") else secrets.randbelow(2**31)
        self._val_interval = validation_interval(int(request["max_epochs"]), request.get("val_interval"), self.settings.val_interval)
        set_determinism(seed=request["seed"])
        try:
            return super().train(rank, world_size, request, datalist)
        finally:
            set_determinism(seed=None)  # the process (a test's, a benchmark's) goes on unseeded

    # --- several processes (torchrun, scripts/train_distributed.py) -----------------------------------------
    def _device(self, context: Context) -> torch.device:
        """Under a process group set up by ``scripts/train_distributed.py`` (torchrun), this rank's device; and
        MONAI Label's multi-process paths (data split by rank, DDP, handlers on rank 0 only) turned on. MONAI
        Label's own set-up assumes one machine and CUDA: it would take the global rank for the GPU index."""
        context.multi_gpu = in_process_group()
        if not context.multi_gpu:
            return super()._device(context)
        # ignite finds the process group lazily, with a collective call: on every rank now, not first on rank 0
        # inside a rank-0-only handler (which waits for the other ranks forever)
        ignite.distributed.sync()
        if torch.cuda.is_available():
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
            return device
        return torch.device("cpu")

    def _create_network_and_optimizer(self, context: Context):
        if not context.multi_gpu or context.device.type == "cuda":
            return super()._create_network_and_optimizer(context)
        context.network = self.network(context).to(context.device)
        optimizer = self.optimizer(context)
        return torch.nn.parallel.DistributedDataParallel(context.network), optimizer  # CPU (gloo): no device ids

    # --- network and optimisation ---------------------------------------------------------------------
    def network(self, context: Context) -> torch.nn.Module:
        return set_foreground_prior(build_network(self.profile), self.settings.foreground_prior)

    def load_path(self, output_dir, pretrained=True):
        """Start from the served model (not from the last run's best, which may have been rejected)."""
        if self.versions is not None and self.versions.serving_path.exists():
            return str(self.versions.serving_path)
        return super().load_path(output_dir, pretrained)

    def partition_datalist(self, context: Context, shuffle=False):
        """Validate on the held-out set (chosen once, grown by an admin), so versions are compared on the same cases."""
        if self.versions is None or (float(context.request.get("val_split", 0.0)) <= 0.0 and not self.held_out.chosen()):
            return super().partition_datalist(context, shuffle)
        holdout = set(self.held_out.choose_once([d["id"] for d in context.datalist], float(context.request["val_split"])))
        train = [d for d in context.datalist if d["id"] not in holdout]
        val = [d for d in context.datalist if d["id"] in holdout]
        logger.info(f"Training on {len(train)} cases; validating on the {len(val)} held-out cases {sorted(holdout)}")
        return train, val

    def _loads_weights(self, output_dir: str, pretrained: Any) -> bool:
        path = self.load_path(output_dir, pretrained)
        return bool(path and os.path.exists(path))

    def starts_from_weights(self, context: Context) -> bool:
        """True when this run loads weights (the last run's best model, or the starting weights)."""
        return self._loads_weights(context.output_dir, context.pretrained)

    def optimizer(self, context: Context) -> torch.optim.Optimizer:
        key = "fine_tune_learning_rate" if self.starts_from_weights(context) else "learning_rate"
        lr = float(context.request[key])
        logger.info(f"{'Fine-tuning' if key != 'learning_rate' else 'Training from scratch'} with learning rate {lr}")
        return ClippedAdamW(context.network.parameters(), max_norm=self.settings.grad_clip_norm, lr=lr, weight_decay=1e-5)

    def loss_function(self, context: Context) -> torch.nn.Module:
        """Dice on each region's sigmoid plus MONAI's cross-entropy term, which with three channels is a *softmax*
        cross-entropy across them (``DiceCELoss`` takes one whenever there is more than one channel): not a per-region
        BCE, but a relative term that asks, inside the tumour, for the regions a voxel belongs to to score alike and
        above the others (edema: WT over TC and ET), and says nothing outside it. A true per-region BCE
        (``DiceFocalLoss``, gamma 0) was tried on paired seeds: one first model in two kept WT at Dice 0 for all 40
        epochs (its last layer's WT weights all negative), where this loss let it wake at epoch 17 (bench/first_model.py,
        seed 200; README, Benchmarks)."""
        return DiceCELoss(sigmoid=True, smooth_nr=0.0, smooth_dr=1e-5, squared_pred=True, batch=self.settings.batch_dice)

    def lr_scheduler_handler(self, context: Context) -> Any:
        """Cosine decay over the run; a run from no weights first warms up (``TrainSettings.warmup_epochs``)."""
        epochs = int(context.max_epochs)
        warmup = 0 if self.starts_from_weights(context) else min(self.settings.warmup_epochs, epochs // 4)
        scheduler = WarmupCosineSchedule(context.optimizer, warmup_steps=warmup, t_total=epochs, warmup_multiplier=self.settings.warmup_start)
        return LrScheduleHandler(lr_scheduler=scheduler, print_lr=True)

    # --- data -----------------------------------------------------------------------------------------
    def _patch_size(self, context: Context):
        value = context.request.get("patch_size", self.profile.patch_size)
        return tuple(int(v) for v in value.split(",")) if isinstance(value, str) else tuple(int(v) for v in value)

    def _deterministic(self) -> list:
        return evaluation_transforms(self.profile)

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
            RandScaleIntensityd(keys="image", factors=self.settings.intensity_scale, prob=1.0, channel_wise=True),
            RandShiftIntensityd(keys="image", offsets=0.1, prob=1.0, channel_wise=True),
            # plain tensors into the network: no metadata bookkeeping around every op of the step
            EnsureTyped(keys=("image", "label"), track_meta=False),
        ]

    def train_post_transforms(self, context: Context) -> list:
        return [Activationsd(keys="pred", sigmoid=True), AsDiscreted(keys="pred", threshold=REGION_THRESHOLD)]

    def val_post_transforms(self, context: Context) -> list:
        # whole studies scored as they will be served: kept to the input's brain (a training patch has no brain edge)
        return [Activationsd(keys="pred", sigmoid=True), KeepWithinInputd(keys="pred", ref_key="image"), AsDiscreted(keys="pred", threshold=REGION_THRESHOLD)]

    def val_pre_transforms(self, context: Context) -> list:
        return self._deterministic()

    def train_inferer(self, context: Context):
        return SimpleInferer()

    def val_inferer(self, context: Context):
        return sliding_window_inferer(self.profile)

    def finalize(self, context: Context) -> None:
        """Stats and curve at every validation; the model is served at the end if its version is not worse,
        or (without versions) the best model is published atomically after every validation."""
        publisher = AtomicPublishStatsAndModel(
            self._stats_path,
            None if self.versions is not None else self._publish_path,
            self._key_metric_filename,
            context.start_ts,
            context.run_id,
            context.output_dir,
            context.trainer,
            context.evaluator,
        )
        self._early_stopping(context)  # on every rank: each sees the same all-reduced validation Dice
        if context.multi_gpu:
            context.trainer.add_event_handler(Events.COMPLETED, lambda engine: _log_weights_digest(context))
        if context.local_rank != 0:
            return  # one rank publishes, reports progress and makes the version
        (context.evaluator or context.trainer).add_event_handler(Events.EPOCH_COMPLETED, publisher)
        progress = TrainingProgress(self.progress_path, context.run_id, len(context.train_datalist), len(context.val_datalist or []))
        progress.attach(context.trainer, context.evaluator)
        if self.versions is not None:
            parent_path = self.compared_with(context)
            parent = {"path": parent_path if parent_path and os.path.exists(parent_path) else None, "version": self.versions.serving()}
            context.trainer.add_event_handler(Events.COMPLETED, lambda engine: self._make_version(context, parent, progress))
        else:
            context.trainer.add_event_handler(Events.COMPLETED, lambda engine: progress.update(phase="finished", remaining_s=0.0))

    def _early_stopping(self, context: Context) -> None:
        """``early_stop_patience`` (MONAI Label's config key; 0 or less: off): stop after that many validations
        without a better mean Dice. Our ``finalize`` replaces the base class's, which is where MONAI Label adds it."""
        patience = int(context.request.get("early_stop_patience", 0) or 0)
        if patience <= 0:
            return
        if context.evaluator is None:
            logger.warning("early_stop_patience is set but there are no held-out cases to validate on: training runs all epochs")
            return
        metric = next(iter(self.val_key_metric(context)))
        stopper = EarlyStopping(patience=patience, score_function=stopping_fn_from_metric(metric), trainer=context.trainer)
        context.evaluator.add_event_handler(Events.EPOCH_COMPLETED, stopper)

    def compared_with(self, context: Context) -> Optional[str]:
        """The weights a new version must not be worse than: the ones this run started from."""
        return self.load_path(context.output_dir, context.pretrained)

    def judge(self, weights: Path, items: list) -> Dict[str, Any]:
        """Scores of ``weights`` on held-out ``items``, as versions are compared (``evaluate_on``)."""
        return evaluate_on(self.profile, weights, items, self._deterministic())

    def _make_version(self, context: Context, parent: Dict[str, Any], progress: TrainingProgress) -> None:
        assert self.versions is not None, "attached only with versions"
        candidate = Path(context.output_dir) / self._key_metric_filename
        if not candidate.exists():
            logger.warning(f"training run {context.run_id} left no model; no version made")
            progress.update(phase="finished", remaining_s=0.0, version=None)
            return
        val = context.val_datalist or []
        progress.update(phase="comparing with the served model", remaining_s=None)
        scores = self.judge(candidate, val) if val else {}
        parent_scores = self.judge(Path(parent["path"]), val) if val and parent["path"] else {}
        dice, parent_dice = _dice_only(scores), _dice_only(parent_scores)
        comparison = None
        if parent["path"] is None:
            promote, reason = True, "first model"
        elif not val:
            promote, reason = True, "no held-out cases to compare on yet"
        else:
            comparison = compare(scores["studies"], parent_scores["studies"], self.promote_tolerance, self.promote_alpha)
            promote, reason = comparison.promote, comparison.reason
        record = self.versions.add(
            candidate,
            {
                "parent": parent["version"],
                "started_at": datetime.fromtimestamp(context.start_ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "ended_at": utc_now(),
                "run": context.run_id,
                "labels": sorted(d["id"] for d in context.train_datalist),
                "held_out": sorted(d["id"] for d in val),
                "validation_dice": dice,
                "parent_validation_dice": parent_dice,
                "validation_brats": scores.get("brats", {}),  # Dice, HD95, lesion-wise Dice and HD95 per region
                "parent_validation_brats": parent_scores.get("brats", {}),
                "validation_studies": scores.get("studies", {}),
                "parent_validation_studies": parent_scores.get("studies", {}),
                "comparison": comparison.record() if comparison else None,
                "epochs": int(context.trainer.state.epoch),
                "seed": context.request["seed"],
                "processes": torch.distributed.get_world_size() if context.multi_gpu else 1,
                "promoted": promote,
                "reason": reason,
            },
            curve=Path(context.output_dir) / f"training_curve_{context.run_id}.png",
        )
        if promote:
            self.versions.request_promotion(record["id"], reason)  # served by the server process (at once if this is it)
        progress.update(phase="finished", remaining_s=0.0, version=record["id"], promoted=promote, reason=reason)
        logger.info(f"Model version {record['id']}: {'promoted' if promote else 'kept, not served'} ({reason})")

    # --- metrics --------------------------------------------------------------------------------------
    def train_key_metric(self, context: Context) -> Dict[str, Metric]:
        return {self.TRAIN_METRIC_MEAN_DICE: MeanDice(output_transform=from_engine(["pred", "label"]), include_background=True)}

    def val_key_metric(self, context: Context) -> Dict[str, Metric]:
        return {self.VAL_METRIC_MEAN_DICE: MeanDice(output_transform=from_engine(["pred", "label"]), include_background=True)}

    def val_additional_metrics(self, context: Context) -> Dict[str, Metric]:
        regions = self.profile.label_set.regions
        return {f"{REGION_METRIC_PREFIX}{region.name.lower()}": MeanDice(output_transform=_region(i), include_background=True) for i, region in enumerate(regions)}
