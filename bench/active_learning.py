"""Which way of choosing studies to label pays? Simulated annotators on a varied generated cohort.

    .venv/bin/python bench/active_learning.py [--seeds 5] [--budgets 3,5,8,12,16] [--pool 30] [--test 12]

Per seed: a pool of generated studies from a varied cohort (``python -m synthetic --cohort``: seven tumour kinds,
three scanner sites) whose ground truth plays the annotator, and one fixed test set from another seed (the same
for every seed and strategy). Each strategy starts from its initial labels and a model trained on them; at each
budget it picks the studies that take it to the next budget, "the annotator" submits their ground truth, the
model is fine-tuned from where it was with the app's own trainer (seeded), and Dice (TC, WT, ET) on the test set
is recorded. Strategies (``lib/activelearning/selection.py``):

- ``random``: a random initial set (the same for every strategy of a seed that starts at random), random picks;
- ``power``: the same random initial set, then stochastic power sampling on the app's uncertainty (over the
  predicted tumour and a margin);
- ``typiclust_power``: a cold-start pick for diversity (TypiClust on all four sequences' intensity histograms)
  for the initial set, then as ``power``;
- ``uncertainty``: the same random initial set, then the top scores (what the app's ``uncertainty`` does).

Training follows the server's loop (``--protocol fine-tune``, the default): the first model is trained from scratch
on the initial labels, and each budget's model is fine-tuned from the last one on all labels so far, at the
trainer's fine-tuning learning rate, as the server's retraining does when labels arrive. ``--protocol afresh``
trains each budget's model from scratch instead; on this machine's budget that under-trains the larger budgets
(40 iterations per label: 8 labels gave test Dice 0.75 or 0.62 by training seed alone, and 0.87 at 3x the
iterations), so its curves fell as labels were added and measured training noise more than the strategies.
A run repeats exactly only at the same number of threads: the same labels and seed gave a first model of test
Dice 0.758 trained with 2 threads and 0.656 with 1 (floating-point sums in another order, then 300 steps apart).
So every process of one comparison runs with the same ``OMP_NUM_THREADS``; on 2 cores, two or more processes of
one thread each (``--first-seed``, each into its own ``--out``) finish sooner than one process of two threads.
The whole run fits about two hours on 2 CPU cores at the defaults: studies at 4 mm (a 32-voxel patch covers a
13 cm cube), 40 training iterations per label (at least 300) for each budget's model; strategies that start from
the same initial set share its first model. Every round's row is appended to
``<out>/active_learning.csv`` as it is measured; ``--resume`` skips the (seed, strategy) runs that CSV
already holds whole. The summary (``active_learning.json``, and printed) gives per-budget mean Dice, the area
under the budget curve (AUBC, mean Dice over the budget range) per strategy, paired one-sided Wilcoxon tests
against random over seeds (AUBC and each budget), and the labels each strategy needs to reach random's best
mean Dice. ``active_learning.png`` draws the curves.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import nibabel as nib
import numpy as np
import torch
from scipy.stats import wilcoxon

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "apps" / "brats_label")]

from monai.metrics import DiceMetric  # noqa: E402
from monai.transforms import Compose  # noqa: E402

from lib.activelearning.scores import ScoreStore  # noqa: E402
from lib.activelearning.scoring import EpistemicScoring  # noqa: E402
from lib.activelearning.selection import power_sample, study_features, typiclust  # noqa: E402
from lib.config import PROFILES, REGIONS, ScoringSettings, TrainSettings  # noqa: E402
from lib.model.network import load_network, sliding_window_inferer  # noqa: E402
from lib.studies.folder_datastore import StudyFolderDatastore  # noqa: E402
from lib.trainers.evaluation import evaluation_transforms  # noqa: E402
from lib.trainers.segmentation import BratsSegmentationTrainer  # noqa: E402
from synthetic.__main__ import main as generate  # noqa: E402

RESULTS = REPO / "bench" / "results"
TEST_SEED = 1000
STRATEGIES = ("random", "power", "typiclust_power", "uncertainty")
FIELDS = ["seed", "strategy", "labels", "dice_tc", "dice_wt", "dice_et", "dice_mean", "seconds"]


def bench_profile(spacing: float):
    """The app's CPU profile at a coarser spacing: windows cover the same brain (multiples of 8 voxels)."""
    cpu = PROFILES["cpu"]
    scale = cpu.spacing_mm[0] / spacing

    def fit(size):
        return tuple(max(16, int(round(s * scale / 8)) * 8) for s in size)

    return dataclasses.replace(cpu, name=f"bench_{spacing:g}mm", spacing_mm=(spacing,) * 3, roi_size=fit(cpu.roi_size), patch_size=fit(cpu.patch_size))


def make_set(folder: Path, seed: int, cases: int, spacing: float) -> Path:
    generate(
        [
            "--out",
            str(folder),
            "--cases",
            str(cases),
            "--seed",
            str(seed),
            "--spacing",
            f"{spacing:g}",
            "--workers",
            "2",
            "--cohort",
            "--manifest",
            str(folder.with_suffix(".json")),
        ]
    )
    return folder


class Annotated:
    """A studies folder where only chosen cases carry their ground truth, as if annotators had saved it."""

    def __init__(self, source: Path, folder: Path, labelled: List[str]):
        self.source, self.folder = source, folder
        shutil.copytree(source, folder, ignore=lambda d, names: [n for n in names if n.endswith("-seg.nii.gz")])
        self.labelled: List[str] = []
        for case in labelled:
            self.label(case)

    def label(self, case: str) -> None:
        shutil.copy(self.source / case / f"{case}-seg.nii.gz", self.folder / case / f"{case}-seg.nii.gz")
        self.labelled.append(case)

    def datastore(self, workspace: Path) -> StudyFolderDatastore:
        return StudyFolderDatastore(self.folder, workspace)


def fine_tune(profile, datastore: StudyFolderDatastore, work: Path, start_from: Optional[Path], steps: Tuple[int, int], seed: int) -> Path:
    """The app's trainer on every labelled case, seeded, for (per label, at least) iterations in whole epochs: at a
    fixed number of iterations a larger budget sees each study less often, and its curve fell with more labels."""
    labelled = len(datastore.get_labeled_images())
    epochs = max(1, math.ceil(max(steps[0] * labelled, steps[1]) / labelled))
    out = work / f"model_{time.time_ns()}"
    trainer = BratsSegmentationTrainer(out, profile, TrainSettings(max_epochs=epochs, val_split=0.0), publish_path=out / "published.pt", load_path=start_from)
    trainer({"device": "cpu", "max_epochs": epochs, "val_split": 0.0, "pretrained": start_from is not None, "seed": seed}, datastore)
    return out / "published.pt"


def test_dice(profile, weights: Path, test_items: List[Dict]) -> Dict[str, float]:
    network = load_network(profile, weights, torch.device("cpu")).eval()
    inferer = sliding_window_inferer(profile)
    metric = DiceMetric(include_background=True, reduction="mean_batch")
    with torch.no_grad():
        for item in test_items:
            prediction = (torch.sigmoid(inferer(item["image"][None], network)) > 0.5).float()
            metric(prediction, item["label"][None])
    values = metric.aggregate().tolist()
    return {f"dice_{name.lower()}": round(v, 4) for name, v in zip(REGIONS, values)} | {"dice_mean": round(float(np.mean(values)), 4)}


def pool_features(datastore: StudyFolderDatastore, cases: List[str]) -> Dict[str, np.ndarray]:
    return {c: study_features(np.moveaxis(np.asarray(nib.load(datastore.get_image_uri(c)).dataobj), -1, 0)) for c in cases}


def run_one(args, profile, work: Path, seed: int, strategy: str, pool: Path, features: Dict[str, np.ndarray], test_items, record, first_models: Dict) -> None:
    cases = sorted(features)
    rng = np.random.default_rng([seed, STRATEGIES.index(strategy)])
    initial = typiclust(features, args.budgets[0], rng) if strategy == "typiclust_power" else random.Random(seed).sample(cases, args.budgets[0])
    annotated = Annotated(pool, work / f"run_{seed}_{strategy}", initial)
    started = time.time()
    key = (seed, tuple(sorted(initial)))  # the same labels and training seed give the same first model
    if key not in first_models:
        first_models[key] = fine_tune(profile, annotated.datastore(work / f"ws_{seed}_{strategy}_0"), work, None, (args.steps_per_label, args.min_steps), seed)
    weights = first_models[key]
    for round_, budget in enumerate(args.budgets):
        row = {"seed": seed, "strategy": strategy, "labels": len(annotated.labelled), **test_dice(profile, weights, test_items), "seconds": round(time.time() - started, 1)}
        record(row)
        if round_ + 1 == len(args.budgets):
            return
        datastore = annotated.datastore(work / f"ws_{seed}_{strategy}_{round_}")
        unlabelled = sorted(set(cases) - set(annotated.labelled))
        count = args.budgets[round_ + 1] - budget
        if strategy == "random":
            picks = random.Random(seed * 7919 + round_).sample(unlabelled, count)
        else:
            scoring = EpistemicScoring(profile, lambda w=weights: str(w), ScoreStore(work / "scores_tmp"), ScoringSettings(samples=args.samples))
            network = load_network(profile, weights, torch.device("cpu"))
            scores = {c: scoring.score_case(datastore.get_image_uri(c), network, generator_seed=round_)["score"] for c in unlabelled}
            picks = sorted(scores, key=lambda c: -scores[c])[:count] if strategy == "uncertainty" else power_sample(scores, count, rng, args.beta)
        for case in picks:
            annotated.label(case)
        start_from = weights if args.protocol == "fine-tune" else None
        weights = fine_tune(profile, annotated.datastore(work / f"ws_{seed}_{strategy}_{round_}_t"), work, start_from, (args.steps_per_label, args.min_steps), seed * 100 + round_)


def run(args, work: Path, record, done: set) -> None:
    profile = bench_profile(args.spacing)
    test_dir = make_set(work / "test", TEST_SEED, args.test, args.spacing)
    prepare = Compose(evaluation_transforms(profile))
    test_items = [prepare({"image": i["image"], "label": i["label"]}) for i in StudyFolderDatastore(test_dir, work / "test_ws").datalist()]
    for seed in range(args.first_seed, args.seeds):
        pool = make_set(work / f"pool_{seed}", seed, args.pool, args.spacing)
        pool_ds = StudyFolderDatastore(pool, work / f"pool_ws_{seed}")
        features = pool_features(pool_ds, sorted(pool_ds.list_images()))
        first_models: Dict = {}
        for strategy in args.strategies:
            if (seed, strategy) not in done:
                run_one(args, profile, work, seed, strategy, pool, features, test_items, record, first_models)


# --- summary --------------------------------------------------------------------------------------


def _curves(rows: List[Dict], strategy: str) -> Dict[int, Dict[int, float]]:
    """seed -> labels -> mean Dice."""
    curves: Dict[int, Dict[int, float]] = {}
    for r in rows:
        if r["strategy"] == strategy:
            curves.setdefault(r["seed"], {})[r["labels"]] = r["dice_mean"]
    return curves


def aubc(curve: Dict[int, float]) -> float:
    """Area under the budget curve, divided by the budget range: the curve's mean Dice over the budgets."""
    budgets = sorted(curve)
    values = [curve[b] for b in budgets]
    return float(np.trapz(values, budgets) / (budgets[-1] - budgets[0])) if len(budgets) > 1 else values[0]


def labels_to_reach(mean_curve: Dict[int, float], target: float) -> Optional[float]:
    """Labels at which the mean curve first reaches ``target`` (linear between budgets); None if never."""
    budgets = sorted(mean_curve)
    for low, high in zip(budgets, budgets[1:]):
        if mean_curve[high] >= target > mean_curve[low]:
            return low + (high - low) * (target - mean_curve[low]) / (mean_curve[high] - mean_curve[low])
    return float(budgets[0]) if mean_curve[budgets[0]] >= target else None


def summarise(rows: List[Dict], strategies: List[str]) -> Dict:
    curves = {s: _curves(rows, s) for s in strategies}
    budgets = sorted({b for c in curves.values() for per_seed in c.values() for b in per_seed})
    # seeds every strategy ran to every budget: an interrupted seed would unpair the comparison
    complete = sorted(k for k in set.intersection(*[set(c) for c in curves.values()]) if all(set(c[k]) == set(budgets) for c in curves.values())) if curves else []
    summary: Dict = {"seeds": complete, "budgets": budgets, "strategies": {}}
    mean_curves = {s: {b: float(np.mean([curves[s][k][b] for k in complete if b in curves[s][k]])) for b in budgets} for s in strategies if complete}
    random_best = max(mean_curves["random"].values()) if "random" in mean_curves else None
    random_need = labels_to_reach(mean_curves["random"], random_best) if random_best is not None else None
    for s in mean_curves:
        areas = [aubc(curves[s][k]) for k in complete]
        entry: Dict = {
            "mean_dice": {str(b): round(v, 4) for b, v in mean_curves[s].items()},
            "aubc": round(float(np.mean(areas)), 4),
            "aubc_per_seed": [round(a, 4) for a in areas],
        }
        if s != "random" and "random" in curves and len(complete) >= 2:
            random_areas = [aubc(curves["random"][k]) for k in complete]
            difference = np.array(areas) - np.array(random_areas)
            entry["aubc_minus_random"] = round(float(difference.mean()), 4)
            entry["p_aubc_better_than_random"] = round(float(wilcoxon(difference, alternative="greater").pvalue), 4) if np.any(difference) else None
            entry["p_per_budget"] = {}
            for b in budgets:
                d = np.array([curves[s][k][b] - curves["random"][k][b] for k in complete])
                entry["p_per_budget"][str(b)] = round(float(wilcoxon(d, alternative="greater").pvalue), 4) if np.any(d) else None
        if random_best is not None:
            need = labels_to_reach(mean_curves[s], random_best)
            entry["labels_to_reach_random_best"] = round(need, 1) if need is not None else None
            entry["label_ratio_to_random"] = round(need / random_need, 2) if need is not None and random_need else None
        summary["strategies"][s] = entry
    summary["random_best_mean_dice"] = round(random_best, 4) if random_best is not None else None
    return summary


def markdown(rows: List[Dict], summary: Dict) -> str:
    """The README's table: mean test Dice ± sd over seeds per budget, AUBC, and p against random."""
    budgets = summary["budgets"]
    lines = ["| strategy | " + " | ".join(f"{b} labels" for b in budgets) + " | AUBC | p (AUBC > random) |", "|---" * (len(budgets) + 3) + "|"]
    for strategy, entry in summary["strategies"].items():
        cells = []
        for b in budgets:
            values = [r["dice_mean"] for r in rows if r["strategy"] == strategy and r["labels"] == b and r["seed"] in summary["seeds"]]
            cells.append(f"{np.mean(values):.3f} ± {np.std(values):.3f}")
        p = entry.get("p_aubc_better_than_random")
        lines.append(f"| `{strategy}` | " + " | ".join(cells) + f" | {entry['aubc']:.3f} | {'' if strategy == 'random' else (f'{p:.3f}' if p is not None else 'n/a')} |")
    return "\n".join(lines)


def plot(rows: List[Dict], strategies: List[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 4, figsize=(15, 3.6), sharey=True)
    for ax, key in zip(axes, ("dice_mean", "dice_tc", "dice_wt", "dice_et")):
        for strategy in strategies:
            labels = sorted({r["labels"] for r in rows if r["strategy"] == strategy})
            values = [[r[key] for r in rows if r["strategy"] == strategy and r["labels"] == n] for n in labels]
            mean, std = np.array([np.mean(v) for v in values]), np.array([np.std(v) for v in values])
            ax.plot(labels, mean, marker="o", label=strategy)
            ax.fill_between(labels, mean - std, mean + std, alpha=0.15)
        ax.set(title={"dice_mean": "mean Dice"}.get(key, key.replace("dice_", "Dice ").upper().replace("DICE", "Dice")), xlabel="labelled studies", ylim=(0, 1))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test Dice (mean ± sd over seeds)")
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def read_rows(path: Path) -> List[Dict]:
    if not path.exists():
        return []
    kinds = {"seed": int, "labels": int, "strategy": str}
    with open(path) as f:
        return [{k: kinds.get(k, float)(v) for k, v in r.items()} for r in csv.DictReader(f)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0, help="run seeds first-seed .. seeds-1 (two processes, two --out folders: merge their CSVs, then --summary-only)")
    parser.add_argument("--budgets", default="3,5,8,12,16", help="labelled studies at which the test Dice is measured")
    parser.add_argument("--pool", type=int, default=30, help="studies per seed that the strategies pick from")
    parser.add_argument("--test", type=int, default=12, help="held-out test studies")
    parser.add_argument("--spacing", type=float, default=4.0, help="mm: studies are generated and trained at this spacing")
    parser.add_argument("--steps-per-label", type=int, default=40, help="training iterations (two patches each) per labelled study")
    parser.add_argument("--min-steps", type=int, default=300, help="... and at least this many for each budget's model")
    parser.add_argument(
        "--protocol", choices=("fine-tune", "afresh"), default="fine-tune", help="each budget's model: fine-tuned from the last (the server's loop) or trained from scratch"
    )
    parser.add_argument("--samples", type=int, default=3, help="stochastic passes per study when scoring")
    parser.add_argument("--beta", type=float, default=1.0, help="power sampling's exponent (larger: closer to top-k)")
    parser.add_argument("--strategies", default="random,power,typiclust_power")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--resume", action="store_true", help="keep the rows of the CSV and skip the runs it holds whole")
    parser.add_argument("--summary-only", action="store_true", help="re-make the summary and PNG from the CSV")
    args = parser.parse_args()
    args.strategies = args.strategies.split(",")
    args.budgets = [int(b) for b in args.budgets.split(",")]
    unknown = set(args.strategies) - set(STRATEGIES)
    if unknown or args.budgets != sorted(set(args.budgets)) or args.budgets[-1] > args.pool:
        parser.error(f"strategies from {STRATEGIES}; budgets increasing and at most --pool ({sorted(unknown)} unknown)")

    args.out.mkdir(parents=True, exist_ok=True)
    table = args.out / "active_learning.csv"
    rows = read_rows(table) if (args.resume or args.summary_only) else []
    if not args.summary_only:
        done = {
            (s, st)
            for s in range(args.first_seed, args.seeds)
            for st in args.strategies
            if len({r["labels"] for r in rows if r["seed"] == s and r["strategy"] == st}) == len(args.budgets)
        }
        rows = [r for r in rows if (r["seed"], r["strategy"]) in done]
        with open(table, "w", newline="") as f:  # one row at a time: an interrupted run keeps what it measured
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)
            f.flush()

            def record(row: Dict) -> None:
                writer.writerow(row)
                f.flush()
                rows.append(row)
                print(f"seed {row['seed']} {row['strategy']:16} labels {row['labels']:2d}  mean Dice {row['dice_mean']:.3f}  ({row['seconds']:.0f} s)", flush=True)

            torch.set_num_threads(torch.get_num_threads())
            with tempfile.TemporaryDirectory() as tmp:
                run(args, Path(tmp), record, done)
    strategies = [s for s in args.strategies if any(r["strategy"] == s for r in rows)]
    summary = summarise(rows, strategies)
    summary["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    (args.out / "active_learning.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(rows, strategies, args.out / "active_learning.png")
    print(json.dumps({s: {k: v for k, v in e.items() if k not in ("p_per_budget", "aubc_per_seed")} for s, e in summary["strategies"].items()}, indent=1))
    print(markdown(rows, summary))
    print(f"written: {table}, {args.out / 'active_learning.json'}, {args.out / 'active_learning.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
