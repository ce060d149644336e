"""Dictionary transforms that MONAI does not have: a prediction kept to the brain the model was shown, restoring
it to the study's grid cheaply, regions back to labels, and region volumes.

``LabelToRegionsd`` turns a label into the overlapping regions the network learns (TC/WT/ET, and a resection cavity
in the post-treatment set); ``RegionsToLabeld`` is its inverse for the network's output.
"""

from __future__ import annotations

from typing import Any, Dict, Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, SpatialResample
from scipy import ndimage

from ..config import BRAIN_EDGE_SHELL_FRACTION, BRAIN_EDGE_SHELL_MM, CHANNELS, REGION_THRESHOLD, REGIONS
from ..labels.label_set import LabelSet

SUPPORT_BOX = "support_box"  # metadata: [lo, hi] voxel indices outside which a restored answer is background


def input_support(image: torch.Tensor) -> torch.Tensor:
    """(X, Y, Z) bool: where any channel of a (C, X, Y, Z) input is non-zero (the brain, on a prepared study)."""
    return (image != 0).any(0)


def brain_edge_components(tumour: np.ndarray, brain: np.ndarray, depth_voxels: int, fraction: float = BRAIN_EDGE_SHELL_FRACTION) -> np.ndarray:
    """(X, Y, Z) bool: the connected parts of ``tumour`` with more than ``fraction`` of their voxels within
    ``depth_voxels`` (face-connected steps) of the edge of ``brain``. The array's own border is not an edge, so a
    training patch's sides do not count."""
    edge = np.zeros_like(tumour, dtype=bool)
    if not tumour.any():
        return edge
    # only around the tumour: whether a voxel is deep depends on the brain within depth_voxels of it
    found = np.argwhere(tumour)
    box = tuple(slice(max(0, lo - depth_voxels - 1), hi + depth_voxels + 2) for lo, hi in zip(found.min(0), found.max(0)))
    components, count = ndimage.label(tumour[box])
    deep = ndimage.binary_erosion(brain[box], iterations=depth_voxels, border_value=1)
    ids = np.arange(1, count + 1)
    in_shell = np.asarray(ndimage.sum(brain[box] & ~deep, components, ids))
    sizes = np.asarray(ndimage.sum(tumour[box], components, ids))
    edge[box] = np.isin(components, ids[in_shell > fraction * sizes])
    return edge


class KeepWithinInputd(MapTransform):
    """Keep (C, X, Y, Z) region probabilities to the brain the model was shown.

    A prepared study is zero outside its extracted brain. At that edge, thick T1 and T2 slices (5 and 4 mm on a
    raw study) blur the CSF around the brain into it: dark on T1, bright on T2, as edema is. A network that learned
    on brains cut at their true surface calls some of it edema: on raw heads up to 23 mL of label outside the
    brain and whole-tumour Dice 0.44 against 0.76 on the same study BraTS-prepared (bench/preparation.py). So
    probabilities are zeroed where every input channel is zero, and in any predicted tumour (WT, thresholded)
    lying mostly within ``BRAIN_EDGE_SHELL_MM`` of the brain's edge; a tumour reaching the surface from within the
    brain is kept whole. On a skull-stripped BraTS study the input's support is the brain too. Only the first
    ``sequences`` channels are the study: a refinement model's guidance channels after them are clicks.
    """

    def __init__(
        self,
        keys: KeysCollection,
        ref_key: str = "image",
        shell_mm: float = BRAIN_EDGE_SHELL_MM,
        threshold: float = REGION_THRESHOLD,
        allow_missing_keys: bool = False,
        sequences: int = len(CHANNELS),
    ):
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key
        self.sequences = sequences
        self.shell_mm = shell_mm
        self.threshold = threshold
        self.whole_tumour = list(REGIONS).index("WT")  # the same channel in every label set

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> Dict[Hashable, torch.Tensor]:
        d = dict(data)
        image = d[self.ref_key]
        inside = input_support(torch.as_tensor(image)[: self.sequences]).cpu().numpy()
        affine = image.affine.cpu().numpy() if isinstance(image, MetaTensor) else np.eye(4)
        depth = max(1, int(round(self.shell_mm / float(np.mean(np.linalg.norm(affine[:3, :3], axis=0))))))  # profiles are isotropic
        for key in self.key_iterator(d):
            tumour = (torch.as_tensor(d[key])[self.whole_tumour] > self.threshold).cpu().numpy() & inside
            keep = inside & ~brain_edge_components(tumour, inside, depth)
            d[key] = d[key] * torch.as_tensor(keep, device=d[key].device, dtype=d[key].dtype)
        return d


class RestoreToSourceGridd(MapTransform):
    """(C, x, y, z) probabilities on the network's grid -> (C, X, Y, Z) bool regions (above ``threshold``) on the
    study's original grid.

    Resampling the whole 1 mm volume costs more than the 2 mm forward pass on a CPU. Linear
    interpolation only mixes neighbouring voxels, so a voxel of the original grid can exceed
    ``threshold`` only within one network-grid voxel of a voxel that already does. Only the bounding
    box of those voxels (plus ``margin`` voxels) is resampled and thresholded; the rest is background, and the box is
    kept in the result's metadata (``SUPPORT_BOX``) so that painting labels and counting volumes work on it alone: on a
    1 mm study a tenth of a second less for every answer, click or auto-segmentation. The labels match those of
    MONAI's full inverse resampling up to round-off at the threshold (7 of 600 boundary voxels in a check). The original grid is read from the reference image's metadata
    (``original_affine``, ``spatial_shape``), so the orientation change is undone in the same step. A request may
    name another grid in ``data[grid_key]`` (``{"affine": RAS 4x4, "shape": [X, Y, Z]}``): the series a viewer shows
    and clicked on, whose indices it reads the answer in.
    """

    def __init__(self, keys: KeysCollection, ref_key: str = "image", threshold: float = REGION_THRESHOLD, margin: int = 2, grid_key: str = "answer_grid"):
        super().__init__(keys)
        self.ref_key = ref_key
        self.threshold = threshold
        self.margin = margin
        self.grid_key = grid_key
        self.resample = SpatialResample(mode="bilinear", padding_mode="zeros")

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> Dict[Hashable, torch.Tensor]:
        d = dict(data)
        grid: Any = d.get(self.grid_key)
        meta = d[self.ref_key].meta
        affine, shape = (grid["affine"], grid["shape"]) if grid else (meta["original_affine"], meta["spatial_shape"])
        target_affine = torch.as_tensor(np.asarray(affine, dtype=np.float64))
        target_shape = [int(s) for s in np.asarray(shape).tolist()]
        for key in self.key_iterator(d):
            prob = d[key]
            restored = MetaTensor(torch.zeros((prob.shape[0], *target_shape), dtype=torch.bool), affine=target_affine)
            restored.meta[SUPPORT_BOX] = [[0, 0, 0], [0, 0, 0]]  # empty: nothing above the threshold
            hot = torch.nonzero((prob > self.threshold).any(0))
            if len(hot):
                lo = torch.clamp(hot.min(0).values - self.margin, min=0)
                hi = torch.minimum(hot.max(0).values + self.margin + 1, torch.as_tensor(prob.shape[1:]))
                source = prob[:, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
                source_affine = prob.affine.to(torch.float64) @ _translation(lo)
                corners = torch.cartesian_prod(*[torch.tensor([float(a), float(b) - 1]) for a, b in zip(lo, hi)])
                world = _apply(prob.affine.to(torch.float64), corners)
                voxels = _apply(torch.linalg.inv(target_affine), world)
                t_lo = torch.clamp(torch.floor(voxels.min(0).values).long() - 1, min=0)
                t_hi = torch.minimum(torch.ceil(voxels.max(0).values).long() + 2, torch.as_tensor(target_shape))
                block = self.resample(
                    MetaTensor(source.as_tensor() if isinstance(source, MetaTensor) else source, affine=source_affine),
                    dst_affine=target_affine @ _translation(t_lo),
                    spatial_size=[int(b - a) for a, b in zip(t_lo, t_hi)],
                )
                restored.as_tensor()[:, t_lo[0] : t_hi[0], t_lo[1] : t_hi[1], t_lo[2] : t_hi[2]] = block.as_tensor() >= self.threshold  # as AsDiscreted thresholds
                restored.meta[SUPPORT_BOX] = [t_lo.tolist(), t_hi.tolist()]
            d[key] = restored
        return d


def support_box(array: Any) -> tuple:
    """The index slices outside which ``array`` (C, X, Y, Z) or (1, X, Y, Z) is known to be background (a
    ``SUPPORT_BOX`` in its metadata), or the whole array."""
    box = array.meta.get(SUPPORT_BOX) if isinstance(array, MetaTensor) else None
    if box is None:
        return (slice(None),) * (array.ndim - 1)
    return tuple(slice(int(lo), int(hi)) for lo, hi in zip(*box))


def _translation(offset: torch.Tensor) -> torch.Tensor:
    matrix = torch.eye(4, dtype=torch.float64)
    matrix[:3, 3] = offset.to(torch.float64)
    return matrix


def _apply(affine: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    return points.to(torch.float64) @ affine[:3, :3].T + affine[:3, 3]


class RegionsToLabeld(MapTransform):
    """(C, X, Y, Z) binary regions -> (1, X, Y, Z) uint8 label, painted as the label set says (``LabelSet.to_label``).

    Nesting is imposed as in the BraTS definition (ET within TC within WT): a voxel the network calls
    ET but not WT still gets the enhancing label, so no enhancing voxel is dropped.
    """

    def __init__(self, keys: KeysCollection, label_set: LabelSet, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.label_set = label_set

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> Dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            regions = d[key]
            box = support_box(regions)
            label = torch.zeros((1, *regions.shape[1:]), dtype=torch.uint8)
            plain = regions.as_tensor() if isinstance(regions, MetaTensor) else torch.as_tensor(regions)
            label[(0, *box)] = torch.as_tensor(self.label_set.to_label(plain[(slice(None), *box)]))
            d[key] = MetaTensor(label, meta=dict(regions.meta)) if isinstance(regions, MetaTensor) else label  # its affine in the meta
        return d


class LabelToRegionsd(MapTransform):
    """(1, X, Y, Z) or (X, Y, Z) label -> (C, X, Y, Z) region masks, one per network output (``LabelSet.to_regions``):
    what the network learns. For the pre-operative set it equals MONAI's ``ConvertToMultiChannelBasedOnBratsClassesd``."""

    def __init__(self, keys: KeysCollection, label_set: LabelSet, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.label_set = label_set

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> Dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            label = label[0] if label.ndim == 4 else label
            d[key] = self.label_set.to_regions(label)
        return d


def voxel_volume_ml(affine) -> float:
    """Volume of one voxel of a grid (mm affine) in millilitres."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3]))) / 1000.0


def region_volumes_ml(label: np.ndarray, voxel_volume_ml: float, label_set: LabelSet) -> Dict[str, float]:
    """Volume of each labelled structure and of the regions uniting several (TC, WT), in mL."""
    return label_set.volumes_ml(label, voxel_volume_ml)


class RegionVolumesd(MapTransform):
    """Puts the region volumes (mL) of the label under ``result_key`` -> ``volumes_ml``."""

    def __init__(self, keys: KeysCollection, label_set: LabelSet, result_key: str = "result", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.label_set = label_set
        self.result_key = result_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> Dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            affine = label.affine if isinstance(label, MetaTensor) else torch.eye(4)
            voxel_ml = voxel_volume_ml(affine)
            inside = label[(slice(None), *support_box(label))] if label.ndim == 4 else label  # background beyond the box
            array = inside.detach().cpu().numpy() if isinstance(inside, torch.Tensor) else np.asarray(inside)
            d.setdefault(self.result_key, {})["volumes_ml"] = region_volumes_ml(array, voxel_ml, self.label_set)
        return d
