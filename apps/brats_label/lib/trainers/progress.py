"""What the running training is doing, for a status endpoint: epoch, loss, validation Dice, time left.

MONAI Label's ``/train/`` status says only that a task runs and prints the worker's log. The training
worker is a separate process, so it writes its progress to a small JSON file (atomically, at most every
``PROGRESS_WRITE_INTERVAL_S`` and at every epoch end) that the server reads on request.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Optional

from ignite.engine import Engine, Events

from ..runtime.atomic import read_json, write_json
from ..runtime.clock import task_started_utc, utc_now
from .curves import region_keys

PROGRESS_WRITE_INTERVAL_S = 2.0


def _loss(engine: Engine) -> Optional[float]:
    output = engine.state.output
    if isinstance(output, list) and output and isinstance(output[0], dict) and "loss" in output[0]:
        return float(output[0]["loss"])
    return None


class TrainingProgress:
    """Attach to the trainer (and its evaluator); ``phase`` moves training → validating → evaluating → finished."""

    def __init__(self, path: Path, run_id: str, labels: int, held_out: int):
        self.path = Path(path)
        self.state: Dict[str, Any] = {
            "run": run_id,
            "phase": "starting",
            "started_at": utc_now(),
            "labels": labels,
            "held_out": held_out,
            "epoch": 0,
            "max_epochs": None,
            "iteration": 0,
            "loss": None,
            "validation_dice": {},
            "elapsed_s": 0.0,
            "remaining_s": None,
        }
        self._start = time.monotonic()
        self._last_write = 0.0

    def attach(self, trainer: Engine, evaluator: Optional[Engine]) -> None:
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)
        trainer.add_event_handler(Events.EXCEPTION_RAISED, self._failed)
        if evaluator is not None:
            evaluator.add_event_handler(Events.STARTED, lambda _: self.update(phase="validating"))
            evaluator.add_event_handler(Events.COMPLETED, self._validated)

    def _timing(self, trainer: Engine) -> Dict[str, Any]:
        elapsed = time.monotonic() - self._start
        done = trainer.state.iteration
        total = (trainer.state.max_epochs or 0) * (trainer.state.epoch_length or 0)
        # Mean time per iteration so far, validation included: the estimate settles after the first epoch.
        remaining = elapsed / done * (total - done) if done and total else None
        return {
            "epoch": trainer.state.epoch,
            "max_epochs": trainer.state.max_epochs,
            "iteration": done,
            "iterations": total,
            "elapsed_s": round(elapsed, 1),
            "remaining_s": round(remaining, 1) if remaining is not None else None,
        }

    def _iteration(self, trainer: Engine) -> None:
        self.state.update(self._timing(trainer), phase="training", loss=_loss(trainer))
        if time.monotonic() - self._last_write >= PROGRESS_WRITE_INTERVAL_S:
            self._write()

    def _epoch(self, trainer: Engine) -> None:
        self.state.update(self._timing(trainer), loss=_loss(trainer))
        self._write()

    def _validated(self, evaluator: Engine) -> None:
        metrics = evaluator.state.metrics
        dice = {label: round(float(metrics[key]), 4) for key, label in region_keys([metrics]).items() if key in metrics}
        self.update(phase="training", validation_dice=dice)

    def _failed(self, trainer: Engine, error: Exception) -> None:
        self.update(phase="failed", error=f"{type(error).__name__}: {error}")
        raise error  # ignite swallows an exception once a handler takes it

    def update(self, **fields: Any) -> None:
        self.state.update(fields)
        self._write()

    def _write(self) -> None:
        self.state["updated_at"] = utc_now()
        write_json(self.state, self.path)
        self._last_write = time.monotonic()


def read_progress(path: Path, task: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The last training's progress (empty when none has run).

    ``task``: MONAI Label's record of the last training. A worker that was killed, or died before its
    first progress write, cannot say so itself: when the task ended badly and the file does not say
    finished or failed, the answer is ``failed`` with the task's exit status and last log lines."""
    progress = read_json(Path(path), {})
    if not task or task.get("status") not in ("ERROR", "STOPPED"):
        return progress
    stale = progress.get("started_at", "") < task_started_utc(task["start_ts"])[0][:19]  # written by an earlier run
    if stale or progress.get("phase") not in ("finished", "failed"):
        details = [str(line) for line in task.get("details", [])][-3:]
        reason = f"the training process ended with {task['status']} (stopped, killed or crashed before it finished)"
        progress = {**progress, "phase": "failed", "reason": reason, "log_tail": details, "remaining_s": 0.0}
    return progress
