"""A MONAI Label datastore over a plain folder of studies, where a case is a study, not a file.

MONAI Label's ``LocalDatastore`` treats each file as an image; here each study (four modalities in
BraTS layout, or one 4D file in MSD layout) is one case, served as a single 4-channel volume in the
fixed channel order. Ground-truth labels found beside the images are imported once, mapped to the
project's label convention. Studies that cannot be used are listed with the reason.

Everything the server writes lives in the workspace (``<studies>/.brats_label`` by default):

    cases/<id>.nii                     stacked 4-channel volume (cache, rebuilt when a source changes)
    labels/<tag>/<id>.nii.gz (+ .json)  current label of each tag and who/when/how it was saved
    labels/history/<id>/<time>_<tag>.nii.gz (+ .json)   every version ever saved, never overwritten

Label writes are atomic and the history copy is written before the current label is replaced,
so a crash at any point loses nothing that a request reported as saved.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import nibabel as nib
import numpy as np
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag

from .atomic import read_json, write_json, write_nifti
from .case_cache import CaseCache, stack_study_files
from .clock import utc_now
from .config import CHANNELS, FOREGROUND_LABELS
from .errors import InvalidInput, NotAllowed, NotFound
from .label_files import read_uploaded_label
from .labels import LabelError, brats_convention, to_project_convention
from .studies import Geometry, StudyProblem, StudySource, find_studies, study_geometry

logger = logging.getLogger(__name__)

LABEL_SUFFIX = ".nii.gz"
IMPORTED_FROM = "imported"
FINAL = DefaultLabelTag.FINAL.value


def _tag(tag: Optional[str]) -> str:
    """Plain string of a label tag: on Python 3.11 str() of MONAI Label's tag enum is 'DefaultLabelTag.FINAL'."""
    if tag is None or tag == "":
        return FINAL
    return tag.value if isinstance(tag, DefaultLabelTag) else str(tag)


class StudyFolderDatastore(Datastore):
    def __init__(
        self,
        studies_dir: Path,
        workspace: Path,
        name: str = "BraTS studies",
        description: str = "",
        listing_extras: Optional[Callable[[], Dict[str, Dict[str, Any]]]] = None,
        label_audit: Optional[Callable[[str, np.ndarray], Dict[str, Any]]] = None,
    ):
        """``listing_extras`` adds per-case entries to the listing (the app gives active-learning ranks);
        ``label_audit`` adds to each submitted final label's record (the app compares it with the pre-label)."""
        self._studies_dir = Path(studies_dir)
        self._workspace = Path(workspace)
        self._labels_dir = self._workspace / "labels"
        self._history_dir = self._labels_dir / "history"
        self._cases = CaseCache(self._workspace / "cases")
        self._name = name
        self._description = description or f"Studies in {self._studies_dir}"
        self._listing_extras = listing_extras
        self._label_audit = label_audit
        self._lock = threading.RLock()
        self._sources: Dict[str, StudySource] = {}
        self._problems: List[StudyProblem] = []
        self._geometries: Dict[str, Geometry] = {}
        self.refresh()

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

    # --- discovery ----------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Rescan the folder; import ground truth of studies that have no final label yet."""
        sources, problems = find_studies(self._studies_dir)
        with self._lock:
            self._sources = {s.study_id: s for s in sources}
            self._problems = list(problems)
            self._geometries = {}
            for source in sources:
                problem = self._import_ground_truth(source)
                if problem:
                    self._problems.append(problem)
        for problem in self._problems:
            logger.warning(f"Study {problem.study_id} not usable as is: {problem.reason}")
        logger.info(f"{len(self._sources)} studies in {self._studies_dir}; {len(self._problems)} with problems")

    def problems(self) -> List[StudyProblem]:
        with self._lock:
            return list(self._problems)

    def _source(self, image_id: str) -> StudySource:
        with self._lock:
            source = self._sources.get(image_id)
        if source is None:
            raise NotFound(f"Study '{image_id}' is not in the datastore: see /datastore/?output=all for the studies and for those refused")
        return source

    def geometry(self, image_id: str) -> Geometry:
        with self._lock:
            if image_id not in self._geometries:
                self._geometries[image_id] = study_geometry(self._source(image_id))
            return self._geometries[image_id]

    def _import_ground_truth(self, source: StudySource) -> Optional[StudyProblem]:
        """A label shipped with the study becomes its final label, unless an annotator saved one already."""
        if source.ground_truth is None or self._label_path(source.study_id, FINAL).exists():
            return None
        try:
            raw = np.asanyarray(nib.load(str(source.ground_truth)).dataobj)
            convention = "msd" if source.layout == "msd" else brats_convention(np.unique(raw))
            label = to_project_convention(raw, convention)
            info = {"source": IMPORTED_FROM, "file": str(source.ground_truth), "convention": convention}
            self._store_label(source.study_id, label, self.geometry(source.study_id), FINAL, info)
        except (LabelError, ValueError, OSError) as e:
            return StudyProblem(source.study_id, str(source.ground_truth), f"ground truth not imported: {e}")
        return None

    # --- images -------------------------------------------------------------------------------------
    def list_images(self) -> List[str]:
        with self._lock:
            return sorted(self._sources)

    def get_image_uri(self, image_id: str) -> str:
        source = self._source(image_id)
        return str(self._cases.get(source.study_id, source.fingerprint(), lambda: stack_study_files(source)))

    def get_image(self, image_id: str, params=None) -> Any:
        return open(self.get_image_uri(image_id), "rb")

    def get_image_info(self, image_id: str) -> Dict[str, Any]:
        source = self._source(image_id)
        geometry = self.geometry(image_id)
        info = read_json(self._image_info_path(image_id), {})
        info.update(
            {
                "layout": source.layout,
                "channels": list(CHANNELS),
                "files": {m: str(c.path) for m, c in source.channels.items()},
                "shape": list(geometry.shape),
                "spacing_mm": list(geometry.spacing_mm),
            }
        )
        return info

    def _image_info_path(self, image_id: str) -> Path:
        return self._workspace / "image_info" / f"{image_id}.json"

    def update_image_info(self, image_id: str, info: Dict[str, Any]) -> None:
        self._source(image_id)
        with self._lock:
            current = read_json(self._image_info_path(image_id), {})
            current.update(info)
            write_json(current, self._image_info_path(image_id))

    def add_image(self, image_id: str, image_filename: str, image_info: Dict[str, Any]) -> str:
        """Accept a 4D NIfTI with the channels in ``config.CHANNELS`` order as a new study (BraTS layout)."""
        try:
            image = nib.load(image_filename)
        except Exception as e:
            raise InvalidInput(f"cannot read the uploaded image as NIfTI ({e})") from None
        if len(image.shape) != 4 or image.shape[3] != len(CHANNELS):
            raise InvalidInput(
                f"uploaded image has shape {image.shape}: a study is one 4D NIfTI with channels {', '.join(CHANNELS)}, "
                "or copy a study folder (one file per modality) into the studies folder"
            )
        if not image_id or "/" in image_id or image_id.startswith("."):
            raise InvalidInput(f"'{image_id}' is not a usable study id")
        with self._lock:
            if image_id in self._sources:
                raise InvalidInput(f"study '{image_id}' exists already; choose another id")
            folder = self._studies_dir / image_id
            data = np.asanyarray(image.dataobj)
            for index, modality in enumerate(CHANNELS):
                write_nifti(data[..., index], image.affine, folder / f"{image_id}-{modality}.nii.gz")
        self.refresh()
        if image_id not in self._sources:
            problem = next((p.reason for p in self._problems if p.study_id == image_id), "unknown problem")
            raise InvalidInput(f"uploaded study '{image_id}' is not usable: {problem}")
        if image_info:
            self.update_image_info(image_id, image_info)
        return image_id

    def remove_image(self, image_id: str) -> None:
        raise NotAllowed(
            f"studies are not deleted through the API (labels are kept for audit); "
            f"remove the folder of '{image_id}' from {self._studies_dir} on the server"
        )

    # --- labels -------------------------------------------------------------------------------------
    def _label_path(self, label_id: str, tag: str) -> Path:
        return self._labels_dir / _tag(tag) / f"{label_id}{LABEL_SUFFIX}"

    def _label_info_path(self, label_id: str, tag: str) -> Path:
        return self._labels_dir / _tag(tag) / f"{label_id}.json"

    def _tags(self) -> List[str]:
        if not self._labels_dir.is_dir():
            return []
        return sorted(p.name for p in self._labels_dir.iterdir() if p.is_dir() and p.name != "history")

    def _store_label(self, image_id: str, label: np.ndarray, geometry: Geometry, tag: str, info: Dict[str, Any]) -> str:
        tag = _tag(tag)
        saved_at = utc_now()
        record = dict(info)
        record.update(
            {
                "tag": tag,
                "saved_at": saved_at,
                "voxels": {name: int((label == value).sum()) for name, value in FOREGROUND_LABELS.items()},
            }
        )
        stamp = saved_at.replace(":", "").replace("-", "").replace(".", "")
        history = self._history_dir / image_id / f"{stamp}_{tag}{LABEL_SUFFIX}"
        with self._lock:
            write_nifti(label, geometry.affine, history)
            write_json(record, history.with_name(history.name.replace(LABEL_SUFFIX, ".json")))
            write_nifti(label, geometry.affine, self._label_path(image_id, tag))
            write_json(record, self._label_info_path(image_id, tag))
        return image_id

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        """Validate and store a label for the study; the previous one stays in the history."""
        geometry = self.geometry(self._source(image_id).study_id)
        tag = _tag(label_tag)
        if not tag.replace("_", "").isalnum() or tag == "history":
            raise InvalidInput(f"label tag '{tag}' is not allowed: use letters, digits and '_'")
        try:
            label = read_uploaded_label(Path(label_filename), geometry, label_info or {})
        except LabelError as e:
            raise InvalidInput(f"label for '{image_id}' not saved: {e}") from None
        info = dict(label_info or {})
        if tag == FINAL and self._label_audit is not None:
            info.update(self._label_audit(image_id, label))
        return self._store_label(image_id, label, geometry, tag, info)

    def case_id(self, image_id: str) -> str:
        """The study an id names (raises NotFound)."""
        return self._source(image_id).study_id

    def remove_label(self, label_id: str, label_tag: str) -> None:
        """The current label of the tag is withdrawn; every saved version stays in the history."""
        path = self._label_path(label_id, label_tag)
        if not path.exists():
            raise NotFound(f"Label '{label_id}' with tag '{label_tag}' does not exist")
        with self._lock:
            record = {"tag": _tag(label_tag), "removed_at": utc_now()}
            write_json(record, self._history_dir / label_id / f"{record['removed_at'].replace(':', '')}_{record['tag']}_removed.json")
            path.unlink()
            self._label_info_path(label_id, label_tag).unlink(missing_ok=True)

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        path = self._label_path(label_id, label_tag)
        return str(path) if path.exists() else ""

    def get_label(self, label_id: str, label_tag: str, params=None) -> Any:
        uri = self.get_label_uri(label_id, label_tag)
        return open(uri, "rb") if uri else None

    def get_labels_by_image_id(self, image_id: str) -> Dict[str, str]:
        return {tag: image_id for tag in self._tags() if self._label_path(image_id, tag).exists()}

    def get_label_by_image_id(self, image_id: str, tag: str) -> str:
        return image_id if self._label_path(image_id, tag).exists() else ""

    def get_label_info(self, label_id: str, label_tag: str) -> Dict[str, Any]:
        return read_json(self._label_info_path(label_id, label_tag), {})

    def update_label_info(self, label_id: str, label_tag: str, info: Dict[str, Any]) -> None:
        if not self._label_path(label_id, label_tag).exists():
            raise NotFound(f"Label '{label_id}' with tag '{label_tag}' does not exist")
        with self._lock:
            current = self.get_label_info(label_id, label_tag)
            current.update(info)
            write_json(current, self._label_info_path(label_id, label_tag))

    def history_records(self) -> List[tuple]:
        """(case, record) for every label version ever saved, every case."""
        if not self._history_dir.is_dir():
            return []
        return [(folder.name, read_json(p, {})) for folder in sorted(self._history_dir.iterdir()) if folder.is_dir() for p in sorted(folder.glob("*.json"))]

    def label_history(self, image_id: str) -> List[Dict[str, Any]]:
        folder = self._history_dir / image_id
        if not folder.is_dir():
            return []
        return [read_json(p, {}) for p in sorted(folder.glob("*.json"))]

    def get_labeled_images(self, label_tag: Optional[str] = None, labels: Optional[List[str]] = None) -> List[str]:
        tag = _tag(label_tag)
        return [i for i in self.list_images() if self._label_path(i, tag).exists()]

    def get_unlabeled_images(self, label_tag: Optional[str] = None, labels: Optional[List[str]] = None) -> List[str]:
        labelled = set(self.get_labeled_images(label_tag, labels))
        return [i for i in self.list_images() if i not in labelled]

    # --- training data and summaries --------------------------------------------------------------------
    def datalist(self) -> List[Dict[str, Any]]:
        """Labelled studies for training: the 4-channel volume and the final label."""
        return [
            {"image": self.get_image_uri(i), "label": str(self._label_path(i, FINAL)), "id": i}
            for i in self.get_labeled_images()
        ]

    def get_dataset_archive(self, limit_cases: Optional[int]) -> str:
        items = self.datalist()[: limit_cases or None]
        path = Path(tempfile.mkdtemp()) / "dataset.zip"
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
            for item in items:
                archive.write(item["image"], f"images/{item['id']}.nii")
                archive.write(item["label"], f"labels/{item['id']}{LABEL_SUFFIX}")
        return str(path)

    def status(self) -> Dict[str, Any]:
        tags = {tag: len(self.get_labeled_images(tag)) for tag in self._tags()}
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
            "studies_dir": str(self._studies_dir),
            "objects": objects,
            "problems": [p.__dict__ for p in self.problems()],
        }
