"""How long it takes to open a four-series BraTS-size study from Orthanc.

    .venv/bin/python bench/dicomweb_fetch.py [--repeats 3] [--spacing 1]

In one run, against one local Orthanc (started here, temporary storage) holding one generated study
(240x240x155 per series at 1 mm), each timed ``--repeats`` times with an empty cache:

- ``raw``: the WADO-RS transfer of the four series' bytes (requests, no parsing), in parallel as the
  datastore does, and one after another;
- ``stock``: MONAI Label 0.8.5's ``DICOMWebDatastore`` opening the same four series one by one
  (download to files, then its DICOM-to-NIfTI conversion), as a client must to get the four;
- ``ours``: ``DicomWebStudyDatastore.get_image_uri``: four series fetched at once, converted, stacked;
- ``cached``: ours again on the cached study (the case an annotator re-opens);
- ``cached_after_restart``: a new datastore on the same workspace (listing the archive, then the open).

Prints a table and writes bench/results/dicomweb_fetch.json with medians and the ratios the issue
names: stock/ours (target >= 2), ours/raw (target <= 1.5), cached (target < 0.5 s).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "apps" / "brats_label")]

from lib.config import CHANNELS  # noqa: E402
from lib.dicom.series_fetch import start_workers  # noqa: E402
from lib.studies.dicomweb_datastore import DicomWebStudyDatastore  # noqa: E402
from scripts.import_studies import import_studies  # noqa: E402
from scripts.local_orthanc import LocalOrthanc  # noqa: E402
from synthetic.__main__ import main as generate  # noqa: E402

RESULTS = REPO / "bench" / "results"


def timed(fn, repeats: int, reset=None) -> list:
    times = []
    for _ in range(repeats):
        if reset:
            reset()
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def main() -> int:  # under ``if __name__ == "__main__"``: the decoding processes start by forkserver
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--spacing", type=float, default=1.0, help="mm; 1 gives BraTS-size series")
    parser.add_argument("--out", type=Path, default=RESULTS / "dicomweb_fetch.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp_name:
        tmp = Path(tmp_name)
        generate(["--out", str(tmp / "studies"), "--cases", "1", "--spacing", str(args.spacing), "--seed", "3", "--workers", "1"])
        orthanc = LocalOrthanc(tmp / "orthanc", tmp / "orthanc.log")
        try:
            archive = orthanc.archive()
            import_studies(tmp / "studies", archive, progress=False)
            ours = DicomWebStudyDatastore(archive, tmp / "ours")
            start_workers()  # as the server does at start: the decoding processes are up before the first study
            case = ours.list_images()[0]
            study = ours._source(case)
            series = [study.channels[c].series_uid for c in CHANNELS]
            auth = (orthanc.user, orthanc.password)

            def raw_one(uid: str) -> int:
                url = f"{orthanc.dicomweb}/studies/{case}/series/{uid}"
                return len(requests.get(url, auth=auth, headers={"Accept": 'multipart/related; type="application/dicom"'}, timeout=120).content)

            nbytes = sum(raw_one(uid) for uid in series)

            def raw_parallel():
                with ThreadPoolExecutor(len(series)) as pool:
                    list(pool.map(raw_one, series))

            def raw_sequential():
                for uid in series:
                    raw_one(uid)

            def reset_ours():
                shutil.rmtree(tmp / "ours" / "cases", ignore_errors=True)
                (tmp / "ours" / "cases").mkdir(parents=True)

            from dicomweb_client import DICOMwebClient
            from dicomweb_client.session_utils import create_session_from_user_pass
            from monailabel.datastore.dicom import DICOMWebDatastore

            def stock_open():
                client = DICOMwebClient(url=orthanc.dicomweb, session=create_session_from_user_pass(*auth))
                stock = DICOMWebDatastore(client, search_filter={"Modality": "MR"}, cache_path=str(tmp / "stock"))
                for uid in series:
                    stock.get_image_uri(uid)
                observer = getattr(stock, "_observer", None)  # its folder watcher would outlive the cache
                if observer is not None:
                    observer.stop()
                    observer.join()

            def reset_stock():
                shutil.rmtree(tmp / "stock", ignore_errors=True)

            results = {
                "raw_parallel": timed(raw_parallel, args.repeats),
                "raw_sequential": timed(raw_sequential, args.repeats),
                "stock": timed(stock_open, args.repeats, reset_stock),
                "ours": timed(lambda: ours.get_image_uri(case), args.repeats, reset_ours),
                "cached": timed(lambda: ours.get_image_uri(case), args.repeats),
                # as after a server restart: list the archive (series metadata cached on disk), then open
                "cached_after_restart": timed(lambda: DicomWebStudyDatastore(archive, tmp / "ours").get_image_uri(case), args.repeats),
            }
        finally:
            orthanc.stop()

    median = {k: statistics.median(v) for k, v in results.items()}
    report = {
        "study": f"4 series at {args.spacing:g} mm, {nbytes / 1e6:.1f} MB over WADO-RS",
        "repeats": args.repeats,
        "seconds": {k: [round(t, 3) for t in v] for k, v in results.items()},
        "median_s": {k: round(v, 3) for k, v in median.items()},
        "stock_over_ours": round(median["stock"] / median["ours"], 2),
        "ours_over_raw_parallel": round(median["ours"] / median["raw_parallel"], 2),
        "ours_over_raw_sequential": round(median["ours"] / median["raw_sequential"], 2),
        "targets": {"stock_over_ours": ">= 2", "ours_over_raw": "<= 1.5", "cached_s": "< 0.5"},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['study']}, median of {args.repeats}:")
    for key, value in median.items():
        print(f"  {key:15} {value:7.3f} s")
    print(f"  stock / ours            {report['stock_over_ours']:.2f}x   (target >= 2)")
    print(f"  ours / raw (parallel)   {report['ours_over_raw_parallel']:.2f}x   (target <= 1.5)")
    print(f"  ours / raw (sequential) {report['ours_over_raw_sequential']:.2f}x")
    print(f"  cached re-open          {median['cached']:.3f} s  (target < 0.5 s); after a restart, with the listing {median['cached_after_restart']:.3f} s")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
