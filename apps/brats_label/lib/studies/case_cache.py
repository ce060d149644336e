"""The 4-channel volume of each study, prepared once (lib/preparation/) in the fixed channel order and kept on disk.

Inference, training, scoring, evaluation and the image download all read one file per case: the same prepared
input. A cached volume is keyed by the fingerprint of its source files (names, sizes, modification times), so a
changed study is prepared again and a stale volume is never served. Beside it: the preparation's report (in the
stamp, shown in the case's info) and the brain mask the preparation extracted (``<id>.brain.nii.gz``).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import nibabel as nib
import numpy as np

from ..config import CASE_PARTIAL_MAX_AGE_S, CHANNELS, PREPARATION, REFERENCE_CHANNEL, PreparationSettings
from ..preparation.pipeline import PreparedStudy, Series, already_prepared_report, needs_preparation, prepare_study
from ..runtime.atomic import atomic_path, nifti_image, read_json, write_json, write_nifti
from .folder_layout import StudySource
from .input_statistics import input_statistics


@dataclass(frozen=True)
class Preparation:
    """What the preparation of a case did (``report``, for its info) and the brain mask it extracted, if any
    ((X, Y, Z) bool on ``affine``, the case's grid)."""

    report: Dict[str, Any]
    brain: Optional[np.ndarray] = None
    affine: Optional[np.ndarray] = None

    @classmethod
    def of(cls, prepared: PreparedStudy) -> Preparation:
        return cls(prepared.report, prepared.brain, prepared.affine)


# Raised whenever what the preparation makes of the same files changes, so cached volumes are made again.
PREPARATION_VERSION = 2  # 2: each registered series' transform to the study kept in the report


class UnusableVolume(ValueError):
    """The study's voxels cannot be used (NaN or infinite values); the message names the channel."""


class CaseCache:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._locks: Dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._remove_abandoned_writes()

    def _remove_abandoned_writes(self) -> None:
        """Temporary files of writes cut short by a crash (a study's volume is about 70 MB). Only old ones: another
        process on this workspace may be writing one now, which takes about a second."""
        cutoff = time.time() - CASE_PARTIAL_MAX_AGE_S
        for path in self.folder.glob(".*"):
            try:
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
            except FileNotFoundError:
                pass

    def volume_path(self, study_id: str) -> Path:
        return self.folder / f"{study_id}.nii"

    def _stamp_path(self, study_id: str) -> Path:
        return self.folder / f"{study_id}.json"

    def is_current(self, study_id: str, fingerprint: str) -> bool:
        try:
            stamp = read_json(self._stamp_path(study_id), {})
        except ValueError:  # written without a flush and cut short by a power failure: rebuilt
            return False
        volume = self.volume_path(study_id)
        return (
            volume.is_file()
            and stamp.get("fingerprint") == fingerprint
            and stamp.get("bytes") == volume.stat().st_size
            and stamp.get("preparation_version") == PREPARATION_VERSION  # a volume an older release stacked unprepared is redone
        )

    def brain_path(self, study_id: str) -> Path:
        return self.folder / f"{study_id}.brain.nii.gz"

    def statistics_path(self, study_id: str) -> Path:
        return self.folder / f"{study_id}.stats.json"

    def statistics(self, study_id: str) -> Dict[str, Any]:
        """The prepared volume's grid and intensities (``input_statistics``); {} until prepared since they were kept."""
        try:
            return dict(read_json(self.statistics_path(study_id), {}))
        except ValueError:
            return {}

    def preparation(self, study_id: str) -> Dict[str, Any]:
        """The report of the case's preparation ({} until it has been prepared)."""
        try:
            return dict(read_json(self._stamp_path(study_id), {}).get("preparation", {}))
        except ValueError:
            return {}

    def get(self, study_id: str, fingerprint: str, build: Callable[[], Tuple[np.ndarray, np.ndarray, Preparation]]) -> Path:
        """Path of the stacked (X, Y, Z, C) NIfTI; ``build`` returns (stacked, affine, preparation) when the cache is stale."""

        def write(path: Path) -> Preparation:
            stacked, affine, preparation = build()
            nib.save(nifti_image(stacked, affine), str(path))
            return preparation

        return self.get_written(study_id, fingerprint, write)

    def get_written(self, study_id: str, fingerprint: str, write: Callable[[Path], Preparation]) -> Path:
        """Path of the stacked (X, Y, Z, C) NIfTI; ``write`` writes it at the path it is given when the cache is stale
        (a temporary file, in place once complete) and says how it was prepared.

        The volume and its stamp are written without waiting for the disk (70 MB took up to 0.2 s, a third of
        opening a study; the stamp's flushes 25 ms): both can be rebuilt, and a volume cut short by a power failure
        differs from the size in its stamp, or the stamp is unreadable, so it is. The brain mask is in place before
        the stamp that makes the volume current."""
        with self._locks[study_id]:
            if not self.is_current(study_id, fingerprint):
                with atomic_path(self.volume_path(study_id), durable=False) as partial:
                    preparation = write(partial)
                if preparation.brain is not None and preparation.affine is not None:
                    write_nifti(preparation.brain.astype(np.uint8), preparation.affine, self.brain_path(study_id), durable=False)
                else:
                    self.brain_path(study_id).unlink(missing_ok=True)
                write_json(input_statistics(self.volume_path(study_id), CHANNELS), self.statistics_path(study_id), durable=False)
                size = self.volume_path(study_id).stat().st_size
                stamp = {"fingerprint": fingerprint, "channels": list(CHANNELS), "bytes": size, "preparation_version": PREPARATION_VERSION, "preparation": preparation.report}
                write_json(stamp, self._stamp_path(study_id), durable=False)
            return self.volume_path(study_id)


def check_finite(channels: Sequence[np.ndarray], names: Sequence[str] = CHANNELS) -> None:
    """Refuse NaN or infinite voxels: normalisation would spread them over the whole volume."""
    for name, channel in zip(names, channels):
        if np.issubdtype(channel.dtype, np.floating):
            bad = int(channel.size - np.count_nonzero(np.isfinite(channel)))
            if bad:
                raise UnusableVolume(f"the {name.upper()} volume has {bad} NaN or infinite voxels; fix or re-export that series")


def stack_channels(channels: Sequence[np.ndarray]) -> np.ndarray:
    """(X, Y, Z, C) in the given order, in the channels' common dtype (float32 if they differ).
    Raises UnusableVolume on NaN or infinite voxels."""
    check_finite(channels)
    dtypes = {c.dtype for c in channels}
    dtype = dtypes.pop() if len(dtypes) == 1 else np.float32
    stacked = np.empty(channels[0].shape + (len(channels),), dtype=dtype, order="F")  # NIfTI's order: written without a copy
    for index, channel in enumerate(channels):
        stacked[..., index] = channel
    return stacked


def prepare_series(series: Dict[str, Series], settings: PreparationSettings = PREPARATION) -> Tuple[np.ndarray, np.ndarray, Preparation]:
    """The four series (each on its own grid) as the stacked model input on the reference grid, prepared.
    Raises UnusableVolume on NaN or infinite voxels, alignment.RegistrationRefused when a series cannot be aligned."""
    check_finite([series[c][0] for c in CHANNELS])
    if not needs_preparation(series, settings):
        reference = series[REFERENCE_CHANNEL]
        return stack_channels([series[c][0] for c in CHANNELS]), reference[1], Preparation(already_prepared_report(series))
    prepared = prepare_study(series, settings)
    return stack_channels(prepared.channels), prepared.affine, Preparation.of(prepared)


def read_study_series(source: StudySource) -> Dict[str, Series]:
    """The study's modality files (one per modality, or one 4D file) as {channel: (volume, affine)}."""
    series: Dict[str, Series] = {}
    loaded: Dict[Path, Series] = {}
    for modality in CHANNELS:
        channel = source.channels[modality]
        if channel.path not in loaded:
            image = nib.load(str(channel.path))
            loaded[channel.path] = (np.asanyarray(image.dataobj), np.asarray(image.affine, dtype=float))
        data, affine = loaded[channel.path]
        series[modality] = (data if channel.index is None else data[..., channel.index], affine)
    return series


def stack_study_files(source: StudySource, settings: PreparationSettings = PREPARATION) -> Tuple[np.ndarray, np.ndarray, Preparation]:
    """The study's files as one prepared volume in CHANNELS order on the T1c's grid, and how it was prepared."""
    return prepare_series(read_study_series(source), settings)
