"""Review of final labels before they teach the model: submitted, then approved or changes requested by a reviewer,
then submitted again once corrected (a new version starts submitted).

A review is a fact about one label version, kept in that version's status beside its record (which never changes):
``review`` is the latest decision, ``reviews`` every decision in order, each with who (from the reviewer's token,
never from a request's body), when, the comment and the difficulty level. ``segmentationMeta`` is the same latest
decision in the form MONAI Label's Slicer Reviewer module reads (``status`` approved / flagged, ``approvedBy``,
``level``, ``comment``, ``editTime``), so that module lists and filters this server's labels unchanged.

Which labels train (``--conf train_on``): ``approved``, ``submitted``, or ``auto`` (the default): submitted labels
until the first review in this workspace, approved ones from then on. A lab without reviewers keeps learning from
every save; once a reviewer has acted, one careless save no longer teaches the model its mistake. Ground truth
imported with a study is nobody's correction and is not under review: it trains as before.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

from ..errors import BratsLabelError, InvalidInput

SUBMITTED_STATE, APPROVED, CHANGES_REQUESTED = "submitted", "approved", "changes requested"
DECISIONS = (APPROVED, CHANGES_REQUESTED)
LEVELS = ("easy", "medium", "hard")  # the Slicer Reviewer module's difficulty levels
SLICER_STATUS = {"approved": APPROVED, "flagged": CHANGES_REQUESTED}  # the module's word -> ours
SLICER_META = "segmentationMeta"
# Fields of a label's info that only a review sets: never taken from a client's label-info update.
REVIEW_FIELDS = ("review", "reviews", SLICER_META)
MAX_COMMENT_CHARS = 2000


class ReviewRefused(BratsLabelError):
    """The caller may not make this review (their own label, or not a reviewer)."""

    status_code = 403


@dataclass(frozen=True)
class ReviewDecision:
    decision: str  # APPROVED or CHANGES_REQUESTED
    comment: str = ""
    level: str = ""

    def __post_init__(self) -> None:
        if self.decision not in DECISIONS:
            raise InvalidInput(f"a review decides '{APPROVED}' or '{CHANGES_REQUESTED}', not '{str(self.decision)[:40]}'")
        if self.decision == CHANGES_REQUESTED and not self.comment.strip():
            raise InvalidInput("a request for changes needs a comment: the annotator reads it to know what to change")
        if self.level and self.level not in LEVELS:
            raise InvalidInput(f"level is one of {', '.join(LEVELS)}, not '{str(self.level)[:40]}'")
        if len(self.comment) > MAX_COMMENT_CHARS:
            raise InvalidInput(f"a review comment is at most {MAX_COMMENT_CHARS} characters")


def decision_from_slicer(meta: Mapping[str, Any]) -> ReviewDecision:
    """The Slicer Reviewer module's ``segmentationMeta`` as a decision (its ``approvedBy`` is ignored: who reviews is
    the signed-in user)."""
    status = str(meta.get("status", ""))
    if status not in SLICER_STATUS:
        raise InvalidInput(f"segmentationMeta.status is 'approved' or 'flagged', not '{status[:40]}'")
    return ReviewDecision(SLICER_STATUS[status], str(meta.get("comment") or ""), str(meta.get("level") or ""))


def _epoch(at: str) -> int:
    return calendar.timegm(datetime.strptime(at, "%Y-%m-%dT%H:%M:%S.%fZ").timetuple())


def review_status(status: Mapping[str, Any], decision: ReviewDecision, reviewer: str, at: str) -> Dict[str, Any]:
    """The fields a review adds to a label version's status (``status``: what it holds now)."""
    event = {"state": decision.decision, "by": reviewer, "at": at, "comment": decision.comment, "level": decision.level}
    slicer = {
        "status": "approved" if decision.decision == APPROVED else "flagged",
        "approvedBy": reviewer if decision.decision == APPROVED else "",
        "level": decision.level,
        "comment": decision.comment,
        "editTime": _epoch(at),
    }
    return {"review": event, "reviews": [*status.get("reviews", []), event], SLICER_META: slicer}


def review_state(info: Mapping[str, Any]) -> str:
    return str((info.get("review") or {}).get("state", SUBMITTED_STATE))


def check_reviewer(label_info: Mapping[str, Any], reviewer: str, decision: ReviewDecision) -> None:
    """A reviewer never approves their own label (they may still ask themselves for changes)."""
    if decision.decision == APPROVED and reviewer and label_info.get("user") == reviewer:
        raise ReviewRefused(f"{reviewer} saved this label: another reviewer approves it")


def effective_train_on(setting: str, history: Iterable[Tuple[str, Dict[str, Any]]]) -> str:
    """``approved`` or ``submitted``: the setting, or for ``auto`` whether anyone has reviewed a label yet."""
    if setting != "auto":
        return setting
    return "approved" if any(record.get("reviews") for _, record in history) else "submitted"


def trains(info: Mapping[str, Any], train_on: str, imported_sources: Tuple[str, ...]) -> bool:
    """Whether a current final label counts for training under ``train_on`` (``approved`` or ``submitted``)."""
    if train_on == "submitted" or info.get("source") in imported_sources:
        return True
    return review_state(info) == APPROVED


def returned_review(info: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """What an annotator reads when a label comes back to them: the request for changes on the current version (who,
    when, the comment, the level); None when the label is not sent back."""
    review = info.get("review") or {}
    if review.get("state") != CHANGES_REQUESTED:
        return None
    return {
        "state": CHANGES_REQUESTED,
        "comment": review.get("comment", ""),
        "reviewed_by": review.get("by", ""),
        "requested_at": review.get("at", ""),
        "level": review.get("level", ""),
    }


def approved_at(info: Mapping[str, Any]) -> Optional[str]:
    review = info.get("review") or {}
    return review.get("at") if review.get("state") == APPROVED else None
