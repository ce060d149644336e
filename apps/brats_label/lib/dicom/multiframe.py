"""Multi-frame MR (Enhanced MR, Legacy Converted Enhanced MR) as the slices the rest of the code reads.

A multi-frame instance keeps a whole series (or part of one) in one object: each frame's position in the
per-frame functional groups, orientation, spacing and rescale in the per-frame or shared groups. Here every
frame becomes a slice dataset with the classic single-frame attributes (ImagePositionPatient, ...), so
slice ordering, geometry checks and decoding stay one code path. Each slice remembers its instance and frame
(``source_instance``, ``source_frame``) so a SEG can refer to the frames it was drawn on.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

COPIED = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID", "Modality", "Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation")  # fmt: skip


def is_multiframe(ds: Dataset) -> bool:
    return "PerFrameFunctionalGroupsSequence" in ds or int(ds.get("NumberOfFrames", 1) or 1) > 1


def _group(ds: Dataset, frame: int, keyword: str) -> Optional[Dataset]:
    """A functional group item for one frame: its own, else the shared one."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared = ds.get("SharedFunctionalGroupsSequence")
    for groups in (per_frame[frame] if per_frame and frame < len(per_frame) else None, shared[0] if shared else None):
        if groups is not None and keyword in groups and len(groups.get(keyword)):
            return groups.get(keyword)[0]
    return None


def _frame_slice(ds: Dataset, frame: int) -> Dataset:
    out = Dataset()
    out.file_meta = FileMetaDataset()
    out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for keyword in COPIED:
        if keyword in ds:
            setattr(out, keyword, ds.data_element(keyword).value)
    position = _group(ds, frame, "PlanePositionSequence")
    orientation = _group(ds, frame, "PlaneOrientationSequence")
    measures = _group(ds, frame, "PixelMeasuresSequence")
    rescale = _group(ds, frame, "PixelValueTransformationSequence")
    if position is not None and "ImagePositionPatient" in position:
        out.ImagePositionPatient = position.ImagePositionPatient
    if orientation is not None and "ImageOrientationPatient" in orientation:
        out.ImageOrientationPatient = orientation.ImageOrientationPatient
    if measures is not None:
        for keyword in ("PixelSpacing", "SliceThickness", "SpacingBetweenSlices"):
            if keyword in measures:
                setattr(out, keyword, measures.data_element(keyword).value)
    if rescale is not None:
        out.RescaleSlope, out.RescaleIntercept = rescale.get("RescaleSlope", 1), rescale.get("RescaleIntercept", 0)
    out.InstanceNumber = frame + 1
    out.source_instance, out.source_frame = ds, frame  # python attributes, not DICOM: which object and frame
    return out


def frames_as_slices(datasets: Sequence[Dataset], with_pixels: bool = True) -> List[Dataset]:
    """Single-frame instances as they are; each frame of a multi-frame instance as a slice (its pixels
    decoded once per instance, whatever the transfer syntax, when ``with_pixels``)."""
    slices: List[Dataset] = []
    for ds in datasets:
        if not is_multiframe(ds):
            slices.append(ds)
            continue
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        pixels = np.asarray(ds.pixel_array).reshape(frames, int(ds.Rows), int(ds.Columns)) if with_pixels and "PixelData" in ds else None
        for frame in range(frames):
            item = _frame_slice(ds, frame)
            if pixels is not None:
                values = np.ascontiguousarray(pixels[frame].astype(np.int16 if pixels.dtype.kind == "i" else np.uint16))
                item.BitsAllocated, item.BitsStored, item.HighBit = 16, 16, 15
                item.PixelRepresentation = 1 if values.dtype == np.int16 else 0
                item.PixelData = values.tobytes()
            slices.append(item)
    return slices
