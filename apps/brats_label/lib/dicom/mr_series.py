"""A NIfTI volume as a classic MR Image Storage series, one instance per slice.

No library writes classic (single-frame) MR from a volume: highdicom writes SEG, SR and enhanced
objects, not this. Geometry is taken from the affine: NIfTI is RAS, DICOM patient space is LPS,
and slice k of voxel array ``v[x, y, z]`` is the DICOM frame ``v[:, :, k].T`` (rows run along y).
UIDs are derived from a caller-given seed, so importing the same study twice gives the same UIDs and
the archive holds it once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import List, Optional

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from ..config import MANUFACTURER

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
ORTHOGONALITY_TOLERANCE = 1e-4  # |cos| between slice direction and the image plane accepted as 0
INT16_MAX = np.iinfo(np.int16).max


class GeometryNotRepresentable(ValueError):
    """The affine shears slices out of their plane: classic MR instances cannot describe it."""


def uid_from(*parts: object) -> str:
    """A UID that is the same for the same parts (pydicom hashes them under its root)."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


@dataclass(frozen=True)
class StudyTags:
    """Patient and study attributes shared by every series of one study."""

    patient_id: str
    patient_name: str
    study_instance_uid: str
    study_id: str
    study_date: str  # YYYYMMDD
    study_time: str  # HHMMSS
    accession_number: str = ""
    study_description: str = "Brain MRI (imported by BraTS Label)"


@dataclass(frozen=True)
class PlaneGeometry:
    """DICOM geometry of a volume's slices, in LPS millimetres."""

    row_direction: np.ndarray  # direction of increasing column index
    column_direction: np.ndarray  # direction of increasing row index
    pixel_spacing: tuple  # (between rows, between columns)
    slice_step: np.ndarray  # from one slice's position to the next
    origin: np.ndarray  # position of the first voxel of the first slice

    @classmethod
    def from_ras_affine(cls, affine: np.ndarray) -> PlaneGeometry:
        lps = RAS_TO_LPS @ np.asarray(affine, dtype=float)
        u, v, w = lps[:3, 0], lps[:3, 1], lps[:3, 2]
        normal = np.cross(u, v)
        normal /= np.linalg.norm(normal)
        cosine = abs(float(np.dot(w / np.linalg.norm(w), normal)))
        if abs(cosine - 1.0) > ORTHOGONALITY_TOLERANCE:
            raise GeometryNotRepresentable(f"slices are not perpendicular to their plane (cos {cosine:.5f}); resample the volume to an unsheared grid first")
        return cls(u / np.linalg.norm(u), v / np.linalg.norm(v), (float(np.linalg.norm(v)), float(np.linalg.norm(u))), w, lps[:3, 3])

    def position(self, k: int) -> np.ndarray:
        return self.origin + k * self.slice_step


def _ds(value: float) -> str:
    """A decimal string within DICOM's 16 characters."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text if len(text) <= 16 else f"{value:.8g}"


def _pixel_values(volume: np.ndarray) -> tuple[np.ndarray, float, float]:
    """int16 pixels and the rescale (slope, intercept) that restore the volume's values."""
    if np.issubdtype(volume.dtype, np.integer) and volume.min() >= np.iinfo(np.int16).min and volume.max() <= INT16_MAX:
        return volume.astype(np.int16), 1.0, 0.0
    low, high = float(volume.min()), float(volume.max())
    slope = (high - low) / (2 * INT16_MAX) if high > low else 1.0
    intercept = low + INT16_MAX * slope
    return np.round((volume - intercept) / slope).astype(np.int16), slope, intercept


def volume_to_mr_series(
    volume: np.ndarray,
    affine: np.ndarray,
    study: StudyTags,
    series_description: str,
    series_number: int,
    uid_seed: str,
    frame_of_reference_uid: str,
    contrast_agent: Optional[str] = None,
) -> List[Dataset]:
    """One MR instance per slice of ``volume`` (X, Y, Z) with RAS ``affine``; file meta included."""
    plane = PlaneGeometry.from_ras_affine(affine)
    pixels, slope, intercept = _pixel_values(np.asarray(volume))
    series_uid = uid_from(uid_seed, "series")
    thickness = float(np.linalg.norm(plane.slice_step))
    now = datetime.now()
    instances = []
    for k in range(pixels.shape[2]):
        frame = np.ascontiguousarray(pixels[:, :, k].T)
        ds = Dataset()
        sop_uid = uid_from(uid_seed, "instance", k)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.preamble = b"\x00" * 128  # a Part 10 file: without it the archive stores objects viewers cannot read
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop_uid
        ds.SpecificCharacterSet = "ISO_IR 192"
        # patient and study
        ds.PatientName, ds.PatientID = study.patient_name, study.patient_id
        ds.PatientBirthDate, ds.PatientSex = "", ""
        ds.StudyInstanceUID, ds.StudyID = study.study_instance_uid, study.study_id
        ds.StudyDate, ds.StudyTime = study.study_date, study.study_time
        ds.AccessionNumber, ds.ReferringPhysicianName = study.accession_number, ""
        ds.StudyDescription = study.study_description
        # series and equipment
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "MR", series_uid, series_number
        ds.SeriesDescription = ds.ProtocolName = series_description
        ds.SeriesDate, ds.SeriesTime = study.study_date, study.study_time
        ds.BodyPartExamined = "BRAIN"
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference_uid, ""
        ds.Manufacturer = MANUFACTURER
        # image
        ds.InstanceNumber = k + 1
        ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
        ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]  # converted from NIfTI, so not as acquired
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "RM", "NONE", ""
        ds.MRAcquisitionType = "3D"
        ds.RepetitionTime = ds.EchoTime = ds.EchoTrainLength = None
        ds.SliceThickness = _ds(thickness)
        ds.SpacingBetweenSlices = _ds(thickness)
        ds.ImagePositionPatient = [_ds(c) for c in plane.position(k)]
        ds.ImageOrientationPatient = [_ds(c) for c in (*plane.row_direction, *plane.column_direction)]
        ds.PixelSpacing = [_ds(s) for s in plane.pixel_spacing]
        ds.SliceLocation = _ds(float(np.dot(plane.position(k), np.cross(plane.row_direction, plane.column_direction))))
        ds.PatientPosition = "HFS"
        if contrast_agent:
            ds.ContrastBolusAgent = contrast_agent
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = _ds(slope), _ds(intercept), "US"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = frame.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = frame.tobytes()
        instances.append(ds)
    return instances
