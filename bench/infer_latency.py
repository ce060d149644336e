"""End-to-end /infer latency against the bare sliding-window forward pass, on a BraTS-size study.

    .venv/bin/python bench/infer_latency.py [--profiles cpu,bundle] [--weights model.pt] [--repeats 3]

For each profile, in one run and on the same study (240x240x155, 4 channels, 1 mm):
- end to end: ``POST /infer/segmentation`` on the real MONAI Label server, from request to the label
  file and JSON received by MONAI Label's client. The model is loaded first by a request on another
  study. *cold*: the first request on the bench study (its 4-channel volume on disk, nothing in
  memory), what an annotator meets on a case opened by hand; *handed out*: the first request on a study
  Next Sample handed out (the server prepares its input meanwhile; asked 10 s later), what an annotator
  meets in the active-learning loop; *warm*: repeated requests, served from the prepared-input cache;
  *viewed* (cpu profile): the same studies in a local Orthanc and the server on it; the first request on a
  study the viewer opened from the study list (its series' metadata asked through the server's DICOMweb proxy,
  as OHIF does; asked 10 s later); *downloaded*: the first request on a study 3D Slicer downloaded
  (``GET /datastore/image``, which prepares it too; asked 10 s later);
- forward: the network alone through the same SlidingWindowInferer, on the already pre-processed
  tensor, in this process;
- their ratios (target: at most 1.5), and peak resident memory of the server and of the forward pass;
- *raw* (cpu profile, ``--raw``): a whole-head study as a scanner writes it (``synthetic/head.py``: series on their
  own grids, the patient moved between them), put in the folder of a server that prepares arriving studies while
  idle (aligned, brain extracted, ``lib/preparation``); the seconds that took, then the first request after Next
  Sample handed it out, against the forward pass on its own prepared input (a whole head's field of view is
  larger than a BraTS grid's).

Prints a table and writes ``bench/results/infer_latency.json``. Weights: ``--weights`` (for example
the demo's trained model), otherwise freshly initialised ones, whose scattered predictions are the
worst case for restoring the label to the study grid.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "apps" / "brats_label")]

from monai.transforms import Compose  # noqa: E402
from monailabel.client import MONAILabelClient  # noqa: E402

from lib.config import PROFILES  # noqa: E402
from lib.infers.segmentation import preprocessing  # noqa: E402
from lib.model.network import build_network, load_network, sliding_window_inferer  # noqa: E402
from lib.studies.folder_datastore import StudyFolderDatastore  # noqa: E402
from scripts.import_studies import import_studies  # noqa: E402
from scripts.local_orthanc import LocalOrthanc  # noqa: E402
from scripts.local_server import LocalServer as Server  # noqa: E402
from synthetic.__main__ import main as generate  # noqa: E402
from synthetic.head import generate_raw_study  # noqa: E402
from synthetic.layouts import write_raw_study  # noqa: E402

RESULTS = REPO / "bench" / "results" / "infer_latency.json"
STUDY = "BraTS-GLI-00000-000"
WARM_UP_STUDY = "BraTS-GLI-00001-000"
HANDED_OUT_STUDY = "BraTS-GLI-00002-000"
VIEWED_STUDY = STUDY  # on another server, over Orthanc: never opened there before
DOWNLOADED_STUDY = "BraTS-GLI-00003-000"
RAW_STUDY = "Head-00000"
PREPARATION_WAIT_S = 10  # an annotator looks at a study for longer than this before asking for its segmentation
ARRIVAL_WAIT_S = 300  # a raw study is prepared on arrival within this, or the bench stops


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of a process, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def time_forward(profile_name: str, weights: Path, image_path: str, repeats: int) -> dict:
    profile = PROFILES[profile_name]
    network = load_network(profile, weights, torch.device("cpu")).eval()
    tensor = Compose(preprocessing(profile))({"image": image_path})["image"][None]
    inferer = sliding_window_inferer(profile)
    times = []
    with torch.no_grad():
        inferer(tensor, network)  # warm-up, as the server's first request
        for _ in range(repeats):
            start = time.perf_counter()
            inferer(tensor, network)
            times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "runs_s": times, "input_shape": list(tensor.shape)}


def first_after_next_sample(server: Server, client: MONAILabelClient, study: str = HANDED_OUT_STUDY) -> tuple:
    """The first /infer of a study an annotator was just handed by Next Sample (its input prepared meanwhile)."""
    for attempt in range(50):  # the random strategy: ask as different annotators until it hands out the bench study
        answer = requests.post(f"{server.url}/activelearning/random", json={"client_id": f"bench-{attempt}"}, timeout=300).json()
        if answer.get("id") == study:
            break
    else:
        raise RuntimeError(f"Next Sample never handed out {study}")
    time.sleep(PREPARATION_WAIT_S)
    start = time.perf_counter()
    _, params = client.infer("segmentation", study, {})
    params = json.loads(params) if isinstance(params, str) else params
    return time.perf_counter() - start, params["latencies"]


def first_after_download(server: Server, client: MONAILabelClient) -> tuple:
    """The first /infer of a study 3D Slicer downloaded (its input prepared meanwhile)."""
    requests.get(f"{server.url}/datastore/image", params={"image": DOWNLOADED_STUDY}, timeout=120).raise_for_status()
    time.sleep(PREPARATION_WAIT_S)
    start = time.perf_counter()
    _, params = client.infer("segmentation", DOWNLOADED_STUDY, {})
    params = json.loads(params) if isinstance(params, str) else params
    return time.perf_counter() - start, params["latencies"]


def first_after_viewing(studies: Path, profile_name: str, weights: Path, work: Path) -> tuple:
    """The first /infer of a study OHIF opened from its study list, on a server over a local Orthanc."""
    orthanc = LocalOrthanc(work / "orthanc", work / "orthanc.log")
    try:
        import_studies(studies, orthanc.archive(), progress=False)
        conf = {"profile": profile_name, "pretrained_weights": str(weights), "workspace": str(work / f"ws_viewed_{profile_name}")}
        server = Server(orthanc.dicomweb, conf, work / f"server_viewed_{profile_name}.log", env=orthanc.credentials_env)
        try:
            client = MONAILabelClient(server.url, tmpdir=str(work), client_id="bench")
            client.infer("segmentation", orthanc.study_uid_of(WARM_UP_STUDY), {})  # loads the model
            study = orthanc.study_uid_of(VIEWED_STUDY)
            for series in requests.get(f"{server.url}/proxy/dicom/qido/studies/{study}/series", timeout=60).json():
                requests.get(f"{server.url}/proxy/dicom/wado/studies/{study}/series/{series['0020000E']['Value'][0]}/metadata", timeout=60).raise_for_status()
            time.sleep(PREPARATION_WAIT_S)
            start = time.perf_counter()
            _, params = client.infer("segmentation", study, {})
            params = json.loads(params) if isinstance(params, str) else params
            return time.perf_counter() - start, params["latencies"]
        finally:
            server.stop()
    finally:
        orthanc.stop()


def time_raw_study(studies: Path, weights: Path, repeats: int, work: Path) -> dict:
    """A raw head prepared on arrival, then handed out by Next Sample: its first /infer against its forward pass."""
    folder = work / "raw_studies"
    shutil.copytree(studies / WARM_UP_STUDY, folder / WARM_UP_STUDY)
    write_raw_study(generate_raw_study(2026, 0, case_id=RAW_STUDY), folder, with_label=False)
    workspace = work / "ws_raw"
    server = Server(folder, {"profile": "cpu", "pretrained_weights": str(weights), "workspace": str(workspace), "prepare_on_arrival": "true"}, work / "server_raw.log")
    try:
        client = MONAILabelClient(server.url, tmpdir=str(work), client_id="bench")
        client.infer("segmentation", WARM_UP_STUDY, {})  # loads the model
        deadline = time.monotonic() + ARRIVAL_WAIT_S
        while not (opened := [r for r in requests.get(f"{server.url}/info/", timeout=60).json()["arrival_preparation"]["recent"] if r["study"] == RAW_STUDY]):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{RAW_STUDY} was not prepared on arrival within {ARRIVAL_WAIT_S} s")
            time.sleep(1)
        if opened[0]["outcome"] != "prepared":
            raise RuntimeError(f"{RAW_STUDY}: {opened[0]['outcome']}")
        handed_out_s, stages = first_after_next_sample(server, client, RAW_STUDY)
        preparation = requests.get(f"{server.url}/datastore/image/info", params={"image": RAW_STUDY}, timeout=60).json().get("preparation", {})
    finally:
        server.stop()
    forward = time_forward("cpu", weights, str(next((workspace / "cases").glob(f"{RAW_STUDY}.nii*"))), repeats)
    return {
        "arrival_preparation_s": opened[0]["seconds"],
        "brain_ml": preparation.get("brain", {}).get("volume_ml"),
        "handed_out_s": handed_out_s,
        "handed_out_server_stages_s": stages,
        "forward": forward,
        "ratio_handed_out": handed_out_s / forward["median_s"],
    }


def time_end_to_end(studies: Path, profile_name: str, weights: Path, repeats: int, work: Path) -> dict:
    server = Server(studies, {"profile": profile_name, "pretrained_weights": str(weights), "workspace": str(work / f"ws_{profile_name}")}, work / f"server_{profile_name}.log")
    try:
        client = MONAILabelClient(server.url, tmpdir=str(work), client_id="bench")
        client.infer("segmentation", WARM_UP_STUDY, {})  # loads the model
        # the case volume on disk, nothing prepared: HEAD builds it as a download would, and prepares nothing
        requests.head(f"{server.url}/datastore/image", params={"image": STUDY}, timeout=120).raise_for_status()

        def one_request() -> tuple:
            start = time.perf_counter()
            _, params = client.infer("segmentation", STUDY, {})
            params = json.loads(params) if isinstance(params, str) else params
            return time.perf_counter() - start, params["latencies"]

        cold_s, cold_stages = one_request()
        warm = [one_request() for _ in range(repeats)]
        downloaded_s, downloaded_stages = first_after_download(server, client)  # first: Next Sample may hand it out
        handed_out_s, handed_out_stages = first_after_next_sample(server, client)
        server_peak_mb = peak_rss_mb(server.process.pid)
        server.stop()
        viewed_s, viewed_stages = first_after_viewing(studies, profile_name, weights, work) if profile_name == "cpu" else (None, None)
        return {
            "viewed_s": viewed_s,
            "viewed_server_stages_s": viewed_stages,
            "cold_s": cold_s,
            "cold_server_stages_s": cold_stages,
            "handed_out_s": handed_out_s,
            "handed_out_server_stages_s": handed_out_stages,
            "downloaded_s": downloaded_s,
            "downloaded_server_stages_s": downloaded_stages,
            "warm_median_s": statistics.median(t for t, _ in warm),
            "warm_runs_s": [t for t, _ in warm],
            "warm_server_stages_s": warm[-1][1],
            "server_peak_rss_mb": server_peak_mb,
        }
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", default="cpu,bundle")
    parser.add_argument("--weights", type=Path, default=None, help="weights for the cpu profile (else fresh ones)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--raw", action="store_true", help="also a raw whole-head study prepared on arrival (cpu profile)")
    args = parser.parse_args()

    torch.set_num_threads(torch.get_num_threads())
    results = {"machine": {"cpus": torch.get_num_threads(), "platform": platform.platform(), "torch": torch.__version__}, "profiles": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        studies = work / "studies"
        generate(["--out", str(studies), "--cases", "4", "--labelled", "0", "--seed", "2026", "--spacing", "1", "--workers", "1"])
        image_path = StudyFolderDatastore(studies, work / "ds").get_image_uri(STUDY)
        for name in args.profiles.split(","):
            weights = args.weights if (args.weights and name == "cpu") else work / f"{name}_fresh.pt"
            if not weights.exists():
                torch.manual_seed(0)
                torch.save(build_network(PROFILES[name]).state_dict(), weights)
            print(f"profile {name}: forward pass ...", flush=True)
            forward = time_forward(name, weights, image_path, args.repeats)
            forward["peak_rss_mb_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"profile {name}: end-to-end /infer ...", flush=True)
            end_to_end = time_end_to_end(studies, name, weights, args.repeats, work)
            results["profiles"][name] = {
                "weights": str(args.weights) if weights == args.weights else "freshly initialised",
                "study_shape": [240, 240, 155, 4],
                "forward": forward,
                "end_to_end": end_to_end,
                "ratio_cold": end_to_end["cold_s"] / forward["median_s"],
                "ratio_warm": end_to_end["warm_median_s"] / forward["median_s"],
                "ratio_handed_out": end_to_end["handed_out_s"] / forward["median_s"],
                "ratio_downloaded": end_to_end["downloaded_s"] / forward["median_s"],
                "ratio_viewed": end_to_end["viewed_s"] / forward["median_s"] if end_to_end["viewed_s"] else None,
            }
            if args.raw and name == "cpu":
                print("profile cpu: a raw study prepared on arrival ...", flush=True)
                results["profiles"][name]["raw"] = time_raw_study(studies, weights, args.repeats, work)

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(
        f"\n{'profile':8} {'forward s':>10} {'cold /infer s':>14} {'ratio':>6} {'handed out s':>13} {'ratio':>6} {'warm /infer s':>14} {'ratio':>6} {'server peak MB':>15}   (target ratio <= 1.5)"
    )
    for name, r in results["profiles"].items():
        e = r["end_to_end"]
        print(
            f"{name:8} {r['forward']['median_s']:10.2f} {e['cold_s']:14.2f} {r['ratio_cold']:6.2f} {e['handed_out_s']:13.2f} {r['ratio_handed_out']:6.2f} "
            f"{e['warm_median_s']:14.2f} {r['ratio_warm']:6.2f} {e['server_peak_rss_mb']:15.0f}"
        )
    for name, r in results["profiles"].items():
        print(f"{name}: first request on a study downloaded by Slicer {r['end_to_end']['downloaded_s']:.2f} s, ratio {r['ratio_downloaded']:.2f}")
        if r["ratio_viewed"] is not None:
            print(f"{name}: first request on a study opened in the viewer {r['end_to_end']['viewed_s']:.2f} s, ratio {r['ratio_viewed']:.2f}")
        if "raw" in r:
            raw = r["raw"]
            print(
                f"{name}: raw whole head prepared on arrival in {raw['arrival_preparation_s']:.1f} s; first request after Next Sample "
                f"{raw['handed_out_s']:.2f} s against its forward pass {raw['forward']['median_s']:.2f} s (input {raw['forward']['input_shape']}), ratio {raw['ratio_handed_out']:.2f}"
            )
    for name, r in results["profiles"].items():
        stages = {k: v for k, v in r["end_to_end"]["cold_server_stages_s"].items() if k != "transform"}
        print(f"{name} server stages, cold request (s): {json.dumps(stages)}")
    print(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
