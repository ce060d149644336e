"""Clicks as the stock clients send them, mapped to the world.

OHIF's Point Prompts send, for each label, voxel indices ``[i, j, k]`` of the series on screen (cornerstone3D's grid:
i along the columns, j along the rows, k along the slice normal, lowest slice first: the grid of
``lib.dicom.series_volume.SliceStack``); Slicer's DeepEdit sends voxel indices of the volume the server sent it. An
index means nothing without its grid, so each click becomes a world point (RAS, mm) at once, through that grid's
affine; the network's grid is reached from the world, never by reusing an index in another grid (MONAI Label's own
DeepEdit mirrors clicks on non-RAS images that way: its issue #1407).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Sequence

import numpy as np

from ..config import GUIDANCE_LABELS, MAX_CLICKS
from ..errors import InvalidInput

# Half a voxel of slack around the grid: a click on the edge of the first or last slice, rounded by the client.
EDGE_SLACK_VOXELS = 0.5


def _index(value: Any, label: str) -> np.ndarray:
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)) or len(value) != 3:
        raise InvalidInput(f"clicks for '{label}': each click is a voxel index [i, j, k], got {str(value)[:40]!r}")
    try:
        index = np.array([float(v) for v in value])
    except (TypeError, ValueError):
        raise InvalidInput(f"clicks for '{label}': [i, j, k] must be numbers, got {str(value)[:40]!r}") from None
    if not all(math.isfinite(v) for v in index):
        raise InvalidInput(f"clicks for '{label}': [i, j, k] must be finite numbers")
    return index


def clicks_in_world(params: Mapping[str, Any], voxel_to_world: np.ndarray, shape: Sequence[int]) -> Dict[str, np.ndarray]:
    """The request's clicks per label (keys among ``GUIDANCE_LABELS``; other keys are the request's options) as
    world points, an (N, 3) array per label. ``voxel_to_world`` (4x4, RAS) and ``shape`` are the grid the client
    clicked on. A click outside that grid, or a malformed one, is refused with what was wrong: it would otherwise
    land somewhere the annotator did not put it."""
    clicks: Dict[str, np.ndarray] = {}
    total = 0
    upper = np.asarray(shape, dtype=float) - 1 + EDGE_SLACK_VOXELS
    for label in GUIDANCE_LABELS:
        given = params.get(label)
        if given in (None, "", []):
            continue
        if not isinstance(given, Sequence) or isinstance(given, (str, bytes)):
            raise InvalidInput(f"clicks for '{label}': expected a list of voxel indices [[i, j, k], ...]")
        total += len(given)
        if total > MAX_CLICKS:
            raise InvalidInput(f"more than {MAX_CLICKS} clicks in one request; send the clicks of this correction only")
        indices = np.array([_index(v, label) for v in given])
        outside = (indices < -EDGE_SLACK_VOXELS) | (indices > upper)
        if outside.any():
            at = indices[outside.any(axis=1)][0]
            raise InvalidInput(
                f"click {at.tolist()} for '{label}' is outside the volume clicked on (size {list(shape)}): send voxel indices of the series or volume named by 'image'"
            )
        homogeneous = np.c_[indices, np.ones(len(indices))]
        clicks[label] = (homogeneous @ np.asarray(voxel_to_world, dtype=float).T)[:, :3]
    return clicks
