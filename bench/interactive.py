"""The robot user: how many actions an annotator needs to correct a pre-label, on studies the model never saw.

    .venv/bin/python bench/interactive.py --weights model.pt --studies DIR [--actions 20] [--brush-mm 5] [--out DIR]

The protocol of interactive-segmentation papers: from the pre-label, a simulated annotator corrects one region at a
time (WT, then TC, then ET); each action corrects that region's largest error at its innermost voxel
(``lib/interactive/simulated_clicks.next_click``), saying what the voxel truly is, until the region reaches its
target Dice (``CORRECTION_TARGET_DICE``: WT 0.90, TC 0.85, ET 0.80) or the actions run out. Everything happens on the
network's grid (the profile's spacing). The action here is a brush stroke: a disc of ``--brush-mm`` radius on the
axial slice through that voxel, painted with the true label there; it is the baseline that clicks on the refinement
model (issue 21, not trained yet) must beat by 5 times. Reports per region: actions to the target (a study that never
gets there counts as ``--actions``), Dice after 0, 1, 3, 5 and 10 actions; writes ``<out>/brush.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "apps" / "brats_label")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bench.evaluate import items_of  # noqa: E402
from lib.config import CORRECTION_TARGET_DICE, LABELS, PROFILES, REGIONS  # noqa: E402
from lib.interactive.simulated_clicks import next_click  # noqa: E402
from lib.model.brats_metrics import dice as region_dice  # noqa: E402
from lib.model.transforms import RegionsToLabeld  # noqa: E402
from lib.trainers.evaluation import evaluation_transforms, predict_regions  # noqa: E402

REPORTED_AFTER = (0, 1, 3, 5, 10)


def label_map(regions: Dict[str, np.ndarray]) -> np.ndarray:
    """Region masks (tc, wt, et) as one label map, as inference makes it (``RegionsToLabeld``)."""
    stacked = torch.as_tensor(np.stack([regions[name.lower()] for name in REGIONS]))
    return RegionsToLabeld(keys="pred")({"pred": stacked})["pred"][0].numpy()


def dice(truth: np.ndarray, labels: np.ndarray, region: str) -> float:
    return region_dice(np.isin(labels, REGIONS[region]), np.isin(truth, REGIONS[region]))


def brush_stroke(labels: np.ndarray, at: tuple, value: int, radius_mm: float, spacing_mm: np.ndarray) -> np.ndarray:
    """A disc painted on the axial slice through ``at``: every voxel in it takes ``value``, as a brush does."""
    i, j = np.ogrid[: labels.shape[0], : labels.shape[1]]
    disc = ((i - at[0]) * spacing_mm[0]) ** 2 + ((j - at[1]) * spacing_mm[1]) ** 2 <= radius_mm**2
    painted = labels.copy()
    painted[:, :, at[2]][disc] = value
    return painted


def correct_with_brush(truth: np.ndarray, labels: np.ndarray, actions: int, radius_mm: float, spacing_mm: np.ndarray) -> Dict[str, List[float]]:
    """Dice of each region after each action, the regions corrected in turn; a region at its target takes none."""
    curves: Dict[str, List[float]] = {}
    for region in CORRECTION_TARGET_DICE:
        curve = [dice(truth, labels, region)]
        for _ in range(actions):
            if curve[-1] >= CORRECTION_TARGET_DICE[region]:
                break
            click = next_click(truth, labels, region, spacing_mm)
            if click is None:
                break
            name, at = click
            labels = brush_stroke(labels, at, LABELS[name], radius_mm, spacing_mm)
            curve.append(dice(truth, labels, region))
        curves[region] = curve
    return curves


def summarise(curves: List[Dict[str, List[float]]], actions: int) -> Dict[str, Dict[str, float]]:
    out: Dict[str, Dict[str, float]] = {}
    for region, target in CORRECTION_TARGET_DICE.items():
        per_study = [c[region] for c in curves]
        reached = [next((n for n, d in enumerate(curve) if d >= target), actions) for curve in per_study]
        row = {"actions_to_target": round(float(np.mean(reached)), 2), "reached": sum(any(d >= target for d in curve) for curve in per_study)}
        for k in REPORTED_AFTER:
            row[f"dice_after_{k}"] = round(float(np.mean([curve[min(k, len(curve) - 1)] for curve in per_study])), 4)
        out[region] = row
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True, help="segmentation weights that make the pre-label")
    parser.add_argument("--studies", type=Path, required=True, help="labelled studies the model did not learn from")
    parser.add_argument("--profile", default="cpu", choices=sorted(PROFILES))
    parser.add_argument("--actions", type=int, default=20)
    parser.add_argument("--brush-mm", type=float, default=5.0, help="brush radius")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "interactive")
    args = parser.parse_args()
    profile = PROFILES[args.profile]
    spacing = np.asarray(profile.spacing_mm, dtype=float)
    curves = []
    with tempfile.TemporaryDirectory() as scratch:
        items = items_of(args.studies, Path(scratch))
        predictions = predict_regions(profile, args.weights, items, evaluation_transforms(profile))
        for _, _, predicted, expected in tqdm(predictions, total=len(items), desc="brush strokes", unit="study"):
            curves.append(correct_with_brush(label_map(expected), label_map(predicted), args.actions, args.brush_mm, spacing))
    summary = {
        "weights": str(args.weights),
        "studies_folder": str(args.studies),
        "studies": len(curves),
        "actions": args.actions,
        "brush_mm": args.brush_mm,
        "profile": profile.name,
        "brush": summarise(curves, args.actions),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "brush.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{'region':6} {'strokes to target':>18} {'reached':>8} " + " ".join(f"{'after ' + str(k):>9}" for k in REPORTED_AFTER))
    for region, row in summary["brush"].items():
        print(f"{region:6} {row['actions_to_target']:>18} {row['reached']:>5}/{len(curves):<2} " + " ".join(f"{row[f'dice_after_{k}']:>9.3f}" for k in REPORTED_AFTER))
    return 0


if __name__ == "__main__":
    sys.exit(main())
