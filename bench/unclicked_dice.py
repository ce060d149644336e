"""Whether the refinement model's answer to no clicks is as good as the segmentation model's, over many studies.

    .venv/bin/python bench/unclicked_dice.py RESULT.json [RESULT.json ...]

Reads ``bench/interactive.py`` results: on every study, the brush robot starts from the segmentation model's
pre-label and the click robot from the refinement model's answer to no clicks, so the first entry of each curve
(``brush_per_study``, ``clicks_per_study``) is the pair to compare. Eight held-out studies tell a difference of 0.01
from noise badly (issue 21's target: within 0.01 per region); this pools every result file given, one study once
(the first file that has it), and prints per region the mean paired difference (refinement minus segmentation) with
its 95 % confidence interval and how many studies lost more than 0.01. Writes ``bench/results/unclicked_dice.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
REGIONS = ("WT", "TC", "ET")
TOLERANCE = 0.01  # issue 21: the refinement model with no clicks within 0.01 of the segmentation model


def paired_differences(paths: List[Path]) -> Dict[str, Dict[str, float]]:
    """{region: {mean, ci95_low, ci95_high, studies, worse_by_more_than_tolerance}} over the studies of ``paths``."""
    seen, differences = set(), {region: [] for region in REGIONS}
    for path in paths:
        result = json.loads(path.read_text())
        for study, brush in result["brush_per_study"].items():
            key = (result.get("studies_folder"), study)
            if key in seen or study not in result["clicks_per_study"]:
                continue
            seen.add(key)
            for region in REGIONS:
                differences[region].append(result["clicks_per_study"][study][region][0] - brush[region][0])
    summary = {}
    for region, values in differences.items():
        mean = statistics.fmean(values)
        half = 1.96 * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
        summary[region] = {
            "mean": round(mean, 4),
            "ci95_low": round(mean - half, 4),
            "ci95_high": round(mean + half, 4),
            "studies": len(values),
            "worse_by_more_than_tolerance": sum(value < -TOLERANCE for value in values),
        }
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", type=Path, nargs="+", help="bench/interactive.py result files")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "unclicked_dice.json")
    args = parser.parse_args()
    summary = paired_differences(args.results)
    print("refinement (no clicks) minus segmentation model, Dice per study:")
    for region, row in summary.items():
        print(
            f"  {region}: {row['mean']:+.4f} (95 % CI {row['ci95_low']:+.4f} to {row['ci95_high']:+.4f}), {row['studies']} studies, {row['worse_by_more_than_tolerance']} worse by more than {TOLERANCE}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"results": [str(p) for p in args.results], "tolerance": TOLERANCE, "regions": summary}, indent=2) + "\n")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
