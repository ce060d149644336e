"""Cost of scoring one BraTS-size study for uncertainty, against one plain forward pass.

    .venv/bin/python bench/scoring_cost.py [--weights model.pt] [--samples 8] [--repeats 2]

Scores a generated 240x240x155 study with the app's own scoring code (cpu profile: preparation, then
``samples`` passes of MC dropout and test-time flips, then the uncertainty aggregate), and times one
deterministic forward pass of the same network on the same prepared input. Prints both and writes
``bench/results/scoring_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "apps" / "brats_label")]

from monai.transforms import Compose  # noqa: E402

from lib.activelearning.scores import ScoreStore  # noqa: E402
from lib.activelearning.scoring import EpistemicScoring  # noqa: E402
from lib.config import PROFILES, ScoringSettings  # noqa: E402
from lib.infers.segmentation import preprocessing  # noqa: E402
from lib.model.network import build_network, load_network, sliding_window_inferer  # noqa: E402
from lib.studies.folder_datastore import StudyFolderDatastore  # noqa: E402
from synthetic.__main__ import main as generate  # noqa: E402

RESULTS = REPO / "bench" / "results" / "scoring_cost.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=None, help="cpu-profile weights (else freshly initialised)")
    parser.add_argument("--samples", type=int, default=ScoringSettings.samples)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    profile = PROFILES["cpu"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        generate(["--out", str(work / "s"), "--cases", "1", "--labelled", "0", "--seed", "2026", "--spacing", "1", "--workers", "1"])
        uri = StudyFolderDatastore(work / "s", work / "ws").get_image_uri("BraTS-GLI-00000-000")
        weights = args.weights or work / "fresh.pt"
        if args.weights is None:
            torch.manual_seed(0)
            torch.save(build_network(profile).state_dict(), weights)
        network = load_network(profile, weights, torch.device("cpu"))
        scoring = EpistemicScoring(profile, lambda: str(weights), ScoreStore(work / "scores"), ScoringSettings(samples=args.samples))
        scoring.score_case(uri, network, generator_seed=0)  # warm-up
        case_times = []
        for i in range(args.repeats):
            start = time.perf_counter()
            record = scoring.score_case(uri, network, generator_seed=i)
            case_times.append(time.perf_counter() - start)
        prepared = Compose(preprocessing(profile))({"image": uri})["image"].as_tensor()[None]
        inferer = sliding_window_inferer(profile)
        network.eval()
        with torch.no_grad():
            start = time.perf_counter()
            inferer(prepared, network)
            forward_s = time.perf_counter() - start
    result = {
        "samples": args.samples,
        "weights": str(args.weights) if args.weights else "freshly initialised",
        "seconds_per_case": statistics.median(case_times),
        "runs_s": case_times,
        "forward_pass_s": forward_s,
        "ratio_to_forward": statistics.median(case_times) / forward_s,
        "score": record["score"],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(
        f"scoring one 240x240x155 study, {args.samples} samples: {result['seconds_per_case']:.1f} s "
        f"({result['ratio_to_forward']:.1f}x one forward pass of {forward_s:.2f} s); written to {RESULTS}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
