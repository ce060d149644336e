"""Read a label a client uploads (NIfTI label map or 3D Slicer ``.seg.nrrd``) into our label values.

Clients name their segments; their label values follow the order of the segments on screen, which
shifts when an annotator deletes one (an empty necrotic core, say). So values are mapped by segment
name whenever the client says which name each value has: the ``label_info`` list 3D Slicer's MONAI
Label module sends with a NIfTI label map, or the segment metadata inside a ``.seg.nrrd`` (read with
slicerio, which also handles Slicer's cropped extents and overlap layers).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Optional

import nibabel as nib
import numpy as np
import slicerio

from .config import LABELS
from .labels import LabelError, check_label_values
from .studies import Geometry, read_geometry

SEG_NRRD_SUFFIX = ".seg.nrrd"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
GRID_TOLERANCE = 1e-3  # voxels: how far a segmentation's grid may sit from the study's and still be the same grid
IGNORED_SEGMENTS = ("background", "foreground_scribbles", "background_scribbles")


def _key(name: str) -> str:
    return re.sub(r"[\s_-]+", "_", name.strip().lower())


def label_value_of(name: str) -> int:
    """Our value for a segment name ("Enhancing tumour", "enhancing_tumour", ...); LabelError if unknown."""
    value = {_key(k): v for k, v in LABELS.items()}.get(_key(name))
    if value is None:
        allowed = ", ".join(k for k in LABELS if k != "background")
        raise LabelError(f"segment '{name}' is not one of this server's labels ({allowed}); rename it in the Segment Editor")
    return value


def slicer_label_info(params: Dict[str, Any]) -> Optional[List[Dict[str, Any]]]:
    """The ``[{"name", "idx"}, ...]`` list 3D Slicer sends with a label map, if any."""
    info = params.get("label_info")
    if isinstance(info, list) and all(isinstance(i, dict) and "name" in i and "idx" in i for i in info):
        return info
    return None


def remap_by_names(label: np.ndarray, names_by_value: Dict[int, str]) -> np.ndarray:
    """Client values → ours by segment name; values the client did not name must be absent (or 0)."""
    present = {int(v) for v in np.unique(label)} - {0}
    unnamed = sorted(present - set(names_by_value))
    if unnamed:
        raise LabelError(f"label values {unnamed} have no segment name in the label_info sent with them")
    out = np.zeros(label.shape, np.uint8)
    for value, name in names_by_value.items():
        if _key(name) in IGNORED_SEGMENTS:
            continue
        out[label == value] = label_value_of(name)
    return out


def _on_study_grid(voxels: np.ndarray, ijk_to_lps: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Paste a (possibly cropped) segmentation grid into the study's grid; refuse any other grid."""
    seg_to_ras = LPS_TO_RAS @ np.asarray(ijk_to_lps, float)
    study_to_seg = np.linalg.inv(seg_to_ras) @ geometry.affine  # study voxel -> segmentation voxel
    rotation, offset = study_to_seg[:3, :3], study_to_seg[:3, 3]
    if not np.allclose(rotation, np.eye(3), atol=GRID_TOLERANCE) or not np.allclose(offset, np.round(offset), atol=GRID_TOLERANCE):
        raise LabelError("the segmentation is not on the study's voxel grid (different spacing, orientation or a sub-voxel shift); segment on the image the server sent")
    start = -np.round(offset).astype(int)  # where the segmentation's first voxel lies in the study
    out = np.zeros(geometry.shape, voxels.dtype)
    src = tuple(slice(max(0, -s), min(n, g - s)) for s, n, g in zip(start, voxels.shape, geometry.shape))
    dst = tuple(slice(max(0, s), max(0, s) + (sl.stop - sl.start)) for s, sl in zip(start, src))
    outside = voxels.copy()
    outside[src] = 0
    if outside.any():
        raise LabelError("the segmentation has voxels outside the study's image; segment on the image the server sent")
    out[dst] = voxels[src]
    return out


def read_seg_nrrd(path: Path, geometry: Geometry) -> np.ndarray:
    """A Slicer segmentation file → label map in our values on the study's grid."""
    try:
        segmentation = slicerio.read_segmentation(str(path))
    except Exception as e:  # slicerio/pynrrd raise many types for a damaged file
        raise LabelError(f"not a readable 3D Slicer segmentation (.seg.nrrd): {e}") from None
    spatial = segmentation["voxels"].shape[-3:]
    label = np.zeros(spatial, np.uint8)
    for segment in segmentation["segments"]:
        if _key(segment["name"]) in IGNORED_SEGMENTS:
            continue
        value = label_value_of(segment["name"])
        mask = slicerio.segment_mask(segmentation, segment)
        clash = mask & (label != 0) & (label != value)
        if clash.any():
            raise LabelError(
                f"segment '{segment['name']}' overlaps another segment in {int(clash.sum())} voxels, but a voxel is one sub-region only; "
                "in Slicer's Segment Editor set masking to 'overwrite other segments' and save again"
            )
        label[mask] = value
    return _on_study_grid(label, segmentation["ijkToLPS"], geometry)


def read_uploaded_label(path: Path, geometry: Geometry, params: Dict[str, Any]) -> np.ndarray:
    """The uploaded label in our values on the study's grid, or LabelError saying what is wrong."""
    if str(path).endswith(SEG_NRRD_SUFFIX):
        return read_seg_nrrd(path, geometry)
    try:
        uploaded = read_geometry(path)
        label = np.asanyarray(nib.load(str(path)).dataobj)
    except ValueError as e:
        raise LabelError(str(e)) from None
    if not uploaded.matches(geometry):
        raise LabelError(
            f"it is not on the study's grid ({uploaded.difference(geometry)}). "
            "Save the segmentation on the image the server sent (same size and orientation)."
        )
    info = slicer_label_info(params)
    if info is not None:
        label = remap_by_names(np.asarray(label).astype(np.int64), {int(i["idx"]): str(i["name"]) for i in info})
    return check_label_values(label)
