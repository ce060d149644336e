"""A patient's studies in time: each study's tumour volumes, and how each region changed.

Every study gets the volume of each label and region (``region_volumes_ml``), from its final label, or, where no
label was saved yet, from the latest pre-label the server made for it (said which: a pre-label is the model's,
not a reader's). Against each study the change is given three ways, as response assessment reads a series of
scans (RANO compares with the baseline and with the smallest measurement so far, the nadir):

- ``previous``: the last earlier study with volumes;
- ``baseline``: the first study with volumes;
- ``nadir``: the smallest volume of that region among the earlier studies.

Each change is in mL and in per cent of the volume compared with (no per cent against 0 mL).
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO
from typing import Any, Dict, List, Optional, Sequence, Tuple

import nibabel as nib
import numpy as np

from ..dicom.measurement_report import reported
from ..labels.audit import PreLabels
from ..labels.label_set import LabelSet
from ..model.transforms import region_volumes_ml, voxel_volume_ml
from ..studies.study_datastore import FINAL

FINAL_LABEL, PRE_LABEL, NOT_SEGMENTED = "final label", "pre-label", "not segmented yet"
COLOURS = ("tab:red", "tab:green", "tab:orange", "tab:brown", "tab:purple", "tab:blue")


@dataclass(frozen=True)
class TimelineStudy:
    case: str
    acquired: str  # ISO 8601, '' when unknown
    source: str  # FINAL_LABEL, PRE_LABEL or NOT_SEGMENTED
    volumes_ml: Optional[Dict[str, float]]
    detail: Dict[str, Any]  # where the volumes come from (label version, model version, report UID)


FINAL_DETAIL = ("saved_at", "user", "source", "sr_sop_instance_uid")


def study_volumes(datastore: Any, prelabels: PreLabels, case: str, acquired: str) -> TimelineStudy:
    """One study's volumes: of its final label if it has one, else of its latest pre-label, else none (each label
    and each region uniting several, of the datastore's label set)."""
    label_set = datastore.label_set
    uri = datastore.get_label_uri(case, FINAL)
    if uri:
        image = nib.load(uri)
        info = datastore.get_label_info(case, FINAL)
        detail = {f"label_{key}": info[key] for key in FINAL_DETAIL if info.get(key)}
        volumes = region_volumes_ml(np.asarray(image.dataobj, dtype=np.uint8), voxel_volume_ml(image.affine), label_set)
        return TimelineStudy(case, acquired, FINAL_LABEL, volumes, detail)
    latest = prelabels.latest(case)
    if latest is not None:
        image, info = latest
        detail = {"prelabel_model_version": info.get("model_version"), "prelabel_made_at": info.get("made_at")}
        volumes = region_volumes_ml(np.asarray(image.dataobj, dtype=np.uint8), voxel_volume_ml(image.affine), label_set)
        return TimelineStudy(case, acquired, PRE_LABEL, volumes, detail)
    return TimelineStudy(case, acquired, NOT_SEGMENTED, None, {})


def patient_timeline(datastore: Any, prelabels: PreLabels, case: str) -> Tuple[List[Dict[str, Any]], str]:
    """The timeline of ``case``'s patient (every study, oldest first), and the study it was asked for."""
    studies = datastore.patient_studies(case)
    own = datastore.case_id(case)
    if not studies:
        studies = [(own, None)]  # the source says nothing of the patient: the study alone
    return timeline([study_volumes(datastore, prelabels, study, moment.acquired if moment else "") for study, moment in studies], datastore.label_set), own


def _change(now: float, then: float) -> Dict[str, Optional[float]]:
    return {"ml": round(now - then, 3), "percent": round(100.0 * (now - then) / then, 1) if then > 0 else None}


def timeline(studies: Sequence[TimelineStudy], label_set: LabelSet) -> List[Dict[str, Any]]:
    """Each study (already oldest first) with its volumes and changes against the previous, baseline and nadir."""
    region_order = label_set.volume_names()  # each label, then TC and WT
    rows: List[Dict[str, Any]] = []
    measured: List[Dict[str, float]] = []  # volumes of the earlier studies that have them
    for study in studies:
        row: Dict[str, Any] = {"case": study.case, "acquired": study.acquired, "volumes_from": study.source, **study.detail}
        if study.volumes_ml is not None:
            volumes = {region: float(study.volumes_ml[region]) for region in region_order}
            row["volumes_ml"] = volumes
            if measured:
                references = {"previous": measured[-1], "baseline": measured[0]}
                row["change"] = {
                    region: {
                        **{name: _change(volumes[region], references[name][region]) for name in ("previous", "baseline")},
                        "nadir": _change(volumes[region], min(earlier[region] for earlier in measured)),
                    }
                    for region in region_order
                }
            measured.append(volumes)
        rows.append(row)
    return rows


def timeline_png(rows: Sequence[Dict[str, Any]], title: str, label_set: LabelSet) -> bytes:
    """Each region's volume over time, one line per region; a filled marker is a final label, a hollow one a
    pre-label. Studies are spaced by date where every one has a date, else evenly in order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.dates import datestr2num

    points = [row for row in rows if "volumes_ml" in row]
    dated = bool(points) and all(row["acquired"] for row in points)
    x = [datestr2num(row["acquired"]) for row in points] if dated else list(range(len(points)))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    names = reported(label_set)
    for region, colour in zip(label_set.volume_names(), COLOURS):
        abbreviation = names[region][0]
        ys = [row["volumes_ml"][region] for row in points]
        ax.plot(x, ys, color=colour, label=abbreviation, linewidth=1.5)
        for xi, yi, row in zip(x, ys, points):
            final = row["volumes_from"] == FINAL_LABEL
            ax.plot([xi], [yi], marker="o", color=colour, markerfacecolor=colour if final else "white", markersize=6)
    if dated:
        ax.xaxis_date()
        fig.autofmt_xdate()
    else:
        ax.set_xticks(x, [row["case"][-12:] for row in points], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("volume (mL)")
    ax.set_title(title + ("" if points else ": no study segmented yet"))
    ax.legend(title="filled: final label, hollow: pre-label", fontsize=8, title_fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()
