"""Does ranking by uncertainty save labels? Simulated annotators on generated studies.

    .venv/bin/python bench/active_learning.py [--seeds 3] [--pool 10] [--initial 3] [--rounds 4]

Per seed: a pool of generated studies (2 mm) whose ground truth plays the annotator, and a fixed
held-out test set generated with another seed (the same for every seed and strategy). Each strategy
starts from the same ``--initial`` labelled cases and a model trained on them; then, each round, it
picks one case, "the annotator" submits its ground truth, the model is fine-tuned from where it was
with the app's own trainer, and Dice (TC, WT, ET) on the test set is recorded. ``uncertainty`` picks
with the app's own scoring; ``random`` picks uniformly.

Pool and test studies vary in tumour contrast and noise from case to case (``--varied-acquisition`` of
the generator), as a multi-site collection does: where every case is equally clean there is nothing
for a selection strategy to find, and the comparison would only measure training noise.

Writes ``bench/results/active_learning.csv`` (one row per seed, strategy and label count) and
``bench/results/active_learning.png`` (mean Dice against labels, with the spread over seeds), and
prints how many labels each strategy needs to reach the Dice random reaches with its largest budget.
The defaults are the settings of the run reported in the README: 101 minutes on 2 CPU cores that were
also running other work most of that time (not yet timed alone); ``--seeds 2`` or ``--rounds 3`` fit an hour.
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "apps" / "brats_label")]

from monai.inferers import SlidingWindowInferer  # noqa: E402
from monai.metrics import DiceMetric  # noqa: E402
from monai.transforms import Compose  # noqa: E402

from lib.activelearning.scores import ScoreStore  # noqa: E402
from lib.activelearning.scoring import EpistemicScoring  # noqa: E402
from lib.config import PROFILES, REGIONS, ScoringSettings, TrainSettings  # noqa: E402
from lib.datastore import StudyFolderDatastore  # noqa: E402
from lib.network import load_network  # noqa: E402
from lib.trainers.segmentation import BratsSegmentationTrainer  # noqa: E402
from synthetic.__main__ import main as generate  # noqa: E402

RESULTS = REPO / "bench" / "results"
TEST_SEED = 1000
PROFILE = PROFILES["cpu"]


def make_set(folder: Path, seed: int, cases: int, varied: bool) -> Path:
    generate(["--out", str(folder), "--cases", str(cases), "--seed", str(seed), "--spacing", "2", "--workers", "2"] + (["--varied-acquisition"] if varied else []))
    return folder


class Annotated:
    """A studies folder where only chosen cases carry their ground truth, as if annotators had saved it."""

    def __init__(self, source: Path, folder: Path, labelled: List[str]):
        self.source, self.folder = source, folder
        shutil.copytree(source, folder, ignore=lambda d, names: [n for n in names if n.endswith("-seg.nii.gz")])
        for case in labelled:
            self.label(case)

    def label(self, case: str) -> None:
        shutil.copy(self.source / case / f"{case}-seg.nii.gz", self.folder / case / f"{case}-seg.nii.gz")

    def datastore(self, workspace: Path) -> StudyFolderDatastore:
        return StudyFolderDatastore(self.folder, workspace)


def fine_tune(datastore: StudyFolderDatastore, work: Path, start_from: Path | None, epochs: int) -> Path:
    """The app's trainer, all labelled cases for training (the test set is separate)."""
    out = work / f"model_{time.time_ns()}"
    trainer = BratsSegmentationTrainer(out, PROFILE, TrainSettings(max_epochs=epochs, val_split=0.0), publish_path=out / "published.pt", load_path=start_from)
    trainer({"device": "cpu", "max_epochs": epochs, "val_split": 0.0, "pretrained": start_from is not None}, datastore)
    return out / "published.pt"


def test_dice(weights: Path, test_items: List[Dict]) -> Dict[str, float]:
    network = load_network(PROFILE, weights, torch.device("cpu")).eval()
    inferer = SlidingWindowInferer(PROFILE.roi_size, overlap=PROFILE.sw_overlap, mode="gaussian")
    metric = DiceMetric(include_background=True, reduction="mean_batch")
    with torch.no_grad():
        for item in test_items:
            prediction = (torch.sigmoid(inferer(item["image"][None], network)) > 0.5).float()
            metric(prediction, item["label"][None])
    values = metric.aggregate().tolist()
    return {f"dice_{name.lower()}": v for name, v in zip(REGIONS, values)} | {"dice_mean": float(np.mean(values))}


FIELDS = ["seed", "strategy", "labels", "dice_tc", "dice_wt", "dice_et", "dice_mean", "seconds"]


def run(args: argparse.Namespace, work: Path, record) -> List[Dict]:
    test_dir = make_set(work / "test", TEST_SEED, args.test, args.varied)
    test_ds = StudyFolderDatastore(test_dir, work / "test_ws")
    deterministic = Compose(BratsSegmentationTrainer(work / "t", PROFILE, TrainSettings(), work / "t.pt")._deterministic())
    test_items = [deterministic(item) for item in test_ds.datalist()]
    rows = []
    for seed in range(args.seeds):
        pool = make_set(work / f"pool_{seed}", seed, args.pool, args.varied)
        cases = sorted(p.name for p in pool.iterdir() if p.is_dir() and not p.name.startswith("."))
        initial = random.Random(seed).sample(cases, args.initial)
        for strategy in args.strategies:
            started = time.time()
            rng = random.Random(seed * 7919 + 1)
            annotated = Annotated(pool, work / f"run_{seed}_{strategy}", initial)
            torch.manual_seed(seed)
            weights = fine_tune(annotated.datastore(work / f"ws_{seed}_{strategy}_0"), work, None, args.initial_epochs)
            for round_ in range(args.rounds + 1):
                datastore = annotated.datastore(work / f"ws_{seed}_{strategy}_{round_}")
                labels = len(datastore.get_labeled_images())
                row = {"seed": seed, "strategy": strategy, "labels": labels, **test_dice(weights, test_items), "seconds": round(time.time() - started, 1)}
                rows.append(row)
                record(row)
                print(f"seed {seed} {strategy:12} labels {labels:2d}  " + "  ".join(f"{k} {v:.3f}" for k, v in row.items() if k.startswith("dice")), flush=True)
                if round_ == args.rounds:
                    break
                unlabelled = datastore.get_unlabeled_images()
                if strategy == "uncertainty":
                    scoring = EpistemicScoring(PROFILE, lambda weights=weights: str(weights), ScoreStore(work / "scores_tmp"), ScoringSettings(samples=args.samples))
                    network = load_network(PROFILE, weights, torch.device("cpu"))
                    scores = {c: scoring.score_case(datastore.get_image_uri(c), network, generator_seed=round_)["score"] for c in unlabelled}
                    pick = max(scores, key=scores.get)
                else:
                    pick = rng.choice(unlabelled)
                annotated.label(pick)
                weights = fine_tune(annotated.datastore(work / f"ws_{seed}_{strategy}_{round_}_t"), work, weights, args.epochs)
    return rows


def summarise(rows: List[Dict], strategies: List[str]) -> List[str]:
    """Labels each strategy needs to reach the mean Dice random reaches with its largest budget."""

    def curve(strategy):
        by_labels: Dict[int, List[float]] = {}
        for r in rows:
            if r["strategy"] == strategy:
                by_labels.setdefault(r["labels"], []).append(r["dice_mean"])
        return {n: float(np.mean(v)) for n, v in sorted(by_labels.items())}

    lines = []
    if "random" not in strategies:
        return lines
    random_curve = curve("random")
    budget = max(random_curve)
    target = random_curve[budget]
    lines.append(f"random reaches mean Dice {target:.3f} with {budget} labels")
    for strategy in strategies:
        reached = [n for n, d in curve(strategy).items() if d >= target]
        need = min(reached) if reached else None
        lines.append(f"{strategy}: {need if need is not None else f'more than {budget}'} labels" + (f" ({need / budget:.0%} of random's)" if need else ""))
    return lines


def plot(rows: List[Dict], strategies: List[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 4, figsize=(14, 3.4), sharey=True)
    for ax, key in zip(axes, ("dice_mean", "dice_tc", "dice_wt", "dice_et")):
        for strategy in strategies:
            labels = sorted({r["labels"] for r in rows if r["strategy"] == strategy})
            values = [[r[key] for r in rows if r["strategy"] == strategy and r["labels"] == n] for n in labels]
            mean, std = np.array([np.mean(v) for v in values]), np.array([np.std(v) for v in values])
            ax.plot(labels, mean, marker="o", label=strategy)
            ax.fill_between(labels, mean - std, mean + std, alpha=0.2)
        ax.set(title=key.replace("dice_", "Dice ").upper().replace("DICE ", "Dice "), xlabel="labelled studies", ylim=(0, 1))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test Dice (mean ± sd over seeds)")
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--pool", type=int, default=10, help="studies per seed that the strategies pick from")
    parser.add_argument("--test", type=int, default=6, help="held-out test studies")
    parser.add_argument("--initial", type=int, default=3, help="labelled studies at the start")
    parser.add_argument("--rounds", type=int, default=4, help="labels added one at a time")
    parser.add_argument("--initial-epochs", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=6, help="fine-tuning epochs after each new label")
    parser.add_argument("--samples", type=int, default=4, help="stochastic passes per case when scoring")
    parser.add_argument("--uniform-acquisition", dest="varied", action="store_false", help="all studies equally clean (default: contrast and noise vary by case)")
    parser.add_argument("--strategies", default="uncertainty,random")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--plot-only", type=Path, default=None, help="re-make the PNG and summary from this CSV")
    args = parser.parse_args()
    args.strategies = args.strategies.split(",")
    torch.set_num_threads(torch.get_num_threads())

    args.out.mkdir(parents=True, exist_ok=True)
    table = args.out / "active_learning.csv"
    if args.plot_only:
        with open(args.plot_only) as f:
            kinds = {"seed": int, "labels": int, "strategy": str}
            rows = [{k: kinds.get(k, float)(v) for k, v in r.items()} for r in csv.DictReader(f)]
        table = args.plot_only
        args.strategies = sorted({r["strategy"] for r in rows}, key=lambda n: n != "uncertainty")
    else:
        with open(table, "w", newline="") as f:  # one row at a time: an interrupted run keeps what it measured
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()

            def record(row: Dict) -> None:
                writer.writerow(row)
                f.flush()

            with tempfile.TemporaryDirectory() as tmp:
                rows = run(args, Path(tmp), record)
    plot(rows, args.strategies, args.out / "active_learning.png")
    settings = ", ".join(f"{k}={v}" for k, v in vars(args).items() if k != "out")
    summary = summarise(rows, args.strategies)
    print("\n".join(["", f"settings: {settings}", *summary, f"written: {table}, {args.out / 'active_learning.png'}"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
