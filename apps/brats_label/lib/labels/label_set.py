"""A label set: the labels an annotator draws, the regions the network predicts and scores are given for, and how
one becomes the other.

BraTS labels are disjoint values in one map, but BraTS models predict and are scored on overlapping regions (the
tumour core is the necrotic core with the enhancing tumour; the whole tumour adds the edema). A label set names both
and the two conversions: a label map to one mask per region (what the network learns, in its sigmoid channels'
order), and region masks back to a label map, painted region by region so that a later, inner region wins (ET within
TC within WT stays nested whatever the network says; a cavity is painted first, so tumour is never hidden under it).

The pre-operative set (BraTS 2023) is the default; BraTS 2024's post-treatment set adds a resection cavity, a region
of its own outside the nesting. Both sets share their first three regions, so a pre-operative model's weights start
a post-treatment one (the cavity's channel starts untrained). The instances are in ``config.LABEL_SETS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Tuple, Union

import numpy as np
import torch

Array = Union[np.ndarray, torch.Tensor]


@dataclass(frozen=True)
class Segment:
    """One label value: its name (what viewers and uploads call it), its BraTS abbreviation, a reader's name, and its
    DICOM SEG property type (coding scheme, code, meaning)."""

    name: str
    value: int
    abbreviation: str
    title: str
    property_type: Tuple[str, str, str]


@dataclass(frozen=True)
class Region:
    """A region the network predicts: the label values it unites, the value it paints where it is the innermost
    region, and what the measurement report calls it."""

    name: str
    values: Tuple[int, ...]
    paints: int
    title: str


@dataclass(frozen=True)
class LabelSet:
    name: str
    description: str
    segments: Tuple[Segment, ...]  # foreground, in value order
    regions: Tuple[Region, ...]  # the network's sigmoid output channels, in order
    paint_order: Tuple[str, ...]  # regions in the order they are painted: a later one paints over an earlier one

    @property
    def labels(self) -> Dict[str, int]:
        """Every label name and value, background (0) first."""
        return {"background": 0, **{segment.name: segment.value for segment in self.segments}}

    @property
    def foreground(self) -> Dict[str, int]:
        return {segment.name: segment.value for segment in self.segments}

    @property
    def values(self) -> Tuple[int, ...]:
        return tuple(sorted(self.labels.values()))

    @property
    def region_values(self) -> Dict[str, Tuple[int, ...]]:
        """{region name: label values}, in the network's channel order."""
        return {region.name: region.values for region in self.regions}

    @property
    def composite_regions(self) -> Tuple[Region, ...]:
        """The regions that unite several labels (TC, WT): reported and measured beside the labels themselves (a
        one-label region, ET or RC, is its label)."""
        return tuple(region for region in self.regions if len(region.values) > 1)

    def region_index(self, name: str) -> int:
        return [region.name for region in self.regions].index(name)

    def segment(self, value: int) -> Segment:
        return next(segment for segment in self.segments if segment.value == value)

    def to_regions(self, label: Array) -> Array:
        """(X, Y, Z) label values -> (C, X, Y, Z) bool, one mask per region in channel order."""
        if isinstance(label, torch.Tensor):
            return torch.stack([torch.isin(label, torch.as_tensor(region.values, device=label.device)) for region in self.regions])
        return np.stack([np.isin(label, region.values) for region in self.regions])

    def to_label(self, regions: Array) -> Array:
        """(C, X, Y, Z) region masks (anything > 0 is in) -> (X, Y, Z) uint8 label, painted in ``paint_order``."""
        # a bool tensor compared with 0 takes a slow path (0.16 s at 1 mm, ten times a float's)
        inside = regions if regions.dtype in (torch.bool, np.bool_) else regions > 0
        paints = [(self.region_index(name), next(region.paints for region in self.regions if region.name == name)) for name in self.paint_order]
        if isinstance(inside, torch.Tensor):
            label = torch.zeros_like(inside[0], dtype=torch.uint8)  # a MetaTensor's geometry is kept
            # painted on the plain tensors (same storage): a MetaTensor's indexing costs 5x more at 1 mm
            plain, masks = torch.Tensor.as_subclass(label, torch.Tensor), torch.Tensor.as_subclass(inside, torch.Tensor)
            for index, value in paints:
                plain.masked_fill_(masks[index], value)
            return label
        label = np.zeros(inside.shape[1:], dtype=np.uint8)
        for index, value in paints:
            label[inside[index]] = value
        return label

    def label_masks(self, regions: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """{label name: mask} from {region name (any case): mask}: the label map the regions paint, value by value
        (the regions hide a necrotic core called enhancing tumour: TC stays whole)."""
        by_name = {name.lower(): mask for name, mask in regions.items()}
        label = self.to_label(np.stack([by_name[region.name.lower()] for region in self.regions]))
        return {segment.name: label == segment.value for segment in self.segments}

    def volume_names(self) -> Tuple[str, ...]:
        """What a volume table lists: every label, then each region that unites several labels."""
        return tuple(self.foreground) + tuple(region.name for region in self.composite_regions)

    def volumes_ml(self, label: np.ndarray, voxel_ml: float) -> Dict[str, float]:
        """Volume of each label and of each region uniting several labels, in mL."""
        per_value = np.bincount(np.asarray(label, dtype=np.uint8).ravel(), minlength=256)  # one pass over the label
        counts = {segment.name: int(per_value[segment.value]) for segment in self.segments}
        counts.update({region.name: int(per_value[list(region.values)].sum()) for region in self.composite_regions})
        return {name: round(count * voxel_ml, 3) for name, count in counts.items()}
