"""MR series as GE, Siemens, Philips and Canon scanners name and describe them, for the classification tests.

Each entry: vendor, SeriesDescription, the header attributes a scanner writes for that protocol (timings
typical of 1.5-3 T clinical brain protocols; ImageType as each vendor writes it), and the channel the series
must get (None: never a channel). Written by us from vendors' protocol naming; no patient data.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

Series = Tuple[str, str, Dict[str, object], Optional[str]]

ORIGINAL = ["ORIGINAL", "PRIMARY", "OTHER"]

VENDOR_SERIES: List[Series] = [
    # GE Signa: T1-FLAIR is a T1-weighted inversion recovery, not a dark-fluid FLAIR
    ("GE", "3-Plane Loc", {"ScanningSequence": ["GR"], "RepetitionTime": 5.2, "EchoTime": 1.6, "ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}, None),
    (
        "GE",
        "Ax T1 FLAIR",
        {"ScanningSequence": ["SE", "IR"], "RepetitionTime": 2250, "EchoTime": 9.5, "InversionTime": 860, "MRAcquisitionType": "2D", "ImageType": ORIGINAL},
        "t1",
    ),
    ("GE", "Ax T2 FSE", {"ScanningSequence": ["SE"], "RepetitionTime": 5200, "EchoTime": 102, "MRAcquisitionType": "2D", "ImageType": ORIGINAL}, "t2"),
    (
        "GE",
        "Ax T2 FLAIR",
        {"ScanningSequence": ["SE", "IR"], "RepetitionTime": 9000, "EchoTime": 120, "InversionTime": 2250, "MRAcquisitionType": "2D", "ImageType": ORIGINAL},
        "flair",
    ),
    ("GE", "Ax DWI 1000b", {"ScanningSequence": ["EP"], "RepetitionTime": 6000, "EchoTime": 80, "DiffusionBValue": 1000, "ImageType": ORIGINAL}, None),
    ("GE", "Apparent Diffusion Coefficient (mm2/s)", {"ScanningSequence": ["EP"], "RepetitionTime": 6000, "EchoTime": 80, "ImageType": ["DERIVED", "PRIMARY", "ADC"]}, None),
    ("GE", "Ax Perfusion", {"ScanningSequence": ["EP", "GR"], "RepetitionTime": 1500, "EchoTime": 30, "NumberOfTemporalPositions": 60, "ImageType": ORIGINAL}, None),
    (
        "GE",
        "Ax T1 FLAIR +C",
        {
            "ScanningSequence": ["SE", "IR"],
            "RepetitionTime": 2250,
            "EchoTime": 9.5,
            "InversionTime": 860,
            "MRAcquisitionType": "2D",
            "ContrastBolusAgent": "MULTIHANCE",
            "ImageType": ORIGINAL,
        },
        "t1c",
    ),
    (
        "GE",
        "Sag 3D BRAVO C+",
        {"ScanningSequence": ["GR", "IR"], "RepetitionTime": 8.2, "EchoTime": 3.2, "InversionTime": 450, "MRAcquisitionType": "3D", "ImageType": ORIGINAL},
        "t1c",
    ),
    # Siemens: KM (Kontrastmittel) marks post-contrast; MPRAGE is GR/IR with TI about 900 ms
    ("Siemens", "localizer", {"ScanningSequence": ["GR"], "RepetitionTime": 8.6, "EchoTime": 4.0, "ImageType": ["ORIGINAL", "PRIMARY", "M", "NORM", "DIS2D"]}, None),
    (
        "Siemens",
        "t1_mprage_sag_p2_iso",
        {
            "ScanningSequence": ["GR", "IR"],
            "RepetitionTime": 2300,
            "EchoTime": 2.98,
            "InversionTime": 900,
            "MRAcquisitionType": "3D",
            "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND", "NORM"],
        },
        "t1",
    ),
    (
        "Siemens",
        "t2_tse_tra_p2",
        {"ScanningSequence": ["SE"], "RepetitionTime": 6000, "EchoTime": 95, "MRAcquisitionType": "2D", "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND", "NORM"]},
        "t2",
    ),
    (
        "Siemens",
        "t2_space_dark-fluid_sag_p2_iso",
        {
            "ScanningSequence": ["SE", "IR"],
            "RepetitionTime": 5000,
            "EchoTime": 388,
            "InversionTime": 1800,
            "MRAcquisitionType": "3D",
            "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND", "NORM"],
        },
        "flair",
    ),
    (
        "Siemens",
        "ep2d_diff_3scan_trace_p2_TRACEW",
        {"ScanningSequence": ["EP"], "RepetitionTime": 5600, "EchoTime": 89, "DiffusionBValue": 1000, "ImageType": ["ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW", "ND"]},
        None,
    ),
    (
        "Siemens",
        "ep2d_diff_3scan_trace_p2_ADC",
        {"ScanningSequence": ["EP"], "RepetitionTime": 5600, "EchoTime": 89, "ImageType": ["DERIVED", "PRIMARY", "DIFFUSION", "ADC", "ND"]},
        None,
    ),
    (
        "Siemens",
        "t1_mprage_sag_p2_iso_KM",
        {
            "ScanningSequence": ["GR", "IR"],
            "RepetitionTime": 2300,
            "EchoTime": 2.98,
            "InversionTime": 900,
            "MRAcquisitionType": "3D",
            "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND", "NORM"],
        },
        "t1c",
    ),
    (
        "Siemens",
        "t1_mprage_tra_p2_iso_KM_MPR",
        {"ScanningSequence": ["GR", "IR"], "RepetitionTime": 2300, "EchoTime": 2.98, "InversionTime": 900, "ImageType": ["DERIVED", "SECONDARY", "MPR", "NORM"]},
        None,
    ),
    # Philips: 3D T1 turbo field echo named sT1W_3D_TFE; VIEW FLAIR is a 3D FLAIR
    ("Philips", "Survey", {"ScanningSequence": ["GR"], "RepetitionTime": 11, "EchoTime": 4.6, "ImageType": ["ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"]}, None),
    (
        "Philips",
        "sT1W_3D_TFE",
        {"ScanningSequence": ["GR"], "RepetitionTime": 8.1, "EchoTime": 3.7, "MRAcquisitionType": "3D", "ImageType": ["ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"]},
        "t1",
    ),
    ("Philips", "T2W_TSE", {"ScanningSequence": ["SE"], "RepetitionTime": 3000, "EchoTime": 80, "ImageType": ["ORIGINAL", "PRIMARY", "M_SE", "M", "SE"]}, "t2"),
    (
        "Philips",
        "3D_Brain_VIEW_FLAIR",
        {
            "ScanningSequence": ["SE", "IR"],
            "RepetitionTime": 4800,
            "EchoTime": 320,
            "InversionTime": 1650,
            "MRAcquisitionType": "3D",
            "ImageType": ["ORIGINAL", "PRIMARY", "M_IR", "M", "IR"],
        },
        "flair",
    ),
    (
        "Philips",
        "sT1W_3D_TFE Gd",
        {
            "ScanningSequence": ["GR"],
            "RepetitionTime": 8.1,
            "EchoTime": 3.7,
            "MRAcquisitionType": "3D",
            "ContrastBolusAgent": "Gadovist",
            "ImageType": ["ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"],
        },
        "t1c",
    ),
    # Canon (Toshiba) naming
    ("Canon", "T1WI_SE", {"ScanningSequence": ["SE"], "RepetitionTime": 500, "EchoTime": 12, "ImageType": ORIGINAL}, "t1"),
    ("Canon", "T2WI_FSE", {"ScanningSequence": ["SE"], "RepetitionTime": 4500, "EchoTime": 96, "ImageType": ORIGINAL}, "t2"),
    ("Canon", "FLAIR_tra", {"ScanningSequence": ["SE", "IR"], "RepetitionTime": 9000, "EchoTime": 105, "InversionTime": 2500, "ImageType": ORIGINAL}, "flair"),
    ("Canon", "T1WI_SE_CE", {"ScanningSequence": ["SE"], "RepetitionTime": 500, "EchoTime": 12, "ImageType": ORIGINAL}, "t1c"),
    ("Canon", "PDWI", {"ScanningSequence": ["SE"], "RepetitionTime": 3000, "EchoTime": 15, "ImageType": ORIGINAL}, None),
]


def acquisition_of(attributes: Dict[str, object]):
    """The classifier's view of a series, as the archive client builds it from these attributes."""
    from lib.dicom.sequence_classifier import Acquisition

    def number(key):
        value = attributes.get(key)
        return float(value) if value is not None else None  # type: ignore[arg-type]

    temporal = attributes.get("NumberOfTemporalPositions")
    return Acquisition(
        repetition_time=number("RepetitionTime"),
        echo_time=number("EchoTime"),
        inversion_time=number("InversionTime"),
        scanning_sequence=tuple(attributes.get("ScanningSequence", ())),  # type: ignore[arg-type]
        acquisition_type=str(attributes.get("MRAcquisitionType", "")),
        contrast_agent=str(attributes.get("ContrastBolusAgent", "")),
        image_type=tuple(attributes.get("ImageType", ())),  # type: ignore[arg-type]
        diffusion_b_value=number("DiffusionBValue"),
        temporal_positions=int(temporal) if temporal is not None else None,  # type: ignore[call-overload]
    )
