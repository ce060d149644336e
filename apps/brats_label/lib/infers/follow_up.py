"""The follow-up pre-label: the patient's earlier final label carried onto this study where its images did not
change, the segmentation model's answer where they did (the rule is ``lib/followup/prior_label.py``'s).

A segmentation-type model of its own (``follow_up`` in ``/info/``), so OHIF's and Slicer's model lists offer it
with no change to either. The server finds the earlier study (``main.py``) and names it in the request; a study
without one gets the segmentation model's answer and the result says why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Hashable, Mapping, Optional, Sequence

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform

from ..config import FollowUpSettings, NetworkProfile
from ..followup.prior_label import PriorStudy, follow_up_answer
from ..model.transforms import RegionVolumesd
from .segmentation import BratsSegmentation

PRIOR_KEY = "follow_up_prior"  # the request's PriorStudy fields, or None
WHY_NONE_KEY = "follow_up_why_none"
CURRENT_KEY = "follow_up_current"  # this study's 4-channel input file (the model's input, on the study's grid)


class FollowPriord(MapTransform):
    """The model's label (1, X, Y, Z, on the study's grid) replaced by the follow-up answer; how it was made goes
    into the result under ``follow_up``."""

    def __init__(self, keys: str, settings: FollowUpSettings, result_key: str = "result"):
        super().__init__(keys)
        self.settings = settings
        self.result_key = result_key

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        fields: Optional[Dict[str, Any]] = d.get(PRIOR_KEY)
        prior = PriorStudy(**{**fields, "image_path": Path(fields["image_path"]), "label_path": Path(fields["label_path"])}) if fields else None
        for key in self.key_iterator(d):
            label = d[key]
            current = nib.load(str(d[CURRENT_KEY]))
            affine = np.asarray(label.affine, dtype=float)
            if not np.allclose(affine, current.affine, atol=1e-3) or tuple(label.shape[1:]) != current.shape[:3]:
                raise ValueError("the follow-up answer is drawn on the study's own grid; this request asked for another")
            model = label.detach().cpu().numpy()[0].astype(np.uint8)
            merged, record = follow_up_answer(model, current, prior, str(d.get(WHY_NONE_KEY, "")), self.settings)
            d[key] = MetaTensor(torch.as_tensor(merged[None]), affine=label.affine)
            d.setdefault(self.result_key, {})["follow_up"] = record
        return d


class BratsFollowUp(BratsSegmentation):
    def __init__(
        self, profile: NetworkProfile, model_path: Path, pretrained_path: Optional[Path], settings: FollowUpSettings, version_fn: Optional[Callable[[], Optional[str]]] = None
    ):
        super().__init__(
            profile,
            model_path,
            pretrained_path,
            description="Follow-up: the patient's earlier final label where the images did not change, the segmentation model where they did",
            version_fn=version_fn,
        )
        self.settings = settings

    def post_transforms(self, data=None) -> Sequence[Callable]:
        steps = list(super().post_transforms(data))
        volumes = next(i for i, step in enumerate(steps) if isinstance(step, RegionVolumesd))
        return [*steps[:volumes], FollowPriord(keys="pred", settings=self.settings), *steps[volumes:]]
