"""The robot user: how many actions an annotator needs to correct a pre-label, on studies the model never saw.

    .venv/bin/python bench/interactive.py --weights model.pt --studies DIR [--actions 20] [--brush-mm 5] [--out DIR]

The protocol of interactive-segmentation papers: from the pre-label, a simulated annotator corrects one region at a
time (WT, then TC, then ET); each action corrects that region's largest error at its innermost voxel
(``lib/interactive/simulated_clicks.next_click``), saying what the voxel truly is, until the region reaches its
target Dice (``CORRECTION_TARGET_DICE``: WT 0.90, TC 0.85, ET 0.80) or the actions run out. Everything happens on the
network's grid (the profile's spacing). Two kinds of action, on the same studies and pre-label:

- a brush stroke (the baseline): a disc of ``--brush-mm`` radius on the axial slice through that voxel, painted with
  the true label there;
- a click on the refinement model (``--refinement WEIGHTS``, or trained here from ``--weights`` on ``--train-studies``
  with ``--train-seed``): the click is added to the clicks so far and the model answers again, as OHIF's Point
  Prompts and Slicer's DeepEdit ask the server. Its pre-label is the refinement model's answer with no clicks.

Reports per region and kind, over all studies and over those whose starting WT Dice is below 0.85 (where the targets
apply): actions to the target (a study that never gets there counts as ``--actions``), Dice after 0, 1, 3, 5 and 10
actions and the gain after 5, and seconds per click (the model's answer, p50 and p95); each study's Dice after each
action (``*_per_study``); writes
``<out>/<name>.json`` (``--name``, default ``clicks`` with a refinement model, else ``brush``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "apps" / "brats_label")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from monai.transforms import Compose  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bench.evaluate import items_of  # noqa: E402
from lib.config import BRATS_2023, CORRECTION_TARGET_DICE, LABELS, PROFILES, REGIONS, ClickGrowth, NetworkProfile, RefinementSettings, TrainSettings  # noqa: E402
from lib.interactive.click_rounds import region_channels_to_label  # noqa: E402
from lib.interactive.robot_user import GuidedSession  # noqa: E402
from lib.interactive.simulated_clicks import next_click  # noqa: E402
from lib.model.brats_metrics import dice as region_dice  # noqa: E402
from lib.model.network import load_network, sliding_window_inferer  # noqa: E402
from lib.model.transforms import RegionsToLabeld  # noqa: E402
from lib.studies.folder_datastore import StudyFolderDatastore  # noqa: E402
from lib.trainers.evaluation import evaluation_transforms, predict_regions  # noqa: E402
from lib.trainers.refinement import BratsRefinementTrainer  # noqa: E402

REPORTED_AFTER = (0, 1, 3, 5, 10)
WEAK_PRELABEL_WT = 0.85  # issue 21's targets are on studies whose pre-label WT Dice is below this


def label_map(regions: Dict[str, np.ndarray]) -> np.ndarray:
    """Region masks (tc, wt, et) as one label map, as inference makes it (``RegionsToLabeld``)."""
    stacked = torch.as_tensor(np.stack([regions[name.lower()] for name in REGIONS]))
    return RegionsToLabeld(keys="pred", label_set=BRATS_2023)({"pred": stacked})["pred"][0].numpy()


def dice(truth: np.ndarray, labels: np.ndarray, region: str) -> float:
    return region_dice(np.isin(labels, REGIONS[region]), np.isin(truth, REGIONS[region]))


def brush_stroke(labels: np.ndarray, at: tuple, value: int, radius_mm: float, spacing_mm: np.ndarray) -> np.ndarray:
    """A disc painted on the axial slice through ``at``: every voxel in it takes ``value``, as a brush does."""
    i, j = np.ogrid[: labels.shape[0], : labels.shape[1]]
    disc = ((i - at[0]) * spacing_mm[0]) ** 2 + ((j - at[1]) * spacing_mm[1]) ** 2 <= radius_mm**2
    painted = labels.copy()
    painted[:, :, at[2]][disc] = value
    return painted


def correct(truth: np.ndarray, labels: np.ndarray, actions: int, spacing_mm: np.ndarray, act: Callable[[np.ndarray, str, tuple], np.ndarray]) -> Dict[str, List[float]]:
    """Dice of each region after each action, the regions corrected in turn; a region at its target takes none.
    ``act(labels, label name, voxel)`` is one action at the robot's next click: the labels after it."""
    curves: Dict[str, List[float]] = {}
    for region in CORRECTION_TARGET_DICE:
        curve = [dice(truth, labels, region)]
        for _ in range(actions):
            if curve[-1] >= CORRECTION_TARGET_DICE[region]:
                break
            click = next_click(truth, labels, region, spacing_mm)
            if click is None:
                break
            labels = act(labels, *click)
            curve.append(dice(truth, labels, region))
        curves[region] = curve
    return curves


def correct_with_brush(truth: np.ndarray, labels: np.ndarray, actions: int, radius_mm: float, spacing_mm: np.ndarray) -> Dict[str, List[float]]:
    """Each action a brush stroke at the click."""
    return correct(truth, labels, actions, spacing_mm, lambda current, name, at: brush_stroke(current, at, LABELS[name], radius_mm, spacing_mm))


class TimedSession(GuidedSession):
    """The refinement model answering a study's clicks so far, as the server does, each answer timed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seconds: List[float] = []

    def answer(self) -> np.ndarray:
        started = time.perf_counter()
        labels = super().answer()
        self.seconds.append(time.perf_counter() - started)
        return labels


def correct_with_clicks(truth: np.ndarray, model: TimedSession, actions: int) -> Dict[str, List[float]]:
    """Each action a click; the clicks accumulate over the regions, as in a session."""
    return correct(truth, model.answer(), actions, model.spacing, lambda current, name, at: model.click(name, at))


def train_refinement(profile: NetworkProfile, segmentation: Path, studies: Path, seed: int, epochs: int, work: Path) -> Path:
    """A refinement model trained as the server trains it (``POST /train/refinement``), from ``segmentation``."""
    settings = RefinementSettings(max_epochs=epochs) if epochs else RefinementSettings()
    trainer = BratsRefinementTrainer(work / "model", profile, TrainSettings(), settings, work / "refinement.pt", lambda: segmentation)
    trainer({"device": "cpu", "seed": seed}, StudyFolderDatastore(studies, work / "ws"))
    return work / "refinement.pt"


def summarise(curves: List[Dict[str, List[float]]], actions: int) -> Dict[str, Dict[str, float]]:
    """Per region: actions to the target (``actions`` when never reached), studies that reached it, Dice after
    ``REPORTED_AFTER`` actions, and the gain after 5 (over all studies, and over those that started below the target)."""
    out: Dict[str, Dict[str, float]] = {}
    for region, target in CORRECTION_TARGET_DICE.items():
        per_study = [c[region] for c in curves]
        if not per_study:
            continue
        reached = [next((n for n, d in enumerate(curve) if d >= target), actions) for curve in per_study]
        row = {"actions_to_target": round(float(np.mean(reached)), 2), "reached": sum(any(d >= target for d in curve) for curve in per_study)}
        for k in REPORTED_AFTER:
            row[f"dice_after_{k}"] = round(float(np.mean([curve[min(k, len(curve) - 1)] for curve in per_study])), 4)
        row["gain_after_5"] = round(row["dice_after_5"] - row["dice_after_0"], 4)
        # a region already at its target takes no action: the gain where there was something to correct
        below = [curve for curve in per_study if curve[0] < target]
        row["below_target"] = len(below)
        row["gain_after_5_below_target"] = round(float(np.mean([curve[min(5, len(curve) - 1)] - curve[0] for curve in below])), 4) if below else None
        out[region] = row
    return out


def per_study(ids: List[str], curves: List[Dict[str, List[float]]]) -> Dict[str, Dict[str, List[float]]]:
    """Each study's Dice per region after each action, to see where the actions stall."""
    return {case: {region: [round(d, 4) for d in curve] for region, curve in study.items()} for case, study in zip(ids, curves)}


def summaries(curves: List[Dict[str, List[float]]], actions: int) -> Dict[str, object]:
    """Over all studies, and over those whose starting WT Dice is below ``WEAK_PRELABEL_WT`` (where the issue's targets
    apply: a good pre-label leaves little to correct)."""
    weak = [c for c in curves if c["WT"][0] < WEAK_PRELABEL_WT]
    return {"all": summarise(curves, actions), "weak_prelabel": {"studies": len(weak), **summarise(weak, actions)}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True, help="segmentation weights that make the pre-label")
    parser.add_argument("--studies", type=Path, required=True, help="labelled studies the model did not learn from")
    parser.add_argument("--profile", default="cpu", choices=sorted(PROFILES))
    parser.add_argument("--actions", type=int, default=20)
    parser.add_argument("--brush-mm", type=float, default=5.0, help="brush radius")
    parser.add_argument("--refinement", type=Path, default=None, help="refinement weights to click on")
    parser.add_argument("--train-studies", type=Path, default=None, help="train a refinement model from --weights on these first")
    parser.add_argument("--train-seed", type=int, default=0)
    parser.add_argument("--train-epochs", type=int, default=0, help="0: RefinementSettings' default")
    parser.add_argument("--growth-radius-mm", type=float, default=ClickGrowth().radius_mm, help="how far a click's region may grow (0: the network's answer only)")
    parser.add_argument(
        "--network-radius-mm", type=float, default=ClickGrowth().network_radius_mm, help="how far from a click the guided network's answer is used (0, the default: nowhere)"
    )
    parser.add_argument("--growth-multiplier", type=float, default=ClickGrowth().multiplier, help="standard deviations a grown voxel may differ by")
    parser.add_argument("--growth-seed-mm", type=float, default=ClickGrowth().seed_radius_mm, help="the clicked tissue's statistics: its voxels within this")
    parser.add_argument("--growth-min-separation", type=float, default=ClickGrowth().min_separation, help="grow only where the clicked tissue stands apart this much")
    parser.add_argument("--growth-separate-from-background", action="store_true", help="judge the separation also where a click takes from background (until 2026-12-06)")
    parser.add_argument(
        "--growth-min-edge",
        type=float,
        default=ClickGrowth().min_edge,
        help="a grown region's rim must differ from it this much, else only the clicked tissue (0: before 2026-12-07)",
    )
    parser.add_argument("--growth-alone", action="store_true", help="grow from the clicked tissue alone, not with the clicked label's voxels round it")
    parser.add_argument("--growth-no-edge-at-click", action="store_true", help="no label-edge rule where the clicked voxel sets the threshold (until 2026-12-06 night)")
    parser.add_argument(
        "--growth-not-like-label", action="store_true", help="keep a grown region that looks more like what it took from than like the clicked label (until 2026-12-07)"
    )
    parser.add_argument("--growth-edge-band-mm", type=float, default=ClickGrowth().edge_band_mm, help="the partial volume along a label's edge (the label-edge rule)")
    parser.add_argument("--growth-seed-all", action="store_true", help="the clicked tissue: every voxel within --growth-seed-mm (until 2026-12-06)")
    parser.add_argument(
        "--growth-on-answer",
        action="store_true",
        help="grow each click on the guided answer (before 2026-12-06), not on the answer to no clicks (the same with --network-radius-mm 0)",
    )
    parser.add_argument("--name", default=None)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "interactive")
    args = parser.parse_args()
    profile = PROFILES[args.profile]
    spacing = np.asarray(profile.spacing_mm, dtype=float)
    growth = dataclasses.replace(
        ClickGrowth(),
        radius_mm=args.growth_radius_mm,
        network_radius_mm=args.network_radius_mm,
        multiplier=args.growth_multiplier,
        seed_radius_mm=args.growth_seed_mm,
        min_separation=args.growth_min_separation,
        separate_from_background=args.growth_separate_from_background,
        seed_like_click=not args.growth_seed_all,
        min_edge=args.growth_min_edge,
        grow_with_label_nearby=not args.growth_alone,
        edge_band_mm=args.growth_edge_band_mm,
        edge_at_click=not args.growth_no_edge_at_click,
        grown_like_label=not args.growth_not_like_label,
    )
    summary: Dict[str, object] = {"weights": str(args.weights), "studies_folder": str(args.studies), "actions": args.actions, "profile": profile.name}
    with tempfile.TemporaryDirectory() as scratch:
        refinement = args.refinement
        if refinement is None and args.train_studies is not None:
            started = time.monotonic()
            work = Path(tempfile.mkdtemp(prefix="refinement_"))  # kept: the trained model can be clicked on again (--refinement)
            refinement = train_refinement(profile, args.weights, args.train_studies, args.train_seed, args.train_epochs, work)
            summary.update(train_studies=str(args.train_studies), train_seed=args.train_seed, train_s=round(time.monotonic() - started, 1))
        items = items_of(args.studies, Path(scratch))
        brush = []
        predictions = predict_regions(profile, args.weights, items, evaluation_transforms(profile))
        for _, _, predicted, expected in tqdm(predictions, total=len(items), desc="brush strokes", unit="study"):
            brush.append(correct_with_brush(label_map(expected), label_map(predicted), args.actions, args.brush_mm, spacing))
        ids = [str(item["id"]) for item in items]
        summary.update(studies=len(brush), brush_mm=args.brush_mm, brush=summaries(brush, args.actions))
        summary["brush_per_study"] = per_study(ids, brush)
        if refinement is not None:
            prepare, clicks, seconds = Compose(evaluation_transforms(profile)), [], []
            network = load_network(profile, refinement, torch.device("cpu"), guided=True).eval()
            for item in tqdm(items, desc="clicks", unit="study"):
                data = prepare({"image": item["image"], "label": item["label"]})
                model = TimedSession(network, sliding_window_inferer(profile), torch.as_tensor(data["image"]), profile.spacing_mm, growth)
                model.grow_on_unclicked = not args.growth_on_answer
                clicks.append(correct_with_clicks(region_channels_to_label(torch.as_tensor(data["label"]) > 0), model, args.actions))
                seconds += model.seconds[1:]  # the answers to clicks, not the first auto-segmentation
            summary.update(
                refinement=str(refinement),
                growth=dataclasses.asdict(growth),
                growth_on_answer=args.growth_on_answer,
                clicks=summaries(clicks, args.actions),
                clicks_per_study=per_study(ids, clicks),
                seconds_per_click={"p50": round(float(np.percentile(seconds, 50)), 3), "p95": round(float(np.percentile(seconds, 95)), 3), "clicks": len(seconds), "device": "cpu"},
            )
    name = args.name or ("clicks" if "clicks" in summary else "brush")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    for kind in ("brush", "clicks"):
        if kind not in summary:
            continue
        for subset, rows in summary[kind].items():  # type: ignore[attr-defined]
            rows = {region: row for region, row in rows.items() if region in CORRECTION_TARGET_DICE}
            count = len(items) if subset == "all" else summary[kind][subset]["studies"]  # type: ignore[index]
            print(
                f"{kind} ({subset}, {count} studies): {'region':6} {'actions to target':>18} {'reached':>8} "
                + " ".join(f"{'after ' + str(k):>9}" for k in REPORTED_AFTER)
                + "  gain after 5 (studies below target)"
            )
            for region, row in rows.items():
                print(
                    f"  {region:6} {row['actions_to_target']:>18} {row['reached']:>5}/{count:<2} "
                    + " ".join(f"{row[f'dice_after_{k}']:>9.3f}" for k in REPORTED_AFTER)
                    + f"  {row['gain_after_5_below_target']} ({row['below_target']})"
                )
    if "seconds_per_click" in summary:
        print(f"seconds per click: {summary['seconds_per_click']}")
    print(f"written: {args.out / f'{name}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
