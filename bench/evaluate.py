"""A model scored on a folder of labelled studies, as BraTS scores it: tables, and a picture of each study's worst slices.

    .venv/bin/python bench/evaluate.py --weights model.pt --studies data/studies [--profile cpu] [--out bench/results/evaluate]

Every study of the folder with ground truth (BraTS or MSD layout) is segmented at the profile's resolution, as
validation does, and scored per region (ET, TC, WT): Dice, HD95 (mm), lesion-wise Dice and HD95 (BraTS 2023),
and per label (necrotic core, edema, enhancing tumour: Dice, predicted and true volumes in mL), which the nested
regions hide (a necrotic core called enhancing tumour leaves TC whole).
Writes ``scores.csv`` (one row per study and region), ``label_scores.csv`` (one row per study and label),
``summary.json`` (means, medians), prints the tables,
and ``<study>.png``: the three axial slices where prediction and reference disagree most, FLAIR underneath,
reference contours solid and prediction dashed (WT yellow, TC red, ET cyan).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "apps" / "brats_label")]

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from lib.config import BRATS_2023, CHANNELS, FOREGROUND_LABELS, PROFILES  # noqa: E402
from lib.labels.conventions import brats_convention, to_project_convention  # noqa: E402
from lib.labels.label_set import LabelSet  # noqa: E402
from lib.model.brats_metrics import label_dice, region_scores  # noqa: E402
from lib.studies.case_cache import stack_study_files  # noqa: E402
from lib.studies.folder_layout import find_studies  # noqa: E402
from lib.trainers.evaluation import SCORES, evaluation_transforms, predict_regions  # noqa: E402

REGIONS = ("et", "tc", "wt")
COLOURS = {"wt": "yellow", "tc": "red", "et": "cyan"}
WORST_SLICES = 3


def items_of(studies: Path, scratch: Path, label_set: LabelSet = BRATS_2023) -> list:
    """Each labelled study as one stacked image and a label in the project's convention, on disk for the transforms."""
    sources, problems = find_studies(studies)
    for problem in problems:
        print(f"skipped {problem.study_id}: {problem.reason}")
    items = []
    for source in sources:
        if source.ground_truth is None:
            continue
        stacked, affine, _ = stack_study_files(source)
        image, label = scratch / f"{source.study_id}_image.nii.gz", scratch / f"{source.study_id}_label.nii.gz"
        nib.save(nib.Nifti1Image(stacked, affine), str(image))
        truth = nib.load(str(source.ground_truth))
        raw = np.asanyarray(truth.dataobj)
        convention = "msd" if source.layout == "msd" else brats_convention(np.unique(raw), label_set)
        nib.save(nib.Nifti1Image(to_project_convention(raw, convention), truth.affine), str(label))
        items.append({"id": source.study_id, "image": str(image), "label": str(label)})
    return items


def worst_slices_png(case: str, image: np.ndarray, predicted: dict, expected: dict, path: Path) -> None:
    disagreement = sum((predicted[r] ^ expected[r]).sum(axis=(0, 1)) for r in REGIONS)
    slices = sorted(np.argsort(disagreement)[::-1][:WORST_SLICES].tolist())
    flair = image[CHANNELS.index("flair")]
    fig, axes = plt.subplots(1, len(slices), figsize=(4 * len(slices), 4.4), squeeze=False)
    for ax, z in zip(axes[0], slices):
        ax.imshow(flair[:, :, z].T, cmap="gray", origin="lower")
        for region in REGIONS:
            for mask, style in ((expected[region], "solid"), (predicted[region], "dashed")):
                if mask[:, :, z].any():
                    ax.contour(mask[:, :, z].T.astype(float), levels=[0.5], colors=COLOURS[region], linestyles=style, linewidths=1)
        ax.set_title(f"slice {z}: {int(disagreement[z])} voxels differ")
        ax.axis("off")
    fig.suptitle(f"{case}: reference solid, prediction dashed (WT yellow, TC red, ET cyan)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--studies", type=Path, required=True)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "evaluate")
    args = parser.parse_args()
    profile = PROFILES[args.profile]
    args.out.mkdir(parents=True, exist_ok=True)
    rows, label_rows = [], []
    voxel_ml = float(np.prod(profile.spacing_mm)) / 1000.0
    with tempfile.TemporaryDirectory() as scratch:
        items = items_of(args.studies, Path(scratch))
        if not items:
            print(f"no study with ground truth in {args.studies}")
            return 1
        for case, image, predicted, expected in tqdm(predict_regions(profile, args.weights, items, evaluation_transforms(profile)), total=len(items), desc="studies"):
            scores = region_scores(predicted, expected, profile.spacing_mm)
            rows += [{"study": case, "region": r.upper(), **scores[r]} for r in REGIONS]
            dices, ours, theirs = label_dice(predicted, expected, BRATS_2023), BRATS_2023.label_masks(predicted), BRATS_2023.label_masks(expected)
            label_rows += [
                {
                    "study": case,
                    "label": name,
                    "dice": dices[name],
                    "predicted_ml": round(float(ours[name].sum()) * voxel_ml, 2),
                    "true_ml": round(float(theirs[name].sum()) * voxel_ml, 2),
                }
                for name in FOREGROUND_LABELS
            ]
            worst_slices_png(case, image, predicted, expected, args.out / f"{case}.png")
    for name, table in (("scores.csv", rows), ("label_scores.csv", label_rows)):
        with open(args.out / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
    summary = {
        r.upper(): {
            s: {"mean": round(float(np.mean(values)), 4), "median": round(float(np.median(values)), 4)}
            for s in SCORES
            for values in [[row[s] for row in rows if row["region"] == r.upper()]]
        }
        for r in REGIONS
    }
    labels = {
        name: {key: round(float(np.mean([row[key] for row in label_rows if row["label"] == name])), 4) for key in ("dice", "predicted_ml", "true_ml")} for name in FOREGROUND_LABELS
    }
    record = {"weights": str(args.weights), "profile": args.profile, "studies": len(items), "scores": summary, "labels": labels}
    (args.out / "summary.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"\n{len(items)} studies, {args.profile} profile ({profile.spacing_mm[0]:g} mm); mean (median)")
    print(f"{'region':7}" + "".join(f"{s:>22}" for s in SCORES))
    for r in REGIONS:
        print(f"{r.upper():7}" + "".join(f"{summary[r.upper()][s]['mean']:>13.3f} ({summary[r.upper()][s]['median']:.3f})" for s in SCORES))
    print(f"\n{'label':18}{'dice':>8}{'predicted mL':>15}{'true mL':>10}  (means)")
    for name, values in labels.items():
        print(f"{name:18}{values['dice']:>8.3f}{values['predicted_ml']:>15.2f}{values['true_ml']:>10.2f}")
    print(f"\nper study: {args.out / 'scores.csv'}, {args.out / 'label_scores.csv'}; pictures: {args.out}/<study>.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
