"""How long the dashboard's data take at archive scale: 5,000 studies and 2,000 labels in the workspace.

    .venv/bin/python bench/dashboard.py [--studies 5000] [--labels 2000] [--versions 20] [--repeats 5]

Builds a workspace's worth of what the dashboard reads, written as the server writes it: the input statistics of
every prepared study (one small JSON file each, ``CaseCache``), a label history of ``--labels`` corrections by 8
annotators over 16 weeks with their pre-label scores and reviews, and ``--versions`` model version records; then
times what ``GET /brats/dashboard/data`` does with them (the drift of the unlabelled studies against the served
model's training studies, the label history summarised; the datastore's listing is not in this figure). Target:
under 1 s. Writes bench/results/dashboard.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "apps" / "brats_label")]

import numpy as np  # noqa: E402

from lib.config import BRATS_2023  # noqa: E402
from lib.dashboard.drift import input_drift  # noqa: E402
from lib.dashboard.summary import dashboard_data  # noqa: E402
from lib.runtime.atomic import write_json  # noqa: E402
from lib.studies.case_cache import CaseCache  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=5000)
    parser.add_argument("--labels", type=int, default=2000)
    parser.add_argument("--versions", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    start = datetime(2026, 8, 1, tzinfo=UTC)
    with tempfile.TemporaryDirectory() as scratch:
        cases = CaseCache(Path(scratch) / "cases")
        studies = [f"BraTS-GLI-{i:05d}-000" for i in range(args.studies)]
        for study in studies:
            stats = {"spacing_mm": [1.0, 1.0, 1.0], "extent_mm": [240.0, 240.0, 155.0], "support_ml": float(rng.normal(1400, 80))}
            stats.update({f"{c}_median": float(rng.normal(600, 40)) for c in ("t1c", "t1", "t2", "flair")})
            stats.update({f"{c}_contrast": float(rng.normal(2.2, 0.1)) for c in ("t1c", "t1", "t2", "flair")})
            write_json(stats, cases.statistics_path(study), durable=False)
        labelled, unlabelled = studies[: args.labels], studies[args.labels :]
        history = []
        for i, case in enumerate(labelled):
            at = start + timedelta(minutes=int(rng.integers(0, 16 * 7 * 24 * 60)))
            record = {"tag": "final", "saved_at": at.strftime("%Y-%m-%dT%H:%M:%S.000000Z"), "user": f"annotator{i % 8}", "source": "client"}
            record.update({"prelabel_model_version": f"v{i * args.versions // args.labels}", "edited_ml": float(rng.uniform(0, 20))})
            record.update({f"{s}_{r}": float(rng.uniform(0.5, 1.0)) for s in ("dice", "hd95", "lesion_dice", "lesion_hd95") for r in ("tc", "wt", "et")})
            if i % 3 == 0:
                record["review"] = {"state": "approved"}
                record["reviews"] = [{"state": "approved", "by": "reviewer", "at": record["saved_at"]}]
            history.append((case, record))
        history.sort(key=lambda item: item[1]["saved_at"])
        versions = [
            {"id": f"v{v}", "created_at": "2026-09-01T00:00:00Z", "labels": labelled[: 100 * (v + 1)], "held_out": labelled[:20], "run": "x", "promoted": True}
            | {"validation_dice": {"tc": 0.8, "wt": 0.85, "et": 0.75, "mean": 0.8}, "validation_brats": {r: {"hd95": 5.0} for r in ("tc", "wt", "et")}}
            for v in range(args.versions)
        ]
        served = versions[-1]
        timings = []
        for _ in range(args.repeats):
            begun = time.perf_counter()
            drift = input_drift({c: cases.statistics(c) for c in served["labels"]}, {c: cases.statistics(c) for c in unlabelled}, served["id"])
            data = dashboard_data(versions, history, len(unlabelled), 3, {"running": False}, drift, BRATS_2023)
            json.dumps(data)
            timings.append(time.perf_counter() - begun)
    result = {
        "studies": args.studies,
        "labels": args.labels,
        "versions": args.versions,
        "seconds": {"median": round(float(np.median(timings)), 3), "max": round(float(np.max(timings)), 3)},
        "target_s": 1.0,
        "ratio_to_target": round(float(np.median(timings)) / 1.0, 3),
        "flagged": len(data["drift"]["out_of_range"]),
    }
    out = REPO / "bench" / "results" / "dashboard.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
