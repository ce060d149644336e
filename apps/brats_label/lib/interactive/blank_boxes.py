"""Boxes of the sequences blanked in a training sample of the refinement model, so that there only clicks can tell.

A model that starts from the segmentation weights already answers its training studies from the images alone; clicks
there add nothing it needs, and it learns to ignore them. Inside a blanked box the images say nothing, the robot's
clicks land on the errors this makes, and following them is the only way to the label. Boxes are centred on tumour
or on brain at random (``pos`` : 1 - ``pos``, MONAI's own crop-centre sampling), so a blank is no cue of tumour.
"""

from __future__ import annotations

from typing import Dict, Hashable, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from monai.transforms.utils import generate_pos_neg_label_crop_centers, map_binary_to_indices


class RandBlankBoxesd(RandomizableTransform, MapTransform):
    """Set ``sequences`` leading channels of ``keys`` to ``fill_value`` in ``boxes`` (fewest, most) boxes whose side
    along each axis is drawn from ``side_voxels`` (smallest, largest); with probability ``prob`` per sample.
    ``label_key``: region channels (any non-zero voxel is tumour); ``image_key`` channels' non-zero voxels are brain."""

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str,
        sequences: int,
        boxes: Tuple[int, int],
        side_voxels: Tuple[Sequence[int], Sequence[int]],
        pos: float = 0.5,
        fill_value: float = 0.0,
        prob: float = 0.5,
        image_key: Optional[str] = "image",
    ):
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.label_key = label_key
        self.image_key = image_key
        self.sequences = int(sequences)
        self.boxes = boxes
        self.smallest, self.largest = (np.asarray(s, dtype=int) for s in side_voxels)
        self.pos = float(pos)
        self.fill_value = float(fill_value)

    def _boxes(self, label: torch.Tensor, image: Optional[torch.Tensor]) -> list:
        tumour = torch.as_tensor(label).amax(dim=0, keepdim=True) > 0
        brain = None if image is None else torch.as_tensor(image)[: self.sequences].abs().amax(dim=0, keepdim=True)
        fg, bg = map_binary_to_indices(tumour, brain, image_threshold=0.0)
        count = int(self.R.randint(self.boxes[0], self.boxes[1] + 1))
        if count == 0 or (len(fg) == 0 and len(bg) == 0):
            return []
        pos = self.pos if len(fg) and len(bg) else float(len(fg) > 0)
        centres = generate_pos_neg_label_crop_centers((1, 1, 1), count, pos, tumour.shape[1:], fg, bg, self.R)
        out = []
        for centre in centres:
            side = self.R.randint(self.smallest, self.largest + 1)
            lo = np.maximum(np.asarray(centre, dtype=int) - side // 2, 0)
            out.append(tuple(slice(int(a), int(a + s)) for a, s in zip(lo, side)))
        return out

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> Dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        boxes = self._boxes(d[self.label_key], d.get(self.image_key) if self.image_key else None)
        for key in self.key_iterator(d):
            image = d[key].clone()
            for box in boxes:
                image[(slice(0, self.sequences), *box)] = self.fill_value
            d[key] = image
        return d
