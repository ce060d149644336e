"""The robot user's curves: whole-tumour Dice after each action, clicks against brush strokes, as a picture.

    .venv/bin/python bench/click_curves.py --out bench/results/interactive/curves.png NAME=RESULT.json [NAME=RESULT.json ...]

Each ``RESULT.json`` is a file written by ``bench/interactive.py``; its clicks are drawn under ``NAME``, and the brush
strokes of the first file as the baseline. A study's curve stops where it reached its target (the robot turns to
the next region), so it is carried at its last value to average over studies. Left: every study; right: those whose
pre-label (the segmentation model's, which the brush strokes start from) has a WT Dice below ``WEAK_PRELABEL``, the
same studies on every curve.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

WEAK_PRELABEL = 0.85  # as bench/interactive.py splits the studies
TARGET_WT = 0.90


def mean_curve(per_study: Dict[str, Dict[str, List[float]]], actions: int, studies: Sequence[str]) -> np.ndarray:
    """Mean WT Dice after 0..actions actions over ``studies``."""
    curves = []
    for study in studies:
        wt = per_study[study]["WT"]
        curves.append(wt + [wt[-1]] * (actions + 1 - len(wt)))
    return np.mean(curves, axis=0) if curves else np.full(actions + 1, np.nan)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="NAME=RESULT.json, as bench/interactive.py writes them")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(name, json.loads(Path(path).read_text())) for name, path in (item.split("=", 1) for item in args.results)]
    actions = int(runs[0][1]["actions"])
    steps = np.arange(actions + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    brush = runs[0][1]["brush_per_study"]
    for ax, weak in zip(axes, (False, True)):
        studies = [study for study, regions in brush.items() if not weak or regions["WT"][0] < WEAK_PRELABEL]
        ax.plot(steps, mean_curve(brush, actions, studies), color="grey", linestyle="--", label="brush strokes (5 mm disc)")
        for name, run in runs:
            ax.plot(steps, mean_curve(run["clicks_per_study"], actions, studies), marker="o", markersize=3, label=f"clicks: {name}")
        ax.axhline(TARGET_WT, color="black", linewidth=0.8, alpha=0.5)
        ax.set_xlabel("actions")
        ax.set_title(f"{'weak pre-labels (WT < 0.85)' if weak else 'all studies'}: {len(studies)}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("whole tumour Dice (mean)")
    axes[0].legend(fontsize=8)
    fig.suptitle(args.title)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
