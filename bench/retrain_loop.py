"""How long from an annotator's submitted label to a better model being served, and how good each version is.

    .venv/bin/python bench/retrain_loop.py [--labels-per-round 2] [--rounds 3] [--epochs 8] [--spacing 1]

Generates the demo's sample (16 studies at 1 mm, 8 labelled; the other 8 labels withheld as the
simulated annotators' answers), starts the real server with automatic retraining after
``--labels-per-round`` new labels (no interval), and, round after round, submits that many withheld labels
through MONAI Label's client, as Slicer does. Nothing else asks for a training. For each round it measures
the time from the round's last submitted label to the end of the version it triggered (promoted and served,
or kept), and reads the version's held-out validation Dice. Prints a table, writes
bench/results/retrain_loop.json and a PNG of Dice per version and time per round.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import requests  # noqa: E402
from monailabel.client import MONAILabelClient  # noqa: E402
from tqdm import tqdm  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "apps" / "brats_label")]

from scripts.local_server import LocalServer as Server  # noqa: E402
from synthetic.__main__ import main as generate  # noqa: E402

RESULTS = REPO / "bench" / "results"
REGIONS = ("TC", "WT", "ET", "mean")


def wait_for_version(server: Server, known: set, timeout_s: float, bar: tqdm) -> dict:
    """The first model version not in ``known``, once its training has finished; the progress bar follows the epochs."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        training = requests.get(f"{server.url}/brats/training", timeout=30).json()
        progress = training.get("progress", {})
        if progress.get("max_epochs"):
            bar.total = progress["max_epochs"]
            bar.n = progress.get("epoch", 0)
            bar.set_postfix(phase=progress.get("phase"), left_s=progress.get("remaining_s"))
            bar.refresh()
        versions = requests.get(f"{server.url}/brats/models", timeout=30).json()["versions"]
        new = [v for v in versions if v["id"] not in known]
        if new and not training["running"]:
            return new[-1]
        time.sleep(2)
    raise TimeoutError(f"no new model version within {timeout_s} s; see {server.log_path}")


def plot(rounds: list, path: Path) -> None:
    figure, (dice_ax, time_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    ids = [r["version"] for r in rounds]
    width = 0.2
    for i, region in enumerate(REGIONS):
        dice_ax.bar([x + (i - 1.5) * width for x in range(len(ids))], [r["validation_dice"].get(region.lower(), 0) for r in rounds], width, label=region)
    dice_ax.set(xticks=range(len(ids)), xticklabels=[f"{r['version']}\n({r['labels_used']} labels)" + ("" if r["promoted"] else "\nnot promoted") for r in rounds])
    dice_ax.set(ylabel="held-out validation Dice", ylim=(0, 1), title="each model version")
    dice_ax.legend(fontsize=8, ncol=4, loc="upper left")
    dice_ax.grid(axis="y", alpha=0.3)
    time_ax.bar(range(len(ids)), [r["label_to_version_s"] / 60 for r in rounds], color="grey")
    time_ax.set(xticks=range(len(ids)), xticklabels=ids, ylabel="minutes", title="last submitted label → version ready")
    time_ax.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels-per-round", type=int, default=2, help="retrain_after_labels: new labels that trigger a fine-tune")
    parser.add_argument("--rounds", type=int, default=3, help="versions to make (needs rounds x labels-per-round withheld labels)")
    parser.add_argument("--epochs", type=int, default=8, help="max_epochs of each automatic training")
    parser.add_argument("--spacing", type=float, default=1.0, help="mm of the generated studies (1: BraTS size, as the demo)")
    parser.add_argument("--cases", type=int, default=16)
    parser.add_argument("--labelled", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS / "retrain_loop.json")
    args = parser.parse_args()
    if args.rounds * args.labels_per_round > args.cases - args.labelled:
        parser.error(f"{args.rounds} rounds of {args.labels_per_round} labels need that many unlabelled studies; raise --cases or lower --labelled")

    work = Path(tempfile.mkdtemp(prefix="bench_retrain_"))
    studies, truth = work / "studies", work / "ground_truth"
    generate(["--out", str(studies), "--cases", str(args.cases), "--labelled", str(args.labelled), "--spacing", str(args.spacing), "--ground-truth", str(truth), "--workers", "2"])
    withheld = sorted(truth.glob("*.nii.gz"))
    conf = {"profile": "cpu", "retrain_after_labels": args.labels_per_round, "retrain_min_interval_s": 0, "max_epochs": args.epochs}
    server = Server(studies, conf, work / "server.log")
    client = MONAILabelClient(server.url, client_id="bench")
    rounds, known = [], set()
    try:
        for number in range(args.rounds):
            batch = withheld[number * args.labels_per_round : (number + 1) * args.labels_per_round]
            for path in batch:
                study = path.name.replace("-seg.nii.gz", "")
                client.save_label(study, str(path), tag="final", params={"user": "simulated_annotator"})
            submitted = time.time()
            with tqdm(desc=f"round {number + 1}: training", unit="epoch") as bar:
                version = wait_for_version(server, known, timeout_s=3 * 3600, bar=bar)
            ready = time.time()
            known.add(version["id"])
            rounds.append(
                {
                    "version": version["id"],
                    "parent": version.get("parent"),
                    "labels_used": len(version.get("labels", [])),
                    "held_out": len(version.get("held_out", [])),
                    "epochs": version.get("epochs"),
                    "validation_dice": version.get("validation_dice", {}),
                    "promoted": version.get("promoted"),
                    "reason": version.get("reason"),
                    "label_to_version_s": round(ready - submitted, 1),
                }
            )
            save(args, rounds)  # after every round: an interrupted run keeps what it measured
    finally:
        server.stop()

    print(f"\n{'version':8} {'labels':>6} {'TC':>6} {'WT':>6} {'ET':>6} {'mean':>6} {'label→ready':>12}  promoted")
    for r in rounds:
        d = r["validation_dice"]
        print(
            f"{r['version']:8} {r['labels_used']:6d} "
            + " ".join(f"{d.get(k.lower(), float('nan')):6.3f}" for k in REGIONS)
            + f" {r['label_to_version_s'] / 60:10.1f} min  {r['promoted']}"
        )
    save(args, rounds)
    print(f"results: {args.out} and {args.out.with_suffix('.png')}")
    return 0


def save(args: argparse.Namespace, rounds: list) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": vars(args) | {"out": str(args.out)}, "rounds": rounds}, indent=2))
    plot(rounds, args.out.with_suffix(".png"))


if __name__ == "__main__":
    sys.exit(main())
