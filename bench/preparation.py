"""Preparation of raw studies (lib/preparation/), scored against known truth, and what it does to the pre-label.

    .venv/bin/python bench/preparation.py [--studies 4] [--seed 2026] [--weights model.pt] [--out bench/results/preparation]

Each study is a whole head written as a scanner writes it (synthetic/head.py: 1 mm axial T1c, 5 mm axial T1,
4 mm axial T2, 1.2 mm sagittal FLAIR, the patient moved 3-6 degrees and 3-6 mm before each series, bias fields,
enhancing dura). Its brain comes from the MNI ICBM152 template (nilearn); the brain extraction registers a
different head, the SRI24 atlas, so the method is scored on heads it was not built from. Per study:

- registration error per series: mean distance (mm) between where the found and the true motion put the
  brain's voxels;
- brain-mask Dice against the known mask, and the mask's volume error;
- preparation time (2 cores: the machine's);
- with ``--weights``: the pre-label's Dice per region on the prepared raw study and on the same study as BraTS
  delivers it (skull-stripped, one grid), each against the truth, their WT ratio, and the predicted tumour
  outside the true brain (mL).

Prints a table and writes ``summary.json``, ``studies.csv`` and a picture per study (``<study>.png``) into ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "apps" / "brats_label")]

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from lib.config import CHANNELS, PREPARATION, PROFILES  # noqa: E402
from lib.model.brats_metrics import region_scores  # noqa: E402
from lib.preparation.pipeline import prepare_study  # noqa: E402
from lib.trainers.evaluation import evaluation_transforms, predict_regions  # noqa: E402
from synthetic.head import generate_raw_study  # noqa: E402

REGIONS = ("wt", "tc", "et")
BRAIN_POINTS_EVERY = 200  # every n-th brain voxel is a point the registration error is measured at


def registration_error_mm(found: np.ndarray, truth: np.ndarray, points: np.ndarray) -> float:
    """Mean distance (mm) between where two 4x4 RAS transforms put the same (N, 3) points."""
    a = points @ found[:3, :3].T + found[:3, 3]
    b = points @ truth[:3, :3].T + truth[:3, 3]
    return float(np.linalg.norm(a - b, axis=1).mean())


def picture(raw, prepared, path: Path) -> None:
    """Axial slice through the tumour: each series placed by its header alone (what the server did before) above
    the prepared input, the extracted brain's outline in yellow and the true tumour's in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nibabel.processing import resample_from_to

    reference = raw.series["t1c"]
    z = int(np.argmax((raw.label > 0).sum(axis=(0, 1))))
    header_only = {
        c: np.asarray(resample_from_to(nib.Nifti1Image(v.astype(np.float32), a), (reference[0].shape, reference[1]), order=1).dataobj) for c, (v, a) in raw.series.items()
    }
    fig, axes = plt.subplots(2, 4, figsize=(16, 8.6))
    for column, channel in enumerate(CHANNELS):
        for row, volume in enumerate((header_only[channel], prepared.channels[column])):
            ax = axes[row, column]
            ax.imshow(volume[:, :, z].T, cmap="gray", origin="lower")
            if row == 1 and prepared.brain is not None:
                ax.contour(prepared.brain[:, :, z].T.astype(float), levels=[0.5], colors="yellow", linewidths=0.8)
            ax.contour((raw.label[:, :, z] > 0).T.astype(float), levels=[0.5], colors="red", linewidths=0.8)
            ax.set_title(f"{channel.upper()}: {'placed by its header' if row == 0 else 'prepared'}")
            ax.axis("off")
    fig.suptitle(f"{raw.case_id}: raw series (top) and the prepared input (bottom); brain mask yellow, true tumour red")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def score_study(seed: int, index: int, weights: Path | None, scratch: Path, out: Path) -> dict:
    raw = generate_raw_study(seed, index, case_id=f"Head-{index:05d}")
    reference = raw.series["t1c"]
    points = np.argwhere(raw.brain)[::BRAIN_POINTS_EVERY].astype(float)
    points = points @ reference[1][:3, :3].T + reference[1][:3, 3]
    started = time.monotonic()
    prepared = prepare_study(raw.series, PREPARATION)
    seconds = time.monotonic() - started
    row: dict = {"study": raw.case_id, "prepare_s": round(seconds, 1)}
    picture(raw, prepared, out / f"{raw.case_id}.png")
    for channel in ("t1", "t2", "flair"):
        row[f"reg_error_mm_{channel}"] = round(registration_error_mm(prepared.transforms[channel], raw.motion[channel], points), 3)
        row[f"motion_deg_{channel}"] = round(float(np.degrees(np.arccos(np.clip((np.trace(raw.motion[channel][:3, :3]) - 1) / 2, -1, 1)))), 2)
    brain = prepared.brain if prepared.brain is not None else np.zeros_like(raw.brain)
    row["brain_dice"] = round(float(2 * (brain & raw.brain).sum() / (brain.sum() + raw.brain.sum())), 4)
    row["brain_ml_error_pct"] = round(float(100 * (brain.sum() - raw.brain.sum()) / raw.brain.sum()), 2)
    row["tumour_cut_ml"] = round(float(((raw.label > 0) & ~brain).sum()) / 1000, 2)
    if weights is not None:
        row.update(prelabel_scores(raw, prepared, weights, scratch))
    return row


def prelabel_scores(raw, prepared, weights: Path, scratch: Path) -> dict:
    """Dice per region of the pre-label on the prepared raw study and on its BraTS-prepared twin, each against the
    truth; and the predicted tumour outside the true brain (the brain mask goes through the same transforms as a
    label, so it lands on the prediction's grid exactly)."""
    profile = PROFILES["cpu"]
    files = {}
    stacked = np.stack(prepared.channels, axis=-1).astype(np.float32)
    clean = np.stack([raw.clean.images[c] for c in CHANNELS], axis=-1)
    for name, image, label, affine in (
        ("raw", stacked, raw.label, prepared.affine),
        ("clean", clean, raw.clean.label, raw.clean.affine),
        ("raw_brain", stacked, raw.brain.astype(np.uint8), prepared.affine),
    ):
        image_path, label_path = scratch / f"{raw.case_id}_{name}_image.nii.gz", scratch / f"{raw.case_id}_{name}_label.nii.gz"
        nib.save(nib.Nifti1Image(image, affine), str(image_path))
        nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), str(label_path))
        files[name] = {"id": name, "image": str(image_path), "label": str(label_path)}
    results = {case: (predicted, expected) for case, _, predicted, expected in predict_regions(profile, weights, list(files.values()), evaluation_transforms(profile))}
    row = {}
    for name in ("raw", "clean"):
        scores = region_scores(results[name][0], results[name][1], profile.spacing_mm)
        for region in REGIONS:
            row[f"{name}_dice_{region}"] = round(float(scores[region]["dice"]), 4)
    voxel_ml = float(np.prod(profile.spacing_mm)) / 1000
    predicted_wt, true_brain = results["raw"][0]["wt"], results["raw_brain"][1]["wt"]
    row["label_outside_brain_ml"] = round(float((predicted_wt & ~true_brain).sum()) * voxel_ml, 2)
    row["wt_ratio_raw_to_clean"] = round(row["raw_dice_wt"] / max(row["clean_dice_wt"], 1e-6), 3)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=4)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--weights", type=Path, default=None, help="a cpu-profile model (the demo's: data/model or the workspace's model.pt)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "preparation")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for index in tqdm(range(args.studies), desc="raw studies", unit="study"):
            rows.append(score_study(args.seed, index, args.weights, Path(scratch), args.out))
    with open(args.out / "studies.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    numeric = [k for k in rows[0] if k != "study"]
    summary = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "studies": len(rows),
        "seed": args.seed,
        "weights": str(args.weights) if args.weights else None,
        "mean": {k: round(float(np.mean([r[k] for r in rows])), 4) for k in numeric},
        "worst": {k: round(float(max(r[k] for r in rows) if ("error" in k or k.endswith("_s") or "ml" in k) else min(r[k] for r in rows)), 4) for k in numeric},
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{len(rows)} raw studies (seed {args.seed}); mean, and worst study")
    for key in numeric:
        print(f"  {key:28} {summary['mean'][key]:>9.3f}   {summary['worst'][key]:>9.3f}")
    print(f"\nper study: {args.out / 'studies.csv'}; summary: {args.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
