"""BraTS Label: a MONAI Label app for brain-tumour MRI, where a case is a four-sequence study.

Start it with MONAI Label's own server, for example::

    monailabel start_server --app apps/brats_label --studies data/studies --conf profile cpu

``--conf`` keys (all optional), read once here:

    profile             cpu (2 mm, light, default) or bundle (model-zoo brats_mri_segmentation compatible)
    pretrained_weights  starting weights, e.g. the bundle's models/model.pt
    workspace           where labels, caches and models are written (default <studies>/.brats_label)
    max_epochs, learning_rate, batch_size, patch_size, val_split   training defaults
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict

from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.random import Random

from lib.config import FOREGROUND_LABELS, MODEL_NAME, SCRATCH_DIR_NAME, AppConfig
from lib.datastore import StudyFolderDatastore
from lib.infers.segmentation import BratsSegmentation
from lib.network import check_weights, read_state_dict
from lib.trainers.segmentation import BratsSegmentationTrainer

logger = logging.getLogger(__name__)


class BratsLabelApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: Dict[str, str]):
        self.config = AppConfig.from_conf(conf or {})
        self.workspace = self.config.workspace or Path(studies) / SCRATCH_DIR_NAME
        self.model_dir = self.workspace / "model"
        self.model_path = self.model_dir / f"{MODEL_NAME}.pt"
        self.model_dir.mkdir(parents=True, exist_ok=True)
        if self.config.pretrained_weights:
            # Fail at start-up, not at the first click, when the starting weights do not fit.
            check_weights(read_state_dict(self.config.pretrained_weights), self.config.profile, self.config.pretrained_weights)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="BraTS Label",
            description="Active-learning annotation of glioma sub-regions on T1, T1c, T2 and FLAIR",
            version="0.1.0",
            labels=dict(FOREGROUND_LABELS),
        )

    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            raise ValueError("DICOMweb studies are not supported yet: start the server on a folder of NIfTI studies")
        return StudyFolderDatastore(Path(self.studies), self.workspace)

    def init_infers(self) -> Dict[str, InferTask]:
        return {MODEL_NAME: BratsSegmentation(self.config.profile, self.model_path, self.config.pretrained_weights)}

    def init_trainers(self) -> Dict[str, TrainTask]:
        return {
            MODEL_NAME: BratsSegmentationTrainer(
                model_dir=self.model_dir,
                profile=self.config.profile,
                settings=self.config.train,
                publish_path=self.model_path,
                load_path=self.config.pretrained_weights,
            )
        }

    def init_strategies(self) -> Dict[str, Strategy]:
        return {"random": Random()}

    def info(self):
        info = super().info()
        info["profile"] = {"name": self.config.profile.name, "description": self.config.profile.description}
        info["datastore"]["problems"] = [p.__dict__ for p in self._datastore.problems()]  # type: ignore[attr-defined]
        return info
