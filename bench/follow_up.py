"""The follow-up pre-label against the segmentation model alone, on follow-up studies whose truth is known.

    .venv/bin/python bench/follow_up.py --weights model.pt [--patients 8] [--seed 4000] [--change-sd 0.5 1.0 1.5]

Each synthetic patient (``python -m synthetic --follow-ups 1``) has a baseline study with its label (what an expert
saved) and a follow-up three months later: the tumour grown or shrunk, the head repositioned, the images acquired
anew. On each follow-up three answers are scored against its truth (BraTS Dice per region, and per label), and the
volume change each measures (answer on the follow-up minus the baseline's label) against the true change, per label
and region, in mL and in per cent of the baseline's volume; the WT Dice is also given over the studies whose whole
tumour changed by at most ``SMALL_CHANGE`` (the issue's target: carried-over and merged labels at 0.90 or more and
above the model's):

- ``model``: the segmentation model's auto-segmentation (the served infer task, on the study's grid);
- ``prior``: the baseline's label registered onto the follow-up, nothing else;
- ``follow_up``: the rule of ``lib/followup/prior_label.py`` (the prior where the images did not change, the model
  where they did), for each ``--change-sd``.

Writes ``bench/results/follow_up/<name>.json`` (per study and means, paired differences against the model) and
prints a table. Choose ``change_sd`` on one seed's patients and report it on another's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "apps" / "brats_label")]

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bench.evaluate import items_of  # noqa: E402
from lib.config import BRATS_2023, PROFILES, FollowUpSettings  # noqa: E402
from lib.followup.prior_label import PriorStudy, carry_prior, merge_with_prior  # noqa: E402
from lib.infers.segmentation import BratsSegmentation  # noqa: E402
from lib.model.brats_metrics import brats_scores, label_dice, region_masks  # noqa: E402
from synthetic.__main__ import main as generate  # noqa: E402
from synthetic.follow_up import follow_up_name  # noqa: E402


def scores(prediction: np.ndarray, truth: np.ndarray, spacing) -> dict:
    regions = brats_scores(prediction, truth, spacing, BRATS_2023)
    out = {region: regions[region]["dice"] for region in ("et", "tc", "wt")}
    out["mean"] = round(float(np.mean(list(out.values()))), 4)
    out.update(label_dice(region_masks(prediction, BRATS_2023), region_masks(truth, BRATS_2023), BRATS_2023))
    return out


SMALL_CHANGE = 0.20  # a whole tumour whose volume changed by at most this fraction


def volumes(label: np.ndarray, spacing) -> dict:
    return BRATS_2023.volumes_ml(label, float(np.prod(spacing)) / 1000.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--patients", type=int, default=8)
    parser.add_argument("--seed", type=int, default=4000)
    parser.add_argument("--spacing", type=float, default=1.0)
    parser.add_argument("--change-sd", type=float, nargs="*", default=[FollowUpSettings().change_sd])
    parser.add_argument("--work", type=Path, default=None, help="keep the generated studies here (reused when present)")
    parser.add_argument("--name", default="follow_up")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="follow_up_"))
    studies, truth_dir = work / "studies", work / "truth"
    if not studies.is_dir():
        generate(
            ["--out", str(studies), "--cases", str(args.patients), "--follow-ups", "1", "--seed", str(args.seed), "--spacing", str(args.spacing), "--ground-truth", str(truth_dir)]
        )
    # the follow-ups' truth beside them, so that items_of stacks every study with its label
    for path in truth_dir.glob("*-seg.nii.gz"):
        target = studies / path.name.removesuffix("-seg.nii.gz") / path.name
        if not target.exists():
            target.write_bytes(path.read_bytes())
    task = BratsSegmentation(PROFILES["cpu"], args.weights, None)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        items = {item["id"]: item for item in items_of(studies, Path(scratch))}
        for index in tqdm(range(args.patients), desc="patients"):
            baseline, follow_up = items[follow_up_name(index, 0)], items[follow_up_name(index, 1)]
            current = nib.load(follow_up["image"])
            truth_image = nib.load(follow_up["label"])
            truth = np.asarray(truth_image.dataobj, dtype=np.uint8)
            spacing = truth_image.header.get_zooms()[:3]
            started = time.monotonic()
            label_file, _ = task({"image": follow_up["image"]})
            model_s = time.monotonic() - started
            model = np.asarray(nib.load(label_file).dataobj, dtype=np.uint8)
            prior = PriorStudy(baseline["id"], "", Path(baseline["image"]), Path(baseline["label"]), "")
            baseline_label = np.asarray(nib.load(baseline["label"]).dataobj, dtype=np.uint8)
            before, after = volumes(baseline_label, nib.load(baseline["label"]).header.get_zooms()[:3]), volumes(truth, spacing)
            row = {"study": follow_up["id"], "model": scores(model, truth, spacing), "model_s": round(model_s, 2)}
            row["true_change_ml"] = {k: round(after[k] - before[k], 3) for k in after}
            row["baseline_ml"] = before
            row["wt_change"] = round((after["WT"] - before["WT"]) / before["WT"], 4) if before["WT"] > 0 else None
            measured = {"model": model}
            for change_sd in args.change_sd:
                started = time.monotonic()
                carried, changed, reach, record = carry_prior(current, prior, dataclasses.replace(FollowUpSettings(), change_sd=change_sd))
                merged = merge_with_prior(model, carried, changed, reach)
                row.setdefault("prior", scores(carried, truth, spacing))
                measured.setdefault("prior", carried)
                measured[f"follow_up@{change_sd:g}"] = merged
                row.setdefault("registration", record["registration"])
                row[f"follow_up@{change_sd:g}"] = {
                    **scores(merged, truth, spacing),
                    "changed_share": round(float(changed.mean()), 4),
                    "seconds": round(time.monotonic() - started, 2),
                }
            for answer, label in measured.items():  # the volume change each answer measures, against the true change
                got = volumes(label, spacing)
                row[answer]["change_error_ml"] = {k: round((got[k] - before[k]) - row["true_change_ml"][k], 3) for k in got}
            rows.append(row)
    answers = ["model", "prior", *(f"follow_up@{c:g}" for c in args.change_sd)]
    keys = ["mean", "wt", "tc", "et", "necrotic_core", "edema", "enhancing_tumour"]
    summary = {answer: {key: round(float(np.mean([row[answer][key] for row in rows])), 4) for key in keys} for answer in answers}
    small = [row for row in rows if row["wt_change"] is not None and abs(row["wt_change"]) <= SMALL_CHANGE]
    for answer in answers:
        errors = {k: [abs(row[answer]["change_error_ml"][k]) for row in rows] for k in rows[0][answer]["change_error_ml"]}
        relative = {k: [abs(row[answer]["change_error_ml"][k]) / row["baseline_ml"][k] for row in rows if row["baseline_ml"][k] > 0] for k in errors}
        summary[answer]["volume_change_error_ml"] = {k: round(float(np.mean(v)), 3) for k, v in errors.items()}
        summary[answer]["volume_change_error_of_baseline"] = {k: round(float(np.mean(v)), 4) for k, v in relative.items() if v}
        summary[answer]["wt_dice_small_change"] = round(float(np.mean([row[answer]["wt"] for row in small])), 4) if small else None
    summary["small_change_studies"] = len(small)
    for answer in answers[2:]:
        differences = np.array([row[answer]["mean"] - row["model"]["mean"] for row in rows])
        summary[answer]["against_model"] = {"mean_difference": round(float(differences.mean()), 4), "better_on": int((differences > 0).sum()), "of": len(rows)}
    out = REPO / "bench" / "results" / "follow_up"
    out.mkdir(parents=True, exist_ok=True)
    record = {"weights": str(args.weights), "patients": args.patients, "seed": args.seed, "spacing_mm": args.spacing, "summary": summary, "studies": rows}
    (out / f"{args.name}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"\n{args.patients} follow-up studies (seed {args.seed}); mean Dice")
    print(f"{'answer':18}" + "".join(f"{k:>16}" for k in keys))
    for answer in answers:
        print(
            f"{answer:18}"
            + "".join(f"{summary[answer][k]:>16.3f}" for k in keys)
            + (f"   vs model {summary[answer]['against_model']}" if "against_model" in summary[answer] else "")
        )
    print(f"\nwhole tumour changed by at most {SMALL_CHANGE:.0%}: {len(small)} studies; WT Dice " + ", ".join(f"{a} {summary[a]['wt_dice_small_change']}" for a in answers))
    print("volume change error, mean |measured - true| in mL (and in % of the baseline's volume):")
    for answer in answers:
        error, share = summary[answer]["volume_change_error_ml"], summary[answer]["volume_change_error_of_baseline"]
        print(f"{answer:18}" + "".join(f"  {k} {error[k]:.2f} ({100 * share.get(k, float('nan')):.1f} %)" for k in ("WT", "TC", "enhancing_tumour")))
    print(f"\n{out / (args.name + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
