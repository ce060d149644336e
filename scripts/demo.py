"""The demo: sample studies, the server, a first model trained in the background, a first pre-segmentation.

    bash scripts/demo.sh            (sets up .venv, then runs this)

Generates BraTS-like sample studies (a few with labels, most without) unless they exist, starts the
MONAI Label server on them, starts training, follows it with a progress bar, then pre-segments an
unlabelled study and writes a picture of the result. The server keeps running until Ctrl-C.

By default the studies live in a local Orthanc (Debian's package, demo credentials from
orthanc/demo.env, storage in data/orthanc): the sample is imported as DICOM (MR series, ground truth
as SEG), the server reads and writes the archive over DICOMweb, and OHIF (served by the server) shows
it. ``--folder`` serves the NIfTI folder directly instead, with no archive.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Optional

import nibabel as nib
import numpy as np
import requests
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from monailabel.client import MONAILabelClient  # noqa: E402

from scripts.import_studies import import_studies  # noqa: E402
from scripts.local_orthanc import LocalOrthanc  # noqa: E402
from synthetic.__main__ import main as generate  # noqa: E402
from synthetic.montage import save_montage  # noqa: E402

MODALITY_OF_CHANNEL = ("t1c", "t1", "t2", "flair")  # the app's channel order (apps/brats_label/lib/config.py)
TRAINING_ENDED = ("DONE", "ERROR", "STOPPED")  # MONAI Label's states of a finished task


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=Path, default=REPO / "data" / "sample", help="studies folder (generated when empty)")
    parser.add_argument("--cases", type=int, default=16)
    parser.add_argument("--labelled", type=int, default=8)
    parser.add_argument("--raw", type=int, default=2, help="how many of the unlabelled studies are whole heads as a scanner writes them")
    parser.add_argument("--spacing", type=float, default=1.0, help="mm; 1 gives BraTS-size 240x240x155 studies")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--profile", default="cpu", choices=("cpu", "bundle"))
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the app's)")
    parser.add_argument("--folder", action="store_true", help="serve the NIfTI folder directly, with no Orthanc (OHIF needs the archive)")
    parser.add_argument("--archive", action="store_true", help=argparse.SUPPRESS)  # the default; kept for old command lines
    parser.add_argument("--orthanc-port", type=int, default=8042)
    parser.add_argument("--no-wait", action="store_true", help="start everything and return (server keeps running)")
    return parser.parse_args()


def ensure_studies(args: argparse.Namespace) -> None:
    has_studies = args.studies.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in args.studies.iterdir())
    if has_studies:
        print(f"==> using the studies in {args.studies}")
        return
    print(
        f"==> generating {args.cases} sample studies ({args.labelled} labelled, {min(args.raw, args.cases - args.labelled)} whole heads as the scanner writes them) in {args.studies}"
    )
    generate(
        [
            "--out", str(args.studies), "--cases", str(args.cases), "--labelled", str(args.labelled),
            "--spacing", str(args.spacing), "--ground-truth", str(args.studies.parent / "sample_ground_truth"),
            "--montage", str(args.studies.parent / "sample_montages"), "--raw", str(min(args.raw, args.cases - args.labelled)),
        ]
    )  # fmt: skip


def read_env_file(path: Path) -> dict:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def start_archive(args: argparse.Namespace) -> LocalOrthanc:
    """Orthanc on loopback with the sample imported; re-running imports nothing twice."""
    subprocess.run(["bash", str(REPO / "scripts" / "system_packages.sh")], check=True)
    demo = read_env_file(REPO / "orthanc" / "demo.env")
    storage = args.studies.parent / "orthanc"
    orthanc = LocalOrthanc(
        storage, args.studies.parent / "orthanc.log", demo["ORTHANC_USER"], demo["ORTHANC_PASSWORD"], http_port=args.orthanc_port, dicom_port=args.orthanc_port + 200
    )
    print(f"==> Orthanc at {orthanc.url} (DICOMweb {orthanc.dicomweb}; user {orthanc.user}, see orthanc/demo.env)")
    counts = import_studies(args.studies, orthanc.archive())
    print("==> sample in Orthanc: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    return orthanc


def start_server(args: argparse.Namespace, log_path: Path, studies: str, workspace: Path, extra_env: dict) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "monailabel.main", "start_server",
        "--app", str(REPO / "apps" / "brats_label"), "--studies", studies,
        "--conf", "profile", args.profile, "--conf", "workspace", str(workspace), "--host", args.host, "--port", str(args.port),
    ]  # fmt: skip
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", PYTHONUNBUFFERED="1", **extra_env)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(command, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://{args.host}:{args.port}"
    for _ in tqdm(range(180), desc="==> starting the server", bar_format="{desc} {elapsed}", leave=False):
        if process.poll() is not None:
            sys.exit(f"the server stopped; see {log_path}:\n" + log_path.read_text()[-3000:])
        try:
            if requests.get(f"{url}/info/", timeout=2).ok:
                return process
        except requests.RequestException:
            time.sleep(1)
    sys.exit(f"the server did not answer on {url} within 3 minutes; see {log_path}")


def banner(url: str, studies: str, log_path: Path, first_study: str | None) -> None:
    archive = studies.startswith("http")
    ohif = f"{url}/ohif/" if archive else "(needs the archive: run without --folder)"
    direct = f"\n  This study in the MONAI Label mode: {url}/ohif/monai-label?StudyInstanceUIDs={first_study}" if archive and first_study else ""
    print(
        f"""
BraTS Label is running at {url}
  OHIF viewer:    {ohif}
  Slicer server:  {url}
  API and docs:   {url}/docs
  Studies:        {url}/datastore/?output=all      (from {studies})
  Training:       {url}/brats/training             (epoch, loss, validation Dice, time left)
  Model versions: {url}/brats/models
  Dashboard:      {url}/brats/dashboard            (versions, pre-label quality, the work, input drift, training)
  Server log:     {log_path}

Connect 3D Slicer (5.x, with the MONAI Label extension from the Extensions Manager):
  Modules > Active Learning > MONAI Label; server {url}; press the refresh button.
  Next Sample loads a study (4 channels: T1c, T1, T2, FLAIR); Run segments it; edit the
  segments with Segment Editor; Submit Label saves the correction (it counts for the next training).

Open OHIF in a browser on this machine at the viewer URL, pick a study and choose the "MONAI Label"
  mode (the panel on the right connects to {url}).{direct}

Pre-segment from the command line:
  curl -X POST "{url}/infer/segmentation?image=<study id>&output=json"
"""
    )


def follow_training(url: str, epochs: Optional[int], started_ts: int) -> dict:
    """Progress bar over epochs of the training started at ``started_ts`` (an earlier run's progress is ignored),
    from the server's training progress (``/brats/training``: epoch, max_epochs, validation Dice per region)."""
    bar = tqdm(total=epochs, desc="==> training the first model", unit="epoch")
    since = datetime.fromtimestamp(started_ts, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    done = 0
    while True:
        status = requests.get(f"{url}/train/", timeout=10).json()
        progress = requests.get(f"{url}/brats/training", timeout=10).json()["progress"]
        this_run = progress.get("started_at", "") >= since
        epoch = int(progress.get("epoch") or 0) if this_run else 0
        if this_run and progress.get("max_epochs") and bar.total != progress["max_epochs"]:
            bar.total = int(progress["max_epochs"])  # the server's choice (a first model runs longer than a fine-tune)
            bar.refresh()
        if epoch > done:
            bar.update(epoch - done)
            done = epoch
            bar.set_postfix({f"dice_{k.lower()}": f"{v:.2f}" for k, v in progress.get("validation_dice", {}).items()})
        if status.get("status") in TRAINING_ENDED:
            bar.close()
            return {"status": status.get("status"), "progress": progress}
        time.sleep(3)


def first_presegmentation(url: str, out_png: Path) -> None:
    """Pre-segment the first unlabelled study the way a viewer does, and draw the result."""
    scratch = Path(tempfile.mkdtemp(prefix="brats_label_demo_"))
    client = MONAILabelClient(url, tmpdir=str(scratch), client_id="demo")
    unlabelled = sorted(k for k, v in client.datastore()["objects"].items() if "final" not in v["labels"])
    if not unlabelled:
        return
    study = unlabelled[0]
    start = time.time()
    label_file, params = client.infer("segmentation", study, {})
    elapsed = time.time() - start
    params = json.loads(params) if isinstance(params, str) else params
    image_path = scratch / f"{study}_4channel.nii"
    image_path.write_bytes(requests.get(f"{url}/datastore/image", params={"image": study}, timeout=120).content)
    volume = np.asarray(nib.load(str(image_path)).dataobj)
    images = {modality: volume[..., i] for i, modality in enumerate(MODALITY_OF_CHANNEL)}
    save_montage(images, np.asarray(nib.load(label_file).dataobj), out_png, f"{study}: pre-segmentation by the demo model")
    shutil.rmtree(scratch, ignore_errors=True)
    print(f"\n==> pre-segmented {study} in {elapsed:.1f} s")
    print("    volumes (mL): " + ", ".join(f"{k} {v:.1f}" for k, v in params["volumes_ml"].items()))
    print(f"    picture: {out_png}")


def interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def start_or_follow_training(url: str, epochs: Optional[int]) -> int:
    """Start the first training, or follow the one the server is already running (it may have started one by
    itself); the time (epoch s) after which its statistics are this run's."""
    status = requests.get(f"{url}/train/", timeout=10).json()
    if status.get("status") not in TRAINING_ENDED and status.get("start_ts"):
        print("==> the server is already training; following that run")
        return int(time.mktime(time.strptime(status["start_ts"], "%Y-%m-%d %H:%M:%S"))) - 1
    started_ts = int(time.time()) - 1
    # with no --epochs the server chooses: its max_epochs_from_scratch for this first model
    answer = requests.post(f"{url}/train/segmentation", json={"max_epochs": epochs} if epochs else {}, timeout=30)
    if answer.status_code == 429:  # started by the server between our two requests
        print("==> the server started a training by itself; following that run")
        return start_or_follow_training(url, epochs)
    answer.raise_for_status()
    return started_ts


class Started:
    """What the demo started, so that any way out (Ctrl-C, kill, an error) stops it."""

    def __init__(self) -> None:
        self.orthanc: LocalOrthanc | None = None
        self.server: subprocess.Popen | None = None

    def stop(self) -> None:
        if self.server is not None and self.server.poll() is None:
            os.killpg(self.server.pid, signal.SIGTERM)
            try:
                self.server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.server.pid, signal.SIGKILL)
        if self.orthanc is not None:
            self.orthanc.stop()


def run(args: argparse.Namespace, started: Started) -> None:
    log_path = args.studies.parent / "server.log"
    url = f"http://{args.host}:{args.port}"
    started.orthanc = None if args.folder else start_archive(args)
    orthanc = started.orthanc
    studies = orthanc.dicomweb if orthanc else str(args.studies)
    workspace = args.studies.parent / "archive_workspace" if orthanc else args.studies / ".brats_label"
    started.server = start_server(args, log_path, studies, workspace, orthanc.credentials_env if orthanc else {})
    cases = sorted(requests.get(f"{url}/datastore/?output=all", timeout=60).json()["objects"])
    banner(url, studies, log_path, cases[0] if cases else None)
    epochs = args.epochs
    started_ts = start_or_follow_training(url, epochs)
    if args.no_wait:
        print(f"training started in the background; server pid {started.server.pid}" + (f", Orthanc pid {orthanc.process.pid}" if orthanc else ""))
        started.server = started.orthanc = None  # left running on purpose
        return
    outcome = follow_training(url, epochs, started_ts)
    if outcome["status"] != "DONE":
        print(f"training ended with {outcome['status']}; see {log_path} and {url}/brats/training")
    else:
        curves = sorted((workspace / "model").glob("*/training_curve_*.png"), key=lambda p: p.stat().st_mtime)
        if curves:
            shutil.copyfile(curves[-1], args.studies.parent / "demo_training_curve.png")
            print(f"==> training curve: {args.studies.parent / 'demo_training_curve.png'}")
        first_presegmentation(url, args.studies.parent / "demo_presegmentation.png")
    print(f"\nThe server keeps running at {url}; press Ctrl-C to stop it.")
    started.server.wait()


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, interrupt)  # a kill stops the server and Orthanc too, as Ctrl-C does
    started = Started()
    try:
        ensure_studies(args)
        run(args, started)
    except KeyboardInterrupt:
        pass
    except (Exception, SystemExit) as e:
        message = str(e) if isinstance(e, SystemExit) else f"{type(e).__name__}: {e}"
        print(f"\nThe demo stopped: {message}\n  server log: {args.studies.parent / 'server.log'}", file=sys.stderr)
        return 1
    finally:
        started.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
