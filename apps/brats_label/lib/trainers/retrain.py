"""The server learns from corrections by itself: a fine-tune starts after enough new final labels.

A label counts when an annotator's final label is stored after the start of the last training that
did not fail: saved through ``PUT /datastore/label`` or arriving as a DICOM SEG in the archive
(ground truth shipped with the studies, as files or as the importer's SEGs, does not count: nobody
submitted it). Labels stored while a training runs were saved after it started, so they count
towards the next one; a training that fails or is killed gives its labels back to the count.

Only the server process writes the record of runs: it observes MONAI Label's training tasks (each
start, and how each ended) instead of the training worker reporting on itself, which a killed
worker could not do. MONAI Label refuses a second training while one runs; the trigger then simply
tries again at its next check.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from ..config import RetrainPolicy
from ..labels.review import approved_at, effective_train_on
from ..runtime.atomic import read_json
from ..runtime.clock import task_started_utc
from ..runtime.shared_state import update_json

logger = logging.getLogger(__name__)

NOT_SUBMITTED = ("imported",)  # label sources that no annotator submitted
TASK_ENDED = {"DONE": "done", "ERROR": "failed", "STOPPED": "failed"}  # MONAI Label's task states -> outcome
RUNS_KEPT = 50


class RetrainTrigger:
    def __init__(
        self,
        state_path: Path,
        policy: RetrainPolicy,
        history: Callable[[], Iterable[Tuple[str, Dict[str, Any]]]],
        start_training: Callable[[], Optional[Any]],
        training_tasks: Callable[[], List[Dict[str, Any]]] = list,
        train_on: str = "submitted",
    ):
        """``training_tasks``: MONAI Label's training tasks as the server knows them (empty in worker processes);
        ``train_on``: the ``--conf train_on`` setting, auto, approved or submitted (``labels/review.py``)."""
        self.state_path = Path(state_path)
        self.train_on = train_on
        self.policy = policy
        self.history = history
        self.start_training = start_training
        self.training_tasks = training_tasks

    def _state(self) -> Dict[str, Any]:
        return read_json(self.state_path, {})

    def _counted_since(self, runs: List[Dict[str, Any]]) -> str:
        return next((r["started_at"] for r in reversed(runs) if r.get("outcome") != "failed"), "")

    def new_labels(self, runs: Optional[List[Dict[str, Any]]] = None) -> List[str]:
        """Cases with a submitted final label saved (or, when only approved labels train, approved) since the last
        training that did not fail started."""
        since = self._counted_since(self._state().get("runs", []) if runs is None else runs)
        history = list(self.history())
        finals = [(case, record) for case, record in history if record.get("tag") == "final" and record.get("source") not in NOT_SUBMITTED]
        if effective_train_on(self.train_on, history) == "approved":
            return sorted({case for case, record in finals if (approved_at(record) or "") > since})
        return sorted({case for case, record in finals if record.get("saved_at", "") > since})

    def observe(self, tasks: Iterable[Dict[str, Any]]) -> None:
        """Record MONAI Label's training tasks (server process): each new start, and how each ended."""
        tasks = [t for t in tasks if t.get("id") and t.get("start_ts")]
        if not tasks:
            return

        def record(state: Dict[str, Any]) -> Dict[str, Any]:
            runs = state.get("runs", [])
            by_task = {r.get("task_id"): r for r in runs}
            for task in tasks:
                run = by_task.get(task["id"])
                if run is None:
                    started_at, epoch_s = (task["started_at"], task["started_epoch_s"]) if "started_at" in task else task_started_utc(task["start_ts"])
                    labels = self.new_labels(runs)
                    run = {
                        "task_id": task["id"],
                        "started_at": started_at,
                        "started_epoch_s": epoch_s,
                        "labels": labels,
                        "reason": task.get("request", {}).get("reason", "requested"),
                    }
                    runs.append(run)
                    by_task[task["id"]] = run
                outcome = TASK_ENDED.get(str(task.get("status")))
                if outcome and "outcome" not in run:
                    run["outcome"] = outcome
                    if outcome == "failed":
                        logger.warning(f"Training {task['id']} {task.get('status')}: its {len(run['labels'])} labels count towards the next training")
            return {"runs": runs[-RUNS_KEPT:]}

        update_json(self.state_path, record, {})

    def check(self) -> Optional[Any]:
        """Start a fine-tune when the policy says so; the training request's answer, else None."""
        self.observe(self.training_tasks())
        if self.policy.after_labels <= 0:
            return None
        labels = self.new_labels()
        if len(labels) < self.policy.after_labels:
            return None
        runs = self._state().get("runs", [])
        last = runs[-1].get("started_epoch_s", 0.0) if runs else 0.0  # failed runs too: no tight loop of failures
        if time.time() - last < self.policy.min_interval_s:
            return None
        answer = self.start_training()
        if answer is None:
            return None  # a training is running; try again at the next check
        logger.info(f"Fine-tuning on {len(labels)} new labels: {', '.join(labels)}")
        return answer

    def status(self) -> Dict[str, Any]:
        self.observe(self.training_tasks())
        runs = self._state().get("runs", [])
        labels = self.new_labels(runs)
        last = runs[-1].get("started_epoch_s") if runs else None
        return {
            "new_labels": len(labels),
            "labels_needed": self.policy.after_labels,
            "min_interval_s": self.policy.min_interval_s,
            "last_started_at": runs[-1]["started_at"] if runs else None,
            "next_allowed_in_s": max(0.0, round(last + self.policy.min_interval_s - time.time(), 1)) if last else 0.0,
            "enabled": self.policy.after_labels > 0,
            "runs": runs[-5:],
        }
