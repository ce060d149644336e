"""A classic single-frame DICOM series as one volume, checked the way a radiologist's viewer would.

The slices must share one orientation, sit one per position along the slice normal, and be evenly
spaced: a missing slice would silently stretch the anatomy and a duplicate would double it, so both
are refused with the position where it happens. The result is RAS (NIfTI's convention) with
``volume[x, y, z]``, x along the DICOM row direction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ..config import SLICE_SPACING_TOLERANCE
from .mr_series import RAS_TO_LPS

ORIENTATION_TOLERANCE = 1e-4
POSITION_TOLERANCE_MM = 1e-3


class SeriesProblem(ValueError):
    """The series cannot be read as one volume; the message says why and where."""


@dataclass(frozen=True)
class SliceStack:
    """Geometry of a series, from its metadata alone (no pixels needed)."""

    order: List[int]  # indices into the given datasets, sorted along the slice normal
    affine: np.ndarray  # RAS
    shape: tuple  # (X, Y, Z)


def _floats(ds: Dataset, keyword: str, count: int, where: str) -> np.ndarray:
    value = ds.get(keyword)
    if value is None or len(value) != count:
        raise SeriesProblem(f"{where}: {keyword} is missing or malformed")
    return np.array([float(v) for v in value])


def slice_stack(datasets: Sequence[Dataset], series: str = "series") -> SliceStack:
    """Sort and check the slices of one series; raise SeriesProblem if they are not one even volume."""
    if not datasets:
        raise SeriesProblem(f"{series}: no instances")
    first = datasets[0]
    orientation = _floats(first, "ImageOrientationPatient", 6, series)
    spacing = _floats(first, "PixelSpacing", 2, series)
    rows, columns = int(first.Rows), int(first.Columns)
    for ds in datasets:
        where = f"{series}, instance {ds.get('InstanceNumber', '?')}"
        if getattr(ds, "NumberOfFrames", 1) not in (None, "", 1, "1"):
            raise SeriesProblem(f"{where}: multi-frame instances are not supported; send single-frame MR")
        if not np.allclose(_floats(ds, "ImageOrientationPatient", 6, where), orientation, atol=ORIENTATION_TOLERANCE):
            raise SeriesProblem(f"{where}: orientation differs from the first slice (mixed stacks in one series)")
        if (int(ds.Rows), int(ds.Columns)) != (rows, columns) or not np.allclose(_floats(ds, "PixelSpacing", 2, where), spacing):
            raise SeriesProblem(f"{where}: image size or pixel spacing differs from the first slice")
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    positions = np.array([_floats(ds, "ImagePositionPatient", 3, f"{series}, instance {ds.get('InstanceNumber', '?')}") for ds in datasets])
    distance = positions @ normal
    order = list(np.argsort(distance, kind="stable"))
    distance = distance[order]
    gaps = np.diff(distance)
    if len(gaps) and (gaps < POSITION_TOLERANCE_MM).any():
        at = float(distance[1:][gaps < POSITION_TOLERANCE_MM][0])
        raise SeriesProblem(f"{series}: more than one slice at position {at:.2f} mm along the slice normal (duplicated slice)")
    if len(gaps) > 1:
        step = float(np.median(gaps))
        uneven = np.abs(gaps - step) > SLICE_SPACING_TOLERANCE * step
        if uneven.any():
            at = float(distance[:-1][uneven][0])
            raise SeriesProblem(
                f"{series}: slices are not evenly spaced (gap of {gaps[uneven][0]:.2f} mm after {at:.2f} mm, expected {step:.2f}): a slice is missing or the series mixes stacks"
            )
    sorted_positions = positions[order]
    if len(datasets) > 1:
        slice_step = (sorted_positions[-1] - sorted_positions[0]) / (len(datasets) - 1)
    else:
        thickness = float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0)
        slice_step = normal * thickness
    lps = np.eye(4)
    lps[:3, 0] = row_dir * spacing[1]
    lps[:3, 1] = col_dir * spacing[0]
    lps[:3, 2] = slice_step
    lps[:3, 3] = sorted_positions[0]
    return SliceStack(order, RAS_TO_LPS @ lps, (columns, rows, len(datasets)))


UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def _pixels(ds: Dataset, rows: int, columns: int, where: str) -> np.ndarray:
    """(rows, columns) stored values; uncompressed 16-bit frames are read straight from the buffer."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        if syntax in UNCOMPRESSED and int(ds.BitsAllocated) == 16 and int(ds.get("SamplesPerPixel", 1)) == 1:
            dtype = np.int16 if int(ds.PixelRepresentation) == 1 else np.uint16
            data = ds.PixelData
            if len(data) < rows * columns * 2:
                raise ValueError(f"{len(data)} bytes of pixel data for {rows}x{columns} 16-bit pixels")
            return np.frombuffer(data, dtype=dtype, count=rows * columns).reshape(rows, columns)
        pixels = ds.pixel_array
    except Exception as e:
        raise SeriesProblem(f"{where}: pixel data cannot be decoded ({e})") from None
    if pixels.shape != (rows, columns):
        raise SeriesProblem(f"{where}: pixel data cannot be decoded (shape {pixels.shape}, expected {rows}x{columns})")
    return pixels


def series_volume(datasets: Sequence[Dataset], series: str = "series") -> tuple[np.ndarray, np.ndarray]:
    """(volume (X, Y, Z), RAS affine) of one checked series, Fortran-ordered as NIfTI stores it.

    Stored values are kept (int16/uint16) when no instance rescales; otherwise float32 after rescale.
    """
    stack = slice_stack(datasets, series)
    rescales = [(float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)) for ds in datasets]
    rows, columns = stack.shape[1], stack.shape[0]
    frames = [_pixels(datasets[i], rows, columns, f"{series}, instance {datasets[i].get('InstanceNumber', '?')}") for i in stack.order]
    identity = all(r == (1.0, 0.0) for r in rescales)
    dtype = frames[0].dtype if identity and all(f.dtype == frames[0].dtype for f in frames) else np.float32
    volume = np.empty(stack.shape, dtype=dtype, order="F")
    for z, (index, pixels) in enumerate(zip(stack.order, frames)):
        slope, intercept = rescales[index]
        volume[:, :, z] = pixels.T if identity else pixels.T * slope + intercept
    return volume, stack.affine
