"""Two readers where it matters: a share of the studies, and any study an admin marks, is labelled by two annotators
who do not see each other's label, and nothing of it trains until they agree or a reviewer decides.

A reader's label is a *reading* (label store tag ``reading``): never served by the label routes, never sent to the
archive, never trained on, and never handed to the other reader. When a second annotator's reading arrives the two
are compared region by region (Dice, kept in that reading's record as ``agreement``, so the audit and the dashboard
follow each pair of readers over time). If every region agrees to ``double_read_agreement`` or better, the first
reading becomes the study's final label (either would do; taking the first keeps the result from depending on who read
second), and it is reviewed as any other. Otherwise the study waits for a reviewer who did not read it: their label
becomes final, approved by that act (an adjudication), with both readings kept in the history.

Which studies: those whose id hashes below ``double_read`` (a stable choice: the same studies in every process and
after every restart, none stored) and those an admin marks (``double_read.json`` in the workspace).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, TypeVar

import numpy as np

from ..config import READING_TAG
from ..errors import BratsLabelError
from ..model.brats_metrics import dice, region_masks
from ..runtime.atomic import read_json
from ..runtime.clock import utc_now
from ..runtime.shared_state import update_json
from .label_set import LabelSet

ANONYMOUS_READER = "anonymous"
AGREED, ADJUDICATION = "agreed", "awaiting adjudication"
FROM_READINGS, ADJUDICATED = "double reading", "adjudicated"  # a final label's source when it came from readings
# Set by the save routes from the signed-in user's roles (never from the body): whether the saver may adjudicate.
SAVED_BY_REVIEWER = "saved_by_reviewer"


class AdjudicationRefused(BratsLabelError):
    """Only a reviewer who did not read the study adjudicates its readings."""

    status_code = 403


def chosen_for_double_reading(case: str, fraction: float) -> bool:
    """Whether the study is among the ``fraction`` of studies read twice: its id's hash, so no list is kept and every
    process agrees."""
    if fraction <= 0.0:
        return False
    draw = int.from_bytes(hashlib.sha256(case.encode()).digest()[:8], "big") / 2**64
    return draw < fraction


def reader_of(info: Mapping[str, Any]) -> str:
    """Who made a reading: the signed-in user (the save route sets ``user`` from the token), else the client's name."""
    return str(info.get("user") or info.get("client_id") or ANONYMOUS_READER)


Reading = TypeVar("Reading")


def latest_per_reader(readings: Iterable[Reading], record_of: Callable[[Reading], Mapping[str, Any]]) -> Dict[str, Reading]:
    """Each reader's latest reading (oldest first in), the first reader first: a reader's later reading keeps their
    place, so the second reader stays the one whose reading holds the agreement."""
    latest: Dict[str, Reading] = {}
    for reading in readings:
        latest[reader_of(record_of(reading))] = reading
    return latest


@dataclass(frozen=True)
class Agreement:
    """How two readings of one study compare: Dice per region, and whether every region reaches ``threshold``."""

    readers: tuple
    dice: Dict[str, float]
    threshold: float

    @property
    def agreed(self) -> bool:
        return min(self.dice.values()) >= self.threshold

    def record(self) -> Dict[str, Any]:
        return {"readers": list(self.readers), "dice": self.dice, "threshold": self.threshold, "agreed": self.agreed, "at": utc_now()}


def compare_readings(first: np.ndarray, second: np.ndarray, readers: Sequence[str], label_set: LabelSet, threshold: float) -> Agreement:
    """Dice of each of the set's regions between two readings (a region neither reader drew agrees: 1)."""
    ones, twos = region_masks(first, label_set), region_masks(second, label_set)
    return Agreement(tuple(readers), {region: round(dice(twos[region], ones[region]), 4) for region in ones}, threshold)


class DoubleReadMarks:
    """Studies an admin asked to be read twice, with who asked and when (a study's id, never a patient's)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def marked(self) -> Dict[str, Dict[str, Any]]:
        return read_json(self.path, {})

    def mark(self, case: str, by: str) -> Dict[str, Any]:
        entry = {"by": by, "at": utc_now()}
        update_json(self.path, lambda current: {**current, case: current.get(case, entry)}, {})
        return self.marked()[case]


def double_read_state(readings: Mapping[str, Mapping[str, Any]], has_final: bool) -> str:
    """Where a double-read study stands: waiting for its readers, agreed, awaiting adjudication, or done.

    ``readings``: the latest reading of each reader, oldest reader first (their records)."""
    if has_final:
        return "final"
    if len(readings) < 2:
        return f"{len(readings)} of 2 readings"
    second = list(readings.values())[1]
    return AGREED if (second.get("agreement") or {}).get("agreed") else ADJUDICATION


def adjudication_entry(case: str, readings: Mapping[str, Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
    """The review queue's entry for a study whose two readings disagree (None when they do not, or are not two)."""
    if double_read_state(readings, False) != ADJUDICATION:
        return None
    second = list(readings.values())[1]
    agreement = second.get("agreement") or {}
    return {
        "case": case,
        "saved_at": second.get("saved_at", ""),
        "user": "",
        "source": FROM_READINGS,
        "kind": "adjudication",
        "readers": list(readings),
        "dice": agreement.get("dice", {}),
    }


def pair_agreement(history: Sequence[tuple], regions: Sequence[str], week_of: Any) -> List[Dict[str, Any]]:
    """Per pair of readers: studies read by both, mean Dice per region, how many disagreed, and the same per week.
    ``history``: (case, record) of every label version; only readings with an ``agreement`` count."""
    pairs: Dict[str, List[Mapping[str, Any]]] = {}
    for _, record in history:
        agreement = record.get("agreement")
        if record.get("tag") == READING_TAG and agreement:
            pairs.setdefault(" & ".join(sorted(agreement["readers"])), []).append(agreement)

    def summary(group: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
        means = {f"dice_{r}": round(float(np.mean([a["dice"][r] for a in group if r in a["dice"]])), 4) for r in regions}
        return {"studies": len(group), "disagreed": sum(not a["agreed"] for a in group), **means}

    out = []
    for pair, group in sorted(pairs.items()):
        weeks: Dict[str, List[Mapping[str, Any]]] = {}
        for agreement in group:
            weeks.setdefault(week_of(agreement["at"]), []).append(agreement)
        out.append({"readers": pair, **summary(group), "per_week": [{"week": w, **summary(g)} for w, g in sorted(weeks.items())]})
    return out
