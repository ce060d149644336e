"""How the server's listing of a DICOMweb archive grows with the archive: 100, 1,000 and 5,000 studies.

    .venv/bin/python bench/archive_listing.py [--sizes 100 1000 5000] [--slices 2]

For each size, a fresh Orthanc (``orthanc/orthanc.json``, SQLite index) receives that many small studies
(four MR series of ``--slices`` 8x8 slices each, named as the importer names them). Then, in a process of its own:
- **first listing**: a datastore on an empty workspace lists the archive (every study's series, acquisition
  and geometry checked);
- **refresh, nothing new** and **refresh after 10 new studies** arrive;
- **restart**: a datastore on the same workspace lists again (what a server restart costs);
- **memory**: the process's peak resident set (MiB) and its growth over the first listing.
Prints a table and writes ``bench/results/archive_listing.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "apps" / "brats_label")]

import numpy as np  # noqa: E402
import requests  # noqa: E402
from tqdm import tqdm  # noqa: E402

from lib.config import IMPORT_SERIES  # noqa: E402
from lib.dicom.mr_series import StudyTags, uid_from, volume_to_mr_series  # noqa: E402
from scripts.local_orthanc import LocalOrthanc  # noqa: E402

RESULTS = REPO / "bench" / "results" / "archive_listing.json"
NEW_STUDIES = 10
UPLOAD_WORKERS = 4
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def study_files(index: int, slices: int, run: str) -> list:
    """One small four-series study as Part 10 bytes (no patient identifiers beyond a bench number)."""
    seed = f"bench-archive-listing/{run}/{index}"
    tags = StudyTags(f"BENCH{index:05d}", f"BENCH{index:05d}^", uid_from(seed, "study"), str(index), "20260101", "120000")
    frame = uid_from(seed, "frame")
    rng = np.random.default_rng(index)
    files = []
    for channel, (number, description) in IMPORT_SERIES.items():
        volume = rng.integers(0, 1000, (8, 8, slices)).astype(np.int16)
        for ds in volume_to_mr_series(volume, AFFINE, tags, description, number, f"{seed}/{channel}", frame, "GADOLINIUM" if channel == "t1c" else None):
            buffer = BytesIO()
            ds.save_as(buffer, write_like_original=False)
            files.append(buffer.getvalue())
    return files


def upload(orthanc: LocalOrthanc, first: int, count: int, slices: int, run: str, progress: bool = True) -> None:
    session = requests.Session()
    session.auth = (orthanc.user, orthanc.password)

    def send(index: int) -> None:
        for data in study_files(index, slices, run):
            session.post(f"{orthanc.url}/instances", data=data, headers={"Content-Type": "application/dicom"}, timeout=60).raise_for_status()

    with ThreadPoolExecutor(UPLOAD_WORKERS) as pool:
        list(tqdm(pool.map(send, range(first, first + count)), total=count, desc="studies into Orthanc", disable=not progress, unit="study"))


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(dicomweb: str, workspace: Path, orthanc_json: str, slices: int, run: str, size: int) -> dict:
    """Runs in a process of its own (``--measure``), so memory is this listing's alone."""
    from lib.dicom.archive import Archive
    from lib.studies.dicomweb_datastore import DicomWebStudyDatastore

    orthanc = LocalOrthanc.__new__(LocalOrthanc)
    orthanc.__dict__.update(json.loads(orthanc_json))
    archive = Archive(dicomweb, orthanc.user, orthanc.password)
    before = rss_mib()
    start = time.perf_counter()
    datastore = DicomWebStudyDatastore(archive, workspace, refresh_s=0)
    first = time.perf_counter() - start
    listed = len(datastore.list_images())
    peak = rss_mib()
    start = time.perf_counter()
    datastore.refresh()
    unchanged = time.perf_counter() - start
    upload(orthanc, size, NEW_STUDIES, slices, run, progress=False)
    start = time.perf_counter()
    datastore.refresh()
    after_new = time.perf_counter() - start
    listed_after = len(datastore.list_images())
    start = time.perf_counter()
    restarted = DicomWebStudyDatastore(archive, workspace, refresh_s=0)
    restart = time.perf_counter() - start
    return {
        "studies": size,
        "listed": listed,
        "first_listing_s": round(first, 3),
        "refresh_unchanged_s": round(unchanged, 3),
        "refresh_after_10_new_s": round(after_new, 3),
        "listed_after_10_new": listed_after,
        "restart_listing_s": round(restart, 3),
        "listed_after_restart": len(restarted.list_images()),
        "peak_rss_mib": round(rss_mib(), 1),
        "rss_growth_first_listing_mib": round(peak - before, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--slices", type=int, default=2)
    parser.add_argument("--measure", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        dicomweb, workspace, orthanc_json, run, size = args.measure
        print(json.dumps(measure(dicomweb, Path(workspace), orthanc_json, args.slices, run, int(size))))
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            work = Path(folder) / str(size)
            work.mkdir()
            orthanc = LocalOrthanc(work / "storage", work / "orthanc.log")
            try:
                run = f"{os.getpid()}-{size}"
                upload(orthanc, 0, size, args.slices, run)
                state = json.dumps({k: getattr(orthanc, k) for k in ("url", "dicomweb", "user", "password")})
                out = subprocess.run(
                    [sys.executable, __file__, "--slices", str(args.slices), "--measure", orthanc.dicomweb, str(work / "workspace"), state, run, str(size)],
                    check=True, capture_output=True, text=True,
                )  # fmt: skip
                row = json.loads(out.stdout.strip().splitlines()[-1])
            finally:
                orthanc.stop()
            rows.append(row)
            print(json.dumps(row))
    print(f"\n{'studies':>8} {'first listing s':>16} {'refresh s':>10} {'+10 new s':>10} {'restart s':>10} {'peak RSS MiB':>13}")
    for r in rows:
        print(f"{r['studies']:>8} {r['first_listing_s']:>16} {r['refresh_unchanged_s']:>10} {r['refresh_after_10_new_s']:>10} {r['restart_listing_s']:>10} {r['peak_rss_mib']:>13}")
    RESULTS.write_text(json.dumps({"machine": f"{platform.node()} ({os.cpu_count()} cores)", "slices_per_series": args.slices, "rows": rows}, indent=2) + "\n")
    print(f"written {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
