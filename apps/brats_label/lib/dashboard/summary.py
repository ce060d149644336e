"""Everything the dashboard shows, computed from what the server already keeps: the model versions' records, the
label history (with each correction's pre-label scores, ``labels/audit.py``, and two readers' agreement,
``labels/double_reading.py``), the hand-outs, the training's progress
and the drift of new studies (``drift.py``). Plain data in, one JSON-ready dict out; nothing is read twice.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from statistics import median
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from ..config import DASHBOARD_WEEKS, READING_TAG
from ..labels.audit import audit_rows
from ..labels.double_reading import ADJUDICATION, FROM_READINGS, double_read_state, latest_per_reader, pair_agreement
from ..labels.label_set import LabelSet
from ..labels.review import APPROVED, CHANGES_REQUESTED, SUBMITTED_STATE
from ..studies.study_datastore import FINAL, IMPORTED_FROM


def _week(at: str) -> str:
    """ISO year and week of a UTC timestamp (``2026-W49``)."""
    year, week, _ = datetime.strptime(at[:10], "%Y-%m-%d").isocalendar()
    return f"{year}-W{week:02d}"


def _mean(values: Iterable[Optional[float]]) -> Optional[float]:
    kept = [float(v) for v in values if v is not None]
    return round(sum(kept) / len(kept), 4) if kept else None


def model_versions(versions: Sequence[Mapping[str, Any]], regions: Sequence[str]) -> List[Dict[str, Any]]:
    """Each version, oldest first: when, served or not and why, held-out Dice and HD95 per region."""
    out = []
    for record in versions:
        brats = record.get("validation_brats") or {}
        out.append(
            {
                "id": record.get("id"),
                "created_at": record.get("created_at") or record.get("ended_at"),
                "serving": bool(record.get("serving")),
                "promoted": record.get("promoted"),
                "reason": record.get("reason", ""),
                "held_out": len(record.get("held_out") or []),
                "labels": len(record.get("labels") or []),
                "dice": {region: (record.get("validation_dice") or {}).get(region) for region in [*regions, "mean"]},
                "hd95": {region: (brats.get(region) or {}).get("hd95") for region in regions},
                "curve": bool(record.get("run")),
            }
        )
    return out


def prelabel_quality(rows: Sequence[Mapping[str, Any]], regions: Sequence[str], now: datetime) -> Dict[str, Any]:
    """Dice between each pre-label and the final label it became, per week (the last ``DASHBOARD_WEEKS``) and per
    model version: a model that starts needing more correction shows as falling Dice, rising edits."""
    since = (now - timedelta(weeks=DASHBOARD_WEEKS)).strftime("%Y-%m-%d")
    compared = [row for row in rows if row.get("event") == "saved" and row.get(f"dice_{regions[0]}") is not None]
    by_week: Dict[str, List[Mapping[str, Any]]] = defaultdict(list)
    by_version: Dict[str, List[Mapping[str, Any]]] = defaultdict(list)
    for row in compared:
        if str(row.get("saved_at") or "") >= since:
            by_week[_week(str(row["saved_at"]))].append(row)
        by_version[str(row.get("prelabel_model_version") or "unknown")].append(row)

    def summary(group: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
        return {"labels": len(group), **{f"dice_{r}": _mean(row.get(f"dice_{r}") for row in group) for r in regions}, "edited_ml": _mean(row.get("edited_ml") for row in group)}

    return {
        "per_week": [{"week": week, **summary(group)} for week, group in sorted(by_week.items())],
        "per_version": [{"version": version, **summary(group)} for version, group in sorted(by_version.items())],
    }


def _current_finals(history: Sequence[Tuple[str, Mapping[str, Any]]]) -> Dict[str, Mapping[str, Any]]:
    """The current final label's record of each case (a removal leaves none)."""
    current: Dict[str, Mapping[str, Any]] = {}
    for case, record in history:
        if record.get("tag", FINAL) != FINAL:
            continue
        if "saved_at" in record and not record.get("removed"):
            current[case] = record
        else:
            current.pop(case, None)
    return current


def awaiting_adjudication(history: Sequence[Tuple[str, Mapping[str, Any]]]) -> int:
    """Studies read twice whose readings disagree and that no reviewer has adjudicated yet."""
    finals = {case for case, record in history if record.get("tag", FINAL) == FINAL}
    readings: Dict[str, List[Mapping[str, Any]]] = defaultdict(list)
    for case, record in history:
        if record.get("tag") == READING_TAG:
            readings[case].append(record)
    waiting = [case for case, records in readings.items() if case not in finals and double_read_state(latest_per_reader(records, dict), False) == ADJUDICATION]
    return len(waiting)


def work_queue(history: Sequence[Tuple[str, Mapping[str, Any]]], unlabelled: int, handed_out: int) -> Dict[str, int]:
    """Unlabelled, handed out, the final labels by review state, and studies whose two readings wait for a reviewer."""
    states: Dict[str, int] = defaultdict(int)
    for record in _current_finals(history).values():
        if record.get("source") == IMPORTED_FROM:
            states["imported"] += 1
        else:
            states[str((record.get("review") or {}).get("state", SUBMITTED_STATE))] += 1
    return {
        "unlabelled": unlabelled,
        "handed_out": handed_out,
        "waiting_for_review": states[SUBMITTED_STATE],
        "approved": states[APPROVED],
        "changes_requested": states[CHANGES_REQUESTED],
        "imported_ground_truth": states["imported"],
        "awaiting_adjudication": awaiting_adjudication(history),
    }


def annotators(rows: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """Per annotator: labels saved, on how many days, labels a day (on the days they labelled), median edit size."""
    saved: Dict[str, List[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        if row.get("event") == "saved" and row.get("source") not in (IMPORTED_FROM, FROM_READINGS):  # a reading made final is counted once
            saved[str(row.get("user") or row.get("client_id") or "unknown")].append(row)
    out = []
    for user, group in sorted(saved.items()):
        days = {str(row.get("saved_at") or "")[:10] for row in group}
        edits = [float(row["edited_ml"]) for row in group if row.get("edited_ml") is not None]
        out.append(
            {
                "user": user,
                "labels": len(group),
                "days": len(days),
                "labels_per_day": round(len(group) / max(1, len(days)), 2),
                "median_edited_ml": round(median(edits), 3) if edits else None,
                "last_saved_at": max(str(row.get("saved_at") or "") for row in group),
            }
        )
    return out


def dashboard_data(
    versions: Sequence[Mapping[str, Any]],
    history: Sequence[Tuple[str, Dict[str, Any]]],
    unlabelled: int,
    handed_out: int,
    training: Mapping[str, Any],
    drift: Mapping[str, Any],
    label_set: LabelSet,
    now: Optional[datetime] = None,
) -> Dict[str, Any]:
    regions = [region.name.lower() for region in label_set.regions]
    rows = audit_rows(history, label_set)
    now = now or datetime.now(UTC)
    return {
        "generated_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "label_set": label_set.name,
        "regions": regions,
        "models": model_versions(versions, regions),
        "prelabel_quality": prelabel_quality(rows, regions, now),
        "queue": work_queue(history, unlabelled, handed_out),
        "annotators": annotators(rows),
        "agreement": pair_agreement(history, regions, _week),
        "drift": dict(drift),
        "training": dict(training),
    }
