"""A team of annotators at once: latency of each call, errors, and whether every acknowledged save was kept.

    .venv/bin/python bench/annotators.py --annotators 8 --minutes 10
    .venv/bin/python bench/annotators.py --annotators 32 --minutes 5

Against a real Orthanc (started here) holding ``--studies`` generated studies and the real server on it
(cpu profile, untrained weights of the profile's size: inference costs the same whatever the weights),
each simulated annotator repeats, for the set time and with no pause: Next Sample (``random``) ->
auto-segment the study it was handed -> edit the pre-label (a blob of enhancing tumour added, a slab of
edema erased) -> save it as final, with MONAI Label's own client. When every study is labelled, Next
Sample hands out nothing and the annotator reviews a labelled study instead. The server runs as
configured by default, automatic fine-tuning included (it starts after 5 new labels, at most every
10 minutes), so training competes for the CPU as it would in a lab.

Afterwards every acknowledged save is looked for in the audit trail and in the study's label history
(by its user and study). Prints a table and writes ``bench/results/annotators_<N>x<minutes>min.json``.
Each run starts from a fresh archive with the same studies (generated once under ``--workdir``). ``--baseline REV``
first runs the same team against the app as it was at git revision REV (a worktree under ``--workdir``)
and reports each call's p95 and the throughput as ratios, this build over the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
import requests
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "apps" / "brats_label")]

from monailabel.client import MONAILabelClient  # noqa: E402

from lib.config import PROFILES  # noqa: E402
from lib.model.network import build_network  # noqa: E402
from scripts.import_studies import import_studies  # noqa: E402
from scripts.local_orthanc import LocalOrthanc  # noqa: E402
from scripts.local_server import LocalServer  # noqa: E402
from synthetic.__main__ import main as generate  # noqa: E402

RESULTS = REPO / "bench" / "results"
CALLS = ("next_sample", "infer", "save")


def percentile(values: list, q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))], 3)


class Annotator(threading.Thread):
    def __init__(self, number: int, url: str, deadline: float, scratch: Path, log: dict, lock: threading.Lock):
        super().__init__(name=f"annotator-{number}")
        self.user = f"annotator-{number:02d}"
        self.client = MONAILabelClient(url, tmpdir=str(scratch / self.user), client_id=self.user)
        (scratch / self.user).mkdir(parents=True, exist_ok=True)
        self.scratch = scratch / self.user
        self.url = url
        self.deadline = deadline
        self.log = log
        self.lock = lock
        self.rng = random.Random(number)

    def timed(self, call: str, fn):
        started = time.perf_counter()
        try:
            result = fn()
        except Exception as e:
            with self.lock:
                self.log["errors"].append({"call": call, "user": self.user, "error": f"{type(e).__name__}: {str(e)[:300]}"})
            return None, False
        with self.lock:
            self.log["latency"][call].append(time.perf_counter() - started)
            self.log["done_at"][call].append(time.time())
        return result, True

    def run(self) -> None:
        saves = 0
        while time.time() < self.deadline:
            sample, ok = self.timed("next_sample", lambda: self.client.next_sample("random", {}))
            if not ok:
                continue
            study = (sample or {}).get("id")
            if not study:  # every study labelled: review one
                listing = requests.get(f"{self.url}/datastore/?output=all", timeout=60).json()["objects"]
                study = self.rng.choice(sorted(listing))
            answer, ok = self.timed("infer", lambda study=study: self.client.infer("segmentation", study, {}))
            if not ok:
                continue
            label_file, _ = answer
            image = nib.load(label_file)
            label = np.asarray(image.dataobj).astype(np.uint8)
            x, y, z = (self.rng.randrange(20, s - 20) for s in label.shape)
            label[x - 3 : x + 3, y - 3 : y + 3, z - 3 : z + 3] = 3  # the annotator's correction
            label[:, :, z : z + 2][label[:, :, z : z + 2] == 2] = 0
            edited = self.scratch / f"{study}_{saves}.nii.gz"
            nib.save(nib.Nifti1Image(label, image.affine), str(edited))
            tag = f"{self.user}/{saves}"
            _, ok = self.timed("save", lambda study=study, edited=edited, tag=tag: self.client.save_label(study, str(edited), tag="final", params={"user": self.user, "note": tag}))
            if ok:
                with self.lock:
                    self.log["acknowledged"].append({"study": study, "user": self.user, "note": tag})
            saves += 1


def prepare_studies(workdir: Path, studies: int, spacing: float) -> Path:
    folder = workdir / f"studies_{studies}x{spacing:g}mm"
    if not folder.is_dir():
        generate(["--out", str(folder), "--cases", str(studies), "--labelled", "4", "--spacing", str(spacing), "--seed", "5"])
    return folder


def fresh_archive(studies: Path, scratch: Path) -> LocalOrthanc:
    """An empty Orthanc with the studies imported: every run starts from the same archive (a run's SEGs stay in its own)."""
    orthanc = LocalOrthanc(scratch / "orthanc", scratch / "orthanc.log", user="bench", password="bench-only")
    print("==> archive:", import_studies(studies, orthanc.archive()))
    return orthanc


def check_kept(url: str, acknowledged: list) -> dict:
    """Acknowledged saves against the audit trail, counted per (study, user): none may be missing."""
    audit = requests.get(f"{url}/brats/audit", timeout=120).json()
    in_audit = Counter((r["case"], r["user"]) for r in audit)
    wanted = Counter((a["study"], a["user"]) for a in acknowledged)
    lost = sum(max(0, n - in_audit[key]) for key, n in wanted.items())
    return {"acknowledged": len(acknowledged), "found_in_audit": len(acknowledged) - lost, "lost": lost, "audit_rows": len(audit)}


def count_versions(workspace: Path, acknowledged: list) -> dict:
    """The same saves, looked for in the label store on disk (a version's record carries the note); None
    for a build without a label store (a baseline)."""
    if not (workspace / "label_store").is_dir():
        return {"found_in_label_store": None, "missing_in_label_store": None}
    notes = set()
    for record in (workspace / "label_store").glob("*/*/record.json"):
        note = json.loads(record.read_text()).get("note")
        if note:
            notes.add(note)
    missing = [a for a in acknowledged if a["note"] not in notes]
    return {"found_in_label_store": len(acknowledged) - len(missing), "missing_in_label_store": len(missing)}


def run_team(args: argparse.Namespace, studies: Path, app_dir: Path, label: str) -> dict:
    """One timed run of the team against a fresh archive and server (its own workspace) built from ``app_dir``."""
    scratch = Path(tempfile.mkdtemp(prefix="annotators_"))
    orthanc = fresh_archive(studies, scratch)
    weights = scratch / "untrained.pt"
    torch.manual_seed(0)
    torch.save(build_network(PROFILES["cpu"]).state_dict(), weights)
    workspace = scratch / "workspace"
    conf = {"profile": "cpu", "workspace": workspace, "pretrained_weights": weights}
    server = LocalServer(orthanc.dicomweb, conf, scratch / "server.log", env=orthanc.credentials_env, app_dir=app_dir)
    log: dict = {"latency": defaultdict(list), "done_at": defaultdict(list), "errors": [], "acknowledged": []}
    lock = threading.Lock()
    print(f"==> {label}: {args.annotators} annotators for {args.minutes} min (server log {scratch / 'server.log'})")
    try:
        started = time.time()
        deadline = started + args.minutes * 60
        team = [Annotator(k, server.url, deadline, scratch, log, lock) for k in range(args.annotators)]
        for annotator in team:
            annotator.start()
        while any(a.is_alive() for a in team):
            time.sleep(10)
            with lock:
                done = {c: len(log["latency"][c]) for c in CALLS}
            print(f"  {time.time() - started:5.0f} s: {done}, errors {len(log['errors'])}", flush=True)
        for annotator in team:
            annotator.join()
        elapsed_min = (time.time() - started) / 60
        kept = check_kept(server.url, log["acknowledged"])
        kept.update(count_versions(workspace, log["acknowledged"]))
        runs = requests.get(f"{server.url}/info/", timeout=60).json().get("retrain", {}).get("runs", [])
    finally:
        server.stop()
        orthanc.stop()
        shutil.rmtree(scratch / "orthanc", ignore_errors=True)
    calls = {
        c: {"count": len(log["latency"][c]), "p50_s": percentile(log["latency"][c], 0.5), "p95_s": percentile(log["latency"][c], 0.95), "max_s": percentile(log["latency"][c], 1.0)}
        for c in CALLS
    }
    return {
        "build": label,
        "minutes": round(elapsed_min, 2),
        "calls": calls,
        "infer_throughput_per_min": round(len(log["latency"]["infer"]) / elapsed_min, 1),
        "errors": len(log["errors"]),
        "error_examples": log["errors"][:10],
        "saves": kept,
        "trainings_started": len(runs),
    }


def print_run(result: dict) -> None:
    print(f"\n{result['build']}: {result['minutes']:.1f} min")
    print(f"{'call':<12} {'count':>6} {'p50 s':>7} {'p95 s':>7} {'max s':>7}")
    for call, figures in result["calls"].items():
        print(f"{call:<12} {figures['count']:>6} {figures['p50_s'] or 0:>7.3f} {figures['p95_s'] or 0:>7.3f} {figures['max_s'] or 0:>7.3f}")
    kept = result["saves"]
    print(
        f"errors {result['errors']}; saves acknowledged {kept['acknowledged']}, in the audit {kept['found_in_audit']}, in the label store {kept['found_in_label_store']}, lost {kept['lost']}"
    )
    print(f"auto-segmentation throughput {result['infer_throughput_per_min']} cases/min; trainings started by the server {result['trainings_started']}")


def baseline_app(revision: str, workdir: Path) -> Path:
    """The app as it was at ``revision`` (a git worktree, made once)."""
    tree = workdir / f"baseline-{revision}"
    if not tree.is_dir():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), revision], check=True)
    return tree / "apps" / "brats_label"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotators", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--studies", type=int, default=50)
    parser.add_argument("--spacing", type=float, default=2.0, help="mm of the generated studies (2: the cpu profile's own)")
    parser.add_argument("--workdir", type=Path, default=REPO / "bench" / ".annotators", help="archive and studies, kept between runs")
    parser.add_argument("--baseline", help="a git revision: run the same team against that build first, and report ratios")
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    studies = prepare_studies(args.workdir, args.studies, args.spacing)
    runs = []
    if args.baseline:
        runs.append(run_team(args, studies, baseline_app(args.baseline, args.workdir), f"baseline {args.baseline}"))
    runs.append(run_team(args, studies, REPO / "apps" / "brats_label", "this build"))
    for run in runs:
        print_run(run)
    result = {
        "annotators": args.annotators,
        "minutes": args.minutes,
        "studies": args.studies,
        "spacing_mm": args.spacing,
        "profile": "cpu",
        "machine": f"{os.cpu_count()} cores, torch {torch.__version__}",
        "targets": {"errors": 0, "lost": 0, "next_sample_p95_s": 1.0, "save_p95_s": 2.0},
        "runs": runs,
    }
    if len(runs) == 2:
        base, ours = runs
        result["p95_ratio_this_build_to_baseline"] = {
            c: round(ours["calls"][c]["p95_s"] / base["calls"][c]["p95_s"], 3) for c in CALLS if ours["calls"][c]["p95_s"] and base["calls"][c]["p95_s"]
        }
        result["throughput_ratio_this_build_to_baseline"] = round(ours["infer_throughput_per_min"] / max(base["infer_throughput_per_min"], 1e-9), 3)
        print(f"\np95 this build / baseline: {result['p95_ratio_this_build_to_baseline']}; throughput ratio {result['throughput_ratio_this_build_to_baseline']}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"annotators_{args.annotators}x{args.minutes:g}min.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"written {out}")
    ours = runs[-1]
    return 0 if ours["errors"] == 0 and ours["saves"]["lost"] == 0 and not ours["saves"]["missing_in_label_store"] else 1


if __name__ == "__main__":
    sys.exit(main())
