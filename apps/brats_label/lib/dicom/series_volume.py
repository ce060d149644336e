"""A classic single-frame DICOM series as one volume, checked the way a radiologist's viewer would.

The slices must share one orientation, sit one per position along the slice normal, and be evenly
spaced: a missing slice would silently stretch the anatomy and a duplicate would double it, so both
are refused with the position where it happens. The result is RAS (NIfTI's convention) with
``volume[x, y, z]``, x along the DICOM row direction.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ..config import SLICE_SPACING_TOLERANCE
from .mr_series import RAS_TO_LPS

ORIENTATION_TOLERANCE = 1e-4
POSITION_TOLERANCE_MM = 1e-3
# What every slice of a volume shares: a slice whose stored bytes of these equal the first slice's passes its checks.
SHARED_GEOMETRY = tuple(Tag(k) for k in ("ImageOrientationPatient", "PixelSpacing", "Rows", "Columns", "NumberOfFrames"))
SHARED_PIXEL_FORMAT = tuple(Tag(k) for k in ("BitsAllocated", "SamplesPerPixel", "PixelRepresentation"))
RESCALE = tuple(Tag(k) for k in ("RescaleSlope", "RescaleIntercept"))
IMAGE_POSITION, PIXEL_DATA = Tag("ImagePositionPatient"), Tag("PixelData")
ABSENT = ("absent",)


class SeriesProblem(ValueError):
    """The series cannot be read as one volume; the message says why and where."""


@dataclass(frozen=True)
class SliceStack:
    """Geometry of a series, from its metadata alone (no pixels needed)."""

    order: List[int]  # indices into the given datasets, sorted along the slice normal
    affine: np.ndarray  # RAS
    shape: tuple  # (X, Y, Z)


def _stored(ds: Optional[Dataset], tags: Sequence[BaseTag]) -> Optional[tuple]:
    """The elements as read from the file (value bytes and byte order; ABSENT where missing), or None where pydicom has
    converted one already (a dataset built in memory). pydicom converts a value on first access: for the 155 slices of
    a series, reading each slice's attributes that way was most of the time to build its volume."""
    if ds is None:
        return None
    stored: List[Any] = []
    for tag in tags:
        try:
            element = ds.get_item(tag)
        except KeyError:
            stored.append(ABSENT)
            continue
        if element is None:
            stored.append(ABSENT)
        elif isinstance(element, RawDataElement):
            stored.append((element.value, element.is_little_endian))
        else:
            return None
    return tuple(stored)


def _where(series: str, ds: Dataset) -> str:
    return f"{series}, instance {ds.get('InstanceNumber', '?')}"


def _floats(ds: Dataset, keyword: str, count: int, where: str) -> np.ndarray:
    value = ds.get(keyword)
    if value is None or len(value) != count:
        raise SeriesProblem(f"{where}: {keyword} is missing or malformed")
    return np.array([float(v) for v in value])


def _position(ds: Dataset, series: str) -> np.ndarray:
    """ImagePositionPatient, parsed from its stored decimal strings where it has not been converted yet."""
    stored = _stored(ds, (IMAGE_POSITION,))
    if stored is not None and stored[0] is not ABSENT and stored[0][0]:
        try:
            values = [float(v) for v in stored[0][0].split(b"\\")]
            if len(values) == 3:
                return np.array(values)
        except ValueError:
            pass  # malformed: pydicom's reading below says how
    return _floats(ds, "ImagePositionPatient", 3, _where(series, ds))


def slice_stack(datasets: Sequence[Dataset], series: str = "series") -> SliceStack:
    """Sort and check the slices of one series; raise SeriesProblem if they are not one even volume."""
    if not datasets:
        raise SeriesProblem(f"{series}: no instances")
    first = datasets[0]
    shared = _stored(first, SHARED_GEOMETRY)  # before reading the first slice's values converts them
    orientation = _floats(first, "ImageOrientationPatient", 6, series)
    spacing = _floats(first, "PixelSpacing", 2, series)
    rows, columns = int(first.Rows), int(first.Columns)
    for i, ds in enumerate(datasets):
        if i and shared is not None and _stored(ds, SHARED_GEOMETRY) == shared:
            continue  # stored exactly as the first slice's, which passed
        where = _where(series, ds)
        if getattr(ds, "NumberOfFrames", 1) not in (None, "", 1, "1"):
            raise SeriesProblem(f"{where}: multi-frame instances are not supported; send single-frame MR")
        if not np.allclose(_floats(ds, "ImageOrientationPatient", 6, where), orientation, atol=ORIENTATION_TOLERANCE):
            raise SeriesProblem(f"{where}: orientation differs from the first slice (mixed stacks in one series)")
        if (int(ds.Rows), int(ds.Columns)) != (rows, columns) or not np.allclose(_floats(ds, "PixelSpacing", 2, where), spacing):
            raise SeriesProblem(f"{where}: image size or pixel spacing differs from the first slice")
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    positions = np.array([_position(ds, series) for ds in datasets])
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


def _pixel_format(ds: Dataset) -> Optional[tuple]:
    """How a slice stores its pixels, as stored (see ``_stored``), with its transfer syntax; None when converted."""
    stored = _stored(ds, SHARED_PIXEL_FORMAT)
    return None if stored is None else (*stored, str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "")))


def _is_plain_16_bit(ds: Dataset) -> bool:
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return syntax in UNCOMPRESSED and int(ds.get("BitsAllocated", 0)) == 16 and int(ds.get("SamplesPerPixel", 1)) == 1


def _frame_from_buffer(data: bytes, signed: bool, rows: int, columns: int) -> np.ndarray:
    if len(data) < rows * columns * 2:
        raise ValueError(f"{len(data)} bytes of pixel data for {rows}x{columns} 16-bit pixels")
    return np.frombuffer(data, dtype=np.int16 if signed else np.uint16, count=rows * columns).reshape(rows, columns)


def _pixels(ds: Dataset, rows: int, columns: int, where: Callable[[], str]) -> np.ndarray:
    """(rows, columns) stored values; uncompressed 16-bit frames are read straight from the buffer."""
    try:
        if _is_plain_16_bit(ds):
            return _frame_from_buffer(ds.PixelData, int(ds.PixelRepresentation) == 1, rows, columns)
        pixels = ds.pixel_array
    except Exception as e:
        raise SeriesProblem(f"{where()}: pixel data cannot be decoded ({e})") from None
    if pixels.shape != (rows, columns):
        raise SeriesProblem(f"{where()}: pixel data cannot be decoded (shape {pixels.shape}, expected {rows}x{columns})")
    return pixels


def _frames(datasets: Sequence[Dataset], order: Sequence[int], rows: int, columns: int, series: str) -> List[np.ndarray]:
    """Each slice's pixels, in ``order``. A slice stored in the first one's plain 16-bit format is read from its
    stored bytes without pydicom converting its attributes one by one."""
    first = datasets[order[0]]
    stored_format = _pixel_format(first)  # before reading the first slice's values converts them
    plain = stored_format if _is_plain_16_bit(first) else None
    signed = int(first.get("PixelRepresentation", 0)) == 1
    frames = []
    for i in order:
        ds = datasets[i]
        if plain is not None and _pixel_format(ds) == plain:
            data = _stored(ds, (PIXEL_DATA,))
            if data is not None and data[0] is not ABSENT and isinstance(data[0][0], bytes):  # not deferred
                try:
                    frames.append(_frame_from_buffer(data[0][0], signed, rows, columns))
                    continue
                except ValueError:
                    pass  # too short: said below, with where
        frames.append(_pixels(ds, rows, columns, functools.partial(_where, series, ds)))
    return frames


def _rescales(datasets: Sequence[Dataset]) -> List[Tuple[float, float]]:
    """Each slice's (slope, intercept); slices that store the first one's bytes share its values."""

    def converted(ds: Dataset) -> Tuple[float, float]:
        return float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)

    first_stored, first = _stored(datasets[0], RESCALE), converted(datasets[0])
    return [first if i and first_stored is not None and _stored(ds, RESCALE) == first_stored else converted(ds) for i, ds in enumerate(datasets)]


def series_volume(datasets: Sequence[Dataset], series: str = "series") -> tuple[np.ndarray, np.ndarray]:
    """(volume (X, Y, Z), RAS affine) of one checked series, Fortran-ordered as NIfTI stores it.

    Stored values are kept (int16/uint16) when no instance rescales; otherwise float32 after rescale.
    """
    stack = slice_stack(datasets, series)
    rescales = _rescales(datasets)
    rows, columns = stack.shape[1], stack.shape[0]
    frames = _frames(datasets, stack.order, rows, columns, series)
    identity = all(r == (1.0, 0.0) for r in rescales)
    dtype = frames[0].dtype if identity and all(f.dtype == frames[0].dtype for f in frames) else np.float32
    volume = np.empty(stack.shape, dtype=dtype, order="F")
    for z, (index, pixels) in enumerate(zip(stack.order, frames)):
        slope, intercept = rescales[index]
        volume[:, :, z] = pixels.T if identity else pixels.T * slope + intercept
    return volume, stack.affine
