"""A series read from its files (what the archive sends) gives the same volume, and the same refusals, as the same
series built in memory: the shortcut that reads slices' stored bytes must never change an answer."""

from __future__ import annotations

import io
import random
from typing import List

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from lib.dicom.mr_series import StudyTags, uid_from, volume_to_mr_series
from lib.dicom.series_volume import SeriesProblem, series_volume

SHAPE = (24, 20, 12)


def _series(volume: np.ndarray) -> List[Dataset]:
    affine = np.diag([1.2, 1.2, 2.5, 1.0])
    affine[:3, 3] = (-14.0, -12.0, -15.0)
    study = StudyTags("SV-1", "Volume^Series", uid_from("series-volume"), "1", "20260101", "120000")
    return volume_to_mr_series(volume, affine, study, "AX T1", 3, "series-volume-t1", uid_from("series-volume", "frame"))


def _as_sent(datasets: List[Dataset]) -> List[Dataset]:
    """Each instance written as a Part 10 file and read back, its attributes still as stored (as from the archive)."""
    read = []
    for ds in datasets:
        buffer = io.BytesIO()
        ds.save_as(buffer, write_like_original=False)
        read.append(pydicom.dcmread(io.BytesIO(buffer.getvalue()), force=True))
    return read


@pytest.fixture()
def volume() -> np.ndarray:
    return np.random.default_rng(5).integers(0, 3000, size=SHAPE).astype(np.int16)


def test_a_series_read_from_files_in_any_order_is_the_same_volume(volume):
    built = _series(volume)
    sent = _as_sent(built)
    random.Random(1).shuffle(sent)
    from_files, affine = series_volume(sent)
    in_memory, expected_affine = series_volume(built)
    assert np.array_equal(from_files, in_memory) and np.array_equal(from_files, volume)
    assert np.allclose(affine, expected_affine)


def test_a_slice_that_rescales_differently_is_rescaled_by_its_own_values(volume):
    built = _series(volume)
    built[4].RescaleSlope, built[4].RescaleIntercept = "2", "-10"
    from_files, _ = series_volume(_as_sent(built))
    assert from_files.dtype == np.float32
    assert np.array_equal(from_files[:, :, 4], volume[:, :, 4] * 2.0 - 10)
    assert np.array_equal(from_files[:, :, 5], volume[:, :, 5])


def test_a_slice_stored_unsigned_is_read_as_unsigned(volume):
    built = _series(volume)
    frame = np.ascontiguousarray(volume[:, :, 7].T).astype(np.uint16)
    frame[0, 0] = 40000  # only representable unsigned
    built[7].PixelRepresentation, built[7].PixelData = 0, frame.tobytes()
    from_files, _ = series_volume(_as_sent(built))
    assert from_files[0, 0, 7] == 40000 and from_files.dtype == np.float32


def test_a_slice_written_with_other_digits_for_the_same_orientation_is_accepted(volume):
    built = _series(volume)
    built[3].ImageOrientationPatient = [f"{float(v):.6f}" for v in built[3].ImageOrientationPatient]
    from_files, _ = series_volume(_as_sent(built))
    assert np.array_equal(from_files, volume)


@pytest.mark.parametrize(
    "spoil,message",
    [
        (lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0.9, 0.1]), "orientation differs from the first slice"),
        (lambda ds: setattr(ds, "PixelSpacing", [1.0, 1.0]), "pixel spacing differs"),
        (lambda ds: setattr(ds, "PixelData", ds.PixelData[:100]), "pixel data cannot be decoded"),
        (lambda ds: setattr(ds, "ImagePositionPatient", ["1", "2"]), "ImagePositionPatient is missing or malformed"),
    ],
    ids=["orientation", "spacing", "truncated-pixels", "position"],
)
def test_a_spoilt_slice_is_refused_with_where_as_when_built_in_memory(volume, spoil, message):
    built = _series(volume)
    spoil(built[6])
    number = built[6].InstanceNumber
    with pytest.raises(SeriesProblem, match=message) as from_files:
        series_volume(_as_sent(built), "t1 series 'AX T1'")
    assert f"instance {number}" in str(from_files.value)
    with pytest.raises(SeriesProblem, match=message):
        series_volume(built, "t1 series 'AX T1'")
