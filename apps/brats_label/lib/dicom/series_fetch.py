"""A study's series fetched and decoded in processes of their own, one series each.

Opening a study is the WADO-RS transfer of its four series and then, for each of some 600 instances,
splitting the multipart answer, parsing the header with pydicom and copying the pixels. That parsing is pure
Python: in threads it runs one at a time (the GIL) and took 2.5x the transfer (bench/dicomweb_fetch.py). In
processes it runs on every core while the archive is still sending. Each process writes its series straight
into the study's file (``stacked_nifti``) rather than sending 18 MB back to the server.

The pool starts with the first study opened (forkserver: no copy of the server's threads and locks) and is
shared by every datastore of the process. If it cannot start or a worker dies, series are fetched in threads
from then on (``config.DICOMWEB_FETCH_PROCESSES`` false: always).
"""

from __future__ import annotations

import logging
import multiprocessing
import site
import sys
import threading
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..config import DICOMWEB_FETCH_PROCESSES, DICOMWEB_FETCH_WORKERS
from ..studies.stacked_nifti import StackedNiftiFile
from .archive import Archive, ArchiveAddress
from .multiframe import frames_as_slices
from .series_volume import series_volume

logger = logging.getLogger(__name__)

APP_DIR = Path(__file__).resolve().parents[2]  # where ``lib`` is imported from: MONAI Label loads the app from it
_pool: Optional[Executor] = None
_pool_failed = False  # once workers could not run, this process decodes in threads (said once in the log)
_pool_lock = threading.Lock()
_archives: Dict[ArchiveAddress, Archive] = {}  # in each worker: one client (and connection pool) per archive


class DecodedSeries(NamedTuple):
    """A series as decoded by a worker: written into its block of the study's file (``volume`` None), or returned
    because it does not fit the block as it is (another grid, or rescaled to float)."""

    dtype: str
    volume: Optional[np.ndarray]
    affine: np.ndarray


def series_into_block(address: ArchiveAddress, study_uid: str, series_uid: str, where: str, target: StackedNiftiFile, channel: int) -> DecodedSeries:
    """Fetch and decode one series and write it into its block of ``target``; runs in a worker."""
    archive = _archives.get(address)
    if archive is None:
        archive = _archives[address] = Archive(*address)
    return _decode_into(archive, study_uid, series_uid, where, target, channel)


def _decode_into(archive: Archive, study_uid: str, series_uid: str, where: str, target: StackedNiftiFile, channel: int) -> DecodedSeries:
    volume, affine = series_volume(frames_as_slices(archive.retrieve_series(study_uid, series_uid)), where)
    if target.takes(volume, affine):
        target.write_block(channel, volume)
        return DecodedSeries(volume.dtype.str, None, affine)
    return DecodedSeries(volume.dtype.str, volume, affine)


def _process_pool() -> Optional[Executor]:
    global _pool, _pool_failed
    with _pool_lock:
        if _pool is None and not _pool_failed and DICOMWEB_FETCH_PROCESSES:
            try:
                context = multiprocessing.get_context("forkserver")
                context.set_forkserver_preload(_preload())
                # workers import ``lib`` as the server did: MONAI Label does not leave the app's folder on sys.path
                _pool = ProcessPoolExecutor(DICOMWEB_FETCH_WORKERS, mp_context=context, initializer=site.addsitedir, initargs=(str(APP_DIR),))
            except (OSError, ValueError) as e:
                _give_up(f"no worker processes ({e})")
        return _pool


def _preload() -> List[str]:
    """Modules the fork server imports once for all workers. Each worker runs the server's main module again
    (multiprocessing does, for what it pickles): with ``python -m monailabel.main`` that took 6 s of imports per
    worker unless the fork server already holds them."""
    main = sys.modules.get("__main__")
    main_name = getattr(getattr(main, "__spec__", None), "name", None)
    return ["__main__", *([main_name] if main_name else []), "numpy", "pydicom", "requests", "dicomweb_client", "requests_toolbelt"]


def start_workers() -> None:
    """Start the worker processes now (a few seconds: each imports what the server imported), so that the first
    study opened does not wait for them. Called by the server at start, in a thread of its own."""
    pool = _process_pool()
    if pool is None:
        return
    try:
        list(pool.map(int, range(DICOMWEB_FETCH_WORKERS)))
    except BrokenProcessPool as e:
        with _pool_lock:
            _give_up(f"the decoding processes did not start ({e})")


def _give_up(reason: str) -> None:
    global _pool, _pool_failed
    logger.warning(f"series are decoded in threads from now on: {reason}")
    _pool, _pool_failed = None, True


def fetch_into(archive: Archive, study_uid: str, series: Sequence[Tuple[str, str]], target: StackedNiftiFile) -> List[DecodedSeries]:
    """Each (series UID, name for messages), all at once, the i-th into block i of ``target``; errors are the first
    series'."""
    pool = _process_pool()
    if pool is not None:
        try:
            futures = [pool.submit(series_into_block, archive.address, study_uid, uid, where, target, i) for i, (uid, where) in enumerate(series)]
            return [future.result() for future in futures]
        except BrokenProcessPool as e:  # a worker could not start or was killed (memory)
            with _pool_lock:
                _give_up(f"a decoding process stopped ({e})")
    with ThreadPoolExecutor(min(DICOMWEB_FETCH_WORKERS, len(series))) as threads:
        return list(threads.map(lambda i: _decode_into(archive, study_uid, *series[i], target, i), range(len(series))))
