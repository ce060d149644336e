"""Does a background training slow down the annotators? /infer latency idle and while a training runs.

    .venv/bin/python bench/infer_during_training.py [--requests 6] [--spacing 1]

Starts the real server (cpu profile) on generated studies with starting weights, times ``--requests``
pre-segmentations of different studies while nothing else runs, then starts a long training and
times as many of other studies while it runs (the training worker runs at lower priority, niceness
``BACKGROUND_NICENESS``). Prints both medians and their ratio (target: at most 1.5) and writes
bench/results/infer_during_training.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "apps" / "brats_label")]

from lib.config import PROFILES  # noqa: E402
from lib.model.network import build_network  # noqa: E402
from synthetic.__main__ import main as generate  # noqa: E402
from tests.conftest import Server  # noqa: E402

RESULTS = REPO / "bench" / "results"


def infer_times(server: Server, studies: list) -> list:
    times = []
    for study in studies:
        started = time.perf_counter()
        requests.post(f"{server.url}/infer/segmentation", params={"image": study, "output": "json"}, timeout=600).raise_for_status()
        times.append(time.perf_counter() - started)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4, help="pre-segmentations timed in each condition (different studies)")
    parser.add_argument("--spacing", type=float, default=1.0, help="mm of the generated studies (1: BraTS size)")
    parser.add_argument("--out", type=Path, default=RESULTS / "infer_during_training.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        unlabelled_count = 2 * args.requests + 1
        labelled = args.requests
        generate(["--out", str(tmp / "studies"), "--cases", str(unlabelled_count + labelled), "--labelled", str(labelled), "--spacing", str(args.spacing), "--seed", "9"])
        weights = tmp / "weights.pt"
        torch.save(build_network(PROFILES["cpu"]).state_dict(), weights)
        server = Server(tmp / "studies", {"profile": "cpu", "pretrained_weights": weights, "retrain_after_labels": 0}, tmp / "server.log")
        try:
            unlabelled = sorted(k for k, v in requests.get(f"{server.url}/datastore/?output=all", timeout=60).json()["objects"].items() if "final" not in v["labels"])
            # different studies in each condition: none profits from another's cached input
            warm, idle_set, busy_set = unlabelled[0], unlabelled[1 : 1 + args.requests], unlabelled[1 + args.requests : 1 + 2 * args.requests]
            infer_times(server, [warm])  # the first request loads the model
            idle = infer_times(server, idle_set)
            requests.post(f"{server.url}/train/segmentation", json={"max_epochs": 1000}, timeout=30).raise_for_status()
            time.sleep(20)  # past the worker's start-up, into the training steps
            assert requests.get(f"{server.url}/train/", timeout=30).json().get("status") == "RUNNING"
            busy = infer_times(server, busy_set)
            still = requests.get(f"{server.url}/train/", timeout=30).json().get("status")
            requests.delete(f"{server.url}/train/", timeout=30)
        finally:
            server.stop()

    report = {
        "studies": f"{args.spacing:g} mm, {args.requests} different studies each time",
        "idle_s": [round(t, 2) for t in idle],
        "during_training_s": [round(t, 2) for t in busy],
        "training_still_running_at_end": still == "RUNNING",
        "median_idle_s": round(statistics.median(idle), 2),
        "median_during_training_s": round(statistics.median(busy), 2),
    }
    report["ratio"] = round(report["median_during_training_s"] / report["median_idle_s"], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"/infer median idle {report['median_idle_s']} s, while training {report['median_during_training_s']} s: ratio {report['ratio']} (target <= 1.5)")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
