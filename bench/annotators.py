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
The archive and the imported studies are kept under ``--workdir`` for the next run.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
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
from lib.network import build_network  # noqa: E402
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


def prepare_archive(workdir: Path, studies: int, spacing: float) -> LocalOrthanc:
    folder = workdir / "studies"
    if not folder.is_dir():
        generate(["--out", str(folder), "--cases", str(studies), "--labelled", "4", "--spacing", str(spacing), "--seed", "5"])
    orthanc = LocalOrthanc(workdir / "orthanc", workdir / "orthanc.log", user="bench", password="bench-only")
    print("==> archive:", import_studies(folder, orthanc.archive()))
    return orthanc


def check_kept(url: str, acknowledged: list) -> dict:
    """Acknowledged saves against the audit trail, counted per (study, user): none may be missing."""
    audit = requests.get(f"{url}/brats/audit", timeout=120).json()
    in_audit = Counter((r["case"], r["user"]) for r in audit)
    wanted = Counter((a["study"], a["user"]) for a in acknowledged)
    lost = sum(max(0, n - in_audit[key]) for key, n in wanted.items())
    return {"acknowledged": len(acknowledged), "found_in_audit": len(acknowledged) - lost, "lost": lost, "audit_rows": len(audit)}


def count_versions(workspace: Path, acknowledged: list) -> dict:
    """The same saves, looked for in the label store on disk (a version's record carries the note)."""
    notes = set()
    for record in (workspace / "label_store").glob("*/*/record.json"):
        note = json.loads(record.read_text()).get("note")
        if note:
            notes.add(note)
    missing = [a for a in acknowledged if a["note"] not in notes]
    return {"found_in_label_store": len(acknowledged) - len(missing), "missing_in_label_store": len(missing)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotators", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--studies", type=int, default=50)
    parser.add_argument("--spacing", type=float, default=2.0, help="mm of the generated studies (2: the cpu profile's own)")
    parser.add_argument("--workdir", type=Path, default=REPO / "bench" / ".annotators", help="archive and studies, kept between runs")
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    orthanc = prepare_archive(args.workdir, args.studies, args.spacing)
    scratch = Path(tempfile.mkdtemp(prefix="annotators_"))
    weights = scratch / "untrained.pt"
    torch.manual_seed(0)
    torch.save(build_network(PROFILES["cpu"]).state_dict(), weights)
    workspace = scratch / "workspace"
    server = LocalServer(orthanc.dicomweb, {"profile": "cpu", "workspace": workspace, "pretrained_weights": weights}, scratch / "server.log", env=orthanc.credentials_env)
    log: dict = {"latency": defaultdict(list), "done_at": defaultdict(list), "errors": [], "acknowledged": []}
    lock = threading.Lock()
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
        training = requests.get(f"{server.url}/brats/training", timeout=60).json()
    finally:
        server.stop()
        orthanc.stop()

    calls = {
        c: {"count": len(log["latency"][c]), "p50_s": percentile(log["latency"][c], 0.5), "p95_s": percentile(log["latency"][c], 0.95), "max_s": percentile(log["latency"][c], 1.0)}
        for c in CALLS
    }
    result = {
        "annotators": args.annotators,
        "minutes": round(elapsed_min, 2),
        "studies": args.studies,
        "spacing_mm": args.spacing,
        "profile": "cpu",
        "calls": calls,
        "infer_throughput_per_min": round(len(log["latency"]["infer"]) / elapsed_min, 1),
        "errors": len(log["errors"]),
        "error_examples": log["errors"][:10],
        "saves": kept,
        "trainings_started": len(training["retrain"]["runs"]),
        "targets": {"errors": 0, "lost": 0, "next_sample_p95_s": 1.0, "save_p95_s": 2.0},
        "machine": f"{torch.get_num_threads()} torch threads, {__import__('os').cpu_count()} cores",
        "mean_save_s": round(statistics.mean(log["latency"]["save"]), 3) if log["latency"]["save"] else None,
    }
    print(f"\n{args.annotators} annotators for {elapsed_min:.1f} min, {args.studies} studies in Orthanc ({args.spacing} mm, cpu profile)")
    print(f"{'call':<12} {'count':>6} {'p50 s':>7} {'p95 s':>7} {'max s':>7}")
    for call, figures in calls.items():
        print(f"{call:<12} {figures['count']:>6} {figures['p50_s'] or 0:>7.3f} {figures['p95_s'] or 0:>7.3f} {figures['max_s'] or 0:>7.3f}")
    print(
        f"errors {result['errors']}; saves acknowledged {kept['acknowledged']}, in the audit {kept['found_in_audit']}, in the label store {kept['found_in_label_store']}, lost {kept['lost']}"
    )
    print(f"auto-segmentation throughput {result['infer_throughput_per_min']} cases/min; trainings started by the server {result['trainings_started']}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"annotators_{args.annotators}x{args.minutes:g}min.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"written {out}")
    return 0 if result["errors"] == 0 and kept["lost"] == 0 and kept["missing_in_label_store"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
