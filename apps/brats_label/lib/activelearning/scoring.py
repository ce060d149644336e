"""MONAI Label scoring method: epistemic uncertainty of the served model on every unlabelled case.

Run by MONAI Label as a background task (``POST /scoring/uncertainty``, a separate process), so
inference and label saving are not blocked. Cases whose score is current for the served model are
skipped, so an interrupted pass resumes where it stopped; the others are scored most-likely-next
first (highest previous score), so the annotation queue is right at the top soonest.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Dict, List

import torch
from monai.transforms import Compose
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod
from tqdm import tqdm

from ..config import NetworkProfile, ScoringSettings
from ..infers.segmentation import preprocessing
from ..model.network import load_network, sliding_window_inferer
from ..model.transforms import voxel_volume_ml
from .sampling import stochastic_predictions
from .scores import ScoreStore, model_version
from .uncertainty import case_uncertainty

logger = logging.getLogger(__name__)


class EpistemicScoring(ScoringMethod):
    def __init__(self, profile: NetworkProfile, model_path_fn, store: ScoreStore, settings: ScoringSettings):
        super().__init__(f"Epistemic uncertainty: {settings.samples} samples of MC dropout and test-time flips")
        self.profile = profile
        self.model_path_fn = model_path_fn  # the served weights (published model, else starting weights)
        self.store = store
        self.settings = settings

    def info(self) -> Dict[str, Any]:
        return {**super().info(), "samples": self.settings.samples, "progress": self.store.progress()}

    def order(self, cases: List[str]) -> List[str]:
        """Previously most uncertain first; never-scored cases after them."""
        scores = {c: (self.store.get(c) or {}).get("score") for c in cases}
        previous = {c: -1.0 if score is None else float(score) for c, score in scores.items()}
        return sorted(cases, key=lambda c: -previous[c])

    def score_case(self, image_uri: str, network: torch.nn.Module, generator_seed: int) -> Dict[str, Any]:
        prepared = Compose(preprocessing(self.profile))({"image": image_uri})["image"]
        voxel_ml = voxel_volume_ml(prepared.affine)
        inferer = sliding_window_inferer(self.profile)
        torch.manual_seed(generator_seed)
        samples = stochastic_predictions(prepared.as_tensor()[None], network, inferer, self.settings.samples, self.settings.mc_dropout, self.settings.flips)
        result = case_uncertainty(samples, voxel_ml, self.settings.roi_threshold, self.settings.margin_vox, self.settings.fallback_top)
        return {"score": result.score, "roi_voxels": result.roi_voxels, "tumour_ml": round(result.tumour_ml, 2), "samples": self.settings.samples}

    def __call__(self, request: Dict[str, Any], datastore: Datastore) -> Dict[str, Any]:
        path = self.model_path_fn()
        version = model_version(path)
        if version is None:
            return {"scored": 0, "reason": "no model yet: nothing to score with"}
        todo = [c for c in datastore.get_unlabeled_images() if self.store.attempted(c, version) is None]
        todo = self.order(todo)
        network = load_network(self.profile, path, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        started = time.time()
        self.store.set_progress(model_version=version, done=0, total=len(todo), started=started)
        failed: Dict[str, str] = {}
        for done, case in enumerate(tqdm(todo, desc=f"scoring for model {version}", unit="case"), start=1):
            case_started = time.time()
            try:
                record = self.score_case(datastore.get_image_uri(case), network, generator_seed=done)
            except Exception as e:  # one study that cannot be opened or scored must not stop the others
                failed[case] = f"{type(e).__name__}: {e}"
                logger.warning(f"Study {case} not scored: {failed[case]}")
                self.store.save_failure(case, version, failed[case])
                continue
            finally:
                self.store.set_progress(model_version=version, done=done, total=len(todo), started=started, last=case, failed=len(failed))
            record["seconds"] = round(time.time() - case_started, 2)
            self.store.save(case, version, record)
        return {"scored": len(todo) - len(failed), "failed": failed, "model_version": version, "seconds": round(time.time() - started, 1)}
