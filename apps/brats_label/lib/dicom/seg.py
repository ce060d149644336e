"""Labels as DICOM SEG and back.

Writing uses highdicom: one segment per label class with SNOMED CT coded terms, referencing the
reference series' instances, so viewers (OHIF, Slicer) overlay it on the right images.

Reading matches segments by their SegmentLabel, then by property type code, never by their position
in the file: MONAI Label 0.8.5 and some viewers renumber segments when one is empty. Frames are
placed by their own ImagePositionPatient on the study's reference grid, so a SEG from any client
that is on that grid decodes, and one that is not is refused with what differs.
"""

from __future__ import annotations

from datetime import datetime
from typing import Dict, List, Optional, Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from ..config import GROUND_TRUTH_CONTENT_LABEL, GROUND_TRUTH_SERIES_DESCRIPTION, MANUFACTURER, SEG_ALGORITHM, SEG_CATEGORY, SEG_CONTENT_LABEL
from ..labels.conventions import value_of_segment_name
from ..labels.label_set import LabelSet, Segment
from .mr_series import RAS_TO_LPS, uid_from

POSITION_TOLERANCE_MM = 0.05
ORIENTATION_TOLERANCE = 1e-3


class SegProblem(ValueError):
    """A SEG that cannot become a label of this study; the message says why."""


def _code(value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value, "SCT", meaning)


def property_type(segment: Segment) -> hd.sr.CodedConcept:
    """What a label is, as its SEG segment and its report's finding say it (the label set's coding scheme, code and
    meaning)."""
    scheme, code, meaning = segment.property_type
    return hd.sr.CodedConcept(code, scheme, meaning)


def segment_descriptions(algorithm_version: str, label_set: LabelSet) -> list:
    """One segment per label of the set, numbered by its value, named as viewers and uploads name it."""
    algorithm = hd.AlgorithmIdentificationSequence(name=SEG_ALGORITHM, version=algorithm_version, family=hd.sr.CodedConcept("123109", "DCM", "Manual Processing"))
    return [
        hd.seg.SegmentDescription(
            segment_number=segment.value,
            segment_label=segment.name,
            segmented_property_category=_code(*SEG_CATEGORY),
            segmented_property_type=property_type(segment),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
            algorithm_identification=algorithm,
        )
        for segment in label_set.segments
    ]


def equipment(software_version: str) -> Dict[str, str]:
    """Who made an object this server writes (SEG, SR): highdicom's equipment arguments, one identity for all."""
    return {"manufacturer": MANUFACTURER, "manufacturer_model_name": SEG_ALGORITHM, "software_versions": software_version, "device_serial_number": "0"}


def source_instances(reference: Sequence[Dataset]) -> List[Dataset]:
    """The instances a series' slices come from, once each, in slice order: the slices themselves, or the multi-frame
    instance whose frames they are (``multiframe.py`` gives each such slice its ``source_instance``)."""
    instances: Dict[str, Dataset] = {}
    for ds in reference:
        instance = getattr(ds, "source_instance", ds)
        instances.setdefault(str(instance.SOPInstanceUID), instance)
    return list(instances.values())


def label_to_seg(
    label: np.ndarray,
    reference: Sequence[Dataset],
    seed: str,
    software_version: str,
    label_set: LabelSet,
    series_description: Optional[str] = None,
    ground_truth: bool = False,
) -> Dataset:
    """SEG of ``label`` (X, Y, Z), on the grid of ``reference`` (its instances in slice order).

    ``ground_truth``: the label shipped with the study (importer), marked so it is not taken for a correction."""
    if label.shape[2] != len(reference):
        raise SegProblem(f"label has {label.shape[2]} slices, the reference series {len(reference)}")
    frames = np.ascontiguousarray(np.transpose(label.astype(np.uint8), (2, 1, 0)))  # (Z, rows=Y, columns=X)
    sources = source_instances(reference)
    if any(hasattr(s, "source_instance") for s in reference):  # frames of multi-frame instances: refer to the instance
        if len(sources) > 1 or any(not hasattr(s, "source_instance") for s in reference):
            raise SegProblem("the reference series is split over several multi-frame instances; a SEG can refer to one (highdicom)")
        frames = frames[np.argsort([s.source_frame for s in reference])]  # in the instance's own frame order
    now = datetime.now()
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(software_version, label_set),
        series_instance_uid=uid_from(seed, "seg-series"),
        series_number=900,
        sop_instance_uid=uid_from(seed, "seg-instance"),
        instance_number=1,
        **equipment(software_version),
        series_description=series_description or (GROUND_TRUTH_SERIES_DESCRIPTION if ground_truth else "BraTS Label segmentation"),
        content_label=GROUND_TRUTH_CONTENT_LABEL if ground_truth else SEG_CONTENT_LABEL,
        content_description=f"Tumour labels saved {now:%Y-%m-%d %H:%M}",
    )
    return seg


def is_shipped_ground_truth(seg: Dataset) -> bool:
    """True for a SEG our importer wrote from a study's own ground truth (also those written before the
    content label existed, which carry only the series description)."""
    if str(seg.get("Manufacturer", "")) != MANUFACTURER:
        return False
    return str(seg.get("ContentLabel", "")) == GROUND_TRUTH_CONTENT_LABEL or str(seg.get("SeriesDescription", "")) == GROUND_TRUTH_SERIES_DESCRIPTION


def segment_values(seg: Dataset, label_set: LabelSet) -> Dict[int, int]:
    """Segment number -> our label value, by SegmentLabel, else by property type code (where only one of the set's
    labels has that code: after treatment, two are neoplasm)."""
    codes = [segment.property_type[1] for segment in label_set.segments]
    by_code = {segment.property_type[1]: segment.value for segment in label_set.segments if codes.count(segment.property_type[1]) == 1}
    mapping = {}
    for segment in seg.SegmentSequence:
        value = value_of_segment_name(str(segment.get("SegmentLabel", "")), label_set)
        if value is None and "SegmentedPropertyTypeCodeSequence" in segment:
            value = by_code.get(str(segment.SegmentedPropertyTypeCodeSequence[0].CodeValue))
        if value is None:
            known = ", ".join(label_set.foreground)
            raise SegProblem(f"segment {segment.SegmentNumber} '{segment.get('SegmentLabel', '')}' is not one of the tumour labels ({known})")
        mapping[int(segment.SegmentNumber)] = value
    return mapping


def seg_to_label(seg: Dataset, affine: np.ndarray, shape: tuple, label_set: LabelSet) -> np.ndarray:
    """Decode a SEG onto a grid given by its RAS ``affine`` and ``shape`` (X, Y, Z); uint8 label values."""
    if str(seg.get("Modality", "")) != "SEG":
        raise SegProblem(f"not a DICOM SEG (Modality {seg.get('Modality', 'missing')})")
    if str(seg.get("SegmentationType", "")) not in ("BINARY", "FRACTIONAL"):
        raise SegProblem(f"SegmentationType {seg.get('SegmentationType')} is not supported")
    values = segment_values(seg, label_set)
    lps = RAS_TO_LPS @ np.asarray(affine, dtype=float)
    steps = np.linalg.norm(lps[:3, :3], axis=0)
    row_dir, col_dir = lps[:3, 0] / steps[0], lps[:3, 1] / steps[1]
    shared = seg.SharedFunctionalGroupsSequence[0]
    try:
        orientation = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
        spacing = np.array(shared.PixelMeasuresSequence[0].PixelSpacing, dtype=float)
    except (AttributeError, IndexError):
        raise SegProblem("SEG lacks shared plane orientation or pixel spacing") from None
    if not np.allclose(orientation, np.r_[row_dir, col_dir], atol=ORIENTATION_TOLERANCE):
        raise SegProblem(f"SEG orientation {np.round(orientation, 4).tolist()} differs from the study's {np.round(np.r_[row_dir, col_dir], 4).tolist()}")
    if (int(seg.Rows), int(seg.Columns)) != (shape[1], shape[0]) or not np.allclose(spacing, [steps[1], steps[0]], atol=1e-3):
        raise SegProblem(f"SEG frames are {seg.Columns}x{seg.Rows} at {spacing.tolist()} mm, the study's slices {shape[0]}x{shape[1]} at {[steps[1], steps[0]]} mm")
    pixels = seg.pixel_array
    if pixels.ndim == 2:
        pixels = pixels[None]
    inverse = np.linalg.inv(lps)
    label = np.zeros(shape, dtype=np.uint8)
    for frame, group in zip(pixels, seg.PerFrameFunctionalGroupsSequence):
        position = np.array(group.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        index = inverse @ np.r_[position, 1.0]
        k = int(round(index[2]))
        if np.abs(index[:2]).max() > POSITION_TOLERANCE_MM / steps[:2].min() or abs(index[2] - k) * steps[2] > POSITION_TOLERANCE_MM or not 0 <= k < shape[2]:
            raise SegProblem(f"a SEG frame at {np.round(position, 2).tolist()} mm is not on a slice of the study's grid")
        number = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        mask = frame.T > (0 if str(seg.SegmentationType) == "BINARY" else int(seg.get("MaximumFractionalValue", 255)) // 2)
        overlap = mask & (label[:, :, k] > 0) & (label[:, :, k] != values[number])
        if overlap.any():
            raise SegProblem(f"segments overlap on slice {k} ({int(overlap.sum())} pixels): a voxel can carry one tumour label only")
        label[:, :, k][mask] = values[number]
    return label


def referenced_series(seg: Dataset) -> Optional[str]:
    """The SeriesInstanceUID the SEG says it was drawn on, if it says."""
    for item in seg.get("ReferencedSeriesSequence", []):
        return str(item.SeriesInstanceUID)
    return None
