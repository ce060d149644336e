"""BraTS Label: a MONAI Label app for brain-tumour MRI, where a case is a four-sequence study.

Start it with MONAI Label's own server, for example::

    monailabel start_server --app apps/brats_label --studies data/studies --conf profile cpu

``--conf`` keys (all optional), read once here:

    profile             cpu (2 mm, light, default) or bundle (model-zoo brats_mri_segmentation compatible)
    pretrained_weights  starting weights: a file (e.g. the bundle's models/model.pt), or zoo:brats_mri_segmentation[@0.5.3]
                        fetched from the MONAI model zoo into <workspace>/model_zoo once (profile bundle by default)
    zoo_url             where zoo bundles are fetched from instead of MONAI's hosting, e.g. https://mirror/{name}_v{version}.zip
    workspace           where labels, caches and models are written (default <studies>/.brats_label,
                        or ~/.cache/brats_label/<host_port> for an archive)
    series_rules        JSON file of [channel, regex] pairs naming a site's series (archive only)
    dicomweb_refresh_s  how often the archive is listed again, in the background (default 30; 0: inside every request)
    infer_concurrency   auto-segmentations run at once, the others queue in arrival order (default 1)
    max_upload_mb       request bodies over this are refused before they are read (default 256)
    auth_audience       the audience a token must name (default MONAI_LABEL_AUTH_CLIENT_ID, monailabel-app)
    retrain_after_labels, retrain_min_interval_s   automatic fine-tune after N new labels, at most so often
    promote_tolerance   a new model version is served unless its held-out mean Dice is lower by more (0.01), or a
                        paired test over the held-out studies finds it worse (lib/trainers/promotion.py)
    seed                training seed (default: one drawn per run, kept in the version record)
    max_epochs, learning_rate, batch_size, patch_size, val_split   training defaults
"""

from __future__ import annotations

import lib.runtime.worker_priority  # noqa: F401  first: a worker yields the CPU before torch and MONAI are imported

# isort: split

import dataclasses
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional
from urllib.parse import urlparse

import anyio
import numpy as np
from fastapi import Body, Depends, Response
from fastapi.responses import FileResponse
from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.utils.async_tasks.task import AsyncTask

from lib.activelearning.handouts import HandOuts
from lib.activelearning.queue import annotation_queue
from lib.activelearning.scores import ScoreStore, ServedModelVersion
from lib.activelearning.scoring import EpistemicScoring
from lib.activelearning.strategies import PowerUncertaintyStrategy, RandomStrategy, UncertaintyStrategy
from lib.config import (
    ARRIVAL_PREPARATION_INTERVAL_S,
    BACKGROUND_NICENESS,
    CASE_PREPARATION_AGAIN_S,
    CASE_PREPARATION_QUEUE_MAX,
    DEFAULT_LABEL_SET,
    DICOMWEB_WORKSPACE_ROOT,
    FOLLOW_UP_MODEL_NAME,
    MODEL_NAME,
    NEXT_SAMPLE_PICKS,
    POWER_SAMPLING_BETA,
    REFINEMENT_MODEL_NAME,
    SCRATCH_DIR_NAME,
    TOKEN_ALGORITHMS,
    ZOO_CACHE_DIR,
    AppConfig,
    FollowUpSettings,
)
from lib.dashboard.drift import input_drift
from lib.dashboard.summary import dashboard_data
from lib.dicom.archive import Archive
from lib.dicom.series_rules import SeriesRules
from lib.endpoints.dicomweb_proxy import install_dicomweb_proxy
from lib.endpoints.image_download import install_image_download_route
from lib.endpoints.label_info import install_label_info_routes
from lib.endpoints.next_sample import install_next_sample_route
from lib.endpoints.ohif_submit import install_ohif_submit_routes
from lib.endpoints.routes import answer_domain_errors, check_monai_label_version, install_route_guard, offload_blocking_stock_routes, record_task_start_times
from lib.endpoints.save_label import install_save_label_route
from lib.endpoints.token_check import TokenVerifier, install_token_check
from lib.errors import InvalidInput, NotFound
from lib.followup.prior_label import earlier_final_label
from lib.followup.timeline import patient_timeline, timeline_png
from lib.infers.follow_up import CURRENT_KEY, PRIOR_KEY, WHY_NONE_KEY, BratsFollowUp
from lib.infers.refinement import BratsRefinement
from lib.infers.segmentation import BratsSegmentation
from lib.interactive.clicks import clicks_in_world
from lib.labels.audit import PreLabels, audit_csv, audit_rows
from lib.labels.label_store import check_case_id
from lib.labels.review import ReviewDecision, returned_review, review_state
from lib.model.model_zoo import fetch_weights
from lib.model.network import check_weights, starting_weights
from lib.runtime.infer_queue import FairQueue
from lib.runtime.processes import in_worker_process, yield_cpu_if_worker
from lib.studies.case_preparation import ArrivalPreparation, CasePreparation
from lib.studies.dicomweb_datastore import DicomWebStudyDatastore
from lib.studies.folder_datastore import StudyFolderDatastore
from lib.studies.study_datastore import FINAL
from lib.trainers.evaluation import evaluation_transforms
from lib.trainers.held_out import MAX_ADDED_AT_ONCE, HeldOutReevaluation, reevaluation
from lib.trainers.progress import read_progress
from lib.trainers.refinement import BratsRefinementTrainer
from lib.trainers.retrain import RetrainTrigger
from lib.trainers.segmentation import BratsSegmentationTrainer
from lib.trainers.versions import ModelVersions

logger = logging.getLogger(__name__)

SCORING_METHOD = "uncertainty"
API_PREFIX = "/brats"  # endpoints MONAI Label does not have
DASHBOARD_PAGE = Path(__file__).parent / "lib" / "dashboard" / "dashboard.html"
MODEL_WATCH_INTERVAL_S = 15
REQUEST_THREADS = 128  # anyio's default is 40: 32 annotators' queued auto-segmentations would take them all
TRAINING_ENDED = ("DONE", "ERROR", "STOPPED")  # MONAI Label's task states after a run


def refuse_several_server_processes(argv: List[str]) -> None:
    """``--workers N`` would start N server processes, each sending, importing and committing labels on its
    own: the one-writer rule would not hold. Refused with what to do instead."""
    for flag, value in zip(argv, argv[1:]):
        if flag == "--workers" and value.isdigit() and int(value) > 1:
            raise SystemExit(
                f"BraTS Label runs as one server process (--workers {value} asked for {value}): one process writes labels, "
                "model versions and hand-outs. Start it without --workers; training and scoring already run in processes of their own."
            )


def is_archive(studies: str) -> bool:
    return studies.startswith(("http://", "https://"))


def default_workspace(studies: str) -> Path:
    if is_archive(studies):
        netloc = urlparse(studies).netloc.replace(":", "_") or "archive"
        return Path(DICOMWEB_WORKSPACE_ROOT).expanduser() / netloc
    return Path(studies) / SCRATCH_DIR_NAME


class BratsLabelApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: Dict[str, str]):
        refuse_several_server_processes(sys.argv)
        self.config = AppConfig.from_conf(conf or {})
        self._writer = not in_worker_process()
        self._serving = False  # True only in the server process (on_init_complete)
        self._reevaluation: Optional[HeldOutReevaluation] = None  # the server process's, made in on_init_complete
        self.workspace = self.config.workspace or default_workspace(studies)
        self.pretrained_weights = self.config.pretrained_weights
        if self.config.pretrained_zoo is not None:  # fetched once into the workspace, then used offline
            self.pretrained_weights = fetch_weights(self.config.pretrained_zoo, self.workspace / ZOO_CACHE_DIR, self.config.zoo_url)
        self.model_dir = self.workspace / "model"
        if self.pretrained_weights is not None:  # a pre-operative model starts a post-treatment one: its outputs widened
            self.pretrained_weights, state = starting_weights(self.pretrained_weights, self.config.profile, self.model_dir, self.config.train.foreground_prior)
            # Fail at start-up, not at the first click, when the starting weights do not fit.
            check_weights(state, self.config.profile, self.pretrained_weights)
        self.model_path = self.model_dir / f"{MODEL_NAME}.pt"
        self.refinement_path = self.model_dir / f"{REFINEMENT_MODEL_NAME}.pt"
        self.model_dir.mkdir(parents=True, exist_ok=True)
        self.scores = ScoreStore(self.workspace / "scores")
        self.handouts = HandOuts(self.workspace / "handouts.json", self.config.handout_ttl_s)
        self.prelabels = PreLabels(self.workspace / "prelabels", self.config.label_set)
        self.versions = ModelVersions(self.model_dir, self.model_path)
        self.refinement_versions = ModelVersions(self.model_dir / REFINEMENT_MODEL_NAME, self.refinement_path)
        self.infer_queue = FairQueue(self.config.infer_concurrency)
        self.case_preparation = CasePreparation(self._prepare_case, CASE_PREPARATION_AGAIN_S, CASE_PREPARATION_QUEUE_MAX)
        # a trained refinement model's answer to no clicks, computed after a study's auto-segmentation (in the inference
        # queue, so that it never runs beside an annotator's request): the study's first click then costs what the others do
        self.refinement_warm_up = CasePreparation(self._warm_refinement, CASE_PREPARATION_AGAIN_S, CASE_PREPARATION_QUEUE_MAX)
        self.arrival_preparation = ArrivalPreparation(self._unprepared_studies, lambda study: self._datastore.get_image_uri(study), self._idle, ARRIVAL_PREPARATION_INTERVAL_S)
        if self._writer:
            self._register_first_version()
        self.retrain = RetrainTrigger(
            self.workspace / "retrain.json",
            self.config.retrain,
            history=lambda: self._datastore.history_records(),  # type: ignore[attr-defined]
            start_training=self._retrain,
            train_on=self.config.train_on,
            training_tasks=lambda: [t for t in self._training_tasks() if t.get("request", {}).get("model", MODEL_NAME) == MODEL_NAME],
        )
        # evaluated lazily: the infer task exists only once MONAI Label's __init__ has run
        self.served_version = ServedModelVersion(lambda: self._infers[MODEL_NAME].get_path())
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="BraTS Label",
            description="Active-learning annotation of glioma sub-regions on T1, T1c, T2 and FLAIR",
            version="0.1.0",
            # A list in value order (value = position + 1): OHIF's MONAI Label panel appends to this list and
            # fails silently on a dict; Slicer takes either. Each model's labels keep the name -> value map.
            labels=list(self.config.label_set.foreground),
        )
        # Rescoring follows model changes (on_init_complete), not every "next sample" request.
        self._auto_update_scoring = False

    def _register_first_version(self) -> None:
        """Starting weights (or a model served before versions existed) become version 0."""
        if self.versions.list():
            return
        source = self.model_path if self.model_path.exists() else self.pretrained_weights
        if source is None:
            return
        record = self.versions.add(Path(source), {"parent": None, "source": str(source), "reason": "starting model", "promoted": True})
        self.versions.promote(record["id"], "starting model")

    def _apply_promotions(self) -> None:
        """Serve the versions trainings asked for (this process is the one that writes what is served)."""
        self.versions.apply_promotions()
        self.refinement_versions.apply_promotions()

    def _versions_of(self, model: str) -> ModelVersions:
        if model not in (MODEL_NAME, REFINEMENT_MODEL_NAME):
            raise NotFound(f"No model '{model}': the models with versions are '{MODEL_NAME}' and '{REFINEMENT_MODEL_NAME}'")
        return self.versions if model == MODEL_NAME else self.refinement_versions

    def models(self, model: str = MODEL_NAME):
        """Every version of a model (``?model=refinement`` for the clicks' model), which one is served, and why each
        was or was not promoted."""
        self._apply_promotions()
        versions = self._versions_of(model)
        return {"model": model, "serving": versions.serving(), "versions": versions.list()}

    def promote_model(self, version: str, model: str = MODEL_NAME):
        """Serve this version (a rollback when it is older); inference switches without a restart."""
        record = self._versions_of(model).promote(version, "promoted by hand")
        return {"model": model, "serving": version, "version": record}

    @property
    def segmentation_trainer(self) -> BratsSegmentationTrainer:
        """The one trainer, typed: the scripts (``scripts/train_distributed.py``) and routes use its held-out set."""
        trainer = self._trainers[MODEL_NAME]
        assert isinstance(trainer, BratsSegmentationTrainer)
        return trainer

    def held_out(self):
        """The held-out studies versions are compared on, how the set grew, and the re-scoring of every version."""
        content = self.segmentation_trainer.held_out.read()
        return {**content, "reevaluation": self._reevaluation.status() if self._reevaluation else {"state": "idle"}}

    def add_held_out(self, add: List[str] = Body(..., embed=True), user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN))):
        """Hold out more labelled studies (never trained on from now on); every kept version is then scored again."""
        studies = [self._datastore.case_id(check_case_id(str(case))) for case in add[: MAX_ADDED_AT_ONCE + 1]]  # type: ignore[attr-defined]
        self.segmentation_trainer.held_out.add(studies, self._datastore.get_labeled_images(), by=user.username)
        assert self._reevaluation is not None, "routes exist only in the server process"
        self._reevaluation.start()
        return self.held_out()

    def training(self):
        """The running (or last) training: phase, epoch, loss, validation Dice, time left; and the retrain trigger."""
        self._apply_promotions()
        last, _ = AsyncTask.status("train")  # queued counts as running: the worker may not have started yet
        running = bool(last) and last.get("status") not in TRAINING_ENDED
        return {
            "running": running,
            "progress": read_progress(self.segmentation_trainer.progress_path, last),
            "retrain": self.retrain.status(),
            "serving": self.versions.serving(),
            "inference_queue": self.infer_queue.status(),
            "tensorboard_logdir": str(self.model_dir),  # tensorboard --logdir <this>: one events_<run> folder per run
        }

    def queue(self):
        """Unlabelled cases, most uncertain under the served model first."""
        return annotation_queue(self.scores, self.served_version(), self._datastore.get_unlabeled_images())

    def init_datastore(self) -> Datastore:
        extras = lambda: {e["id"]: {"uncertainty": e} for e in self.queue()}  # noqa: E731
        if is_archive(self.studies):
            archive = Archive(self.studies, settings.MONAI_LABEL_DICOMWEB_USERNAME or "", settings.MONAI_LABEL_DICOMWEB_PASSWORD or "")
            return DicomWebStudyDatastore(
                archive,
                self.workspace,
                SeriesRules(site_rules=self.config.series_rules),
                self.config.dicomweb_refresh_s,
                self.version,
                listing_extras=extras,
                label_audit=self.prelabels.compare,
                writer=self._writer,
                train_on=self.config.train_on,
                label_set=self.config.label_set,
                double_read=self.config.double_read,
            )
        return StudyFolderDatastore(
            Path(self.studies),
            self.workspace,
            listing_extras=extras,
            label_audit=self.prelabels.compare,
            writer=self._writer,
            train_on=self.config.train_on,
            label_set=self.config.label_set,
            double_read=self.config.double_read,
        )

    def infer(self, request, datastore=None):
        """MONAI Label's inference, one request at a time in arrival order (``infer_concurrency``), and the
        pre-label kept for the audit of the correction that follows."""
        request["save_label"] = False  # the model's own output is a pre-label, never a stored label
        # MONAI Label reads ``image`` as a file wherever such a path exists on the server (/etc/passwd, another
        # workspace): only a listed study's id (or, from an archive, one of its series' UIDs) is taken.
        image_id = check_case_id(str(request.get("image", "")))
        case = self._datastore.case_id(image_id)  # type: ignore[attr-defined]
        refinement = request.get("model") == REFINEMENT_MODEL_NAME
        image_uri = self._datastore.get_image_uri(case)  # prepared first: a moved series' grid is known once aligned
        if refinement:
            # clicks are indices of the volume the client shows: placed in the world through that volume's grid now,
            # and the answer drawn on that grid (OHIF reads it in the indices of the series on screen, any of the four)
            grid = self._datastore.clicked_grid(image_id)  # type: ignore[attr-defined]
            request["clicks_world"] = clicks_in_world(request, grid.affine, grid.shape)
            study = self._datastore.geometry(case)  # type: ignore[attr-defined]
            if not (grid.shape == study.shape and np.allclose(grid.affine, study.affine, atol=1e-3)):
                request["answer_grid"] = {"affine": grid.affine.tolist(), "shape": list(grid.shape)}
        request["image"] = image_uri
        if request.get("model") == FOLLOW_UP_MODEL_NAME:  # the patient's earlier final label, found here (the task has no datastore)
            prior, why_none = earlier_final_label(self._datastore, case)
            request[PRIOR_KEY] = {**dataclasses.asdict(prior), "image_path": str(prior.image_path), "label_path": str(prior.label_path)} if prior else None
            request[WHY_NONE_KEY], request[CURRENT_KEY] = why_none, image_uri
        with self.infer_queue.turn():
            self._apply_promotions()  # a training that just ended may have made a version to serve
            result = super().infer(request, datastore)
        if request.get("model") == MODEL_NAME and self._refinement_trained():
            self.refinement_warm_up.submit(case, "auto-segmented")
        # the audit measures the auto-segmentation a correction started from; a clicked answer is partly the annotator's
        if not refinement and result.get("file") and os.path.exists(result["file"]):
            version = self.versions.serving() or self.served_version()  # "vN"; the weights' hash if unversioned
            follow_up = (result.get("params") or {}).get("follow_up")
            origin = {"model": request.get("model"), **({"prior_case": follow_up.get("prior_case")} if follow_up else {})}
            self.prelabels.save(case, result["file"], version, request.get("client_id"), origin)
        return result

    def audit(self, format: str = "json"):
        """Every label version saved: who, when, from which client, the pre-label's model and Dice per region."""
        rows = audit_rows(self._datastore.history_records(), self.config.label_set)  # type: ignore[attr-defined]
        if format == "csv":
            return Response(audit_csv(rows, self.config.label_set), media_type="text/csv", headers={"Content-Disposition": "attachment; filename=label_audit.csv"})
        return rows

    def review(
        self,
        case: str,
        decision: str = Body(...),
        comment: str = Body(""),
        level: str = Body(""),
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_REVIEWER)),
    ):
        """A reviewer approves the study's final label or asks for changes (with a comment): kept with the label
        version, who (the signed-in user) and when; the label's info after it."""
        self._datastore.review_label(check_case_id(case), ReviewDecision(decision, comment, level), user.username)  # type: ignore[attr-defined]
        return self._datastore.get_label_info(case, FINAL)

    def review_of(self, case: str):
        """The review of the study's current final label, for the annotator it comes back to: its state and, when
        changes were requested, who asked, when, and the comment (OHIF shows it when the study opens)."""
        info = self._datastore.get_label_info(check_case_id(case), FINAL)  # {} without a final label
        return {"case": case, "state": review_state(info) if info else None, "returned": returned_review(info), "reviews": info.get("reviews", [])}

    def review_queue(self):
        """Final labels waiting for a review, oldest saved first, and which labels train now."""
        return {"waiting": self._datastore.review_queue(), "train_on": self._datastore.train_on()}  # type: ignore[attr-defined]

    def double_read_of(self, case: str):
        """Whether the study is read twice and why, each reading (reader, when, voxels), their agreement, its state."""
        return self._datastore.double_read_info(check_case_id(case))  # type: ignore[attr-defined]

    def mark_double_read(self, case: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN))):
        """An admin has the study read by two annotators (from its next label on)."""
        return self._datastore.mark_double_read(check_case_id(case), user.username)  # type: ignore[attr-defined]

    def reading(self, case: str, index: int):
        """The ``index``-th reader's latest reading of a study read twice (NIfTI), for the reviewer who adjudicates."""
        path = self._datastore.reading_path(check_case_id(case), index)  # type: ignore[attr-defined]
        return FileResponse(path, media_type="application/gzip", filename=f"{case}_reading{index}.nii.gz")

    def dashboard_page(self):
        """The dashboard's page: it holds no data (it reads ``dashboard/data`` with the reviewer's token)."""
        return FileResponse(DASHBOARD_PAGE, media_type="text/html", headers={"Cache-Control": "no-cache"})

    def dashboard(self):
        """What the dashboard shows: model versions, pre-label quality per week and model, the work queue and each
        annotator's, input drift of new studies, training."""
        datastore = self._datastore
        versions = self.versions.list()
        serving = self.versions.serving()
        # the studies the served model learned from; starting weights from elsewhere name none: the labelled studies
        trained_on = next((v.get("labels") or [] for v in versions if v.get("id") == serving), []) or datastore.get_labeled_images()
        unlabelled = datastore.get_unlabeled_images()
        statistics = datastore.input_statistics  # type: ignore[attr-defined]
        drift = input_drift({case: statistics(case) for case in trained_on}, {case: statistics(case) for case in unlabelled}, serving)
        return dashboard_data(versions, datastore.history_records(), len(unlabelled), self.handouts.active(), self.training(), drift, self.config.label_set)  # type: ignore[attr-defined]

    def dashboard_curve(self, version: str):
        """A model version's training curve (PNG)."""
        self.versions.get(version)  # NotFound for anything but a listed version
        curve = self.versions.folder / version / "training_curve.png"
        if not curve.is_file():
            raise NotFound(f"model version {version} has no training curve")
        return FileResponse(curve, media_type="image/png")

    def timeline(self, case: str, format: str = "json"):
        """The patient's studies oldest first: each region's volume (final label, or pre-label, said which) and
        its change against the previous study, the baseline and the nadir; ``?format=png``: the volumes over time."""
        rows, own = patient_timeline(self._datastore, self.prelabels, check_case_id(case))
        if format == "png":
            title = f"Tumour volumes over {len(rows)} {'study' if len(rows) == 1 else 'studies'}"
            return Response(timeline_png(rows, title, self.config.label_set), media_type="image/png")
        if format != "json":
            raise InvalidInput(f"format '{format[:20]}' is not offered: json (the default) or png")
        return {"case": own, "studies": rows}

    def init_infers(self) -> Dict[str, InferTask]:
        infers = {
            MODEL_NAME: BratsSegmentation(self.config.profile, self.model_path, self.pretrained_weights, version_fn=self.versions.serving),
            FOLLOW_UP_MODEL_NAME: BratsFollowUp(self.config.profile, self.model_path, self.pretrained_weights, FollowUpSettings(), version_fn=self.versions.serving),
        }
        if self._interactive:
            infers[REFINEMENT_MODEL_NAME] = BratsRefinement(
                self.config.profile, self.refinement_path, (self.pretrained_weights, self.model_path), growth=self.config.refinement.growth
            )
        return infers

    @property
    def _interactive(self) -> bool:
        """The refinement model (clicks) is built on the pre-operative regions only; another label set has none."""
        return self.config.label_set.name == DEFAULT_LABEL_SET

    def _segmentation_weights(self) -> Optional[Path]:
        """What the refinement model starts from: the segmentation model served once the promotions trainings asked
        for are applied (a retrain queues the refinement right behind the segmentation), else the starting weights."""
        for path in (self.versions.to_be_served(), self.pretrained_weights):
            if path is not None and Path(path).exists():
                return Path(path)
        return None

    def _retrain(self) -> Optional[Any]:
        """New labels retrain the segmentation model, then, once an admin has trained one, the refinement model from
        it, queued in that order: the clicks' model always follows the served pre-label."""
        reason = {"reason": "new labels"}
        if not self._interactive or not self.refinement_path.exists():
            return self.async_training(MODEL_NAME, {MODEL_NAME: reason})
        return self.async_training([MODEL_NAME, REFINEMENT_MODEL_NAME], {MODEL_NAME: reason, REFINEMENT_MODEL_NAME: reason}, enqueue=True)

    def init_trainers(self) -> Dict[str, TrainTask]:
        segmentation = BratsSegmentationTrainer(
            model_dir=self.model_dir,
            profile=self.config.profile,
            settings=self.config.train,
            publish_path=self.model_path,
            load_path=self.pretrained_weights,
            versions=self.versions,
            promote_tolerance=self.config.retrain.promote_tolerance,
            promote_alpha=self.config.retrain.promote_alpha,
        )
        if not self._interactive:
            return {MODEL_NAME: segmentation}
        refinement = BratsRefinementTrainer(
            model_dir=self.model_dir / REFINEMENT_MODEL_NAME,  # runs and progress of its own
            profile=self.config.profile,
            settings=self.config.train,
            refinement=self.config.refinement,
            publish_path=self.refinement_path,
            segmentation_weights=self._segmentation_weights,
            versions=self.refinement_versions,  # promoted by the same guard, on the robot's clicks
            held_out=segmentation.held_out,  # judged on studies neither model learnt from
        )
        return {MODEL_NAME: segmentation, REFINEMENT_MODEL_NAME: refinement}

    def init_strategies(self) -> Dict[str, Strategy]:
        # Listed first, so the viewers' default: random. bench/active_learning.py (5 seeds, a varied cohort, 3 to 16
        # labels, fine-tuned as the server does) found neither power sampling nor a TypiClust cold start better than
        # random (README, Active learning); both uncertainty strategies stay available.
        return {
            "random": RandomStrategy(self.handouts),
            "uncertainty": UncertaintyStrategy(self.scores, self.served_version, self.handouts),
            "power": PowerUncertaintyStrategy(self.scores, self.served_version, self.handouts, POWER_SAMPLING_BETA),
        }

    def init_scoring_methods(self) -> Dict[str, ScoringMethod]:
        return {SCORING_METHOD: EpistemicScoring(self.config.profile, self._infers[MODEL_NAME].get_path, self.scores, self.config.scoring)}

    def on_init_complete(self):
        """In the server process only (not in training or scoring workers): rescore when the model changes."""
        self._serving = True
        super().on_init_complete()
        from monailabel.app import app as server  # the running FastAPI application

        if isinstance(self._datastore, DicomWebStudyDatastore):
            self._datastore.start_background_work()  # requests use the last listing; none waits for the archive
        check_monai_label_version()
        record_task_start_times()
        answer_domain_errors(server)
        # requests now wait in threads (auto-segmentations queue there): room for a team's worth of them
        anyio.to_thread.current_default_thread_limiter().total_tokens = REQUEST_THREADS
        offload_blocking_stock_routes(server)  # first: our own routes then go in front of these
        audience = self.config.auth_audience or settings.MONAI_LABEL_AUTH_CLIENT_ID
        verifier = TokenVerifier(settings.MONAI_LABEL_AUTH_REALM_URI, audience, TOKEN_ALGORITHMS) if settings.MONAI_LABEL_AUTH_ENABLE else None
        if verifier is not None:
            install_token_check(verifier)
        install_save_label_route(server)
        install_label_info_routes(server, lambda: self._datastore)
        install_ohif_submit_routes(server, self.config.browser_sign_in)
        install_dicomweb_proxy(server)
        install_next_sample_route(server)
        install_image_download_route(server)
        self._reevaluation = reevaluation(
            self.segmentation_trainer.held_out,
            self.versions,
            self.config.profile,
            evaluation_transforms(self.config.profile),
            lambda studies: [self._datastore.training_item(case) for case in studies],  # type: ignore[attr-defined]
            BACKGROUND_NICENESS,
        )
        routes = [  # each route's role is in lib/endpoints/routes.py ROUTE_ROLES
            ("queue", self.queue, "GET", "Annotation queue: unlabelled cases by uncertainty"),
            ("models", self.models, "GET", "Model versions and the one served"),
            ("models/{version}/promote", self.promote_model, "POST", "Serve a model version (promote or roll back)"),
            ("holdout", self.held_out, "GET", "Held-out studies and the re-scoring of every model version on them"),
            ("holdout", self.add_held_out, "POST", "Add labelled studies to the held-out set; every version is scored again"),
            ("training", self.training, "GET", "Training progress: epoch, loss, validation Dice, time left"),
            ("audit", self.audit, "GET", "Label audit trail (?format=csv for a CSV file)"),
            ("review", self.review_queue, "GET", "Final labels waiting for a review, oldest first"),
            ("review/{case}", self.review, "POST", "Approve a final label or ask for changes (reviewers)"),
            ("review/{case}", self.review_of, "GET", "The review of a study's final label: state, and the comment when sent back"),
            ("double-read/{case}", self.double_read_of, "GET", "Whether a study is read twice, its readings and their agreement (reviewers)"),
            ("double-read/{case}", self.mark_double_read, "POST", "Have a study read by two annotators (admins)"),
            ("double-read/{case}/readings/{index}", self.reading, "GET", "One reader's label of a study read twice, as NIfTI (reviewers, to adjudicate)"),
            ("dashboard", self.dashboard_page, "GET", "The lab's dashboard (a page; its data need the reviewer role)"),
            ("dashboard/data", self.dashboard, "GET", "The dashboard's data: versions, pre-label quality, the work, input drift, training"),
            ("dashboard/curve/{version}", self.dashboard_curve, "GET", "A model version's training curve (PNG)"),
            ("timeline/{case}", self.timeline, "GET", "A patient's studies over time: volumes and their changes (?format=png for a picture)"),
        ]
        for path, endpoint, method, summary in routes:
            server.add_api_route(f"{API_PREFIX}/{path}", endpoint, methods=[method], summary=summary)
        install_route_guard(server, verifier, int(self.config.max_upload_mb * 2**20))  # last: every route exists

        threading.Thread(target=self._watch, name="model-watch", daemon=True).start()
        if self.config.prepare_on_arrival:
            self.arrival_preparation.start()

    def _watch(self) -> None:
        """Retrain when enough labels came in; rescore when the served model changes. Any error is logged
        and the loop goes on: one bad pass must not end learning from corrections until a restart."""
        scored_for = None
        while True:
            try:
                self._apply_promotions()
                version = self.served_version()
                self.retrain.check()
                if version is not None and version != scored_for:
                    logger.info(f"Served model is {version}: rescoring unlabelled cases in the background")
                    if self.async_scoring(SCORING_METHOD) is not None:  # None: refused (a scoring runs); retry
                        scored_for = version
            except Exception:
                logger.exception("model-watch pass failed; trying again in %s s", MODEL_WATCH_INTERVAL_S)
            time.sleep(MODEL_WATCH_INTERVAL_S)

    def on_save_label(self, image_id, label_id):
        """A submitted label may be the one that starts the next fine-tune (no other call needed); the saver's hand-out
        of the study ends (a study read twice goes to its second reader at once)."""
        answer = super().on_save_label(image_id, label_id) or {}
        self.handouts.release(label_id, self._datastore.saved_by(label_id))  # type: ignore[attr-defined]
        if self._serving:
            self.retrain.check()
            status = self.retrain.status()
            answer["retrain"] = {k: status[k] for k in ("enabled", "new_labels", "labels_needed")}  # OHIF's Submit label shows it
        return answer

    def _training_tasks(self) -> List[Dict[str, Any]]:
        """MONAI Label's training tasks of this server's life (only the server process knows them)."""
        if not self._serving:
            return []
        tasks, _ = AsyncTask.status("train", all=True)
        return list(tasks or [])

    def train(self, request):
        """Runs in MONAI Label's training worker process, yielding the CPU to the server; never in the server
        itself (``run_sync``): the served model changes only through a training worker's version."""
        if self._serving:
            raise InvalidInput("training runs in the background only (drop run_sync); /brats/training shows its progress")
        self._lower_priority_in_worker()
        return super().train(request)

    def scoring(self, request, datastore=None):
        """Runs in MONAI Label's scoring worker process, yielding the CPU to the server; never in the server
        itself (``run_sync``), where it would hold a request thread and the CPU for minutes."""
        if self._serving:
            raise InvalidInput("scoring runs in the background only (drop run_sync); /brats/queue shows its progress")
        self._lower_priority_in_worker()
        return super().scoring(request, datastore)

    def _lower_priority_in_worker(self) -> None:
        """Again at the task's start: a declared worker (``scripts/train_distributed.py``) imports this module too."""
        yield_cpu_if_worker(BACKGROUND_NICENESS)

    def next_sample(self, request):
        """The strategy's pick, with the study's DICOM ids from an archive (OHIF's Next Sample opens the study by
        them). A study is handed out only once its volume is prepared (opened from the archive, aligned, brain
        extracted): one that cannot be becomes a listed problem with its reason, and another is picked, so an
        annotator is never handed a study whose auto-segmentation then fails. Most are prepared already (when
        handed out before, viewed, downloaded, or scored); the model's input is then prepared in the background
        for the auto-segmentation and download that follow."""
        name = request.get("strategy") or "random"
        strategy = self._strategies.get(name)
        if strategy is None:
            raise NotFound(f"no active-learning strategy '{name}' (strategies: {', '.join(self._strategies)})")
        for _ in range(NEXT_SAMPLE_PICKS):
            answer = strategy(request, self.datastore())
            if not answer or not answer.get("id"):
                return {}
            try:
                answer["path"] = self._datastore.get_image_uri(answer["id"])
            except InvalidInput as e:  # the datastore lists it as a problem now: the next pick cannot be it
                logger.warning(f"Next Sample passed over study {answer['id']}: {e}")
                continue
            self.case_preparation.submit(answer["id"], "handed out")  # the model's input too, not only the volume
            if isinstance(self._datastore, DicomWebStudyDatastore):
                answer.update(self._datastore.viewer_ids(answer["id"]))
            return answer
        raise InvalidInput(f"Next Sample found no usable study in {NEXT_SAMPLE_PICKS} picks: see /datastore/?output=all for the studies' problems")

    def _prepare_case(self, case: str) -> None:
        """A study just handed out or opened in the viewer: its 4-channel volume built, and the model's input read
        and resampled, before the annotator asks for its auto-segmentation."""
        path = self._datastore.get_image_uri(case)
        if self._infers[MODEL_NAME].is_valid():
            self._infers[MODEL_NAME].prepare(path)  # type: ignore[attr-defined]

    def _refinement_trained(self) -> bool:
        refinement = self._infers.get(REFINEMENT_MODEL_NAME)
        return isinstance(refinement, BratsRefinement) and refinement.trained_on_clicks

    def _warm_refinement(self, case: str) -> None:
        """A study just auto-segmented: the refinement model's answer to no clicks, kept for its first click."""
        path = self._datastore.get_image_uri(case)
        with self.infer_queue.turn():
            self._infers[REFINEMENT_MODEL_NAME].warm(path)  # type: ignore[attr-defined]

    def _unprepared_studies(self) -> List[str]:
        return [s for s in self._datastore.list_images() if not self._datastore.cached_image_uri(s)]  # type: ignore[attr-defined]

    def _idle(self) -> bool:
        """No auto-segmentation runs or waits, and no study is being prepared for an annotator."""
        status = self.infer_queue.status()
        return not status["running"] and not status["waiting"] and not self.case_preparation.status()["pending"]

    def image_downloaded(self, case: str) -> None:
        """A client downloaded a study's volume (3D Slicer opening it): prepare its auto-segmentation, once."""
        self.case_preparation.submit(case, "downloaded")

    def study_viewed(self, study_uid: str) -> None:
        """The viewer started loading a study through the server's DICOMweb proxy: prepare it if it is a case
        (never asks the archive: a UID the listing does not hold is ignored)."""
        if isinstance(self._datastore, DicomWebStudyDatastore) and self._datastore.is_listed(study_uid):
            self.case_preparation.submit(study_uid, "viewed")

    def info(self):
        self._apply_promotions()
        info = super().info()
        info["profile"] = {"name": self.config.profile.name, "description": self.config.profile.description}
        info["datastore"]["problems"] = [p.__dict__ for p in self._datastore.problems()]  # type: ignore[attr-defined]
        info["scoring_progress"] = self.scores.progress()
        info["retrain"] = self.retrain.status()
        info["inference_queue"] = self.infer_queue.status()
        info["case_preparation"] = self.case_preparation.status()
        info["refinement_warm_up"] = self.refinement_warm_up.status()
        info["arrival_preparation"] = {"on": self.config.prepare_on_arrival, **self.arrival_preparation.status()}
        return info
