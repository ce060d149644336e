"""The held-out set: labelled studies never trained on, on which model versions are compared.

The first training with a validation split chooses it (a fixed hash order of the labelled studies, so the
choice does not depend on listing order). An admin grows it on purpose (``POST /brats/holdout``), for example
with studies of a kind the set lacks; two held-out studies make noisy promotion decisions. Studies are only
ever added: a removed study would make earlier comparisons incomparable. After the set grows, every kept
version is scored again on the whole set (``HeldOutReevaluation``), so versions stay comparable study by study.

    <model_dir>/holdout.json   {"studies": [...], "history": [{"at", "added", "by"}]}   (a bare list: older servers)
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..errors import InvalidInput
from ..runtime.atomic import read_json
from ..runtime.clock import utc_now
from ..runtime.shared_state import update_json
from .evaluation import evaluate_on
from .versions import ModelVersions

logger = logging.getLogger(__name__)

MAX_ADDED_AT_ONCE = 1000


def _normalised(content: Any) -> Dict[str, Any]:
    if isinstance(content, list):  # written by servers before the set could grow
        return {"studies": sorted(content), "history": []}
    return content if isinstance(content, dict) else {"studies": [], "history": []}


class HeldOutSet:
    def __init__(self, path: Path):
        self.path = Path(path)

    def read(self) -> Dict[str, Any]:
        return _normalised(read_json(self.path, None))

    def studies(self) -> List[str]:
        return list(self.read()["studies"])

    def chosen(self) -> bool:
        return read_json(self.path, None) is not None

    def choose_once(self, labelled: Sequence[str], fraction: float) -> List[str]:
        """The set, chosen now from ``labelled`` if no training or admin chose it before."""

        if not self.chosen() and len(labelled) < 2:
            return []  # nothing to hold out yet: every label trains

        def choose(content: Any) -> Dict[str, Any]:
            if content is not None:
                return _normalised(content)
            count = max(1, round(fraction * len(labelled)))
            chosen = sorted(sorted(labelled), key=lambda i: hashlib.sha256(i.encode()).hexdigest())[:count]
            return {"studies": sorted(chosen), "history": [{"at": utc_now(), "added": sorted(chosen), "by": "first training"}]}

        return _normalised(update_json(self.path, choose, None))["studies"]

    def add(self, studies: Sequence[str], labelled: Sequence[str], by: str) -> Dict[str, Any]:
        """Add labelled studies; all or none (an unknown or unlabelled study refuses the whole request)."""
        if not studies or len(studies) > MAX_ADDED_AT_ONCE:
            raise InvalidInput(f"name 1 to {MAX_ADDED_AT_ONCE} labelled studies to add to the held-out set")
        missing = sorted(set(studies) - set(labelled))
        if missing:
            raise InvalidInput(f"not labelled (only studies with a final label can be held out): {', '.join(missing[:20])}; nothing was added")

        def grow(content: Any) -> Dict[str, Any]:
            current = _normalised(content)
            new = sorted(set(studies) - set(current["studies"]))
            if not new:
                return current
            return {"studies": sorted(set(current["studies"]) | set(new)), "history": [*current["history"], {"at": utc_now(), "added": new, "by": by}]}

        return _normalised(update_json(self.path, grow, None))


class HeldOutReevaluation:
    """Every kept version scored again on the held-out set, in one background thread of the server process
    (at low priority, beside inference). The scores go into each version's record (``held_out_evaluation``);
    a version that cannot be scored gets its error there, and the others are still scored."""

    def __init__(
        self, held_out: HeldOutSet, versions: ModelVersions, evaluate: Callable[[Path, List[Dict]], Dict[str, Any]], items: Callable[[List[str]], List[Dict]], niceness: int
    ):
        self.held_out = held_out
        self.versions = versions
        self._evaluate = evaluate
        self._items = items
        self._niceness = niceness
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._again = False
        self._status: Dict[str, Any] = {"state": "idle"}

    def status(self) -> Dict[str, Any]:
        with self._lock:
            return dict(self._status)

    def start(self) -> None:
        """Score every version (again); a call while scoring runs makes it start over once it ends."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                self._again = True
                return
            self._thread = threading.Thread(target=self._run, name="held-out-reevaluation", daemon=True)
            self._thread.start()

    def _set(self, **fields: Any) -> None:
        with self._lock:
            self._status = {**self._status, **fields}

    def _run(self) -> None:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._niceness)  # this thread only
        while True:
            with self._lock:
                self._again = False
            self._score_every_version()
            with self._lock:
                if not self._again:
                    return

    def _score_every_version(self) -> None:
        studies = self.held_out.studies()
        records = self.versions.list()
        self._set(state="running", held_out=studies, done=0, of=len(records), started_at=utc_now(), failed=[])
        try:
            items = self._items(studies)
        except Exception as e:
            logger.exception("held-out studies could not be read for re-evaluation")
            self._set(state="failed", error=str(e), ended_at=utc_now())
            return
        failed = []
        for number, record in enumerate(records):
            version = record["id"]
            result: Dict[str, Any] = {"held_out": studies, "at": utc_now(), "trained_on_held_out": sorted(set(record.get("labels", [])) & set(studies))}
            try:
                scores = self._evaluate(self.versions.folder / version / "model.pt", items)
                result.update(scores)
            except Exception as e:  # one version's weights (removed, of another profile) never stop the others
                logger.warning(f"Model version {version} could not be scored on the held-out set: {e}")
                result["error"] = str(e)
                failed.append(version)
            self.versions.update(version, held_out_evaluation=result)
            self._set(done=number + 1, failed=failed)
        logger.info(f"{len(records) - len(failed)} of {len(records)} model versions scored on the {len(studies)} held-out studies")
        self._set(state="done", ended_at=utc_now())


def reevaluation(held_out: HeldOutSet, versions: ModelVersions, profile: Any, transforms: List, items: Callable[[List[str]], List[Dict]], niceness: int) -> HeldOutReevaluation:
    return HeldOutReevaluation(held_out, versions, lambda weights, cases: evaluate_on(profile, weights, cases, transforms), items, niceness)
