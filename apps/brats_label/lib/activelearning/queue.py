"""The annotation queue: unlabelled cases ranked by their uncertainty under the served model."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from .scores import ScoreStore


def annotation_queue(store: ScoreStore, version: Optional[str], unlabelled: List[str]) -> List[Dict[str, Any]]:
    """Ranked cases first (rank 1 = most uncertain), then cases with no score for this model (rank None).

    A score from an earlier model is shown for information (``current`` False) but never ranks.
    """
    entries: List[Dict[str, Any]] = []
    for case in unlabelled:
        record = store.get(case) or {}
        current = version is not None and record.get("model_version") == version and record.get("score") is not None
        entry = {"id": case, "score": record.get("score"), "model_version": record.get("model_version"), "current": current}
        if record.get("failed"):
            entry["not_scored"] = record["failed"]  # could not be opened or scored with that model
        entries.append(entry)
    ranked = sorted((e for e in entries if e["current"]), key=lambda e: -e["score"])
    for rank, entry in enumerate(ranked, start=1):
        entry["rank"] = rank
    rest = sorted((e for e in entries if not e["current"]), key=lambda e: e["id"])
    for entry in rest:
        entry["rank"] = None
    return ranked + rest
