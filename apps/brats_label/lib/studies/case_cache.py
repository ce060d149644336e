"""The 4-channel volume of each study, stacked once in the fixed channel order and kept on disk.

Inference, training and the image download all read one file per case. A cached volume is keyed by
the fingerprint of its source files (names, sizes, modification times), so a changed study is
stacked again and a stale volume is never served.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Dict, Sequence, Tuple

import nibabel as nib
import numpy as np

from ..config import CASE_PARTIAL_MAX_AGE_S, CHANNELS
from ..runtime.atomic import atomic_path, nifti_image, read_json, write_json
from .folder_layout import StudySource


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
        return volume.is_file() and stamp.get("fingerprint") == fingerprint and stamp.get("bytes") == volume.stat().st_size

    def get(self, study_id: str, fingerprint: str, build: Callable[[], Tuple[np.ndarray, np.ndarray]]) -> Path:
        """Path of the stacked (X, Y, Z, C) NIfTI; ``build`` returns (stacked, affine) when the cache is stale."""
        return self.get_written(study_id, fingerprint, lambda path: nib.save(nifti_image(*build()), str(path)))

    def get_written(self, study_id: str, fingerprint: str, write: Callable[[Path], None]) -> Path:
        """Path of the stacked (X, Y, Z, C) NIfTI; ``write`` writes it at the path it is given when the cache is stale
        (a temporary file, in place once complete).

        The volume and its stamp are written without waiting for the disk (70 MB took up to 0.2 s, a third of
        opening a study; the stamp's flushes 25 ms): both can be rebuilt, and a volume cut short by a power failure
        differs from the size in its stamp, or the stamp is unreadable, so it is."""
        with self._locks[study_id]:
            if not self.is_current(study_id, fingerprint):
                with atomic_path(self.volume_path(study_id), durable=False) as partial:
                    write(partial)
                size = self.volume_path(study_id).stat().st_size
                write_json({"fingerprint": fingerprint, "channels": list(CHANNELS), "bytes": size}, self._stamp_path(study_id), durable=False)
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


def stack_study_files(source: StudySource) -> Tuple[np.ndarray, np.ndarray]:
    """The study's modality files (one per modality, or one 4D file) as one volume in CHANNELS order."""
    channels = []
    affine = None
    loaded: Dict[Path, np.ndarray] = {}
    for modality in CHANNELS:
        channel = source.channels[modality]
        if channel.path not in loaded:
            image = nib.load(str(channel.path))
            loaded[channel.path] = np.asanyarray(image.dataobj)
            affine = image.affine if affine is None else affine
        data = loaded[channel.path]
        channels.append(data if channel.index is None else data[..., channel.index])
    assert affine is not None, "a study has at least one channel"
    return stack_channels(channels), affine
