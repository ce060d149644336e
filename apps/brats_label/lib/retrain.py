"""The server learns from corrections by itself: a fine-tune starts after enough new final labels.

A label counts when an annotator's final label is stored after the last automatic or manual
training started: saved through ``PUT /datastore/label`` or arriving as a DICOM SEG in the archive
(ground truth shipped in a studies folder does not count: nobody submitted it). Labels stored while a
training runs were saved after it started, so they count towards the next one. MONAI Label refuses a
second training while one runs; the trigger then simply tries again at its next check.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from .atomic import read_json, write_json
from .clock import utc_now
from .config import RetrainPolicy

logger = logging.getLogger(__name__)

NOT_SUBMITTED = ("imported",)  # label sources that no annotator submitted


class RetrainTrigger:
    def __init__(
        self,
        state_path: Path,
        policy: RetrainPolicy,
        history: Callable[[], Iterable[Tuple[str, Dict[str, Any]]]],
        start_training: Callable[[], Optional[Any]],
    ):
        self.state_path = Path(state_path)
        self.policy = policy
        self.history = history
        self.start_training = start_training

    def _state(self) -> Dict[str, Any]:
        return read_json(self.state_path, {})

    def new_labels(self) -> List[str]:
        """Cases with a submitted final label saved since the last training started."""
        since = self._state().get("started_at", "")
        return sorted(
            {
                case
                for case, record in self.history()
                if record.get("tag") == "final" and record.get("saved_at", "") > since and record.get("source") not in NOT_SUBMITTED
            }
        )

    def note_started(self, labels: List[str], reason: str) -> None:
        """Also called for trainings started by hand, so their labels are not counted twice."""
        state = self._state()
        runs = state.get("runs", [])
        runs.append({"started_at": utc_now(), "labels": labels, "reason": reason})
        write_json({"started_at": runs[-1]["started_at"], "started_epoch_s": time.time(), "runs": runs[-20:]}, self.state_path)

    def check(self) -> Optional[Any]:
        """Start a fine-tune when the policy says so; the training request's answer, else None."""
        if self.policy.after_labels <= 0:
            return None
        labels = self.new_labels()
        if len(labels) < self.policy.after_labels:
            return None
        last = self._state().get("started_epoch_s", 0.0)
        if time.time() - last < self.policy.min_interval_s:
            return None
        answer = self.start_training()  # the training worker records its start (note_started)
        if answer is None:
            return None  # a training is running; try again at the next check
        logger.info(f"Fine-tuning on {len(labels)} new labels: {', '.join(labels)}")
        return answer

    def status(self) -> Dict[str, Any]:
        state = self._state()
        labels = self.new_labels()
        last = state.get("started_epoch_s")
        return {
            "new_labels": len(labels),
            "labels_needed": self.policy.after_labels,
            "min_interval_s": self.policy.min_interval_s,
            "last_started_at": state.get("started_at"),
            "next_allowed_in_s": max(0.0, round(last + self.policy.min_interval_s - time.time(), 1)) if last else 0.0,
            "enabled": self.policy.after_labels > 0,
            "runs": state.get("runs", [])[-5:],
        }
