"""Tumour volumes as a DICOM Structured Report (TID 1500 Measurement Report) beside the label's SEG.

A PACS, a viewer or a later timeline reads the volumes from the archive without decoding the SEG. The
report is a Comprehensive 3D SR written with highdicom, one measurement group per reported region, each
with a Volume (SCT 118565006) in millilitres (UCUM ml) and a tracking identifier that names the region
the BraTS way (``"ET: enhancing tumour"``); ``volumes_from_report`` reads them back by that name.

- The labels (NCR necrotic core, ED edema, ET enhancing tumour; after treatment NETC, SNFH, ET and RC, the
  resection cavity) are segments of the SEG: each is a TID 1411 Volumetric ROI group whose ROI is its Referenced
  Segment (the SEG, its segment number, and the source series the SEG was drawn on).
- TC (labels 1+3) and WT (1+2+3) are unions of segments, and TID 1411 takes exactly one Referenced
  Segment per group (highdicom enforces it). They are TID 1501 Measurement groups instead (no single ROI),
  whose "Source" IMAGE item references the SEG with the segment numbers they are made of: an IMAGE
  reference may name several segments (Referenced Segment Number is 1-n in the Image Reference Macro).
  TID 1501 is extensible and has no ROI, so this conforms; a reader that knows only TID 1411 still finds
  the labels' groups.

Segments are found by label (``seg.segment_values``), not by position, as a SEG edited in a viewer may be
renumbered. The SR copies the patient and study modules from the SEG (evidence), which is normal DICOM;
it adds no identifier of its own. UIDs derive from the caller's seed, like ``label_to_seg``'s.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Sequence, Tuple

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from ..config import MANUFACTURER, SEG_ALGORITHM, SEG_CATEGORY
from ..labels.label_set import LabelSet
from .mr_series import uid_from
from .seg import SegProblem, equipment, property_type, segment_values, source_instances

SERIES_NUMBER = 901
SERIES_DESCRIPTION = "Tumour volumes (BraTS Label)"
VOLUME = hd.sr.CodedConcept("118565006", "SCT", "Volume")
MILLILITRE = hd.sr.CodedConcept("ml", "UCUM", "milliliter")
COMPOSITE_FINDINGS: Dict[str, Tuple[str, str]] = {"TC": ("108369006", "Neoplasm"), "WT": ("52988006", "Lesion")}
# Volumes that RegionVolumesd rounds to 0.001 mL may differ from ET given separately by that much.
VOLUME_TOLERANCE_ML = 1e-3
_UNIT_TO_ML = {"ml": 1.0, "cm3": 1.0, "mm3": 1e-3, "l": 1e3}
IMAGING_MEASUREMENTS = ("126010", "DCM")
MEASUREMENT_GROUP = ("125007", "DCM")
TRACKING_IDENTIFIER = ("112039", "DCM")


def _sct(value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value, "SCT", meaning)


def reported(label_set: LabelSet) -> Dict[str, Tuple[str, str]]:
    """volumes_ml key (as RegionVolumesd names them) -> (BraTS abbreviation, what it is): the tracking identifier
    "ABBR: name". Each label, then each region uniting several (a one-label region such as ET is its label's group)."""
    labels = {segment.name: (segment.abbreviation, segment.title) for segment in label_set.segments}
    return {**labels, **{region.name: (region.name, region.title) for region in label_set.composite_regions}}


def _tracking(seed: str, key: str, names: Mapping[str, Tuple[str, str]]) -> hd.sr.TrackingIdentifier:
    abbreviation, name = names[key]
    return hd.sr.TrackingIdentifier(uid=uid_from(seed, "sr-tracking", key), identifier=f"{abbreviation}: {name}")


def _checked_volumes(volumes_ml: Mapping[str, float], label_set: LabelSet) -> Dict[str, float]:
    """The volumes to report, refusing a mapping that misses one or disagrees with itself about a one-label region."""
    keys = reported(label_set)
    missing = [key for key in keys if key not in volumes_ml]
    if missing:
        raise ValueError(f"volumes_ml lacks {', '.join(missing)} (expected the keys of RegionVolumesd: {', '.join(keys)})")
    volumes = {key: float(volumes_ml[key]) for key in keys}
    if any(v < 0 for v in volumes.values()):
        raise ValueError("volumes cannot be negative")
    for region in label_set.regions:
        if len(region.values) == 1 and region.name in volumes_ml:
            label = label_set.segment(region.values[0]).name
            if abs(float(volumes_ml[region.name]) - volumes[label]) > VOLUME_TOLERANCE_ML:
                raise ValueError(f"volumes_ml gives {region.name} {volumes_ml[region.name]} mL but {label} {volumes[label]} mL; they are one region")
    return volumes


def measurement_report(
    seg: Dataset, source_series: Sequence[Dataset], volumes_ml: Mapping[str, float], seed: str, software_version: str, label_set: LabelSet
) -> hd.sr.Comprehensive3DSR:
    """Measurement Report of the tumour volumes of the label saved as ``seg``, drawn on ``source_series``.

    ``volumes_ml`` as RegionVolumesd gives them (labels by name, TC, WT); ``seed`` makes the UIDs, so the same
    label reported twice is one object in the archive."""
    volumes = _checked_volumes(volumes_ml, label_set)
    if not source_series:
        raise ValueError("no source series: the report refers to the images the label was drawn on")
    series_uids = {str(ds.SeriesInstanceUID) for ds in source_series}
    if len(series_uids) != 1:
        raise ValueError(f"the source series must be one series, got {len(series_uids)}")
    source_uid = series_uids.pop()
    if {str(ds.StudyInstanceUID) for ds in source_series} != {str(seg.StudyInstanceUID)}:
        raise ValueError("the SEG and its source series belong to different studies")
    numbers = {value: number for number, value in segment_values(seg, label_set).items()}
    site = [hd.sr.FindingSite(codes.SCT.Brain)]
    category = _sct(*SEG_CATEGORY)
    algorithm = hd.sr.AlgorithmIdentification(name=SEG_ALGORITHM, version=software_version)

    def volume(key: str) -> List[hd.sr.Measurement]:
        return [hd.sr.Measurement(name=VOLUME, value=volumes[key], unit=MILLILITRE, algorithm_id=algorithm)]

    groups: list = []
    names = reported(label_set)
    for label in label_set.segments:
        name, value = label.name, label.value
        common = dict(tracking_identifier=_tracking(seed, name, names), finding_category=category, finding_type=property_type(label), finding_sites=site, measurements=volume(name))
        if value in numbers:
            segment = hd.sr.ReferencedSegment(
                sop_class_uid=seg.SOPClassUID,
                sop_instance_uid=seg.SOPInstanceUID,
                segment_number=numbers[value],
                source_series=hd.sr.SourceSeriesForSegmentation(source_uid),
            )
            groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(referenced_segment=segment, **common))
        elif volumes[name] > 0:
            raise SegProblem(f"the SEG has no segment for {name}, yet its volume is {volumes[name]} mL")
        else:  # a viewer dropped the empty segment: its volume (0) is still reported, with no ROI to point at
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(**common))
    for region in label_set.composite_regions:
        name, values = region.name, region.values
        parts = sorted(numbers[v] for v in values if v in numbers)
        sources = None
        if parts:
            source = hd.sr.SourceImageForMeasurementGroup(seg.SOPClassUID, seg.SOPInstanceUID)
            source.ReferencedSOPSequence[0].ReferencedSegmentNumber = parts
            sources = [source]
        elif volumes[name] > 0:
            raise SegProblem(f"the SEG has no segment of {name}, yet its volume is {volumes[name]} mL")
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=_tracking(seed, name, names),
                finding_category=category,
                finding_type=_sct(*COMPOSITE_FINDINGS[name]),
                finding_sites=site,
                measurements=volume(name),
                source_images=sources,
            )
        )

    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=uid_from(SEG_ALGORITHM, "device-observer"),  # the software, not this report: the same in every report
            name=SEG_ALGORITHM,
            manufacturer_name=MANUFACTURER,
            model_name=SEG_ALGORITHM,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.cid100.ImagingProcedure,
        imaging_measurements=groups,
    )
    return hd.sr.Comprehensive3DSR(
        evidence=[seg, *source_instances(source_series)],
        content=report[0],
        series_instance_uid=uid_from(seed, "sr-series"),
        series_number=SERIES_NUMBER,
        sop_instance_uid=uid_from(seed, "sr-instance"),
        instance_number=1,
        **equipment(software_version),
        series_description=SERIES_DESCRIPTION,
        is_complete=True,  # every region is reported; not final nor verified: no clinician signed it
    )


def _named(items: Sequence[Dataset], code: Tuple[str, str]) -> List[Dataset]:
    """Content items whose concept name is ``code`` (value, scheme)."""
    found = []
    for item in items:
        name = item.get("ConceptNameCodeSequence")
        if name and (str(name[0].CodeValue), str(name[0].CodingSchemeDesignator)) == code:
            found.append(item)
    return found


def volumes_from_report(sr: Dataset, label_set: LabelSet) -> Dict[str, float]:
    """The volumes (mL) of a report ``measurement_report`` wrote, under RegionVolumesd's keys.

    Read from the content tree with pydicom (highdicom's parser deep-copies, which fails on its own freshly built
    objects). Groups are matched by their tracking identifier's abbreviation, so reports of other tools that name
    regions the BraTS way read too; groups that name none of them are left out."""
    if str(sr.get("Modality", "")) != "SR":
        raise ValueError(f"not a DICOM SR (Modality {sr.get('Modality', 'missing')})")
    keys = {abbreviation: key for key, (abbreviation, _) in reported(label_set).items()}
    volumes: Dict[str, float] = {}
    for container in _named(sr.get("ContentSequence", []), IMAGING_MEASUREMENTS):
        for group in _named(container.get("ContentSequence", []), MEASUREMENT_GROUP):
            items = group.get("ContentSequence", [])
            tracking = _named(items, TRACKING_IDENTIFIER)
            key = keys.get(str(tracking[0].TextValue).split(":")[0].strip()) if tracking else None
            measured = [item for item in _named(items, (VOLUME.value, VOLUME.scheme_designator)) if item.get("MeasuredValueSequence")]
            if key is None or not measured:
                continue
            value = measured[0].MeasuredValueSequence[0]
            unit = str(value.MeasurementUnitsCodeSequence[0].CodeValue)
            if unit not in _UNIT_TO_ML:
                raise ValueError(f"the volume of {key} is in {unit}, not a unit of volume")
            number = value.FloatingPointValue if "FloatingPointValue" in value else value.NumericValue
            volumes[key] = float(number) * _UNIT_TO_ML[unit]
    return volumes
