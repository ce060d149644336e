"""Instances a second into Orthanc with its index in SQLite against PostgreSQL, in one run.

    .venv/bin/python bench/orthanc_ingest.py [--studies 20] [--spacing 4] [--repeats 2]

Generates ``--studies`` sample studies (four MR series and no SEG each; ``--spacing`` mm keeps them small),
then for each index: a fresh Orthanc (``orthanc/orthanc.json``; for PostgreSQL with ``orthanc/postgresql.json``
and a cluster of its own, ``scripts/local_postgres.py``) receives every instance over STOW-RS, as
``scripts/import_studies.py`` sends them. Prints instances/s (median of ``--repeats``) and the ratio, and writes
``bench/results/orthanc_ingest.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "apps" / "brats_label")]

import requests  # noqa: E402

from scripts.import_studies import import_studies  # noqa: E402
from scripts.local_orthanc import LocalOrthanc  # noqa: E402
from scripts.local_postgres import LocalPostgres  # noqa: E402
from synthetic.__main__ import main as generate  # noqa: E402

RESULTS = REPO / "bench" / "results" / "orthanc_ingest.json"


def ingest(studies: Path, work: Path, index: str) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    database = LocalPostgres() if index == "postgresql" else None
    orthanc = LocalOrthanc(work / f"storage_{index}", work / f"orthanc_{index}.log", postgresql_env=database.orthanc_env if database else None)
    try:
        start = time.perf_counter()
        import_studies(studies, orthanc.archive(), progress=False)
        seconds = time.perf_counter() - start
        instances = len(requests.get(f"{orthanc.url}/instances", auth=(orthanc.user, orthanc.password), timeout=60).json())
        return {"instances": instances, "seconds": seconds, "instances_per_s": instances / seconds}
    finally:
        orthanc.stop()
        if database:
            database.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--spacing", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        studies = work / "studies"
        generate(["--out", str(studies), "--cases", str(args.studies), "--labelled", "0", "--spacing", str(args.spacing), "--seed", "7", "--workers", "1"])
        runs = {index: [] for index in ("sqlite", "postgresql")}
        for repeat in range(args.repeats):
            for index in runs:  # alternated, so neither gets a warmer machine
                runs[index].append(ingest(studies, work / f"run{repeat}", index))
                print(f"{index:10} run {repeat + 1}: {runs[index][-1]['instances']} instances in {runs[index][-1]['seconds']:.1f} s")
    rates = {index: statistics.median(r["instances_per_s"] for r in results) for index, results in runs.items()}
    results = {
        "machine": {"cpus": __import__("os").cpu_count(), "platform": platform.platform()},
        "studies": args.studies,
        "spacing_mm": args.spacing,
        "runs": runs,
        "instances_per_s": rates,
        "postgresql_over_sqlite": rates["postgresql"] / rates["sqlite"],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"\n{'index':10} {'instances/s':>12}   (STOW-RS, {args.studies} studies at {args.spacing:g} mm, median of {args.repeats})")
    for index, rate in rates.items():
        print(f"{index:10} {rate:12.1f}")
    print(f"postgresql / sqlite: {results['postgresql_over_sqlite']:.2f}x\nwritten to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
