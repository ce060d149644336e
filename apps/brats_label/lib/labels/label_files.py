"""Read a label a client uploads (NIfTI label map, 3D Slicer ``.seg.nrrd`` or DICOM SEG) into our label values.

Clients name their segments; their label values follow the order of the segments on screen, which
shifts when an annotator deletes one (an empty necrotic core, say). So values are mapped by segment
name whenever the client says which name each value has: the ``label_info`` list 3D Slicer's MONAI
Label module sends with a NIfTI label map, or the segment metadata inside a ``.seg.nrrd`` (read with
slicerio, which also handles Slicer's cropped extents and overlap layers). A DICOM SEG (OHIF's, or any
other client's) is decoded by segment label onto the study's grid, as SEGs found in the archive are.

An upload is hostile until its header says otherwise: before any voxel is decoded, the size the header
declares must fit the study's grid (``MAX_LABEL_LAYERS`` values per voxel, a SEG one frame per slice and
segment), NRRD may not point at a detached data file (``data file:`` would read any file on the server),
and compressed data is read no further than the declared size (a few kB of gzip cannot become gigabytes).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional

import nibabel as nib
import nrrd
import numpy as np
import pydicom
import slicerio
from pydicom.errors import InvalidDicomError
from scipy import ndimage

from ..config import MAX_LABEL_LAYERS
from ..dicom.mr_series import RAS_TO_LPS
from ..dicom.seg import SegProblem, seg_to_label
from ..studies.folder_layout import Geometry, read_geometry
from .conventions import LabelError, check_label_values, segment_name_key, value_of_segment_name
from .label_set import LabelSet

SEG_NRRD_SUFFIX = ".seg.nrrd"
NRRD_SUFFIX = ".nrrd"
DICOM_SUFFIX = ".dcm"
LPS_TO_RAS = RAS_TO_LPS  # the same flip of x and y, its own inverse
GRID_TOLERANCE = 1e-3  # voxels: how far a segmentation's grid may sit from the study's and still be the same grid
IGNORED_SEGMENTS = ("background", "foreground_scribbles", "background_scribbles")
DETACHED_DATA_FIELDS = ("data file", "datafile")
NRRD_ENCODINGS = ("raw", "gzip", "gz")
NRRD_BYTES = {"uint8": 1, "int8": 1, "uchar": 1, "signed char": 1, "unsigned char": 1, "short": 2, "ushort": 2, "int16": 2, "uint16": 2, "int": 4, "uint": 4, "int32": 4, "uint32": 4, "float": 4, "double": 8, "int64": 8, "uint64": 8, "longlong": 8, "ulonglong": 8}  # fmt: skip
READ_CHUNK = 1 << 20


def _check_declared_voxels(declared: int, geometry: Geometry, what: str) -> None:
    allowed = math.prod(geometry.shape) * MAX_LABEL_LAYERS
    if declared > allowed:
        raise LabelError(
            f"{what} declares {declared} voxels, more than this study's grid holds ({'x'.join(map(str, geometry.shape))}, "
            f"{MAX_LABEL_LAYERS} values per voxel at most); it was not decoded. Segment on the image the server sent"
        )


def _nrrd_data_offset(path: Path) -> int:
    """Where a NRRD file's data start (after the blank line that ends the header)."""
    with open(path, "rb") as f:
        head = f.read(READ_CHUNK)
    end = head.find(b"\n\n")
    if end < 0:
        raise LabelError("not a NRRD file: no blank line ends its header within 1 MB")
    return end + 2


def _check_compressed_payload(path: Path, offset: int, declared_bytes: int) -> None:
    """Decompress at most one chunk past the declared size: data beyond it means a decompression bomb."""
    decoder = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib
    produced = 0
    with open(path, "rb") as f:
        f.seek(offset)
        while chunk := f.read(READ_CHUNK):
            try:
                produced += len(decoder.decompress(chunk, READ_CHUNK))
                while produced <= declared_bytes and decoder.unconsumed_tail:
                    produced += len(decoder.decompress(decoder.unconsumed_tail, READ_CHUNK))
            except zlib.error as e:
                raise LabelError(f"its gzip data are damaged ({e}); save it again") from None
            if produced > declared_bytes:
                raise LabelError(f"its compressed data hold more than the {declared_bytes} bytes its header declares; it was not decoded")


def check_nrrd_header(path: Path, geometry: Geometry) -> Dict[str, Any]:
    """A NRRD upload's header, refused unless its data are inline and fit the study's grid."""
    try:
        header = nrrd.read_header(str(path))
    except Exception as e:  # pynrrd raises many types for a damaged header
        raise LabelError(f"not a readable NRRD header: {e}") from None
    if any(field in header for field in DETACHED_DATA_FIELDS):
        raise LabelError("NRRD files that point to a separate data file are not accepted; save the segmentation as one file (.nrrd or .seg.nrrd)")
    sizes = [int(n) for n in header.get("sizes", [])]
    if not sizes or min(sizes) < 1:
        raise LabelError(f"NRRD sizes {header.get('sizes')} are not a volume")
    _check_declared_voxels(math.prod(sizes), geometry, "the NRRD header")
    encoding = str(header.get("encoding", "raw")).lower()
    if encoding not in NRRD_ENCODINGS:
        raise LabelError(f"NRRD encoding '{encoding}' is not accepted; save it raw or gzip-compressed (as 3D Slicer and OHIF do)")
    if encoding in ("gzip", "gz"):
        bytes_per_value = NRRD_BYTES.get(str(header.get("type", "")).lower(), 8)
        _check_compressed_payload(path, _nrrd_data_offset(path), math.prod(sizes) * bytes_per_value)
    return header


def check_seg_header(seg: pydicom.Dataset, geometry: Geometry) -> None:
    """A DICOM SEG's frame count and frame size, before its pixel data are decoded."""
    frames, rows, columns = int(seg.get("NumberOfFrames", 1) or 1), int(seg.get("Rows", 0) or 0), int(seg.get("Columns", 0) or 0)
    if frames > max(geometry.shape) * MAX_LABEL_LAYERS:
        raise LabelError(f"the SEG has {frames} frames; a label of this study has at most one per slice and segment ({max(geometry.shape) * MAX_LABEL_LAYERS})")
    if sorted((rows, columns)) not in [
        sorted(pair) for pair in ((geometry.shape[0], geometry.shape[1]), (geometry.shape[0], geometry.shape[2]), (geometry.shape[1], geometry.shape[2]))
    ]:
        raise LabelError(f"the SEG's frames are {columns}x{rows}, which no plane of this study's grid ({'x'.join(map(str, geometry.shape))}) is")


def label_value_of(name: str, label_set: LabelSet) -> int:
    """Our value for a segment name ("Enhancing tumour", "enhancing_tumour", ...); LabelError if unknown."""
    value = value_of_segment_name(name, label_set)
    if value is None:
        allowed = ", ".join(label_set.foreground)
        raise LabelError(f"segment '{name}' is not one of this server's labels ({allowed}); rename it in the Segment Editor")
    return value


def slicer_label_info(params: Dict[str, Any]) -> Optional[List[Dict[str, Any]]]:
    """The ``[{"name", "idx"}, ...]`` list 3D Slicer sends with a label map, if any."""
    info = params.get("label_info")
    if isinstance(info, list) and all(isinstance(i, dict) and "name" in i and "idx" in i for i in info):
        return info
    return None


def remap_by_names(label: np.ndarray, names_by_value: Dict[int, str], label_set: LabelSet) -> np.ndarray:
    """Client values → ours by segment name; values the client did not name must be absent (or 0)."""
    present = {int(v) for v in np.unique(label)} - {0}
    unnamed = sorted(present - set(names_by_value))
    if unnamed:
        raise LabelError(f"label values {unnamed} have no segment name in the label_info sent with them")
    out = np.zeros(label.shape, np.uint8)
    for value, name in names_by_value.items():
        if segment_name_key(name) in IGNORED_SEGMENTS:
            continue
        out[label == value] = label_value_of(name, label_set)
    return out


def _named_values_to_ours(label: np.ndarray, params: Dict[str, Any], label_set: LabelSet) -> np.ndarray:
    """Client values → ours when the client named them (``label_info``); otherwise as they are."""
    info = slicer_label_info(params)
    if info is None:
        return label
    return remap_by_names(np.asarray(label).astype(np.int64), {int(i["idx"]): str(i["name"]) for i in info}, label_set)


def _nrrd_ijk_to_lps(header: Dict[str, Any]) -> np.ndarray:
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = np.asarray(header["space directions"], float).T
    ijk_to_lps[:3, 3] = np.asarray(header["space origin"], float)
    return ijk_to_lps


def _on_study_grid(voxels: np.ndarray, ijk_to_lps: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Paste a (possibly cropped) segmentation grid into the study's grid. Its axes may be the study's in
    another order or direction (a viewer's volume sorts slices its own way); any other grid is refused."""
    seg_to_ras = LPS_TO_RAS @ np.asarray(ijk_to_lps, float)
    seg_to_study = np.linalg.inv(geometry.affine) @ seg_to_ras  # segmentation voxel -> study voxel
    axes, offset = seg_to_study[:3, :3], seg_to_study[:3, 3]
    signed_permutation = np.round(axes)
    if (
        not np.allclose(axes, signed_permutation, atol=GRID_TOLERANCE)
        or not (np.abs(signed_permutation).sum(axis=0) == 1).all()
        or not (np.abs(signed_permutation).sum(axis=1) == 1).all()
        or not np.allclose(offset, np.round(offset), atol=GRID_TOLERANCE)
    ):
        raise LabelError("the segmentation is not on the study's voxel grid (different spacing, orientation or a sub-voxel shift); segment on the image the server sent")
    source_axis = [int(np.flatnonzero(row)[0]) for row in signed_permutation]  # segmentation axis along each study axis
    voxels = voxels.transpose(source_axis)
    start = np.round(offset).astype(int)  # where the segmentation's first voxel lies in the study
    for axis, column in enumerate(source_axis):
        if signed_permutation[axis, column] < 0:
            voxels = np.flip(voxels, axis)
            start[axis] -= voxels.shape[axis] - 1
    out = np.zeros(geometry.shape, voxels.dtype)
    src = tuple(slice(max(0, -s), min(n, g - s)) for s, n, g in zip(start, voxels.shape, geometry.shape))
    dst = tuple(slice(max(0, s), max(0, s) + (sl.stop - sl.start)) for s, sl in zip(start, src))
    outside = np.array(voxels)
    outside[src] = 0
    if outside.any():
        raise LabelError("the segmentation has voxels outside the study's image; segment on the image the server sent")
    out[dst] = voxels[src]
    return out


@dataclass(frozen=True)
class SeriesGrid:
    """Another series of the study, as a viewer shows it (``scanner``: its grid as stored, RAS) and where its anatomy
    lies in the study's space (``to_study``: 4x4 RAS, identity unless the series was registered to the T1c)."""

    scanner: Geometry
    to_study: np.ndarray


def _from_series_grid(voxels: np.ndarray, ijk_to_lps: np.ndarray, geometry: Geometry, series: Iterable[SeriesGrid]) -> Optional[np.ndarray]:
    """A label drawn on one of the study's other series (OHIF segments the series on screen, any of the four),
    resampled onto the study's grid by nearest neighbour through that series' placement; None if it is on none."""
    drawn = LPS_TO_RAS @ np.asarray(ijk_to_lps, float)
    for grid in series:
        if tuple(voxels.shape) == tuple(grid.scanner.shape) and np.allclose(drawn, grid.scanner.affine, atol=GRID_TOLERANCE):
            study_to_drawn = np.linalg.inv(np.asarray(grid.to_study, float) @ drawn) @ np.asarray(geometry.affine, float)
            out = ndimage.affine_transform(voxels, study_to_drawn[:3, :3], study_to_drawn[:3, 3], output_shape=geometry.shape, order=0, mode="constant", cval=0)
            return out.astype(voxels.dtype)
    return None


def read_nrrd_label(path: Path, geometry: Geometry, params: Dict[str, Any], label_set: LabelSet, series: Callable[[], Iterable[SeriesGrid]] = tuple) -> np.ndarray:
    """A plain NRRD label map (OHIF's Submit label sends its labelmap so), values named by ``label_info``; on the
    study's grid or on the grid of one of ``series()`` (asked only then; resampled onto the study's)."""
    check_nrrd_header(path, geometry)
    try:
        data, header = nrrd.read(str(path), index_order="F")
        ijk_to_lps = _nrrd_ijk_to_lps(header)
    except Exception as e:  # pynrrd raises many types for a damaged file or header
        raise LabelError(f"not a readable NRRD label map with space directions and origin: {e}") from None
    if header.get("space") not in ("left-posterior-superior", "LPS"):
        raise LabelError(f"NRRD space '{header.get('space')}' is not supported; write it in left-posterior-superior")
    # values checked before the uint8 grid (a stray 258 is refused, not wrapped to 2)
    values = check_label_values(_named_values_to_ours(data, params, label_set), label_set)
    try:
        return _on_study_grid(values, ijk_to_lps, geometry)
    except LabelError:
        resampled = _from_series_grid(values, ijk_to_lps, geometry, series())
        if resampled is None:
            raise
        return resampled


def read_seg_nrrd(path: Path, geometry: Geometry, label_set: LabelSet) -> np.ndarray:
    """A Slicer segmentation file → label map in our values on the study's grid."""
    check_nrrd_header(path, geometry)
    try:
        segmentation = slicerio.read_segmentation(str(path))
    except Exception as e:  # slicerio/pynrrd raise many types for a damaged file
        raise LabelError(f"not a readable 3D Slicer segmentation (.seg.nrrd): {e}") from None
    spatial = segmentation["voxels"].shape[-3:]
    label = np.zeros(spatial, np.uint8)
    for segment in segmentation["segments"]:
        if segment_name_key(segment["name"]) in IGNORED_SEGMENTS:
            continue
        value = label_value_of(segment["name"], label_set)
        mask = slicerio.segment_mask(segmentation, segment)
        clash = mask & (label != 0) & (label != value)
        if clash.any():
            raise LabelError(
                f"segment '{segment['name']}' overlaps another segment in {int(clash.sum())} voxels, but a voxel is one sub-region only; "
                "in Slicer's Segment Editor set masking to 'overwrite other segments' and save again"
            )
        label[mask] = value
    return _on_study_grid(label, segmentation["ijkToLPS"], geometry)


def _is_dicom(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(132)[128:] == b"DICM"  # the Part 10 preamble


def read_dicom_seg(path: Path, geometry: Geometry, label_set: LabelSet) -> np.ndarray:
    """A DICOM SEG file → label map in our values on the study's grid."""
    try:
        seg = pydicom.dcmread(str(path))
        check_seg_header(seg, geometry)
        return check_label_values(seg_to_label(seg, geometry.affine, geometry.shape, label_set), label_set)
    except InvalidDicomError as e:
        raise LabelError(f"not a readable DICOM file: {e}") from None
    except (SegProblem, AttributeError, KeyError, IndexError) as e:
        raise LabelError(f"the DICOM SEG cannot be a label of this study: {e}") from None


def read_uploaded_label(path: Path, geometry: Geometry, params: Dict[str, Any], label_set: LabelSet, series: Callable[[], Iterable[SeriesGrid]] = tuple) -> np.ndarray:
    """The uploaded label in our values on the study's grid, or LabelError saying what is wrong. ``series``: the
    study's other series a viewer may have drawn on (a NRRD on one of their grids is resampled onto the study's)."""
    if str(path).endswith(SEG_NRRD_SUFFIX):
        return read_seg_nrrd(path, geometry, label_set)
    if str(path).endswith(DICOM_SUFFIX) or _is_dicom(path):
        return read_dicom_seg(path, geometry, label_set)
    if str(path).endswith(NRRD_SUFFIX):
        return read_nrrd_label(path, geometry, params, label_set, series)
    try:
        uploaded = read_geometry(path)  # the header only: the grid is checked before any voxel is decoded
    except ValueError as e:
        raise LabelError(str(e)) from None
    if not uploaded.matches(geometry):
        raise LabelError(f"it is not on the study's grid ({uploaded.difference(geometry)}). Save the segmentation on the image the server sent (same size and orientation).")
    try:
        label = np.asanyarray(nib.load(str(path)).dataobj)  # nibabel reads no more than the declared voxels
    except (ValueError, OSError, EOFError, zlib.error) as e:
        raise LabelError(f"its voxel data cannot be read ({type(e).__name__}); save it again") from None
    return check_label_values(_named_values_to_ours(label, params, label_set), label_set)


def write_nrrd_label(label: np.ndarray, affine: np.ndarray, path: Path, compress: bool = False) -> None:
    """A label map (X, Y, Z; RAS ``affine``) as NRRD in LPS, x fastest: the layout OHIF's MONAI Label panel
    copies straight into its labelmap volume (it reads the buffer, not the header's geometry)."""
    lps = RAS_TO_LPS @ np.asarray(affine, float)
    header = {
        "space": "left-posterior-superior",
        "space directions": lps[:3, :3].T,
        "space origin": lps[:3, 3],
        "kinds": ["domain", "domain", "domain"],
        "encoding": "gzip" if compress else "raw",
    }
    nrrd.write(str(path), np.asarray(label, np.uint8), header, index_order="F")


def read_label_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A label map the server wrote (NIfTI or NRRD) and its RAS affine."""
    if str(path).endswith(NRRD_SUFFIX) and not str(path).endswith(SEG_NRRD_SUFFIX):
        data, header = nrrd.read(str(path), index_order="F")
        return data, LPS_TO_RAS @ _nrrd_ijk_to_lps(header)
    image = nib.load(str(path))
    return np.asanyarray(image.dataobj), image.affine
