"""Who corrected what: the pre-label each annotator started from, and how much they changed it.

Every pre-segmentation the server hands out is kept per case (the latest one) with the model version
that made it. When a final label arrives for that case, its record gains the pre-label's model
version and the Dice between pre-label and final label for each region (TC, WT, ET): 1.0 means the
annotator accepted the model's answer, low values mean heavy correction. The records live in the
label history (never overwritten); ``audit_rows`` flattens them for the endpoint and the CSV export.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

import nibabel as nib
import numpy as np

from ..model.brats_metrics import brats_scores
from ..runtime.atomic import read_json, write_json, write_nifti
from ..runtime.clock import utc_now
from .label_files import read_label_file
from .label_set import LabelSet

RECORD_FIELDS = (
    "case", "tag", "saved_at", "user", "authenticated", "claimed_user", "client_id", "source",
    "prelabel_model", "prelabel_model_version", "prelabel_prior_case", "prelabel_made_at", "edited_ml",
)  # fmt: skip
SCORES = ("dice", "hd95", "lesion_dice", "lesion_hd95")
REVIEW_COLUMNS = ("event", "label_saved_at", "reviewed_by", "review_comment", "review_level")
AGREEMENT_COLUMNS = ("agreement_readers", "agreed")  # a second reading of a study read twice (labels/double_reading.py)


def agreement_fields(label_set: LabelSet) -> Tuple[str, ...]:
    """``agreement_readers``, ``agreed``, ``agreement_tc`` ...: two readers' Dice per region."""
    return (*AGREEMENT_COLUMNS, *(f"agreement_{region.name.lower()}" for region in label_set.regions))


def score_fields(label_set: LabelSet) -> Tuple[str, ...]:
    """``dice_tc`` ... ``lesion_hd95_et`` (and ``_rc`` after treatment): each score of each of the set's regions."""
    return tuple(f"{score}_{region.name.lower()}" for score in SCORES for region in label_set.regions)


def audit_columns(label_set: LabelSet) -> Tuple[str, ...]:
    """Every row has every column (a CSV's header): the record, the scores, each label's voxels, the review."""
    return (*RECORD_FIELDS, *score_fields(label_set), *(f"voxels_{name}" for name in label_set.foreground), *REVIEW_COLUMNS, *agreement_fields(label_set))


class PreLabels:
    """The latest pre-label of each case, as the server returned it, with the model version that made it."""

    def __init__(self, folder: Path, label_set: LabelSet):
        self.folder = Path(folder)
        self.label_set = label_set

    def _paths(self, case: str) -> tuple[Path, Path]:
        return self.folder / f"{case}.nii.gz", self.folder / f"{case}.json"

    def save(self, case: str, label_file: str, model_version: Optional[str], client_id: Optional[str], origin: Optional[Dict[str, Any]] = None) -> None:
        """``origin``: which model made it (``model``) and, for a follow-up pre-label, the earlier study it carried (``prior_case``)."""
        label_path, info_path = self._paths(case)
        label_path.parent.mkdir(parents=True, exist_ok=True)
        label, affine = read_label_file(Path(label_file))  # NIfTI, or NRRD for OHIF
        write_nifti(np.asarray(label, np.uint8), affine, label_path)
        write_json({"model_version": model_version, "made_at": utc_now(), "client_id": client_id, **(origin or {})}, info_path)

    def compare(self, case: str, final: np.ndarray) -> Dict[str, Any]:
        """What goes into the final label's record: the pre-label's origin and its BraTS scores against the final label."""
        latest = self.latest(case)
        if latest is None:
            return {}
        image, info = latest
        prelabel = np.asarray(image.dataobj)
        if prelabel.shape != final.shape:
            return {"prelabel_model_version": info["model_version"], "prelabel_made_at": info["made_at"], "prelabel_note": "grid differs"}
        # how far the correction moved the pre-label, as BraTS scores it
        scores = brats_scores(prelabel, final, image.header.get_zooms()[:3], self.label_set)
        fields = {f"{score}_{region}": scores[region][score] for region in scores for score in SCORES}
        voxel_ml = float(np.prod(image.header.get_zooms()[:3])) / 1000.0
        fields["edited_ml"] = round(float(np.count_nonzero(prelabel != final)) * voxel_ml, 3)  # how much the annotator changed
        origin = {f"prelabel_{key}": info[key] for key in ("model", "prior_case") if info.get(key)}
        return {"prelabel_model_version": info["model_version"], "prelabel_made_at": info["made_at"], **origin, **fields}

    def latest(self, case: str) -> Optional[Tuple[nib.Nifti1Image, Dict[str, Any]]]:
        """The case's latest pre-label (the image, not yet read) and its record, or None when none was made."""
        label_path, info_path = self._paths(case)
        info = read_json(info_path, None)
        if info is None or not label_path.exists():
            return None
        return nib.load(str(label_path)), info


def audit_rows(history: Iterable[tuple[str, Dict[str, Any]]], label_set: LabelSet) -> List[Dict[str, Any]]:
    """One row per saved label version, and one per review of it, oldest first: (case, history record) pairs in,
    flat dicts out. A review's row is its version's (case, tag, who saved it) with who reviewed, when and why; a
    reading of a study read twice (tag ``reading``) has the two readers' agreement per region."""
    rows = []
    fields = (*RECORD_FIELDS, *score_fields(label_set))
    for case, record in history:
        if "saved_at" not in record:
            continue  # a removal marker
        voxels = record.get("voxels", {})
        row = {"case": case, **{k: record.get(k) for k in fields if k != "case"}, "event": "saved"}
        row.update({f"voxels_{name}": voxels.get(name) for name in label_set.foreground})
        agreement = record.get("agreement")
        if agreement:
            row.update({"agreement_readers": " & ".join(agreement.get("readers", [])), "agreed": agreement.get("agreed")})
            row.update({f"agreement_{region}": value for region, value in agreement.get("dice", {}).items()})
        rows.append(row)
        for review in record.get("reviews", []):
            rows.append(
                {
                    "case": case,
                    "tag": record.get("tag"),
                    "saved_at": review.get("at"),
                    "event": f"review: {review.get('state')}",
                    "user": record.get("user"),
                    "label_saved_at": record.get("saved_at"),
                    "reviewed_by": review.get("by"),
                    "review_comment": review.get("comment"),
                    "review_level": review.get("level"),
                }
            )
    rows = sorted(rows, key=lambda r: r["saved_at"] or "")
    columns = audit_columns(label_set)
    return [{key: row.get(key) for key in columns} | row for row in rows]


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet runs a cell that starts so as a formula


def inert_cell(value: Any) -> Any:
    """A text cell a spreadsheet shows as text (OWASP's advice: a leading apostrophe); numbers stay numbers."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def audit_csv(rows: List[Dict[str, Any]], label_set: LabelSet) -> str:
    """The audit as CSV; client-written text (user names, client ids) cannot run as a formula when opened."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(audit_columns(label_set)), extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: inert_cell(v) for k, v in row.items()} for row in rows)
    return out.getvalue()
