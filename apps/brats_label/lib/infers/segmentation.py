"""Pre-segmentation of a study: necrotic core, edema and enhancing tumour, with region volumes in mL.

Pipeline (the model-zoo brats_mri_segmentation bundle's, at the profile's spacing):
load the 4-channel case -> RAS -> resample -> z-score per channel over the brain -> sliding-window
SegResNet (3 sigmoid outputs TC, WT, ET) -> kept to the input's brain -> probabilities resampled onto the study's original grid
and thresholded there -> labels {0, 1, 2, 3} -> volumes.
"""

from __future__ import annotations

import copy
import gzip
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import nibabel as nib
import numpy as np
import torch
from monai.inferers import Inferer
from monai.transforms import (
    Activationsd,
    CropForegroundd,
    DeleteItemsd,
    EnsureTyped,
    LoadImaged,
    NormalizeIntensityd,
    Orientationd,
    Spacingd,
)
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.transform.cache import CacheTransformDatad

from ..config import MODEL_NAME, PREPARED_INPUT_TTL_S, NetworkProfile
from ..errors import ModelNotReady
from ..labels.label_files import NRRD_SUFFIX, write_nrrd_label
from ..model.network import load_network, sliding_window_inferer
from ..model.transforms import KeepWithinInputd, RegionsToLabeld, RegionVolumesd, RestoreToSourceGridd

logger = logging.getLogger(__name__)

RESULT_GZIP_LEVEL = 1


def preprocessing(profile: NetworkProfile, keys: Tuple[str, ...] = ("image",), modes: Tuple[str, ...] = ("bilinear",)) -> list:
    """Shared by inference and training so that both see identical inputs."""
    return [
        LoadImaged(keys=keys, ensure_channel_first=True, image_only=True),
        EnsureTyped(keys=keys, dtype=torch.float32, track_meta=True),
        Orientationd(keys=keys, axcodes="RAS"),
        Spacingd(keys=keys, pixdim=profile.spacing_mm, mode=modes),
        # to the brain (non-zero in any sequence) before normalising: the affine follows, so results restore in place
        CropForegroundd(keys=keys, source_key="image", margin=profile.crop_margin, allow_smaller=True),
        NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
    ]


_CACHE_INIT_LOCK = threading.Lock()


def prepared_input_cache() -> CacheTransformDatad:
    """MONAI Label's prepared-input cache. Its constructor sets module globals, and prunes expired entries, with no
    lock: a study being prepared at hand-out while its first auto-segmentation started saw them half set
    (AttributeError, a 500)."""
    with _CACHE_INIT_LOCK:
        return CacheTransformDatad(keys="image", hash_key="case_version", in_memory=True, ttl=PREPARED_INPUT_TTL_S)


class BratsSegmentation(BasicInferTask):
    guided = False  # whether the network takes guidance channels after the four sequences (the refinement model)

    def __init__(
        self,
        profile: NetworkProfile,
        model_path: Path,
        pretrained_path: Optional[Path],
        description: str = "",
        version_fn: Optional[Callable[[], Optional[str]]] = None,
    ):
        super().__init__(
            path=[str(p) for p in (pretrained_path, model_path) if p is not None],
            network=None,
            type=InferType.SEGMENTATION,
            labels=dict(profile.label_set.foreground),
            dimension=3,
            description=description or f"Glioma sub-regions from T1c, T1, T2, FLAIR ({profile.description})",
            roi_size=profile.roi_size,
        )
        self.profile = profile
        self.model_path = Path(model_path)
        self.version_fn = version_fn  # the served model version's id, reported with each result
        self._loaded: Dict[str, Tuple[torch.nn.Module, float, str]] = {}

    def is_valid(self) -> bool:
        # Listed in /info/ even before a model exists; /infer then explains how to get one.
        return True

    def info(self) -> Dict[str, Any]:
        info = super().info()
        info.update({"profile": self.profile.name, "spacing_mm": list(self.profile.spacing_mm), "trained": self.get_path() is not None, "label_set": self.profile.label_set.name})
        return info

    def _case_version(self, image: Any) -> str:
        """Key of the prepared-input cache: this profile, this case file, this version of it."""
        version = f"{os.stat(image).st_mtime_ns}" if isinstance(image, str) and os.path.isfile(image) else os.urandom(8).hex()
        return f"{self.profile.name}:{image}@{version}"

    def __call__(self, request, callbacks=None):
        return super().__call__({**request, "case_version": self._case_version(request.get("image"))}, callbacks)

    def prepare(self, image: str) -> None:
        """Read and resample a study's input now (it was just handed out), so that its first auto-segmentation
        finds it in the prepared-input cache and costs little more than the forward pass."""
        data = {**copy.deepcopy(self._config), "image": image, "image_path": image, "case_version": self._case_version(image)}
        self.run_pre_transforms(data, self.pre_transforms(data))

    def pre_transforms(self, data=None) -> Sequence[Callable]:
        return [
            # MONAI Label adds a string "image_path"; MONAI 1.6's Spacingd updates every "image_*" key as a dict.
            DeleteItemsd(keys="image_path"),
            *preprocessing(self.profile),
            # MONAI Label's hook: a repeated request on an unchanged case skips reading and resampling.
            prepared_input_cache(),
        ]

    def inferer(self, data=None) -> Inferer:
        return sliding_window_inferer(self.profile)

    def post_transforms(self, data=None) -> Sequence[Callable]:
        return [
            Activationsd(keys="pred", sigmoid=True),
            KeepWithinInputd(keys="pred", ref_key="image"),
            RestoreToSourceGridd(keys="pred", ref_key="image"),
            RegionsToLabeld(keys="pred", label_set=self.profile.label_set),
            RegionVolumesd(keys="pred", label_set=self.profile.label_set),
        ]

    def _get_network(self, device, data):
        """The newest weights: the published model once trained, else the user's starting weights."""
        path = self.get_path()
        if path is None:
            raise ModelNotReady(
                f"No model is trained yet for '{MODEL_NAME}'. Label a few studies, then start training "
                f"(POST /train/{MODEL_NAME}, or Train in 3D Slicer / OHIF); or restart the server with "
                "--conf pretrained_weights /path/to/brats_mri_segmentation/models/model.pt"
            )
        mtime = os.stat(path).st_mtime
        cached = self._loaded.get(str(device))
        if cached is None or cached[1] != mtime or cached[2] != path:
            network = load_network(self.profile, Path(path), torch.device(device), guided=self.guided)
            network.eval()
            self._loaded[str(device)] = (network, mtime, path)
            logger.info(f"Loaded weights {path} (modified {mtime})")
        return self._loaded[str(device)][0]

    def writer(self, data: Dict[str, Any], extension=None, dtype=None) -> Tuple[Any, Any]:
        """Write the label on the study's grid: NIfTI, or NRRD when the client asks for it (OHIF's panel
        reads nothing else); the JSON result carries volumes and the model used."""
        label = data["pred"]
        array = label.detach().cpu().numpy()[0].astype(np.uint8)
        affine = np.asarray(label.affine, dtype=float)
        if (extension or data.get("result_extension")) == NRRD_SUFFIX:
            fd, path = tempfile.mkstemp(suffix=NRRD_SUFFIX, prefix="brats_label_")
            os.close(fd)
            write_nrrd_label(array, affine, Path(path), compress=bool(data.get("result_compress", False)))
        else:
            image = nib.Nifti1Image(array, affine)
            image.set_qform(affine, code=1)
            image.set_sform(affine, code=1)
            fd, path = tempfile.mkstemp(suffix=".nii.gz", prefix="brats_label_")
            with os.fdopen(fd, "wb") as f:
                # level 1: a label compresses almost as well, several times faster than the default 9
                f.write(gzip.compress(image.to_bytes(), compresslevel=RESULT_GZIP_LEVEL))
        result = dict(data.get("result", {}))
        model_path = self.get_path()
        result["model"] = {
            "path": model_path,
            "modified": os.stat(model_path).st_mtime if model_path else None,
            "profile": self.profile.name,
            "version": self.version_fn() if self.version_fn else None,
        }
        return path, result
