"""A NIfTI study (BraTS or MSD layout) as a DICOM study: four MR series and, if present, a SEG.

UIDs are derived from the study id and the content of its files, so importing the same study again
yields the same UIDs (the archive keeps one copy) while a different study under a reused id gets
new ones.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import List

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset

from ..config import BRATS_2023, IMPORT_SERIES, IMPORT_UID_NAMESPACE, REFERENCE_CHANNEL
from ..labels.conventions import brats_convention, to_project_convention
from ..labels.label_set import LabelSet
from ..studies.folder_layout import StudySource
from .mr_series import StudyTags, uid_from, volume_to_mr_series
from .seg import label_to_seg
from .series_volume import slice_stack


def content_seed(source: StudySource) -> str:
    digest = hashlib.sha256(IMPORT_UID_NAMESPACE.encode())
    for path in sorted(set(source.files)):
        digest.update(path.read_bytes())
    return f"{IMPORT_UID_NAMESPACE}/{source.study_id}/{digest.hexdigest()[:32]}"


def study_uid(seed: str) -> str:
    return uid_from(seed, "study")


def instance_count(source: StudySource) -> int:
    """How many instances ``study_datasets`` makes, from the headers alone: one per slice, and the SEG."""
    slices = sum(nib.load(str(source.channels[modality].path)).shape[2] for modality in IMPORT_SERIES)
    return slices + (1 if source.ground_truth is not None else 0)


def _channel(source: StudySource, modality: str) -> tuple[np.ndarray, np.ndarray]:
    channel = source.channels[modality]
    image = nib.load(str(channel.path))
    data = np.asanyarray(image.dataobj)
    return (data if channel.index is None else data[..., channel.index]), image.affine


def study_datasets(source: StudySource, seed: str, software_version: str, label_set: LabelSet = BRATS_2023) -> List[Dataset]:
    """Every instance of the study (UIDs from ``content_seed``): MR series in channel order, then the ground truth as SEG
    (its values read as ``label_set``'s)."""
    now = datetime.now()
    tags = StudyTags(
        patient_id=source.study_id,
        patient_name=f"{source.study_id}^",  # family-name component only
        study_instance_uid=study_uid(seed),
        study_id=source.study_id[-16:],
        study_date=now.strftime("%Y%m%d"),
        study_time=now.strftime("%H%M%S"),
    )
    frame_of_reference = uid_from(seed, "frame-of-reference")  # co-registered: one frame for all series
    series = {}
    for modality, (number, description) in IMPORT_SERIES.items():
        data, affine = _channel(source, modality)
        agent = "GADOLINIUM" if modality == "t1c" else None
        series[modality] = volume_to_mr_series(data, affine, tags, description, number, f"{seed}/{modality}", frame_of_reference, agent)
    datasets = [ds for modality in IMPORT_SERIES for ds in series[modality]]
    if source.ground_truth is not None:
        raw = np.asanyarray(nib.load(str(source.ground_truth)).dataobj)
        label = to_project_convention(raw, "msd" if source.layout == "msd" else brats_convention(np.unique(raw), label_set))
        reference = series[REFERENCE_CHANNEL]
        stack = slice_stack(reference)
        ordered = label[:, :, stack.order]  # instance k is slice k; the stack sorts along the normal
        datasets.append(label_to_seg(ordered, [reference[i] for i in stack.order], f"{seed}/ground-truth", software_version, label_set, ground_truth=True))
    return datasets
