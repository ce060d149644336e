"""What both study datastores share: a case is a study; its labels live in one label store.

The folder datastore (``folder_datastore.py``) and the DICOMweb datastore (``dicomweb_datastore.py``) differ in how
they find studies and open them; everything about labels (the crash-safe commit, history, records, the
fields a client may not set) and the listing is here, once.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import zipfile
from abc import abstractmethod
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

import nibabel as nib
import numpy as np
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag

from ..config import BRATS_2023, LABEL_TAGS, READING_TAG, DoubleReadSettings
from ..errors import InvalidInput, NotFound
from ..labels.conventions import LabelError
from ..labels.double_reading import (
    ADJUDICATED,
    FROM_READINGS,
    SAVED_BY_REVIEWER,
    AdjudicationRefused,
    DoubleReadMarks,
    adjudication_entry,
    chosen_for_double_reading,
    compare_readings,
    double_read_state,
    latest_per_reader,
    reader_of,
)
from ..labels.label_files import SeriesGrid, read_uploaded_label
from ..labels.label_set import LabelSet
from ..labels.label_store import LabelStore, LabelVersion, check_case_id, check_tag, migrate_flat_layout
from ..labels.review import (
    APPROVED,
    REVIEW_FIELDS,
    SUBMITTED_STATE,
    ReviewDecision,
    check_reviewer,
    effective_train_on,
    returned_review,
    review_state,
    review_status,
    trains,
)
from ..runtime.clock import utc_now
from ..runtime.shared_state import update_json
from .case_cache import CaseCache
from .folder_layout import Geometry, StudyProblem
from .patients import Pseudonyms, StudyMoment, studies_of_patient

logger = logging.getLogger(__name__)

LABEL_SUFFIX = ".nii.gz"
IMPORTED_FROM = "imported"
SUBMITTED = "submitted"
FINAL = DefaultLabelTag.FINAL.value
# Fields of a label's record that the server computes: a client's params never set them.
SERVER_FIELDS = (
    "tag", "saved_at", "removed_at", "voxels", "source", "archive", "file", "convention", "migrated_from", *REVIEW_FIELDS,
    "double_read", "agreement", "readers", "from_reading", SAVED_BY_REVIEWER,
)  # fmt: skip
SERVER_FIELD_PREFIXES = ("dice_", "hd95_", "lesion_", "prelabel_", "seg_")
WHO_SAVED = ("user", "authenticated", "claimed_user", "client_id")  # set once, when the label is saved


def client_fields(params: Dict[str, Any], fixed: Tuple[str, ...] = ()) -> Dict[str, Any]:
    """The client's params without any field the server computes (source, Dice, archive state, ...) or ``fixed``."""
    return {k: v for k, v in (params or {}).items() if k not in SERVER_FIELDS + fixed and not k.startswith(SERVER_FIELD_PREFIXES)}


def open_label_store(workspace: Path, writer: bool) -> LabelStore:
    """The workspace's label store; a writer first moves labels from the layout before it."""
    store = LabelStore(Path(workspace) / "label_store", writer)
    if writer:
        migrate_flat_layout(Path(workspace) / "labels", store)
    return store


def _tag(tag: Optional[str]) -> str:
    """Plain string of a label tag: on Python 3.11 str() of MONAI Label's tag enum is 'DefaultLabelTag.FINAL'."""
    if tag is None or tag == "":
        return FINAL
    return tag.value if isinstance(tag, DefaultLabelTag) else str(tag)


class StudyDatastore(Datastore):
    def __init__(
        self,
        workspace: Path,
        name: str,
        description: str,
        listing_extras: Optional[Callable[[], Dict[str, Dict[str, Any]]]] = None,
        label_audit: Optional[Callable[[str, np.ndarray], Dict[str, Any]]] = None,
        writer: bool = True,
        train_on: str = "auto",
        label_set: LabelSet = BRATS_2023,
        double_read: DoubleReadSettings = DoubleReadSettings(),
    ):
        """``listing_extras`` adds per-case entries to the listing (the app gives active-learning ranks);
        ``label_audit`` adds to each submitted final label's record (the app compares it with the pre-label);
        ``writer`` False in worker processes: they read labels and the listing, the server writes;
        ``train_on``: which final labels train (``labels/review.py``); ``label_set``: the labels a label may hold;
        ``double_read``: the share of studies read twice, and the Dice that makes two readings agree
        (``labels/double_reading.py``)."""
        self._workspace = Path(workspace)
        self.label_set = label_set
        self._train_on = train_on
        self._labels = open_label_store(self._workspace, writer)
        self._writer = writer
        self._cases = CaseCache(self._workspace / "cases")
        self._name = name
        self._description = description
        self._listing_extras = listing_extras
        self._label_audit = label_audit
        self._lock = threading.RLock()
        self._problems: List[StudyProblem] = []
        self._geometries: Dict[str, Geometry] = {}
        self._broken: Dict[str, Tuple[str, str]] = {}  # study -> (fingerprint, reason) of a volume that cannot be used
        self._sources: Dict[str, Any] = {}
        self._pseudonyms = Pseudonyms(self._workspace)
        self._moments: Dict[str, StudyMoment] = {}  # study -> its patient's pseudonym and when it was acquired
        self._double_read = double_read
        self._double_read_marks = DoubleReadMarks(self._workspace / "double_read.json")

    # --- what each datastore provides -----------------------------------------------------------------
    @abstractmethod
    def case_id(self, image_id: str) -> str:
        """The study an id names (raises NotFound)."""

    @abstractmethod
    def geometry(self, image_id: str) -> Geometry:
        """The study's reference grid."""

    def series_grids(self, study_id: str) -> List[SeriesGrid]:
        """The study's series a viewer may draw a label on, other than the study's own volume: none here (a folder's
        study is shown as the volume the server sends)."""
        return []

    def clicked_grid(self, image_id: str) -> Geometry:
        """The grid of the volume a client clicks on when it names ``image_id``: the study's own, which
        ``/datastore/image`` sends (Slicer's DeepEdit clicks on that volume)."""
        return self.geometry(image_id)

    @abstractmethod
    def _source(self, image_id: str) -> Any:
        """The study's source (files or series); raises NotFound."""

    def cached_image_uri(self, image_id: str) -> str:
        """The stacked volume's path if it is ready and current, else '' (never builds it)."""
        source = self._source(image_id)
        current = self._cases.is_current(source.study_id, source.fingerprint())
        return str(self._cases.volume_path(source.study_id)) if current else ""

    @abstractmethod
    def problems(self) -> List[StudyProblem]:
        """Studies that are not served, with the reason."""

    # --- naming -------------------------------------------------------------------------------------
    def name(self) -> str:
        return self._name

    def set_name(self, name: str):
        self._name = name

    def description(self) -> str:
        return self._description

    def set_description(self, description: str):
        self._description = description

    @property
    def workspace(self) -> Path:
        return self._workspace

    def _mark_broken(self, study_id: str, fingerprint: str, reason: str) -> None:
        """Not served again (listed as a problem) until one of its files or series changes."""
        with self._lock:
            self._broken[study_id] = (fingerprint, reason)
            self._sources.pop(study_id, None)
            self._problems.append(StudyProblem(study_id, study_id, reason))

    def patient_studies(self, image_id: str) -> List[Tuple[str, StudyMoment]]:
        """Every listed study of the patient whose study ``image_id`` names, oldest first; empty when the source
        says nothing of the patient (raises NotFound for an unlisted id)."""
        case = self.case_id(image_id)
        with self._lock:
            moments = {study: moment for study, moment in self._moments.items() if study in self._sources}
        return studies_of_patient(moments, case)

    def preparation_info(self, study_id: str) -> Dict[str, Any]:
        """How the case's model input was prepared (alignment per series, brain extraction), for its info."""
        return self._cases.preparation(study_id) or {"state": "not prepared yet: it is prepared when the study is first opened, handed out or viewed"}

    def input_statistics(self, study_id: str) -> Dict[str, Any]:
        """The prepared input's grid and intensities (``input_statistics``), {} until prepared: the dashboard's drift."""
        return self._cases.statistics(study_id)

    def get_image(self, image_id: str, params=None) -> Any:
        return open(self.get_image_uri(image_id), "rb")

    def _image_info_path(self, image_id: str) -> Path:
        return self._workspace / "image_info" / f"{image_id}.json"

    def update_image_info(self, image_id: str, info: Dict[str, Any]) -> None:
        study = self.case_id(image_id)
        update_json(self._image_info_path(study), lambda current: {**current, **info}, {})

    # --- labels -------------------------------------------------------------------------------------
    def _current(self, label_id: str, tag: Optional[str]) -> Optional[LabelVersion]:
        """The current label of a listed study (NotFound for any other id), or None."""
        return self._labels.current(self.case_id(check_case_id(label_id)), check_tag(_tag(tag)))

    def _label_path(self, label_id: str, tag: str) -> Path:
        """The current label's voxels (a path that does not exist when there is none)."""
        current = self._current(label_id, tag)
        return current.label_path if current else self._workspace / "no-label"

    def _store_label(self, image_id: str, label: np.ndarray, geometry: Geometry, tag: str, info: Dict[str, Any]) -> str:
        record = {**info, "voxels": {name: int((label == value).sum()) for name, value in self.label_set.foreground.items()}}
        self._labels.commit(image_id, _tag(tag), label, geometry.affine, record)
        return image_id

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        """Validate and store a label for the study; the previous one stays in the history."""
        study = self.case_id(image_id)
        geometry = self.geometry(study)
        tag = check_tag(_tag(label_tag))
        try:
            label = read_uploaded_label(Path(label_filename), geometry, label_info or {}, self.label_set, lambda: self.series_grids(study))
        except LabelError as e:
            raise InvalidInput(f"label for '{study}' not saved: {e}") from None
        info = {**client_fields(label_info or {}), "source": SUBMITTED}
        if tag == FINAL and self._label_audit is not None:
            info.update(self._label_audit(study, label))
        if tag == FINAL and self._read_twice_now(study):
            return self._save_reading(study, label, geometry, info, bool((label_info or {}).get(SAVED_BY_REVIEWER)))
        return self._store_label(study, label, geometry, tag, {**info, **self._commit_fields(study, tag)})

    def _commit_fields(self, study: str, tag: str) -> Dict[str, Any]:
        """Fields a datastore adds to the record in the same commit (the archive's: a pending send)."""
        return {}

    def remove_label(self, label_id: str, label_tag: str) -> None:
        """The current label of the tag is withdrawn; every saved version stays in the history."""
        if self._current(label_id, label_tag) is None:
            raise NotFound(f"Label '{label_id}' with tag '{_tag(label_tag)}' does not exist")
        self._labels.commit(label_id, _tag(label_tag), None, None, {})

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        current = self._current(label_id, label_tag)
        return str(current.label_path) if current else ""

    def get_label(self, label_id: str, label_tag: str, params=None) -> Any:
        uri = self.get_label_uri(label_id, label_tag)
        return open(uri, "rb") if uri else None

    def get_labels_by_image_id(self, image_id: str) -> Dict[str, str]:
        return {tag: image_id for tag in self._labels.tags(image_id) if tag in LABEL_TAGS and self._current(image_id, tag)}

    def get_label_by_image_id(self, image_id: str, tag: str) -> str:
        return image_id if self._current(image_id, tag) else ""

    def get_label_info(self, label_id: str, label_tag: str) -> Dict[str, Any]:
        current = self._current(label_id, label_tag)
        return current.info() if current else {}

    def update_label_info(self, label_id: str, label_tag: str, info: Dict[str, Any]) -> None:
        """Adds the client's notes to the current label's status; its record (who, when, Dice) stays as saved."""
        current = self._current(label_id, label_tag)
        if current is None:
            raise NotFound(f"Label '{label_id}' with tag '{_tag(label_tag)}' does not exist")
        self._labels.update_status(current, client_fields(info, fixed=WHO_SAVED))

    def history_records(self) -> List[tuple]:
        """(case, record) for every label version ever saved, every case."""
        return list(self._labels.history())

    def label_history(self, image_id: str) -> List[Dict[str, Any]]:
        return [record for _, record in self._labels.history(image_id)]

    def get_labeled_images(self, label_tag: Optional[str] = None, labels: Optional[List[str]] = None) -> List[str]:
        tag = _tag(label_tag)
        return [i for i in self.list_images() if self._current(i, tag)]

    def get_unlabeled_images(self, label_tag: Optional[str] = None, labels: Optional[List[str]] = None) -> List[str]:
        labelled = set(self.get_labeled_images(label_tag, labels))
        return [i for i in self.list_images() if i not in labelled]

    # --- review -------------------------------------------------------------------------------------------
    def review_label(self, image_id: str, decision: ReviewDecision, reviewer: str) -> Dict[str, Any]:
        """A reviewer's decision on the study's current final label, kept with that version (who, when, comment)."""
        study = self.case_id(image_id)
        current = self._current(study, FINAL)
        if current is None:
            raise NotFound(f"study {study} has no final label to review")
        info = current.info()
        if info.get("source") == IMPORTED_FROM:
            raise InvalidInput(f"the final label of {study} is ground truth imported with the study, not a correction under review")
        check_reviewer(info, reviewer, decision)
        return self._labels.amend_status(current, lambda status: review_status(status, decision, reviewer, utc_now()))

    def _final_labels(self) -> Iterator[Tuple[str, Dict[str, Any]]]:
        """(case, info) of every listed study's current final label, each looked up once."""
        for case in self.list_images():
            current = self._current(case, FINAL)
            if current is not None:
                yield case, current.info()

    def review_queue(self) -> List[Dict[str, Any]]:
        """Final labels waiting for a review, and studies whose two readings wait for adjudication, oldest first."""
        waiting = []
        for case, info in self._final_labels():
            if info.get("source") != IMPORTED_FROM and review_state(info) == SUBMITTED_STATE:
                waiting.append({"case": case, "saved_at": info.get("saved_at", ""), "user": info.get("user", ""), "source": info.get("source", ""), "kind": "review"})
        listed = set(self.list_images())
        for case, readings in self._unfinished_readings().items():
            entry = adjudication_entry(case, {reader: version.info() for reader, version in readings.items()})
            if entry is not None and case in listed:
                waiting.append(entry)
        return sorted(waiting, key=lambda entry: entry["saved_at"])

    def returned_labels(self, owner: Optional[str] = None) -> List[Dict[str, Any]]:
        """Final labels a reviewer sent back for changes, the oldest request first: of the annotator who saved them
        (``owner``), or of anyone when None (authentication off: nobody's name can be trusted)."""
        returned = []
        for case, info in self._final_labels():
            review = returned_review(info)
            if review is not None and (owner is None or info.get("user") == owner):
                returned.append({"case": case, **review})
        return sorted(returned, key=lambda entry: entry["requested_at"])

    # --- two readers ------------------------------------------------------------------------------------
    def is_double_read(self, study: str) -> bool:
        """Whether the study is read twice: in the configured share, or marked by an admin."""
        return chosen_for_double_reading(study, self._double_read.fraction) or study in self._double_read_marks.marked()

    def _read_twice_now(self, study: str) -> bool:
        """A save of a final label is a reading while the study is read twice and no final label was ever made (once
        one exists, a correction is a new version of it, as for any study)."""
        return not self._labels.versions(study, FINAL) and (self.is_double_read(study) or bool(self._labels.versions(study, READING_TAG)))

    def _readings(self, study: str) -> Dict[str, LabelVersion]:
        """The latest reading of each reader, the first reader first."""
        return latest_per_reader(self._labels.versions(study, READING_TAG), LabelVersion.record)

    def _unfinished_readings(self) -> Dict[str, Dict[str, LabelVersion]]:
        """Readings of every study read twice that has no final label yet (each study's versions listed once)."""
        unfinished = {}
        for case in self._labels.cases():
            versions = self._labels.versions(case)
            if not any(version.tag == FINAL for version in versions):
                readings = latest_per_reader((version for version in versions if version.tag == READING_TAG), LabelVersion.record)
                if readings:
                    unfinished[case] = readings
        return unfinished

    def _save_reading(self, study: str, label: np.ndarray, geometry: Geometry, info: Dict[str, Any], by_reviewer: bool) -> str:
        """One reader's label of a study read twice; with the second reader's, the two compared and, if they agree, the
        first made final; with both in and disagreeing, a reviewer's label is the adjudication."""
        with self._lock:
            readings = self._readings(study)
            reader = reader_of(info)
            if len(readings) >= 2:
                return self._adjudicate(study, label, geometry, info, readings, by_reviewer)
            record = {**info, "double_read": True}
            others = [other for other in readings if other != reader]
            agreement = None
            if others:
                first = readings[others[0]]
                first_label = np.asarray(nib.load(str(first.label_path)).dataobj, dtype=np.uint8)
                agreement = compare_readings(first_label, label, (others[0], reader), self.label_set, self._double_read.agreement)
                record["agreement"] = agreement.record()
            self._store_label(study, label, geometry, READING_TAG, record)
            if agreement is not None and agreement.agreed:
                who = {key: value for key, value in first.record().items() if key in WHO_SAVED}
                final = {
                    **who,
                    "source": FROM_READINGS,
                    "readers": list(agreement.readers),
                    "agreement": record["agreement"],
                    "from_reading": first.name,
                    **self._commit_fields(study, FINAL),
                }
                self._store_label(study, first_label, geometry, FINAL, final)
                logger.info(f"study {study}: the two readings agree (Dice {agreement.dice}); the first is the final label")
            elif agreement is not None:
                logger.info(f"study {study}: the two readings disagree (Dice {agreement.dice}); it waits for a reviewer's adjudication")
            return study

    def _adjudicate(self, study: str, label: np.ndarray, geometry: Geometry, info: Dict[str, Any], readings: Dict[str, LabelVersion], by_reviewer: bool) -> str:
        """A reviewer's label for a study whose readings disagree: final, approved by that act, the readings named."""
        adjudicator = reader_of(info)
        if not by_reviewer:
            raise AdjudicationRefused(
                f"study {study} was read twice and the readings disagree: a reviewer adjudicates it. Your label was not saved; open another study (Next Sample)"
            )
        if info.get("authenticated") and adjudicator in readings:
            raise AdjudicationRefused(f"{adjudicator} read study {study}: a reviewer who did not read it adjudicates. The label was not saved")
        second = list(readings.values())[1].record()
        record = {**info, "source": ADJUDICATED, "readers": list(readings), "agreement": second.get("agreement"), **self._commit_fields(study, FINAL)}
        self._store_label(study, label, geometry, FINAL, record)
        version = self._labels.current(study, FINAL)
        assert version is not None  # just committed, under the lock
        decision = ReviewDecision(APPROVED, f"adjudicated the readings of {' and '.join(readings)}")
        self._labels.amend_status(version, lambda status: review_status(status, decision, adjudicator, utc_now()))
        logger.info(f"study {study}: adjudicated by {adjudicator}; final label saved")
        return study

    def saved_by(self, image_id: str) -> Set[str]:
        """The names (user, client id) on the study's newest label version: whose hand-out its save ends."""
        versions = self._labels.versions(self.case_id(image_id))
        record = versions[-1].record() if versions else {}
        return {str(record[key]) for key in ("user", "client_id") if record.get(key)}

    def not_for_reader(self, names: Set[str]) -> Set[str]:
        """Studies Next Sample does not hand to the reader known by ``names``: those read twice that they already read,
        and those whose readings wait for adjudication (a reviewer's work)."""
        closed = set()
        for case, readings in self._unfinished_readings().items():
            records = [version.record() for version in readings.values()]
            readers = {str(record[key]) for record in records for key in ("user", "client_id") if record.get(key)}
            if len(readings) >= 2 or readers & names:
                closed.add(case)
        return closed

    def mark_double_read(self, image_id: str, by: str) -> Dict[str, Any]:
        """An admin asks for two readers on this study (from its next label on; a study already labelled is not)."""
        study = self.case_id(check_case_id(image_id))
        self._double_read_marks.mark(study, by)
        return self.double_read_info(study)

    def double_read_info(self, image_id: str) -> Dict[str, Any]:
        """Whether and why the study is read twice, its readings (reader, when, voxels), their agreement, its state."""
        study = self.case_id(check_case_id(image_id))
        readings = {reader: version.info() for reader, version in self._readings(study).items()}
        marked = self._double_read_marks.marked().get(study)
        in_share = chosen_for_double_reading(study, self._double_read.fraction)
        double_read = bool(marked) or in_share or bool(readings)
        return {
            "case": study,
            "double_read": double_read,
            "chosen": "marked by an admin" if marked else ("in the share read twice" if in_share else None),
            "marked": marked,
            "state": double_read_state(readings, bool(self._labels.versions(study, FINAL))) if double_read else None,
            "readings": [
                {"index": index, "reader": reader, "saved_at": info.get("saved_at"), "voxels": info.get("voxels"), "agreement": info.get("agreement")}
                for index, (reader, info) in enumerate(readings.items())
            ],
        }

    def reading_path(self, image_id: str, index: int) -> Path:
        """The voxels of the study's ``index``-th reader's latest reading (for the reviewer who adjudicates)."""
        study = self.case_id(check_case_id(image_id))
        readings = list(self._readings(study).values())
        if not 0 <= index < len(readings):
            raise NotFound(f"study {study} has {len(readings)} readings; there is no reading {index}")
        return readings[index].label_path

    def train_on(self) -> str:
        """``approved`` or ``submitted``: which final labels train now."""
        return effective_train_on(self._train_on, self.history_records())

    # --- training data and summaries --------------------------------------------------------------------
    def datalist(self) -> List[Dict[str, Any]]:
        """Labelled studies for training: the 4-channel volume and the final label (of those that train now)."""
        train_on = self.train_on()
        return [self.training_item(i) for i in self.get_labeled_images() if trains(self.get_label_info(i, FINAL), train_on, (IMPORTED_FROM,))]

    def training_item(self, image_id: str) -> Dict[str, Any]:
        """One labelled study as training and evaluation read it (NotFound for a study without a final label)."""
        current = self._current(image_id, FINAL)
        if current is None:
            raise NotFound(f"study {image_id} has no final label")
        return {"image": self.get_image_uri(image_id), "label": str(current.label_path), "id": image_id}

    def get_dataset_archive(self, limit_cases: Optional[int]) -> str:
        items = self.datalist()[: limit_cases or None]
        path = Path(tempfile.mkdtemp()) / "dataset.zip"
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
            for item in items:
                archive.write(item["image"], f"images/{item['id']}.nii")
                archive.write(item["label"], f"labels/{item['id']}{LABEL_SUFFIX}")
        return str(path)

    def status(self) -> Dict[str, Any]:
        tags = {tag: len(self.get_labeled_images(tag)) for tag in sorted({t for case in self._labels.cases() for t in self._labels.tags(case)} & set(LABEL_TAGS))}
        return {
            "total": len(self.list_images()),
            "completed": len(self.get_labeled_images()),
            "label_tags": tags,
            "problems": len(self._problems),
        }

    def json(self) -> Dict[str, Any]:
        extras = self._listing_extras() if self._listing_extras else {}
        objects = {}
        for image_id in self.list_images():
            labels = {tag: {"ext": LABEL_SUFFIX, "info": self.get_label_info(image_id, tag)} for tag in self.get_labels_by_image_id(image_id)}
            info = {**self.get_image_info(image_id), **extras.get(image_id, {})}
            objects[image_id] = {"image": {"ext": ".nii", "info": info}, "labels": labels}
        return {
            "name": self._name,
            "description": self._description,
            "objects": objects,
            "problems": [p.__dict__ for p in self.problems()],
        }
