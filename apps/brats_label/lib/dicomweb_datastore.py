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
refreshed in a background thread of the server (``start_background_refresh``). When the archive does not
answer, listing keeps what it knew, cached studies still open, labels are
still saved locally and sent when the archive is back; everything else answers 503 with the reason.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from .atomic import read_json, write_json
from .case_cache import UnusableVolume, stack_channels
from .config import CHANNELS, DICOMWEB_FETCH_WORKERS, DICOMWEB_REFRESH_S, OHIF_STUDY_PATH, REFERENCE_CHANNEL
from .dicom.archive import Archive
from .dicom.multiframe import frames_as_slices
from .dicom.seg import SegProblem, is_shipped_ground_truth, label_to_seg, seg_to_label
from .dicom.sequence_classifier import Acquisition
from .dicom.series_rules import SeriesRules, SeriesSummary
from .dicom.series_volume import SeriesProblem, SliceStack, series_volume, slice_stack
from .errors import ArchiveUnavailable, InvalidInput, NotAllowed, NotFound
from .labels import LabelError, check_label_values
from .shared_state import update_json
from .studies import Geometry, StudyProblem
from .study_datastore import FINAL, IMPORTED_FROM, StudyDatastore, _tag

logger = logging.getLogger(__name__)

SEG_SOURCE = "dicom-seg"
SOP_INSTANCE_UID_TAG = "00080018"
# What the metadata cache keeps of each instance: what places and decodes its slices, nothing about the patient.
CACHED_METADATA = frozenset(
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
    ):
        """``writer`` False in worker processes: they list and open studies but send, import and register nothing."""
        self._archive = archive
        self._rules = rules or SeriesRules()
        self._refresh_s = refresh_s
        self._software_version = software_version
        super().__init__(workspace, name, f"Studies in the DICOMweb archive {archive.url}", listing_extras, label_audit, writer)
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
        if writer:
            self._strip_metadata_cache()
        self.refresh()

    def _strip_metadata_cache(self) -> None:
        """Caches written before ``CACHED_METADATA`` held whole instance headers (names, birth dates): cut to it."""
        for path in self._metadata_dir.glob("*.json") if self._metadata_dir.is_dir() else []:
            if path.name.endswith(".stack.json"):
                continue
            cached = read_json(path, None)
            if isinstance(cached, list) and any(set(item) - CACHED_METADATA for item in cached if isinstance(item, dict)):
                write_json([{t: v for t, v in item.items() if t in CACHED_METADATA} for item in cached if isinstance(item, dict)], path)

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
        """Ask the archive for its studies; the writer also imports new SEGs and sends labels waiting for the archive."""
        asked_at = time.monotonic()
        with self._refresh_lock:
            if self._refresh_started_at >= asked_at:
                return  # another thread refreshed after we asked: its answer will do
            self._refresh_started_at = time.monotonic()
            self._refresh()

    def _refresh(self) -> None:
        try:
            studies = self._archive.studies()
            found: Dict[str, DicomStudy] = {}
            series_to_study: Dict[str, str] = {}
            problems: List[StudyProblem] = []
            geometries: Dict[str, Geometry] = {}
            for study in studies:
                uid = study["study_uid"]
                series = [self._with_acquisition(uid, s) for s in self._archive.series(uid)]
                assignment = self._rules.assign(series)
                if assignment.problem:
                    problems.append(StudyProblem(uid, uid, assignment.problem))
                    continue
                try:
                    for channel, summary in assignment.channels.items():
                        stack = self._stack(uid, channel, summary)
                        if channel == REFERENCE_CHANNEL:
                            geometries[uid] = Geometry(stack.shape, stack.affine)
                except SeriesProblem as e:
                    problems.append(StudyProblem(uid, uid, str(e)))
                    continue
                except ArchiveUnavailable:
                    raise
                except Exception as e:  # malformed metadata of one study must not stop the listing of the others
                    logger.warning(f"Study {uid} not listed: {type(e).__name__}: {e}")
                    problems.append(StudyProblem(uid, uid, f"its series' metadata could not be read ({type(e).__name__}: {e})"))
                    continue
                candidate = DicomStudy(uid, assignment.channels, [s for s in series if s.modality == "SEG"], assignment.evidence)
                broken = self._broken.get(uid)
                if broken and broken[0] == candidate.fingerprint():  # pixels found undecodable; unchanged since
                    problems.append(StudyProblem(uid, uid, broken[1]))
                    continue
                found[uid] = candidate
                series_to_study.update({s.series_uid: uid for s in series})
        except ArchiveUnavailable as e:
            self._archive_error = str(e)
            logger.warning(f"{e}; serving the last listing ({len(self._sources)} studies)")
            return
        with self._lock:
            self._archive_error = None
            self._sources, self._series_to_study = found, series_to_study  # type: ignore[assignment]
            self._geometries = geometries
            self._problems = problems
        if self._writer:
            self._save_acquisitions()
            self._send_pending_labels()
            self._import_segs()
        logger.info(f"{len(found)} studies in {self._archive.url}; {len(self._problems)} with problems")

    def _save_acquisitions(self) -> None:
        if len(self._acquisitions) != self._acquisitions_saved:
            write_json({uid: dataclasses.asdict(a) for uid, a in self._acquisitions.items()}, self._acquisitions_path)
            self._acquisitions_saved = len(self._acquisitions)

    def _with_acquisition(self, study_uid: str, series: SeriesSummary) -> SeriesSummary:
        """The series with how it was acquired (one instance's header, asked once per series UID)."""
        if series.modality != "MR":
            return series
        if series.series_uid not in self._acquisitions:
            self._acquisitions[series.series_uid] = self._archive.acquisition(study_uid, series.series_uid)
        return dataclasses.replace(series, acquisition=self._acquisitions[series.series_uid])

    def _maybe_refresh(self) -> None:
        if not self._background and time.monotonic() - self._refresh_started_at >= self._refresh_s:
            self.refresh()

    def _stack(self, study_uid: str, channel: str, series: SeriesSummary) -> SliceStack:
        """Slice order and grid of a series, checked once per UID and instance count (parsing is slow)."""
        key = f"{series.series_uid}_{series.instances}"
        if key not in self._stacks:
            saved = read_json(self._metadata_dir / f"{key}.stack.json", None)  # checked by an earlier run
            if saved is not None:
                self._stacks[key] = SeriesProblem(saved["problem"]) if "problem" in saved else SliceStack(saved["order"], np.array(saved["affine"]), tuple(saved["shape"]))
            else:
                try:
                    metadata = [Dataset.from_json(m) for m in self._metadata(study_uid, series)]
                    checked = slice_stack(frames_as_slices(metadata, with_pixels=False), f"{channel} series '{series.name}'")
                    self._stacks[key] = checked
                    saved = {"order": [int(i) for i in checked.order], "affine": checked.affine.tolist(), "shape": list(checked.shape)}
                except SeriesProblem as e:
                    self._stacks[key] = e
                    saved = {"problem": str(e)}
                write_json(saved, self._metadata_dir / f"{key}.stack.json")
        stack = self._stacks[key]
        if isinstance(stack, SeriesProblem):
            raise stack
        return stack

    def _reference_datasets(self, study: DicomStudy) -> list:
        """The reference series' instances (metadata only) in slice order: what a SEG refers to. Read from the
        archive each time, never cached: a SEG carries the patient module of its source images."""
        summary = study.channels[REFERENCE_CHANNEL]
        by_uid = {m.get(SOP_INSTANCE_UID_TAG, {}).get("Value", [""])[0]: m for m in self._archive.series_metadata(study.study_id, summary.series_uid)}
        ordered = [by_uid.get(m.get(SOP_INSTANCE_UID_TAG, {}).get("Value", [""])[0]) for m in self._metadata(study.study_id, summary)]
        if any(m is None for m in ordered):
            raise ArchiveUnavailable(f"the reference series of study {study.study_id} changed in the archive; its label is sent at the next listing")
        stack = self._stack(study.study_id, REFERENCE_CHANNEL, summary)
        slices = frames_as_slices([Dataset.from_json(m) for m in ordered], with_pixels=False)  # type: ignore[arg-type]
        return [slices[i] for i in stack.order]

    def _metadata(self, study_uid: str, series: SeriesSummary) -> List[Dict[str, Any]]:
        """Instance metadata of a series, cached under its UID and instance count: only the attributes that
        place and decode slices (``CACHED_METADATA``), no patient or study attributes."""
        path = self._metadata_dir / f"{series.series_uid}_{series.instances}.json"
        cached = read_json(path, None)
        if cached is None:
            cached = [{tag: value for tag, value in item.items() if tag in CACHED_METADATA} for item in self._archive.series_metadata(study_uid, series.series_uid)]
            write_json(cached, path)
        return cached

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

    def _source(self, image_id: str) -> DicomStudy:  # type: ignore[override]
        study = self._resolve(image_id)
        with self._lock:
            return self._sources[study]

    def geometry(self, image_id: str) -> Geometry:
        study = self._resolve(image_id)
        with self._lock:
            return self._geometries[study]

    # --- images -------------------------------------------------------------------------------------
    def list_images(self) -> List[str]:
        self._maybe_refresh()
        with self._lock:
            return sorted(self._sources)

    def get_image_uri(self, image_id: str) -> str:
        study = self._source(image_id)
        try:
            return str(self._cases.get(study.study_id, study.fingerprint(), lambda: self._fetch_stack(study)))
        except (SeriesProblem, UnusableVolume) as e:
            self._mark_broken(study.study_id, study.fingerprint(), str(e))  # not served again until a series changes
            raise InvalidInput(f"study {study.study_id} cannot be opened: {e}") from None

    def _fetch_stack(self, study: DicomStudy) -> Tuple[np.ndarray, np.ndarray]:
        """Fetch the four series at once, convert each, resample onto the reference grid, stack."""

        def fetch(channel: str) -> Tuple[np.ndarray, np.ndarray]:
            summary = study.channels[channel]
            datasets = self._archive.retrieve_series(study.study_id, summary.series_uid)
            return series_volume(frames_as_slices(datasets), f"{channel} series '{summary.name}'")

        with ThreadPoolExecutor(min(DICOMWEB_FETCH_WORKERS, len(CHANNELS))) as pool:
            volumes = dict(zip(CHANNELS, pool.map(fetch, CHANNELS)))
        geometry = self.geometry(study.study_id)
        channels = []
        for channel in CHANNELS:
            data, affine = volumes[channel]
            if data.shape != geometry.shape or not np.allclose(affine, geometry.affine, atol=1e-3):
                data = np.asarray(resample_from_to(nib.Nifti1Image(data.astype(np.float32), affine), (geometry.shape, geometry.affine), order=1).dataobj, dtype=np.float32)
            channels.append(data)
        return stack_channels(channels), geometry.affine

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

    def _send_label(self, study: str) -> None:
        version = self._labels.current(study, FINAL)
        if version is None or version.info().get("archive") != "pending":
            return
        label = np.asarray(nib.load(str(version.label_path)).dataobj, dtype=np.uint8)
        try:
            reference = self._reference_datasets(self._source(study))
            seg = label_to_seg(label, reference, seed=f"{study}/{version.record().get('saved_at', '')}", software_version=self._software_version)
            self._archive.store([seg])
        except ArchiveUnavailable as e:
            logger.warning(f"label of {study} kept on the server, not yet in the archive: {e}")
            return
        except SegProblem as e:  # no SEG can be written for this reference series: kept here, said so
            logger.warning(f"label of {study} kept on the server; no SEG written: {e}")
            self._labels.update_status(version, {"archive": "not sent", "archive_reason": str(e)})
            return
        self._register_seg(str(seg.SOPInstanceUID), study, "written")
        self._labels.update_status(version, {"archive": "stored", "seg_sop_instance_uid": str(seg.SOPInstanceUID), "seg_series_uid": str(seg.SeriesInstanceUID)})

    def _send_pending_labels(self) -> None:
        for study in list(self._sources):
            try:
                self._send_label(study)
            except Exception as e:  # one study's label must not stop the others' (it stays pending)
                logger.warning(f"label of {study} not sent to the archive: {type(e).__name__}: {e}")

    def _register_seg(self, sop_uid: str, study: str, status: str, reason: str = "") -> None:
        entry = {"study": study, "status": status, **({"reason": reason} if reason else {})}
        update_json(self._seg_registry_path, lambda registry: {**registry, sop_uid: entry}, {})

    def _import_segs(self) -> None:
        """SEGs in the archive that this server has not seen become final labels, in the order they were made."""
        registry = read_json(self._seg_registry_path, {})
        for study in list(self._sources.values()):
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
                logger.warning(f"SEGs of study {study.study_id} not imported: {type(e).__name__}: {e}")

    def _decode_seg(self, study: DicomStudy, series: SeriesSummary, sop: str):
        geometry = self.geometry(study.study_id)
        try:
            seg = self._archive.retrieve_instance(study.study_id, series.series_uid, sop)
            label = check_label_values(seg_to_label(seg, geometry.affine, geometry.shape))
        except ArchiveUnavailable as e:
            logger.warning(str(e))
            return None
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
        status["archive"] = {"url": self._archive.url, "reachable": self._archive_error is None}
        pending = [s for s in list(self._sources) if self.get_label_info(s, FINAL).get("archive") == "pending"]
        status["labels_waiting_for_archive"] = len(pending)
        return status
