"""A MONAI Label datastore over a plain folder of studies, where a case is a study, not a file.

MONAI Label's ``LocalDatastore`` treats each file as an image; here each study (four modalities in
BraTS layout, or one 4D file in MSD layout) is one case, served as a single 4-channel volume in the
fixed channel order. Ground-truth labels found beside the images are imported once, mapped to the
project's label convention. Studies that cannot be used are listed with the reason.

Everything the server writes lives in the workspace (``<studies>/.brats_label`` by default):

    cases/<id>.nii                     stacked 4-channel volume (cache, rebuilt when a source changes)
    patient_pseudonym.key              the key of the patients' pseudonyms (``patients.py``; ``patients.csv``
                                       beside the studies says which studies are one patient's, and when)
    label_store/<id>/<time>_<tag>/     every label version ever saved, each committed as one unit
                                       (``labels/label_store.py``); the newest of a tag is the current label

A label is on disk, whole, before the request that saved it is answered, and a crash at any point
leaves each case with either the new version or the previous one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import nibabel as nib
import numpy as np

from ..config import BRATS_2023, CHANNELS, DoubleReadSettings
from ..errors import InvalidInput, NotAllowed, NotFound
from ..labels.conventions import LabelError, brats_convention, to_project_convention
from ..labels.label_set import LabelSet
from ..runtime.atomic import read_json, write_nifti
from .case_cache import UnusableVolume, stack_study_files
from .folder_layout import Geometry, StudyProblem, StudySource, find_studies, study_geometry
from .patients import PATIENT_TABLE, read_patient_table
from .study_datastore import FINAL, IMPORTED_FROM, StudyDatastore

logger = logging.getLogger(__name__)


class StudyFolderDatastore(StudyDatastore):
    def __init__(
        self,
        studies_dir: Path,
        workspace: Path,
        name: str = "BraTS studies",
        description: str = "",
        listing_extras: Optional[Callable[[], Dict[str, Dict[str, Any]]]] = None,
        label_audit: Optional[Callable[[str, np.ndarray], Dict[str, Any]]] = None,
        writer: bool = True,
        train_on: str = "auto",
        label_set: LabelSet = BRATS_2023,
        double_read: DoubleReadSettings = DoubleReadSettings(),
    ):
        self._studies_dir = Path(studies_dir)
        super().__init__(workspace, name, description or f"Studies in {self._studies_dir}", listing_extras, label_audit, writer, train_on, label_set, double_read)
        self._sources: Dict[str, StudySource] = {}
        self.refresh()

    # --- discovery ----------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Rescan the folder; import ground truth of studies that have no final label yet."""
        sources, problems = find_studies(self._studies_dir)
        with self._lock:
            problems = list(problems)
            for source in list(sources):
                broken = self._broken.get(source.study_id)
                if broken and broken[0] == source.fingerprint():  # found unusable when opened; unchanged since
                    problems.append(StudyProblem(source.study_id, source.study_id, broken[1]))
                    sources.remove(source)
            self._sources = {s.study_id: s for s in sources}
            self._moments, table_problems = read_patient_table(self._studies_dir / PATIENT_TABLE, self._sources, self._pseudonyms)
            self._problems = problems + table_problems
            self._geometries = {}
            for source in sources if self._writer else []:
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
        if source.ground_truth is None or self._labels.versions(source.study_id, FINAL):
            return None  # an annotator's label, or a removal, is never replaced by the shipped one
        try:
            raw = np.asanyarray(nib.load(str(source.ground_truth)).dataobj)
            convention = "msd" if source.layout == "msd" else brats_convention(np.unique(raw), self.label_set)
            label = to_project_convention(raw, convention)
            info = {"source": IMPORTED_FROM, "file": str(source.ground_truth), "convention": convention}
            self._store_label(source.study_id, label, self.geometry(source.study_id), FINAL, info)
        except (LabelError, ValueError, OSError) as e:
            return StudyProblem(source.study_id, source.study_id, f"ground truth not imported: {e}")
        return None

    # --- images -------------------------------------------------------------------------------------
    def list_images(self) -> List[str]:
        with self._lock:
            return sorted(self._sources)

    def get_image_uri(self, image_id: str) -> str:
        source = self._source(image_id)
        try:
            return str(self._cases.get(source.study_id, source.fingerprint(), lambda: stack_study_files(source)))
        except (UnusableVolume, OSError, ValueError) as e:
            self._mark_broken(source.study_id, source.fingerprint(), str(e))
            raise InvalidInput(f"study {source.study_id} cannot be opened: {e}") from None

    def get_image_info(self, image_id: str) -> Dict[str, Any]:
        source = self._source(image_id)
        geometry = self.geometry(image_id)
        info = read_json(self._image_info_path(image_id), {})
        info.update(
            {
                "layout": source.layout,
                "channels": list(CHANNELS),
                "files": {m: str(c.path) for m, c in source.channels.items()},
                "preparation": self.preparation_info(source.study_id),
                "shape": list(geometry.shape),
                "spacing_mm": list(geometry.spacing_mm),
            }
        )
        return info

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
        raise NotAllowed(f"studies are not deleted through the API (labels are kept for audit); remove the folder of '{image_id}' from {self._studies_dir} on the server")

    def case_id(self, image_id: str) -> str:
        return self._source(image_id).study_id

    def json(self) -> Dict[str, Any]:
        return {**super().json(), "studies_dir": str(self._studies_dir)}
