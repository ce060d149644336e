"""The follow-up pre-label against the segmentation model alone, on follow-up studies whose truth is known.

    .venv/bin/python bench/follow_up.py --weights model.pt [--patients 8] [--seed 4000] [--change-sd 0.5 1.0 1.5]
    .venv/bin/python bench/follow_up.py --weights post_model.pt --surgery ...   (surgery between the two studies)
    .venv/bin/python bench/follow_up.py --weights post_model.pt --labels brats2024_post ...   (two post-operative)

Each synthetic patient has a baseline study with its label (what an expert saved) and a follow-up study, whose truth
is known; three kinds of pairs:

- pre-operative (the default; ``python -m synthetic --follow-ups 1``): the follow-up three months later, the tumour
  grown or shrunk, the head repositioned, the images acquired anew;
- ``--surgery``: the baseline before the operation and the follow-up after it (``synthetic/post_treatment.py``
  visit 2: a resection cavity where the core was, an enhancing rim, less edema, the head repositioned), scored in
  BraTS 2024's post-treatment set (a pre-operative label's values 1, 2, 3 are that set's NETC, SNFH, ET), with a
  model of that set (``bench/first_model.py --labels brats2024_post`` makes one);
- ``--labels brats2024_post``: two post-operative scans (visits 1 and 2), the residual tumour and FLAIR
  hyperintensity grown or shrunk, the cavity filling.

On each follow-up three answers are scored against its truth (BraTS Dice per region, and per label), and the
volume change each measures (answer on the follow-up minus the baseline's label) against the true change, per label
and region, in mL and in per cent of the baseline's volume; the WT Dice is also given over the studies whose whole
tumour changed by at most ``SMALL_CHANGE`` (the issue's target: carried-over and merged labels at 0.90 or more and
above the model's):

- ``model``: the segmentation model's auto-segmentation (the served infer task, on the study's grid);
- ``prior``: the baseline's label registered onto the follow-up, nothing else;
- ``follow_up``: the rule of ``lib/followup/prior_label.py`` (the prior where the images did not change, the model
  where they did), for each ``--change-sd``;
- with ``--deformable 0 1``, the prior and the rule with a deformable stage after the rigid one (``+deformable``);
  ``--brain-shift MM`` settles each follow-up's brain towards its lesion by up to MM (``synthetic/brain_shift.py``),
  as after surgery.

The volume change is also measured by the model alone on both studies (``model_on_both``: its volumes on the
follow-up minus its volumes on the baseline), against the same true change: a model that misses the same share of a
tumour on both scans still measures its change.

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
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bench.evaluate import items_of  # noqa: E402
from lib.config import DEFAULT_LABEL_SET, LABEL_SETS, PROFILES, REGION_THRESHOLD, FollowUpSettings  # noqa: E402
from lib.followup.prior_label import PriorStudy, carry_prior, merge_with_prior  # noqa: E402
from lib.infers.segmentation import BratsSegmentation  # noqa: E402
from lib.labels.label_set import LabelSet  # noqa: E402
from lib.model.brats_metrics import brats_scores, label_dice, region_masks  # noqa: E402
from synthetic.brain_shift import shift_towards_lesion  # noqa: E402
from synthetic.follow_up import follow_up_name, generate_follow_up, patients_table  # noqa: E402
from synthetic.layouts import write_study  # noqa: E402
from synthetic.post_treatment import generate_post_treatment  # noqa: E402
from synthetic.study import generate_study  # noqa: E402


def scores(prediction: np.ndarray, truth: np.ndarray, spacing, label_set: LabelSet) -> dict:
    regions = brats_scores(prediction, truth, spacing, label_set)
    out = {region: regions[region]["dice"] for region in region_names(label_set)}
    out["mean"] = round(float(np.mean(list(out.values()))), 4)
    out.update(label_dice(region_masks(prediction, label_set), region_masks(truth, label_set), label_set))
    return out


def region_names(label_set: LabelSet) -> list:
    return [region.name.lower() for region in label_set.regions]


MODEL_ON_BOTH = "model_on_both"  # a change measure only: the model's volumes on the follow-up minus on the baseline
# A change measure only: the follow-up's truth as a perfect model on the network's grid would give it (each region's
# share of every coarse voxel as its probability, restored to the study's grid and thresholded as served answers are):
# an estimate of the error the profile's grid alone makes.
GRID_FLOOR = "truth_on_network_grid"
SMALL_CHANGE = 0.20  # a whole tumour whose volume changed by at most this fraction


def on_network_grid(label: np.ndarray, spacing, network_spacing, label_set: LabelSet) -> np.ndarray:
    """``label`` as a perfect model working at ``network_spacing`` would answer it (``GRID_FLOOR``): each region's
    mean over a coarse voxel, restored trilinearly and thresholded, nested as answers are. An estimate of what the grid
    costs, not a bound: the served grid is cropped and resampled in world space (another phase), and a model could
    call a thin rim at more than its share to keep its volume."""
    factors = [int(round(n / s)) for n, s in zip(network_spacing, spacing)]
    if any(f < 2 or abs(n / s - f) > 1e-3 for f, n, s in zip(factors, network_spacing, spacing)):
        raise ValueError(f"the network's grid ({network_spacing} mm) is not a whole multiple of the study's ({spacing} mm)")
    regions = torch.as_tensor(label_set.to_regions(label), dtype=torch.float32)[None]
    shape = regions.shape[2:]
    padded = torch.nn.functional.pad(regions, [p for n, f in zip(reversed(shape), reversed(factors)) for p in (0, (-n) % f)])
    coarse = torch.nn.functional.avg_pool3d(padded, factors)
    restored = torch.nn.functional.interpolate(coarse, size=padded.shape[2:], mode="trilinear", align_corners=False)
    return np.asarray(label_set.to_label(restored[0, :, : shape[0], : shape[1], : shape[2]] > REGION_THRESHOLD), dtype=np.uint8)


def volumes(label: np.ndarray, spacing, label_set: LabelSet) -> dict:
    return label_set.volumes_ml(label, float(np.prod(spacing)) / 1000.0)


def visits(args: argparse.Namespace) -> tuple:
    """The (baseline, follow-up) visit numbers of each patient's pair, as the generator names them."""
    if args.surgery:
        return 0, 2  # before the operation; the second post-operative scan (repositioned, as follow-ups are)
    return (1, 2) if args.labels != DEFAULT_LABEL_SET else (0, 1)


def generate_pairs(args: argparse.Namespace, studies: Path, truth_dir: Path) -> None:
    """Each patient's baseline (labelled) in ``studies`` and follow-up there too, its truth in ``truth_dir``; with
    ``--brain-shift``, the follow-up's brain settled towards its lesion (``synthetic/brain_shift.py``)."""
    truth_dir.mkdir(parents=True, exist_ok=True)
    before, after = visits(args)
    for index in tqdm(range(args.patients), desc="pairs"):
        if args.surgery:
            baseline, follow_up = (
                generate_study(args.seed, index, args.spacing, case_id=follow_up_name(index, before)),
                generate_post_treatment(args.seed, index, after, args.spacing),
            )
        elif args.labels != DEFAULT_LABEL_SET:
            baseline, follow_up = generate_post_treatment(args.seed, index, before, args.spacing), generate_post_treatment(args.seed, index, after, args.spacing)
        else:
            baseline, follow_up = generate_follow_up(args.seed, index, before, args.spacing), generate_follow_up(args.seed, index, after, args.spacing)
        write_study(baseline, studies, "brats2023", True)
        write_study(shift_towards_lesion(follow_up, args.brain_shift), studies, "brats2023", False, truth_dir)
    (studies / "patients.csv").write_text(patients_table([(index, visit) for index in range(args.patients) for visit in (before, after)]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--patients", type=int, default=8)
    parser.add_argument("--seed", type=int, default=4000)
    parser.add_argument("--spacing", type=float, default=1.0)
    parser.add_argument("--change-sd", type=float, nargs="*", default=[FollowUpSettings().change_sd])
    parser.add_argument("--work", type=Path, default=None, help="keep the generated studies here (reused when present)")
    parser.add_argument("--name", default="follow_up")
    parser.add_argument("--labels", choices=sorted(LABEL_SETS), default=DEFAULT_LABEL_SET, help="brats2024_post: two post-operative scans")
    parser.add_argument("--surgery", action="store_true", help="a pre-operative baseline, a post-operative follow-up (brats2024_post)")
    parser.add_argument("--brain-shift", type=float, default=0.0, help="the follow-up's brain settled towards its lesion by up to this many mm")
    parser.add_argument("--deformable", type=int, nargs="*", default=[int(FollowUpSettings().deformable)], help="1: a deformable stage after the rigid one; 0: rigid only")
    args = parser.parse_args()
    if args.surgery:
        args.labels = "brats2024_post"  # the follow-up has a cavity: only the post-treatment set can say so
    label_set = LABEL_SETS[args.labels]
    work = args.work or Path(tempfile.mkdtemp(prefix="follow_up_"))
    studies, truth_dir = work / "studies", work / "truth"
    if not studies.is_dir():
        generate_pairs(args, studies, truth_dir)
    # the follow-ups' truth beside them, so that items_of stacks every study with its label
    for path in truth_dir.glob("*-seg.nii.gz"):
        target = studies / path.name.removesuffix("-seg.nii.gz") / path.name
        if not target.exists():
            target.write_bytes(path.read_bytes())
    task = BratsSegmentation(dataclasses.replace(PROFILES["cpu"], label_set=label_set), args.weights, None)
    before_visit, after_visit = visits(args)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        items = {item["id"]: item for item in items_of(studies, Path(scratch), label_set)}
        for index in tqdm(range(args.patients), desc="patients"):
            baseline, follow_up = items[follow_up_name(index, before_visit)], items[follow_up_name(index, after_visit)]
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
            before, after = volumes(baseline_label, nib.load(baseline["label"]).header.get_zooms()[:3], label_set), volumes(truth, spacing, label_set)
            row = {"study": follow_up["id"], "model": scores(model, truth, spacing, label_set), "model_s": round(model_s, 2)}
            row["true_change_ml"] = {k: round(after[k] - before[k], 3) for k in after}
            row["baseline_ml"] = before
            row["wt_change"] = round((after["WT"] - before["WT"]) / before["WT"], 4) if before["WT"] > 0 else None
            measured = {"model": model}
            # the change as the model measures it on both studies, where a bias the two answers share would cancel
            baseline_model = np.asarray(nib.load(task({"image": baseline["image"]})[0]).dataobj, dtype=np.uint8)
            by_model = volumes(baseline_model, nib.load(baseline["label"]).header.get_zooms()[:3], label_set)
            for deformable in args.deformable:
                suffix = "+deformable" if deformable else ""
                for change_sd in args.change_sd:
                    started = time.monotonic()
                    settings = dataclasses.replace(FollowUpSettings(), change_sd=change_sd, deformable=bool(deformable))
                    carried, changed, reach, record = carry_prior(current, prior, settings)
                    merged = merge_with_prior(model, carried, changed, reach)
                    row.setdefault(f"prior{suffix}", scores(carried, truth, spacing, label_set))
                    measured.setdefault(f"prior{suffix}", carried)
                    measured[f"follow_up@{change_sd:g}{suffix}"] = merged
                    row.setdefault(f"registration{suffix}", record["registration"])
                    row[f"follow_up@{change_sd:g}{suffix}"] = {
                        **scores(merged, truth, spacing, label_set),
                        "changed_share": round(float(changed.mean()), 4),
                        "seconds": round(time.monotonic() - started, 2),
                    }
            for answer, label in measured.items():  # the volume change each answer measures, against the true change
                got = volumes(label, spacing, label_set)
                row[answer]["change_error_ml"] = {k: round((got[k] - before[k]) - row["true_change_ml"][k], 3) for k in got}
            got = volumes(model, spacing, label_set)
            row[MODEL_ON_BOTH] = {"change_error_ml": {k: round((got[k] - by_model[k]) - row["true_change_ml"][k], 3) for k in got}}
            floor = volumes(on_network_grid(truth, spacing, task.profile.spacing_mm, label_set), spacing, label_set)
            row[GRID_FLOOR] = {"change_error_ml": {k: round((floor[k] - before[k]) - row["true_change_ml"][k], 3) for k in floor}}
            rows.append(row)
    suffixes = ["+deformable" if deformable else "" for deformable in args.deformable]
    priors = [f"prior{suffix}" for suffix in suffixes]
    answers = ["model", *priors, *(f"follow_up@{c:g}{suffix}" for suffix in suffixes for c in args.change_sd)]
    keys = ["mean", *region_names(label_set), *label_set.foreground]
    summary = {answer: {key: round(float(np.mean([row[answer][key] for row in rows])), 4) for key in keys} for answer in answers}
    small = [row for row in rows if row["wt_change"] is not None and abs(row["wt_change"]) <= SMALL_CHANGE]
    summary[MODEL_ON_BOTH] = {}
    summary[GRID_FLOOR] = {}
    for answer in [*answers, MODEL_ON_BOTH, GRID_FLOOR]:
        errors = {k: [abs(row[answer]["change_error_ml"][k]) for row in rows] for k in rows[0][answer]["change_error_ml"]}
        relative = {k: [abs(row[answer]["change_error_ml"][k]) / row["baseline_ml"][k] for row in rows if row["baseline_ml"][k] > 0] for k in errors}
        summary[answer]["volume_change_error_ml"] = {k: round(float(np.mean(v)), 3) for k, v in errors.items()}
        summary[answer]["volume_change_error_of_baseline"] = {k: round(float(np.mean(v)), 4) for k, v in relative.items() if v}
        if answer in answers:
            summary[answer]["wt_dice_small_change"] = round(float(np.mean([row[answer]["wt"] for row in small])), 4) if small else None
    summary["small_change_studies"] = len(small)
    for answer in answers[1 + len(priors) :]:
        differences = np.array([row[answer]["mean"] - row["model"]["mean"] for row in rows])
        summary[answer]["against_model"] = {"mean_difference": round(float(differences.mean()), 4), "better_on": int((differences > 0).sum()), "of": len(rows)}
    out = REPO / "bench" / "results" / "follow_up"
    out.mkdir(parents=True, exist_ok=True)
    pairs = "surgery between the two" if args.surgery else ("two post-operative scans" if args.labels != DEFAULT_LABEL_SET else "pre-operative")
    record = {"weights": str(args.weights), "pairs": pairs, "labels": args.labels, "patients": args.patients, "seed": args.seed, "spacing_mm": args.spacing}
    record["brain_shift_mm"] = args.brain_shift
    record.update({"summary": summary, "studies": rows})
    (out / f"{args.name}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"\n{args.patients} follow-up studies (seed {args.seed}, {pairs}); mean Dice")
    print(f"{'answer':18}" + "".join(f"{k[:14]:>16}" for k in keys))
    for answer in answers:
        print(
            f"{answer:18}"
            + "".join(f"{summary[answer][k]:>16.3f}" for k in keys)
            + (f"   vs model {summary[answer]['against_model']}" if "against_model" in summary[answer] else "")
        )
    print(f"\nwhole tumour changed by at most {SMALL_CHANGE:.0%}: {len(small)} studies; WT Dice " + ", ".join(f"{a} {summary[a]['wt_dice_small_change']}" for a in answers))
    print("volume change error, mean |measured - true| in mL (and in % of the baseline's volume):")
    for answer in [*answers, MODEL_ON_BOTH, GRID_FLOOR]:
        error, share = summary[answer]["volume_change_error_ml"], summary[answer]["volume_change_error_of_baseline"]
        print(f"{answer:18}" + "".join(f"  {k} {error[k]:.2f} ({100 * share.get(k, float('nan')):.1f} %)" for k in label_set.volume_names()))
    print(f"\n{out / (args.name + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
