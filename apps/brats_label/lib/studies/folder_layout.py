"""Find the studies in a folder and check that each is usable, before the server lists it as a case.

A study is four MR volumes (T1, T1c, T2, FLAIR), co-registered or as the scanner wrote them (each on its own
grid: the preparation aligns them), and, optionally, a ground-truth label on the T1c's grid.
Two folder layouts are understood:

- BraTS: one sub-folder per study holding one NIfTI per modality, named ``<case>-t1c.nii.gz``
  (BraTS 2023: t1n, t1c, t2w, t2f, seg) or ``<case>_t1ce.nii.gz`` (BraTS 2021: t1, t1ce, t2, flair, seg).
- MSD Task01: ``imagesTr/``, ``imagesTs/`` with one 4D NIfTI per study, ``labelsTr/``, and
  ``dataset.json`` naming the channel order.

A study that cannot be used is reported as a :class:`StudyProblem` with the reason and what to do,
never silently skipped. Only headers are read here, so scanning a large folder is quick.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import nibabel as nib
import numpy as np

from ..config import (
    BRATS_FILE_SUFFIXES,
    BRATS_LABEL_SUFFIXES,
    CHANNELS,
    GEOMETRY_TOLERANCE_MM,
    MSD_DEFAULT_ORDER,
    MSD_MODALITY_NAMES,
    NIFTI_SUFFIXES,
    REFERENCE_CHANNEL,
)

MSD_IMAGE_DIRS = ("imagesTr", "imagesTs")
MSD_LABEL_DIR = "labelsTr"


@dataclass(frozen=True)
class ChannelSource:
    """One modality of a study: a 3D file, or one channel (``index``) of a 4D file."""

    path: Path
    index: Optional[int] = None


@dataclass(frozen=True)
class StudySource:
    """Where a study's images and optional ground truth live, and the layout they came in."""

    study_id: str
    layout: str  # "brats" or "msd"
    channels: Dict[str, ChannelSource]  # keyed by modality, see config.CHANNELS
    ground_truth: Optional[Path] = None
    files: Tuple[Path, ...] = field(default=())

    def fingerprint(self) -> str:
        """Changes whenever any source file changes: names, sizes and modification times."""
        parts = []
        for path in sorted(set(self.files)):
            stat = path.stat()
            parts.append(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}")
        return "|".join(parts)


@dataclass(frozen=True)
class StudyProblem:
    study_id: str
    path: str
    reason: str


@dataclass(frozen=True)
class Geometry:
    """Grid of a study: shape (X, Y, Z) and voxel-to-world affine (mm)."""

    shape: Tuple[int, int, int]
    affine: np.ndarray

    @property
    def spacing_mm(self) -> Tuple[float, float, float]:
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    def matches(self, other: Geometry) -> bool:
        return self.shape == other.shape and np.allclose(self.affine, other.affine, atol=GEOMETRY_TOLERANCE_MM)

    def difference(self, other: Geometry) -> str:
        if self.shape != other.shape:
            return f"shape {_fmt_shape(self.shape)} vs {_fmt_shape(other.shape)}"
        return f"affines differ by up to {np.abs(self.affine - other.affine).max():.3g} mm"


def _fmt_shape(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape)


def strip_nifti_suffix(name: str) -> Optional[str]:
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def _suffix_token(stem: str) -> str:
    return re.split(r"[-_]", stem)[-1].lower()


def read_geometry(path: Path, index: Optional[int] = None) -> Geometry:
    """Header-only read. Raises ValueError with a readable reason when the file is not a usable volume."""
    try:
        image = nib.load(str(path))
    except Exception as e:  # nibabel raises several types for corrupt or foreign files
        raise ValueError(f"{path.name} is not a readable NIfTI file ({e})") from None
    shape = tuple(int(s) for s in image.shape)
    if index is None and len(shape) != 3:
        raise ValueError(f"{path.name} has shape {_fmt_shape(shape)}: expected a 3D volume")
    if index is not None and (len(shape) != 4 or shape[3] <= index):
        raise ValueError(f"{path.name} has shape {_fmt_shape(shape)}: expected a 4D volume with {len(CHANNELS)} channels")
    return Geometry(shape[:3], np.asarray(image.affine, dtype=float))  # type: ignore[arg-type]


# --- discovery --------------------------------------------------------------------------------------


def find_studies(root: Path) -> Tuple[List[StudySource], List[StudyProblem]]:
    """All studies under ``root`` (BraTS or MSD layout), and those that are unusable with the reason."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"studies folder {root} does not exist")
    if any((root / d).is_dir() for d in MSD_IMAGE_DIRS):
        sources, problems = _find_msd(root)
    else:
        sources, problems = _find_brats(root)
    checked = []
    for source in sources:
        reason = check_study(source)
        if reason:
            problems.append(StudyProblem(source.study_id, str(source.channels[CHANNELS[0]].path.parent), reason))
        else:
            checked.append(source)
    return sorted(checked, key=lambda s: s.study_id), sorted(problems, key=lambda p: p.study_id)


def _find_brats(root: Path) -> Tuple[List[StudySource], List[StudyProblem]]:
    sources, problems = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found: Dict[str, List[Path]] = {}
        labels: List[Path] = []
        for path in sorted(folder.iterdir()):
            stem = strip_nifti_suffix(path.name)
            if stem is None or not path.is_file():
                continue
            token = _suffix_token(stem)
            if token in BRATS_LABEL_SUFFIXES:
                labels.append(path)
            elif token in BRATS_FILE_SUFFIXES:
                found.setdefault(BRATS_FILE_SUFFIXES[token], []).append(path)
        if not found and not labels:
            continue  # not a study folder (for example our own scratch folders)
        study_id = folder.name
        missing = [m for m in CHANNELS if m not in found]
        duplicated = {m: paths for m, paths in found.items() if len(paths) > 1}
        if missing:
            expected = {m: sorted(k for k, v in BRATS_FILE_SUFFIXES.items() if v == m) for m in missing}
            hint = "; ".join(f"{m.upper()} (a file ending in {' or '.join('-' + s for s in expected[m])})" for m in missing)
            problems.append(StudyProblem(study_id, str(folder), f"missing {hint}. Add the file or remove the folder."))
            continue
        if duplicated:
            detail = "; ".join(f"{m.upper()}: {', '.join(p.name for p in paths)}" for m, paths in duplicated.items())
            problems.append(StudyProblem(study_id, str(folder), f"more than one file for {detail}. Keep one per modality."))
            continue
        if len(labels) > 1:
            problems.append(StudyProblem(study_id, str(folder), f"more than one label file: {', '.join(p.name for p in labels)}"))
            continue
        channels = {m: ChannelSource(found[m][0]) for m in CHANNELS}
        files = tuple(found[m][0] for m in CHANNELS) + tuple(labels)
        sources.append(StudySource(study_id, "brats", channels, labels[0] if labels else None, files))
    return sources, problems


def msd_channel_order(root: Path) -> Tuple[str, ...]:
    """Channel order of the 4D images, from ``dataset.json`` when present (MSD Task01 order otherwise)."""
    description = root / "dataset.json"
    if not description.is_file():
        return MSD_DEFAULT_ORDER
    modality = json.loads(description.read_text()).get("modality", {})
    try:
        order = tuple(MSD_MODALITY_NAMES[str(modality[str(i)]).lower()] for i in range(len(modality)))
    except KeyError as e:
        raise ValueError(f"{description}: unknown modality {e}; known names: {', '.join(MSD_MODALITY_NAMES)}") from None
    if sorted(order) != sorted(CHANNELS):
        raise ValueError(f"{description}: modalities {order} must be exactly {', '.join(CHANNELS)}")
    return order


def _find_msd(root: Path) -> Tuple[List[StudySource], List[StudyProblem]]:
    order = msd_channel_order(root)
    sources: List[StudySource] = []
    problems: List[StudyProblem] = []
    for image_dir in MSD_IMAGE_DIRS:
        if not (root / image_dir).is_dir():
            continue
        for path in sorted((root / image_dir).iterdir()):
            stem = strip_nifti_suffix(path.name)
            if stem is None or stem.startswith("."):
                continue
            label = next((root / MSD_LABEL_DIR / (stem + s) for s in NIFTI_SUFFIXES if (root / MSD_LABEL_DIR / (stem + s)).is_file()), None)
            channels = {m: ChannelSource(path, order.index(m)) for m in CHANNELS}
            sources.append(StudySource(stem, "msd", channels, label, (path,) + ((label,) if label else ())))
    return sources, problems


# --- checks -----------------------------------------------------------------------------------------


def study_geometry(source: StudySource) -> Geometry:
    """The study's grid: the reference channel's (T1c), which every channel is prepared onto and labels refer to."""
    reference = source.channels[REFERENCE_CHANNEL]
    return read_geometry(reference.path, reference.index)


def check_study(source: StudySource) -> Optional[str]:
    """None when usable, else why not: unreadable files, a label off the reference (T1c) grid.

    Modalities on other grids than the T1c's (a lab's own ``dcm2niix`` export, sagittal FLAIR, thick T2) are
    usable: the preparation (lib/preparation/) registers them to the T1c when the study is opened."""
    try:
        geometries = {m: read_geometry(c.path, c.index) for m, c in source.channels.items()}
        reference = geometries[REFERENCE_CHANNEL]
        if source.ground_truth is not None:
            label = read_geometry(source.ground_truth)
            if not label.matches(reference):
                return (
                    f"label {source.ground_truth.name} is not on the {REFERENCE_CHANNEL.upper()}'s grid ({label.difference(reference)}). "
                    f"Labels refer to the {REFERENCE_CHANNEL.upper()} as stored: resample the label onto it."
                )
    except ValueError as e:
        return str(e)
    except OSError as e:
        return f"cannot read the study's files: {e}"
    return None
