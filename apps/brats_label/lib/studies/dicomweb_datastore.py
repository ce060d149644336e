"""A MONAI Label datastore over a DICOMweb archive, where a case is a study of four MR series.

MONAI Label's own ``DICOMWebDatastore`` makes every series an image, so a T1/T1c/T2/FLAIR study
cannot be segmented as one. Here:

- a case is a StudyInstanceUID; its series are assigned to channels by ``SeriesRules`` and checked
  from their metadata (one slice per position, even spacing); a study that fails is listed with the
  reason, not served;
- the four series are fetched in parallel (WADO-RS), converted, resampled onto the reference
  channel's grid and stacked in ``config.CHANNELS`` order; the stack is cached under the series
  UIDs and instance counts, so a changed series is fetched again and a stale volume never served;
- a final label is committed to the label store (with its history, as in the folder datastore, marked
  ``archive: pending`` in the same commit) and then stored in the archive as a DICOM SEG referencing the
  reference series; a send cut short (archive down, crash) is resumed at the next listing; a SEG written by any other client
  (OHIF, Slicer) becomes the study's final label once it decodes onto the study's grid;
- a SeriesInstanceUID of any of the study's series (what OHIF sends) resolves to the study.

Only the server process (``writer``) sends SEGs, imports SEGs and writes the SEG registry; the listing is
refreshed in a background thread of the server (``start_background_refresh``), asking only what changed
(Orthanc's changes feed; a full listing compared by instance counts every ``reconcile_s``), and kept in the
workspace (``ListingStore``) so that a restart lists only what changed meanwhile. When the archive does not
answer, listing keeps what it knew, cached studies still open, labels are
still saved locally and sent when the archive is back; everything else answers 503 with the reason.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import nibabel as nib
import numpy as np
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from ..config import (
    BRATS_2023,
    CHANNELS,
    DICOMWEB_LISTING_WORKERS,
    DICOMWEB_RECONCILE_S,
    DICOMWEB_REFRESH_S,
    OHIF_STUDY_PATH,
    PREPARATION,
    REFERENCE_CHANNEL,
    DoubleReadSettings,
)
from ..dicom.archive import Archive, patient_and_date, series_from_metadata
from ..dicom.listing_store import ListingStore
from ..dicom.measurement_report import measurement_report
from ..dicom.multiframe import frames_as_slices
from ..dicom.orthanc_changes import OrthancChanges
from ..dicom.seg import SegProblem, is_shipped_ground_truth, label_to_seg, seg_to_label
from ..dicom.sequence_classifier import Acquisition
from ..dicom.series_fetch import fetch_into, start_workers
from ..dicom.series_rules import SeriesRules, SeriesSummary
from ..dicom.series_volume import SeriesProblem, SliceStack, slice_stack
from ..errors import ArchiveUnavailable, InvalidInput, NotAllowed, NotFound
from ..labels.conventions import LabelError, check_label_values
from ..labels.label_files import SeriesGrid
from ..labels.label_set import LabelSet
from ..model.transforms import region_volumes_ml, voxel_volume_ml
from ..preparation.alignment import RegistrationRefused
from ..preparation.brain_mask import looks_skull_stripped
from ..preparation.pipeline import already_prepared_report, voxel_ml
from ..runtime.atomic import nifti_image, read_json, write_json
from ..runtime.shared_state import update_json
from .case_cache import Preparation, UnusableVolume, prepare_series
from .folder_layout import Geometry, StudyProblem
from .patients import StudyMoment, dicom_acquired
from .stacked_nifti import StackedNiftiFile
from .study_datastore import FINAL, IMPORTED_FROM, StudyDatastore, _tag

logger = logging.getLogger(__name__)

SEG_SOURCE = "dicom-seg"
# A study this small is listed from its metadata in one request; a larger one series by series (see _list_study).
STUDY_METADATA_MAX_INSTANCES = 1000
UNKNOWN_COUNT = -1  # a study whose listing failed: never equal to the archive's count, so listed again
LISTING_LOG_EVERY = 500  # a first listing of thousands of studies logs its progress this often
# What places and decodes a series' slices: all the listing reads of each instance's header (parsing whole
# headers with pydicom took half the time of a first listing).
SLICE_ATTRIBUTES = frozenset(
    f"{tag_for_keyword(k):08X}"
    for k in (
        "SOPInstanceUID", "SOPClassUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID", "Modality", "ImageType",
        "InstanceNumber", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "SpacingBetweenSlices",
        "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
        "PhotometricInterpretation", "RescaleSlope", "RescaleIntercept", "TransferSyntaxUID",
        "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence",  # multi-frame geometry
    )
)  # fmt: skip


def content_time(ds) -> str:
    """When a DICOM object was made, as UTC ISO text comparable with ``saved_at`` ('' if unknown)."""
    date, clock = str(ds.get("ContentDate", "") or ""), str(ds.get("ContentTime", "") or "")
    if len(date) != 8:
        return ""
    clock = (clock.split(".")[0] + "000000")[:6]
    local = datetime.strptime(date + clock, "%Y%m%d%H%M%S")
    offset = str(ds.get("TimezoneOffsetFromUTC", "") or "")
    if offset:
        sign = -1 if offset.startswith("-") else 1
        local -= sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5]))
        return local.strftime("%Y-%m-%dT%H:%M:%S.000000Z")
    return local.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000000Z")  # no offset: server's time zone


def _acquisition_from_json(fields: Dict[str, Any]) -> Acquisition:
    tuples = {k: tuple(v) for k, v in fields.items() if isinstance(v, list)}
    return Acquisition(**{**fields, **tuples})


def _summary_to_json(summary: SeriesSummary) -> Dict[str, Any]:
    """As ``dataclasses.asdict``, which deep-copies and took a tenth of a first listing."""
    acquisition = summary.acquisition
    return {**vars(summary), "acquisition": dict(vars(acquisition)) if acquisition is not None else None}


def _summary_from_json(fields: Dict[str, Any]) -> SeriesSummary:
    acquisition = fields.get("acquisition")
    return SeriesSummary(**{**fields, "acquisition": _acquisition_from_json(acquisition) if acquisition else None})


@dataclass
class DicomStudy:
    study_id: str  # StudyInstanceUID (no patient attributes: they stay in the archive)
    channels: Dict[str, SeriesSummary]
    segs: List[SeriesSummary] = field(default_factory=list)
    evidence: Dict[str, str] = field(default_factory=dict)  # channel -> why its series was given it

    def fingerprint(self) -> str:
        return ";".join(f"{c}={self.channels[c].series_uid}:{self.channels[c].instances}" for c in CHANNELS)


class DicomWebStudyDatastore(StudyDatastore):
    def __init__(
        self,
        archive: Archive,
        workspace: Path,
        rules: Optional[SeriesRules] = None,
        refresh_s: float = DICOMWEB_REFRESH_S,
        software_version: str = "0",
        name: str = "BraTS studies (DICOMweb)",
        listing_extras: Optional[Callable[[], Dict[str, Dict[str, Any]]]] = None,
        label_audit: Optional[Callable[[str, np.ndarray], Dict[str, Any]]] = None,
        writer: bool = True,
        reconcile_s: float = DICOMWEB_RECONCILE_S,
        train_on: str = "auto",
        label_set: LabelSet = BRATS_2023,
        double_read: DoubleReadSettings = DoubleReadSettings(),
    ):
        """``writer`` False in worker processes: they list and open studies but send, import and register nothing.
        ``reconcile_s``: how often the whole archive is listed (the refreshes between ask Orthanc what changed)."""
        self._archive = archive
        self._rules = rules or SeriesRules()
        self._refresh_s = refresh_s
        self._software_version = software_version
        super().__init__(workspace, name, f"Studies in the DICOMweb archive {archive.url}", listing_extras, label_audit, writer, train_on, label_set, double_read)
        self._metadata_dir = self._workspace / "dicom_metadata"
        self._seg_registry_path = self._workspace / "seg_registry.json"
        self._refresh_lock = threading.Lock()
        self._sources: Dict[str, DicomStudy] = {}
        self._series_to_study: Dict[str, str] = {}
        self._stacks: Dict[str, SliceStack | SeriesProblem] = {}  # series geometry by UID and instance count
        # by series UID (how a series was acquired does not change), kept across restarts: one request per series, ever
        self._acquisitions_path = self._metadata_dir / "acquisitions.json"
        self._acquisitions: Dict[str, Acquisition] = {uid: _acquisition_from_json(a) for uid, a in read_json(self._acquisitions_path, {}).items()}
        self._acquisitions_saved = len(self._acquisitions)
        self._archive_error: Optional[str] = None
        self._refresh_started_at = -1.0
        self._background = False
        self._reconcile_s = reconcile_s
        self._counts: Dict[str, int] = {}  # instance count of every study listed (case or not), as when listed
        self._study_problems: Dict[str, StudyProblem] = {}
        self._series_of: Dict[str, List[str]] = {}
        self._segs_to_check: set = set()  # studies whose SEGs are looked at (again) at the next refresh
        self._listing_progress: Dict[str, int] = {"listed": 0, "of": 0}
        self._changes: Optional[OrthancChanges] = None  # Orthanc's feed, looked for at each refresh until found
        self._changes_seq: Optional[int] = None
        self._reconciled_at = -math.inf
        self._listing = ListingStore(self._workspace / "archive_listing.sqlite", archive.url, writer)
        self._pending: set = set()  # studies whose final label waits for the archive (the writer sends them)
        if writer:
            self._remove_metadata_cache()
            self._pending = {case for case in self._labels.cases() if self._waits_for_archive(case)}
        self._load_listing()
        self.refresh()

    def _load_listing(self) -> None:
        """The listing the server last made: with Orthanc's feed, the first refresh then asks only what changed
        since (a full listing follows within ``reconcile_s``)."""
        rows, seq = self._listing.load()
        if not rows:
            return
        with self._lock:
            self._apply(rows, set())
            # listed by an earlier version, which did not note the patient and date: listed again at the first refresh
            earlier = [uid for uid, (_, entry) in rows.items() if "acquired" not in entry and "problem" not in entry]
            for uid in earlier:
                self._counts[uid] = UNKNOWN_COUNT
        self._changes_seq = seq
        self._reconciled_at = -math.inf if earlier else time.monotonic()

    def _remove_metadata_cache(self) -> None:
        """Earlier versions cached instance headers (and, before that, names and birth dates) per series: the
        listing (``archive_listing.sqlite``) keeps what it needs, so those files go."""
        for path in self._metadata_dir.glob("*.json") if self._metadata_dir.is_dir() else []:
            if path != self._acquisitions_path:
                path.unlink(missing_ok=True)

    def start_background_work(self) -> None:
        """The server's own threads: the listing refreshed in the background, and the series decoding processes started."""
        threading.Thread(target=start_workers, name="series-decoding-start", daemon=True).start()
        self.start_background_refresh()

    def start_background_refresh(self) -> None:
        """Refresh every ``refresh_s`` in a thread of its own (the server): requests use the last listing
        and never wait for the archive. ``refresh_s`` 0 keeps listing inside each request (tests that must see
        the archive's state at once)."""
        if self._refresh_s <= 0:
            return
        self._background = True

        def loop() -> None:
            while True:
                time.sleep(self._refresh_s)
                try:
                    self.refresh()
                except Exception:
                    logger.exception("listing the archive failed; serving the last listing")

        threading.Thread(target=loop, name="archive-listing", daemon=True).start()

    # --- discovery ----------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Ask the archive what changed; the writer also imports new SEGs and sends labels waiting for the archive."""
        asked_at = time.monotonic()
        with self._refresh_lock:
            if self._refresh_started_at >= asked_at:
                return  # another thread refreshed after we asked: its answer will do
            self._refresh_started_at = time.monotonic()
            self._refresh()

    def _refresh(self) -> None:
        """List again only the studies that changed: those Orthanc's changes feed names since the last refresh or,
        at most every ``reconcile_s`` (and at every refresh for archives without a feed), those whose instance count
        differs from the last listing's, plus studies gone from the archive."""
        try:
            now = time.monotonic()
            if self._changes is None:
                self._changes = OrthancChanges.detect(self._archive)
            changed: Dict[str, Optional[int]] = {}
            seq: Optional[int] = None
            removed: Set[str] = set()
            due = self._changes is None or self._changes_seq is None or now - self._reconciled_at >= self._reconcile_s
            if not due and self._changes is not None and self._changes_seq is not None:
                changed, seq = self._changes.studies_changed_since(self._changes_seq)
                # the feed logs no deletion: fewer studies in the archive than known means one went, so list it whole
                due = self._changes.study_count() < len(set(self._counts) | {uid for uid, n in changed.items() if n is not None})
            if due:
                seq = self._changes.last() if self._changes else None  # before listing: what arrives meanwhile is in the next refresh
                counts = {s["study_uid"]: s["instances"] for s in self._archive.studies()}
                changed = {uid: n for uid, n in counts.items() if self._counts.get(uid) != n}
                removed = set(self._counts) - set(counts)
                self._reconciled_at = now
            listed = self._list_studies(changed)
        except ArchiveUnavailable as e:
            self._archive_error = str(e)
            logger.warning(f"{e}; serving the last listing ({len(self._sources)} studies)")
            return
        removed |= {uid for uid, row in listed.items() if row is None}  # no series left: deleted
        rows = {uid: row for uid, row in listed.items() if row is not None}
        with self._lock:
            self._archive_error = None
            self._apply(rows, removed)
        moved, self._changes_seq = seq != self._changes_seq, seq
        if self._writer:
            if rows or removed or moved:
                self._listing.commit(((uid, n, entry) for uid, (n, entry) in rows.items()), removed, seq)
            self._save_acquisitions()
            self._send_pending_labels()
            self._segs_to_check |= set(rows)
            self._import_segs()
        if rows or removed:
            logger.info(f"{len(self._sources)} studies in {self._archive.url} ({len(rows)} listed again, {len(removed)} gone); {len(self._problems)} with problems")

    def _list_studies(self, changed: Dict[str, Optional[int]]) -> Dict[str, Optional[Tuple[int, Dict[str, Any]]]]:
        """Each study's instance count and listing entry (None: no series left), several studies at once.
        ``changed``: study UID -> its instance count where known."""
        uids = sorted(changed)
        self._listing_progress = {"listed": 0, "of": len(uids)}

        def one(uid: str) -> Optional[Tuple[int, Dict[str, Any]]]:
            try:
                row = self._list_study(uid, changed[uid])
            except ArchiveUnavailable:
                raise
            except Exception as e:  # one study's malformed attributes must not stop the listing of the others
                logger.warning(f"Study {uid} not listed: {type(e).__name__}: {e}")
                # an unknown instance count (-1) lists it again at the next full listing
                row = (UNKNOWN_COUNT, {"series": [], "problem": f"its series could not be read ({type(e).__name__}: {e})"})
            self._listing_progress["listed"] += 1
            return row

        if len(uids) <= 1:
            return {uid: one(uid) for uid in uids}
        with ThreadPoolExecutor(DICOMWEB_LISTING_WORKERS) as pool:
            iterator = pool.map(one, uids)
            rows = {}
            for i, uid in enumerate(uids, 1):
                rows[uid] = next(iterator)
                if i % LISTING_LOG_EVERY == 0:
                    logger.info(f"listing {self._archive.url}: {i}/{len(uids)} studies")
            return rows

    def _list_study(self, uid: str, instances_hint: Optional[int] = None) -> Optional[Tuple[int, Dict[str, Any]]]:
        """One study: its series given channels, each channel's geometry checked; or why it is not a case.

        A study of at most ``STUDY_METADATA_MAX_INSTANCES`` instances is read in one request (its metadata gives
        series, acquisitions and geometry); a larger one (diffusion, perfusion) by a series search, then only
        its four channels' metadata."""
        metadata: Dict[str, List[Dict[str, Any]]] = {}
        if instances_hint is not None and instances_hint <= STUDY_METADATA_MAX_INSTANCES:
            metadata = self._archive.study_metadata(uid)
            series = [self._with_acquisition(uid, s) for s in series_from_metadata(metadata)]
            patient, date, time_of_day = patient_and_date(next((items[0] for items in metadata.values() if items), {}))
        else:
            series = [self._with_acquisition(uid, s) for s in self._archive.series(uid)]
        if not series:
            return None
        if not metadata:
            patient, date, time_of_day = self._archive.study_patient_and_date(uid)
        instances = sum(s.instances for s in series)
        # the patient only as this workspace's pseudonym: the identifier itself is not kept
        entry: Dict[str, Any] = {"series": [s.series_uid for s in series], "acquired": dicom_acquired(date, time_of_day)}
        if patient.strip():
            entry["patient"] = self._pseudonyms(patient)
        assignment = self._rules.assign(series)
        if assignment.problem:
            return instances, {**entry, "problem": assignment.problem}
        try:
            geometry = None
            for channel, summary in assignment.channels.items():
                stack = self._stack(uid, channel, summary, metadata.get(summary.series_uid))
                if channel == REFERENCE_CHANNEL:
                    geometry = {"shape": list(stack.shape), "affine": np.asarray(stack.affine).tolist()}
        except SeriesProblem as e:
            return instances, {**entry, "problem": str(e)}
        except ArchiveUnavailable:
            raise
        except Exception as e:  # malformed metadata of one study must not stop the listing of the others
            logger.warning(f"Study {uid} not listed: {type(e).__name__}: {e}")
            return instances, {**entry, "problem": f"its series' metadata could not be read ({type(e).__name__}: {e})"}
        return instances, {
            **entry,
            "channels": {c: _summary_to_json(s) for c, s in assignment.channels.items()},
            "segs": [_summary_to_json(s) for s in series if s.modality == "SEG"],
            "evidence": assignment.evidence,
            "geometry": geometry,
        }

    def _apply(self, rows: Dict[str, Tuple[int, Dict[str, Any]]], removed: set) -> None:
        """The listing with ``rows`` listed again and ``removed`` gone (under the lock)."""
        for uid in removed | set(rows):
            self._counts.pop(uid, None)
            self._moments.pop(uid, None)
            self._sources.pop(uid, None)
            self._geometries.pop(uid, None)
            self._study_problems.pop(uid, None)
            for series_uid in self._series_of.pop(uid, []):
                self._series_to_study.pop(series_uid, None)
        for uid, (instances, entry) in rows.items():
            self._counts[uid] = instances
            if entry.get("patient"):
                self._moments[uid] = StudyMoment(entry["patient"], entry.get("acquired", ""))
            if "problem" in entry:
                self._study_problems[uid] = StudyProblem(uid, uid, entry["problem"])
                continue
            study = DicomStudy(uid, {c: _summary_from_json(s) for c, s in entry["channels"].items()}, [_summary_from_json(s) for s in entry["segs"]], entry["evidence"])
            broken = self._broken.get(uid)
            if broken and broken[0] == study.fingerprint():  # pixels found undecodable; unchanged since
                self._study_problems[uid] = StudyProblem(uid, uid, broken[1])
                continue
            self._sources[uid] = study
            self._geometries[uid] = Geometry(tuple(entry["geometry"]["shape"]), np.array(entry["geometry"]["affine"]))
            self._series_of[uid] = entry["series"]
            self._series_to_study.update({s: uid for s in entry["series"]})
        self._problems = list(self._study_problems.values())

    def _save_acquisitions(self) -> None:
        if len(self._acquisitions) != self._acquisitions_saved:
            write_json({uid: dataclasses.asdict(a) for uid, a in self._acquisitions.items()}, self._acquisitions_path)
            self._acquisitions_saved = len(self._acquisitions)

    def _with_acquisition(self, study_uid: str, series: SeriesSummary) -> SeriesSummary:
        """The series with how it was acquired: from the series search where the archive answers it there, else
        one instance's header, asked once per series UID."""
        if series.modality != "MR" or series.acquisition is not None:
            return series
        if series.series_uid not in self._acquisitions:
            self._acquisitions[series.series_uid] = self._archive.acquisition(study_uid, series.series_uid)
        return dataclasses.replace(series, acquisition=self._acquisitions[series.series_uid])

    def _mark_broken(self, study_id: str, fingerprint: str, reason: str) -> None:
        super()._mark_broken(study_id, fingerprint, reason)
        with self._lock:
            self._study_problems[study_id] = StudyProblem(study_id, study_id, reason)

    def _maybe_refresh(self) -> None:
        if not self._background and time.monotonic() - self._refresh_started_at >= self._refresh_s:
            self.refresh()

    def _stack(self, study_uid: str, channel: str, series: SeriesSummary, metadata: Optional[List[Dict[str, Any]]] = None) -> SliceStack:
        """Slice order and grid of a series from its instances' metadata (asked if not given), checked once per
        UID and instance count: a series that gains an instance is checked again."""
        key = f"{series.series_uid}_{series.instances}"
        if key not in self._stacks:
            if metadata is None:
                metadata = self._archive.series_metadata(study_uid, series.series_uid)
            try:
                datasets = [Dataset.from_json({tag: value for tag, value in m.items() if tag in SLICE_ATTRIBUTES}) for m in metadata]
                self._stacks[key] = slice_stack(frames_as_slices(datasets, with_pixels=False), f"{channel} series '{series.name}'")
            except SeriesProblem as e:
                self._stacks[key] = e
        stack = self._stacks[key]
        if isinstance(stack, SeriesProblem):
            raise stack
        return stack

    def _reference_datasets(self, study: DicomStudy) -> list:
        """The reference series' instances (metadata only) in slice order: what a SEG refers to. Read from the
        archive each time, never cached: a SEG carries the patient module of its source images."""
        summary = study.channels[REFERENCE_CHANNEL]
        slices = frames_as_slices([Dataset.from_json(m) for m in self._archive.series_metadata(study.study_id, summary.series_uid)], with_pixels=False)
        try:
            stack = slice_stack(slices, f"{REFERENCE_CHANNEL} series '{summary.name}'")
        except SeriesProblem as e:
            raise ArchiveUnavailable(f"the reference series of study {study.study_id} changed in the archive ({e}); its label is sent at the next listing") from None
        geometry = self.geometry(study.study_id)
        if stack.shape != geometry.shape or not np.allclose(stack.affine, geometry.affine, atol=1e-3):
            raise ArchiveUnavailable(f"the reference series of study {study.study_id} changed in the archive; its label is sent at the next listing")
        return [slices[i] for i in stack.order]

    def problems(self) -> List[StudyProblem]:
        with self._lock:
            problems = list(self._problems)
        registry = read_json(self._seg_registry_path, {})
        problems += [StudyProblem(r["study"], sop, r["reason"]) for sop, r in registry.items() if r.get("status") == "refused"]
        if self._archive_error:
            problems.append(StudyProblem("*", self._archive.url, self._archive_error))
        return problems

    def _resolve(self, image_id: str) -> str:
        """StudyInstanceUID for a study or any of its series' UIDs (OHIF sends the series on screen)."""
        with self._lock:
            if image_id in self._sources:
                return image_id
            if image_id in self._series_to_study:
                return self._series_to_study[image_id]
        self.refresh()
        with self._lock:
            study = image_id if image_id in self._sources else self._series_to_study.get(image_id)
        if study is None:
            raise NotFound(f"'{image_id}' is neither a usable study nor a series of one in {self._archive.url}: see /datastore/?output=all")
        return study

    def is_listed(self, study_uid: str) -> bool:
        """Whether the last listing holds the study as a case (never asks the archive)."""
        with self._lock:
            return study_uid in self._sources

    def _source(self, image_id: str) -> DicomStudy:  # type: ignore[override]
        study = self._resolve(image_id)
        with self._lock:
            return self._sources[study]

    def geometry(self, image_id: str) -> Geometry:
        study = self._resolve(image_id)
        with self._lock:
            return self._geometries[study]

    def series_grids(self, study_id: str) -> List[SeriesGrid]:
        """Each of the study's four series as OHIF shows it (a labelmap drawn on the series on screen is on its grid),
        placed in the study's space as ``clicked_grid`` places it. A series that cannot be read is left out."""
        study = self._source(study_id)
        grids = []
        for channel, series in study.channels.items():
            try:
                stack = self._stack(study.study_id, channel, series)
            except (SeriesProblem, ValueError) as e:
                logger.info(f"study {study.study_id}: {channel} series not offered as a label grid ({e})")
                continue
            scanner = Geometry(tuple(int(s) for s in stack.shape), np.asarray(stack.affine, dtype=float))  # type: ignore[arg-type]
            grids.append(SeriesGrid(scanner, self._placement(study.study_id, channel)))
        return grids

    def _placement(self, study_id: str, channel: str) -> np.ndarray:
        """Where a series' anatomy lies in the study's space (4x4 RAS): the preparation's registration of a series the
        patient moved before; identity for one that needed none, or a study not prepared yet."""
        moved = self.preparation_info(study_id).get("alignment", {}).get(channel, {}).get("series_to_study_ras")
        return np.eye(4) if moved is None else np.asarray(moved, dtype=float)

    def clicked_grid(self, image_id: str) -> Geometry:
        """OHIF's Point Prompts send indices of the series on screen (any of the four, in its own orientation and
        spacing; cornerstone's grid is the series' ``SliceStack``): that series' grid, placed where its anatomy lies
        in the study's space (a series the patient moved before is registered to the T1c when the study is prepared:
        prepare it first). A study UID: the study's."""
        study = self._source(image_id)
        for channel, series in study.channels.items():
            if series.series_uid == image_id:
                stack = self._stack(study.study_id, channel, series)
                affine = self._placement(study.study_id, channel) @ np.asarray(stack.affine, dtype=float)
                return Geometry(tuple(int(s) for s in stack.shape), affine)  # type: ignore[arg-type]
        if image_id != study.study_id:
            raise InvalidInput(f"series {image_id} is not one of the study's four sequences: click on its T1c, T1, T2 or FLAIR series")
        return self.geometry(image_id)

    # --- images -------------------------------------------------------------------------------------
    def list_images(self) -> List[str]:
        self._maybe_refresh()
        with self._lock:
            return sorted(self._sources)

    def get_image_uri(self, image_id: str) -> str:
        study = self._source(image_id)
        try:
            return str(self._cases.get_written(study.study_id, study.fingerprint(), lambda path: self._write_stack(study, path)))
        except (SeriesProblem, UnusableVolume, RegistrationRefused) as e:
            self._mark_broken(study.study_id, study.fingerprint(), str(e))  # not served again until a series changes
            raise InvalidInput(f"study {study.study_id} cannot be opened: {e}") from None

    def _write_stack(self, study: DicomStudy, path: Path) -> Preparation:
        """Fetch and decode the four series at once, each written into its channel's block of ``path`` by the
        process that decoded it (``fetch_into``). A study as BraTS delivers it (every series on the reference grid,
        skull-stripped) is then complete once its header is written; any other is prepared here (series registered
        to the T1c, brain extracted: lib/preparation/) and written again."""
        geometry = self.geometry(study.study_id)
        series = [(study.channels[c].series_uid, f"{c} series '{study.channels[c].name}'") for c in CHANNELS]
        target = StackedNiftiFile.create(path, geometry.shape, len(CHANNELS), geometry.affine)
        decoded = fetch_into(self._archive, study.study_id, series, target)
        dtypes = {d.dtype for d in decoded}
        if len(dtypes) == 1 and all(d.volume is None for d in decoded):  # every series on the reference grid
            dtype = np.dtype(dtypes.pop())
            reference = {REFERENCE_CHANNEL: (target.read_block(CHANNELS.index(REFERENCE_CHANNEL), dtype), geometry.affine)}
            if looks_skull_stripped(reference[REFERENCE_CHANNEL][0], voxel_ml(geometry.affine), PREPARATION):
                target.finish(dtype)  # as BraTS delivers it: a count of zero voxels is the whole preparation
                return Preparation(already_prepared_report(reference))
        volumes = {
            channel: (target.read_block(index, np.dtype(d.dtype)), geometry.affine) if d.volume is None else (d.volume, d.affine)
            for index, (channel, d) in enumerate(zip(CHANNELS, decoded))
        }
        stacked, affine, preparation = prepare_series(volumes)
        nib.save(nifti_image(stacked, affine), str(path))
        return preparation

    def get_image_info(self, image_id: str) -> Dict[str, Any]:
        study = self._source(image_id)
        geometry = self.geometry(study.study_id)
        info = read_json(self._image_info_path(study.study_id), {})
        info.update(
            {
                "layout": "dicomweb",
                "channels": list(CHANNELS),
                "series": {c: {"uid": s.series_uid, "description": s.name, "instances": s.instances, "why": study.evidence.get(c, "")} for c, s in study.channels.items()},
                "reference_channel": REFERENCE_CHANNEL,
                "shape": list(geometry.shape),
                "spacing_mm": list(geometry.spacing_mm),
                "preparation": self.preparation_info(study.study_id),
            }
        )
        return info

    def viewer_ids(self, image_id: str) -> Dict[str, str]:
        """The DICOM ids OHIF's Next Sample dialog shows and opens the study by (as MONAI Label's DICOMweb datastore gives)."""
        study = self._source(image_id)
        return {
            "StudyInstanceUID": study.study_id,
            "SeriesInstanceUID": study.channels[REFERENCE_CHANNEL].series_uid,
            "Modality": "MR",
            "RetrieveURL": f"{OHIF_STUDY_PATH}{study.study_id}",
        }

    def add_image(self, image_id: str, image_filename: str, image_info: Dict[str, Any]) -> str:
        raise NotAllowed("studies enter through the archive: send them to Orthanc (scripts/import_studies.py for NIfTI studies)")

    def remove_image(self, image_id: str) -> None:
        raise NotAllowed(f"studies are not deleted through this server; remove study '{image_id}' in the archive")

    # --- labels -------------------------------------------------------------------------------------
    def case_id(self, image_id: str) -> str:  # also a series UID of the study (what OHIF sends)
        return self._resolve(image_id)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        """Committed locally (one unit, with history, marked pending for the archive) before the answer;
        a final label then goes to the archive as SEG, or at the next refresh if the archive is down."""
        study = self._resolve(image_id)
        saved = super().save_label(study, label_filename, label_tag, label_info)
        if _tag(label_tag) == FINAL:
            self._send_label(study)
        return saved

    def _commit_fields(self, study: str, tag: str) -> Dict[str, Any]:
        return {"archive": "pending"} if tag == FINAL else {}

    def _waits_for_archive(self, study: str) -> bool:
        version = self._labels.current(study, FINAL)
        return version is not None and version.info().get("archive") == "pending"

    def _send_label(self, study: str) -> None:
        version = self._labels.current(study, FINAL)
        if version is None or version.info().get("archive") != "pending":
            self._pending.discard(study)
            return
        self._pending.add(study)
        label = np.asarray(nib.load(str(version.label_path)).dataobj, dtype=np.uint8)
        seed = f"{study}/{version.record().get('saved_at', '')}"
        try:
            reference = self._reference_datasets(self._source(study))
            seg = label_to_seg(label, reference, seed=seed, software_version=self._software_version, label_set=self.label_set)
            report, report_problem = self._measurement_report(seg, reference, label, study, seed)
            self._archive.store([seg, *([report] if report is not None else [])])
        except ArchiveUnavailable as e:
            logger.warning(f"label of {study} kept on the server, not yet in the archive: {e}")
            return
        except SegProblem as e:  # no SEG can be written for this reference series: kept here, said so
            logger.warning(f"label of {study} kept on the server; no SEG written: {e}")
            self._labels.update_status(version, {"archive": "not sent", "archive_reason": str(e)})
            self._pending.discard(study)
            return
        self._register_seg(str(seg.SOPInstanceUID), study, "written")
        stored = {"archive": "stored", "seg_sop_instance_uid": str(seg.SOPInstanceUID), "seg_series_uid": str(seg.SeriesInstanceUID)}
        if report is not None:
            self._register_report(str(report.SOPInstanceUID), study)
            stored.update(sr_sop_instance_uid=str(report.SOPInstanceUID), sr_series_uid=str(report.SeriesInstanceUID))
        else:
            stored["sr_problem"] = report_problem
        self._labels.update_status(version, stored)
        self._pending.discard(study)

    def _measurement_report(self, seg: Dataset, reference: list, label: np.ndarray, study: str, seed: str) -> Tuple[Optional[Dataset], str]:
        """The label's volumes as a TID 1500 report beside its SEG; one that cannot be written (said why) never
        keeps the SEG out of the archive."""
        volumes = region_volumes_ml(label, voxel_volume_ml(self.geometry(study).affine), self.label_set)
        try:
            return measurement_report(seg, reference, volumes, seed=seed, software_version=self._software_version, label_set=self.label_set), ""
        except (ValueError, SegProblem) as e:
            logger.warning(f"label of {study}: no measurement report written: {e}")
            return None, str(e)

    def _register_report(self, sop_uid: str, study: str) -> None:
        """The study's new measurement report is current; the one it replaces is superseded, and says by which."""

        def supersede(registry: Dict[str, Any]) -> Dict[str, Any]:
            for uid, entry in registry.items():
                if entry.get("kind") == "measurement report" and entry.get("study") == study and entry.get("status") == "current" and uid != sop_uid:
                    registry[uid] = {**entry, "status": "superseded", "superseded_by": sop_uid}
            return {**registry, sop_uid: {"study": study, "kind": "measurement report", "status": "current"}}

        update_json(self._seg_registry_path, supersede, {})

    def _send_pending_labels(self) -> None:
        for study in sorted(self._pending):
            if study not in self._sources:
                continue  # not (or no longer) a case of the archive: kept here, sent if it comes back
            try:
                self._send_label(study)
            except Exception as e:  # one study's label must not stop the others' (it stays pending)
                logger.warning(f"label of {study} not sent to the archive: {type(e).__name__}: {e}")

    def _register_seg(self, sop_uid: str, study: str, status: str, reason: str = "") -> None:
        entry = {"study": study, "status": status, **({"reason": reason} if reason else {})}
        update_json(self._seg_registry_path, lambda registry: {**registry, sop_uid: entry}, {})

    def _import_segs(self) -> None:
        """SEGs in the archive that this server has not seen become final labels, in the order they were made.
        Only studies listed again since the last look are searched (``_segs_to_check``): a new SEG changes its study."""
        registry = read_json(self._seg_registry_path, {})
        for uid in sorted(self._segs_to_check):
            study = self._sources.get(uid)
            if study is None:  # not (or no longer) a case
                self._segs_to_check.discard(uid)
                continue
            new = []
            for series in study.segs:
                try:
                    new += [(series, sop) for sop in self._archive.instance_uids(study.study_id, series.series_uid) if sop not in registry]
                except ArchiveUnavailable as e:
                    logger.warning(str(e))
                    return
            try:
                decoded = [d for d in (self._decode_seg(study, series, sop) for series, sop in new) if d is not None]
                for made_at, series, sop, seg, label in sorted(decoded, key=lambda d: d[0]):
                    self._import_seg(study, series, sop, seg, label, made_at)
            except ArchiveUnavailable as e:
                logger.warning(str(e))
                return
            except Exception as e:  # one study's SEG must not stop the others' (tried again at the next refresh)
                logger.warning(f"SEGs of study {uid} not imported: {type(e).__name__}: {e}")
                continue
            self._segs_to_check.discard(uid)

    def _decode_seg(self, study: DicomStudy, series: SeriesSummary, sop: str):
        geometry = self.geometry(study.study_id)
        try:
            seg = self._archive.retrieve_instance(study.study_id, series.series_uid, sop)
            label = check_label_values(seg_to_label(seg, geometry.affine, geometry.shape, self.label_set), self.label_set)
        except ArchiveUnavailable:
            raise  # looked at again at the next refresh
        except (SegProblem, LabelError, ValueError, AttributeError, KeyError, IndexError) as e:
            reason = f"SEG '{series.name}' not used as a label: {e}"
            logger.warning(f"{study.study_id}: {reason}")
            self._register_seg(sop, study.study_id, "refused", reason)
            return None
        return content_time(seg), series, sop, seg, label

    def _import_seg(self, study: DicomStudy, series: SeriesSummary, sop: str, seg, label: np.ndarray, made_at: str) -> None:
        info = self.get_label_info(study.study_id, FINAL) if self.get_label_by_image_id(study.study_id, FINAL) else {}
        current = info.get("seg_made_at") or info.get("saved_at", "")  # when the current label was made
        if current and made_at and made_at < current:
            self._register_seg(sop, study.study_id, "superseded", f"made {made_at}, before the current label ({current})")
            return
        info = {
            # ground truth the importer shipped is the study's label but nobody's correction: it does not count for retraining
            "source": IMPORTED_FROM if is_shipped_ground_truth(seg) else SEG_SOURCE,
            "seg_sop_instance_uid": sop,
            "seg_series_uid": series.series_uid,
            "seg_description": series.name,
            "seg_manufacturer": str(seg.get("Manufacturer", "")),
            "seg_made_at": made_at,
            "archive": "stored",
        }
        self._store_label(study.study_id, label, self.geometry(study.study_id), FINAL, info)
        self._register_seg(sop, study.study_id, "imported")

    # --- summaries -------------------------------------------------------------------------------------
    def json(self) -> Dict[str, Any]:
        listing = super().json()
        listing.pop("studies_dir", None)
        listing["archive"] = {"url": self._archive.url, "reachable": self._archive_error is None, "error": self._archive_error}
        return listing

    def status(self) -> Dict[str, Any]:
        status = super().status()
        status["archive"] = {
            "url": self._archive.url,
            "reachable": self._archive_error is None,
            "changes_feed": self._changes is not None,
            "listing": dict(self._listing_progress),
        }
        status["labels_waiting_for_archive"] = len(self._pending)
        return status
