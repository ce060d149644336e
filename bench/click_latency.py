"""How long an annotator waits for the answer to a click: end to end on the real server, and against the way the
answer was computed before, in the same run.

    .venv/bin/python bench/click_latency.py --weights seg.pt --refinement refinement.pt --studies DIR [--cases 3] [--clicks 10]

On labelled studies the models did not learn from (BraTS grid, 1 mm), the robot user's clicks (``bench/interactive.py``'s
protocol: the centre of the largest error, the regions in turn, with the true label there), found once on the
network's grid and then replayed:

- **served**: ``POST /infer/refinement`` on the real MONAI Label server (folder mode, cpu profile), with every click so
  far as Slicer's DeepEdit sends them (voxel indices of the study's volume), timed by MONAI Label's client from the
  request to the label file and its JSON received. A study's first click apart: its answer to no clicks is computed
  then (an annotator who clicked on the refinement model's auto-segmentation first has paid it already).
- **in this process**, the refinement model's answer to the same clicks (``GuidedSession``) as the server computes it
  now (the clicks grown over the answer to no clicks, kept per study), as it computed it until 2026-12-07 (the guided
  network on one window round the clicks, used within 30 mm of them) and before that (the whole brain guided, and
  again with no clicks, on every click): seconds per click and their ratios, in the same run (the host's speed
  changes by up to 2x within an hour).

Prints a table and writes ``bench/results/click_latency.json``. Issue 21's target: p95 at most 1 s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "apps" / "brats_label")]

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from monai.transforms import Compose  # noqa: E402
from monailabel.client import MONAILabelClient  # noqa: E402

from bench.evaluate import items_of  # noqa: E402
from lib.config import MODEL_NAME, PROFILES, REFINEMENT_MODEL_NAME  # noqa: E402
from lib.interactive.click_rounds import region_channels_to_label  # noqa: E402
from lib.interactive.robot_user import REGIONS_IN_TURN, GuidedSession  # noqa: E402
from lib.interactive.simulated_clicks import next_click  # noqa: E402
from lib.model.network import load_network, sliding_window_inferer  # noqa: E402
from lib.studies.folder_layout import find_studies  # noqa: E402
from lib.trainers.evaluation import evaluation_transforms  # noqa: E402
from scripts.local_server import LocalServer as Server  # noqa: E402

Click = Tuple[str, Tuple[int, int, int]]


def percentiles(seconds: Sequence[float]) -> Dict[str, float]:
    return {"p50": round(float(np.percentile(seconds, 50)), 3), "p95": round(float(np.percentile(seconds, 95)), 3), "mean": round(statistics.fmean(seconds), 3), "n": len(seconds)}


GUIDED_REACH_MM = 30.0  # how near the clicks the guided network's answer was used until 2026-12-07


def guided_window_session(network: torch.nn.Module, image: torch.Tensor, spacing: Sequence[float]) -> GuidedSession:
    """The answer as computed until 2026-12-07: the guided network on one window round the clicks, used within
    ``GUIDED_REACH_MM`` of them, the answer to no clicks kept."""
    session = GuidedSession(network, sliding_window_inferer(PROFILES["cpu"]), image, spacing)
    session.inferer.radius_mm = GUIDED_REACH_MM
    return session


def whole_brain_session(network: torch.nn.Module, image: torch.Tensor, spacing: Sequence[float]) -> GuidedSession:
    """The answer as it was computed before the window and the kept answer: the whole brain, guided and not, each time."""
    session = guided_window_session(network, image, spacing)
    session.inferer.unclicked = None  # the answer to no clicks computed on every click
    session.inferer.window = None  # the whole brain
    return session


def robot_clicks(session: GuidedSession, truth: np.ndarray, clicks: int) -> Tuple[List[Click], List[float]]:
    """The robot's clicks on ``session`` (the regions in turn) and the seconds each answer took."""
    labels, made, seconds = session.answer(), [], []
    for number in range(clicks):
        region = REGIONS_IN_TURN[number % len(REGIONS_IN_TURN)]
        click = next_click(truth, labels, region, session.spacing) or next_click(truth, labels, None, session.spacing)
        if click is None:
            break
        started = time.perf_counter()
        labels = session.click(*click)
        seconds.append(time.perf_counter() - started)
        made.append(click)
    return made, seconds


def replay(session: GuidedSession, clicks: Sequence[Click]) -> List[float]:
    session.answer()
    seconds = []
    for name, at in clicks:
        started = time.perf_counter()
        session.click(name, at)
        seconds.append(time.perf_counter() - started)
    return seconds


def to_study_voxels(clicks: Sequence[Click], network_affine: np.ndarray, study_affine: np.ndarray) -> List[Click]:
    """Clicks on the network's grid as voxel indices of the study's volume (what Slicer's DeepEdit sends)."""
    to_study = np.linalg.inv(study_affine) @ network_affine
    return [(name, tuple(int(v) for v in np.round(to_study @ np.append(np.asarray(at, dtype=float), 1.0))[:3])) for name, at in clicks]


def served_seconds(client: MONAILabelClient, study: str, clicks: Sequence[Click]) -> List[float]:
    """Each click answered by the server with every click so far, as the clients send them."""
    seconds, so_far = [], []
    for name, at in clicks:
        so_far.append((name, at))
        params: Dict[str, List[List[int]]] = {}
        for label, voxel in so_far:
            params.setdefault(label, []).append(list(voxel))
        started = time.perf_counter()
        label_file, _ = client.infer(REFINEMENT_MODEL_NAME, study, params)
        seconds.append(time.perf_counter() - started)
        if label_file and os.path.exists(label_file):
            os.remove(label_file)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True, help="the segmentation model")
    parser.add_argument("--refinement", type=Path, required=True, help="the refinement model (trained: its guidance weights not zero)")
    parser.add_argument("--studies", type=Path, required=True, help="labelled studies the models did not learn from (1 mm)")
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--clicks", type=int, default=10)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "click_latency.json")
    args = parser.parse_args()
    profile = PROFILES["cpu"]
    network = load_network(profile, args.refinement, torch.device("cpu"), guided=True).eval()
    sources = {source.study_id: source for source in find_studies(args.studies)[0] if source.ground_truth is not None}
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        items = items_of(args.studies, scratch)[: args.cases]
        prepare = Compose(evaluation_transforms(profile))
        found: Dict[str, List[Click]] = {}
        now: List[float] = []
        before: Dict[str, List[float]] = {"guided_window": [], "whole_brain": []}
        for item in items:
            data = prepare({"image": item["image"], "label": item["label"]})
            image = torch.as_tensor(data["image"])
            truth = region_channels_to_label(torch.as_tensor(data["label"]) > 0)
            clicks, seconds = robot_clicks(GuidedSession(network, sliding_window_inferer(profile), image, profile.spacing_mm), truth, args.clicks)
            now += seconds
            before["guided_window"] += replay(guided_window_session(network, image, profile.spacing_mm), clicks)
            before["whole_brain"] += replay(whole_brain_session(network, image, profile.spacing_mm), clicks)
            study_affine = nib.load(str(sources[item["id"]].ground_truth)).affine
            found[item["id"]] = to_study_voxels(clicks, np.asarray(data["image"].affine), study_affine)
            print(
                f"{item['id']}: {len(clicks)} clicks, p50 now {np.median(seconds):.2f} s, " + ", ".join(f"{way} {np.median(s[-len(clicks) :]):.2f} s" for way, s in before.items())
            )
        studies = scratch / "studies"
        studies.mkdir()
        for case in found:
            shutil.copytree(sources[case].ground_truth.parent, studies / case)  # type: ignore[union-attr]
        models = studies / ".brats_label" / "model"
        models.mkdir(parents=True)
        shutil.copy(args.weights, models / f"{MODEL_NAME}.pt")
        shutil.copy(args.refinement, models / f"{REFINEMENT_MODEL_NAME}.pt")
        conf = {"profile": "cpu", "prepare_on_arrival": "false", "retrain_after_labels": 1000000}
        server = Server(studies, conf, scratch / "server.log")
        try:
            client = MONAILabelClient(server.url)
            first, later = [], []
            for case, clicks in found.items():
                seconds = served_seconds(client, case, clicks)
                first.append(seconds[0])
                later += seconds[1:]
        finally:
            server.stop()
            args.out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(scratch / "server.log", args.out.with_suffix(".server.log"))  # MONAI Label's latencies per request
    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "device": "cpu",
        "refinement": str(args.refinement),
        "studies": list(found),
        "clicks_per_study": args.clicks,
        "served_end_to_end": {"first_click": percentiles(first), "later_clicks": percentiles(later)},
        "in_process": {
            "now": percentiles(now),
            **{way: percentiles(seconds) for way, seconds in before.items()},
            "speed_up_p50": {way: round(float(np.median(seconds) / np.median(now)), 2) for way, seconds in before.items()},
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{'':34} {'p50':>6} {'p95':>6} {'n':>4}")
    for name, row in [
        ("served, first click of a study", summary["served_end_to_end"]["first_click"]),
        ("served, later clicks", summary["served_end_to_end"]["later_clicks"]),
        ("in process, now", summary["in_process"]["now"]),
        ("in process, guided window (before)", summary["in_process"]["guided_window"]),
        ("in process, whole brain (before)", summary["in_process"]["whole_brain"]),
    ]:
        print(f"{name:34} {row['p50']:>6.2f} {row['p95']:>6.2f} {row['n']:>4}")
    print(f"speed-up in process (p50): {summary['in_process']['speed_up_p50']}; written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
