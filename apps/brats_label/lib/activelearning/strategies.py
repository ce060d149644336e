"""Next-case strategies: a random unlabelled case, the most uncertain one, or one drawn by its uncertainty.

All never return a labelled case, skip cases handed to another annotator, and reserve the case they
return for the asking client (``client_id``, sent by MONAI Label's clients). One exception comes first: a label a
reviewer sent back for changes goes back to the annotator who saved it (``returned_to``, set by the Next Sample route
from the signed-in user), with the reviewer's comment in the answer (``review``): a correction asked for is work
already started, and the model does not learn from that study until it is done. A study read twice
(``labels/double_reading.py``) is not handed to a reader who already read it, nor to anyone while its readings wait for
a reviewer's adjudication. The uncertainty
strategies use only scores made by the model being served; while there is no model, or no score for
it yet, it picks at random and says so in the answer (``picked_by``, ``reason``). The answer avoids
the key ``strategy``: MONAI Label's endpoint overwrites it with the case's stored hand-out record.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Dict, List, Optional, Set

import numpy as np
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from .handouts import HandOuts
from .scores import ScoreStore
from .selection import power_sample

ANONYMOUS = "anonymous"
RETURNED_TO = "returned_to"  # request key: whose returned labels come first (None: anyone's, authentication off)
RETURNED = "returned for changes"


def returned_label(datastore: Datastore, owner: Optional[str], taken: Set[str]) -> Optional[Dict[str, Any]]:
    """The oldest label sent back to ``owner`` that nobody else holds, as a strategy's answer; None if there is none."""
    returned_labels = getattr(datastore, "returned_labels", None)  # the app's datastores; MONAI Label's have no reviews
    waiting = [entry for entry in (returned_labels(owner) if returned_labels else []) if entry["case"] not in taken]
    if not waiting:
        return None
    review = {key: value for key, value in waiting[0].items() if key != "case"}
    return {"id": waiting[0]["case"], "picked_by": RETURNED, "review": review}


def not_for_reader(datastore: Datastore, names: Set[str]) -> Set[str]:
    """Studies read twice that this reader already read, or whose readings wait for a reviewer (none for MONAI Label's
    own datastores, which have no double reading)."""
    closed = getattr(datastore, "not_for_reader", None)
    return closed(names) if closed else set()


class _HandOutStrategy(Strategy):
    def __init__(self, description: str, handouts: HandOuts, rng: Optional[random.Random] = None):
        super().__init__(description)
        self.handouts = handouts
        self.rng = rng or random.Random()

    def choose(self, candidates: List[str], request: Dict[str, Any]) -> Dict[str, Any]:
        raise NotImplementedError

    def __call__(self, request: Dict[str, Any], datastore: Datastore) -> Optional[Dict[str, Any]]:
        client = str(request.get("client_id") or ANONYMOUS)
        with self.handouts.lock:
            taken = self.handouts.taken_by_others(client)
            answer = returned_label(datastore, request.get(RETURNED_TO), taken)
            if answer is None:
                closed = taken | not_for_reader(datastore, {str(name) for name in (client, request.get(RETURNED_TO)) if name})
                candidates = [c for c in datastore.get_unlabeled_images() if c not in closed]
                if not candidates:
                    return None
                answer = self.choose(sorted(candidates), request)
            answer["reserved_until"] = self.handouts.reserve(answer["id"], client)
            answer["client_id"] = client
            return answer


class RandomStrategy(_HandOutStrategy):
    def __init__(self, handouts: HandOuts, rng: Optional[random.Random] = None):
        super().__init__("Random unlabelled case", handouts, rng)

    def choose(self, candidates: List[str], request: Dict[str, Any]) -> Dict[str, Any]:
        return {"id": self.rng.choice(candidates), "picked_by": "random"}


class UncertaintyStrategy(_HandOutStrategy):
    picked_by = "uncertainty"

    def __init__(
        self,
        store: ScoreStore,
        served_version: Callable[[], Optional[str]],
        handouts: HandOuts,
        rng: Optional[random.Random] = None,
        description: str = "Most uncertain unlabelled case under the served model",
    ):
        super().__init__(description, handouts, rng)
        self.store = store
        self.served_version = served_version

    def pick(self, scores: Dict[str, float]) -> str:
        return max(scores, key=lambda c: scores[c])

    def choose(self, candidates: List[str], request: Dict[str, Any]) -> Dict[str, Any]:
        version = self.served_version()
        scored = {c: r for c in candidates if (r := self.store.current(c, version))}
        if not scored:
            reason = "no model yet" if version is None else f"no uncertainty scores for model {version} yet (scoring runs in the background)"
            return {"id": self.rng.choice(candidates), "picked_by": "random", "reason": f"random pick: {reason}"}
        case = self.pick({c: float(r["score"]) for c, r in scored.items()})
        return {"id": case, "picked_by": self.picked_by, "score": scored[case]["score"], "model_version": version, "scored": len(scored), "unscored": len(candidates) - len(scored)}


class PowerUncertaintyStrategy(UncertaintyStrategy):
    """An unlabelled case drawn with probability proportional to its uncertainty ** beta (stochastic power
    sampling, ``selection.power_sample``): annotators asking one after another get cases uncertain for different
    reasons, not the near-duplicates at the top of the ranking."""

    picked_by = "power"

    def __init__(self, store: ScoreStore, served_version: Callable[[], Optional[str]], handouts: HandOuts, beta: float, rng: Optional[random.Random] = None):
        super().__init__(store, served_version, handouts, rng, "An uncertain unlabelled case, drawn in proportion to its uncertainty")
        self.beta = beta

    def pick(self, scores: Dict[str, float]) -> str:
        return power_sample(scores, 1, np.random.default_rng(self.rng.getrandbits(64)), self.beta)[0]
