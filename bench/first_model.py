"""The demo's first model, trained again and again with fresh seeds, judged on studies it did not learn from.

    .venv/bin/python bench/first_model.py [--seeds 5] [--first-seed 100] [--held-out 8] [--spacing 1] [--set max_epochs=20 ...]
    .venv/bin/python bench/first_model.py --labels brats2024_post ...   (post-operative studies, the post-treatment set)
    .venv/bin/python bench/first_model.py --work DIR --curves-only [--compare NAME ...]

The demo trains its first model on its sample's labelled studies (``scripts/demo.sh``: ``python -m synthetic``
seed 0, 16 studies, the first 8 labelled) with the app's defaults, on the cpu profile; the trainer holds a quarter
of them out for its own validation (what the demo prints). Here the same training runs once per seed, each on the
same 8 studies, and every resulting model is scored on ``--held-out`` further studies of the same generator
(indices 1000 on, never in the demo's sample): mean Dice over TC, WT and ET per study. A run is from scratch, so it
takes ``max_epochs_from_scratch`` epochs (``--set max_epochs=N`` sets both, as ``--conf max_epochs`` does). Seeds can
be run a few at a time (``--seeds 1 --first-seed S``, interleaved with another setting's): each invocation adds its
runs to the setting's results file. ``--set key=value``
overrides a training setting (``TrainSettings`` in lib/config.py) to compare a change against the defaults in the
same run. Writes ``bench/results/first_model/<name>.json`` and prints a table: per seed, the trainer's own
validation Dice, the held-out mean Dice (mean, min), the held-out Dice per label (the necrotic core, which the
regions hide), and the training time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "apps" / "brats_label")]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.evaluate import items_of  # noqa: E402
from lib.config import DEFAULT_LABEL_SET, LABEL_SETS, PROFILES, NetworkProfile, TrainSettings, with_epochs_for_every_run  # noqa: E402
from lib.studies.folder_datastore import StudyFolderDatastore  # noqa: E402
from lib.trainers.evaluation import evaluate_on, evaluation_transforms  # noqa: E402
from lib.trainers.segmentation import BratsSegmentationTrainer  # noqa: E402
from synthetic.__main__ import main as generate  # noqa: E402

DEMO_SEED, DEMO_LABELLED = 0, 8  # scripts/demo.py: python -m synthetic with its default seed, the first 8 labelled
HELD_OUT_FIRST_INDEX = 1000


def parse_overrides(pairs: list) -> dict:
    fields = {f.name: f.type for f in dataclasses.fields(TrainSettings)}
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in fields:
            raise SystemExit(f"--set {pair}: unknown setting; known: {', '.join(fields)}")
        default = getattr(TrainSettings(), key)
        if isinstance(default, bool):
            out[key] = value.lower() in ("1", "true", "yes")
        elif default is not None:
            out[key] = type(default)(value)
        else:  # optional settings: a seed, or a patch size such as 48,48,48
            out[key] = tuple(int(v) for v in value.split(",")) if "," in value else int(value)
    return with_epochs_for_every_run(out)  # as --conf max_epochs does: these runs are all from scratch


def earlier_runs(path: Path, settings: TrainSettings, seeds: set) -> list:
    """The runs an earlier invocation of the same setting recorded for other seeds: seeds can be run a few at a
    time (interleaved with another setting's, so that both see the machine alike) and summarised together."""
    if not path.is_file():
        return []
    earlier = json.loads(path.read_text())
    if earlier.get("settings") != json.loads(json.dumps(dataclasses.asdict(settings))):
        return []  # another setting under this name: replaced, not mixed
    return [run for run in earlier.get("runs", []) if run["seed"] not in seeds]


def held_out_scores(profile: NetworkProfile, weights: Path, items: list) -> tuple:
    """Each study's mean Dice over the set's regions (TC, WT, ET; and RC after treatment), as validation scores it;
    each study's Dice per region and per label (the regions hide a necrotic core called enhancing tumour)."""
    scores = evaluate_on(profile, weights, items, evaluation_transforms(profile))
    means = [float(np.mean([region["dice"] for region in study.values()])) for study in scores["studies"].values()]
    regions = {region: [study[region]["dice"] for study in scores["studies"].values()] for region in scores["brats"]}
    return means, list(scores["label_studies"].values()), regions


def plot_curves(work: Path, path: Path, settings: Optional[Sequence[str]] = None) -> None:
    """The trainer's validation mean Dice per epoch, one line per run kept in ``work`` (of ``settings`` only, when
    named): how far apart seeds of one setting end up, which a table of final figures hides."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted((p.name.rsplit("_seed", 1), p) for p in work.glob("*_seed*") if (p / "model" / "train_stats.json").is_file())
    runs = [((setting, seed), p) for (setting, seed), p in runs if settings is None or setting in settings]
    palette = plt.get_cmap("tab10").colors
    colours = {setting: palette[i % len(palette)] for i, setting in enumerate(sorted({setting for (setting, _), _ in runs}))}
    fig, ax = plt.subplots(figsize=(9, 5))
    for (setting, seed), run in runs:
        history = json.loads((run / "model" / "train_stats.json").read_text()).get("history", [])
        epochs = [h["epoch"] for h in history]
        ax.plot(epochs, [h.get("val_mean_dice", np.nan) for h in history], color=colours[setting], alpha=0.8, label=f"{setting} seed {seed}")
    ax.axhline(0.85, color="grey", linestyle=":", label="target 0.85")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation mean Dice (the trainer's 2 studies)")
    ax.set_title("The demo's first model, one line per seed")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=100)
    parser.add_argument("--held-out", type=int, default=8)
    parser.add_argument("--spacing", type=float, default=1.0, help="of the generated studies (the demo's: 1 mm)")
    parser.add_argument("--set", nargs="*", default=[], help="training settings to change, key=value")
    parser.add_argument("--name", default="defaults")
    parser.add_argument("--labels", choices=sorted(LABEL_SETS), default=DEFAULT_LABEL_SET, help="the label set (brats2024_post: post-operative studies)")
    parser.add_argument("--work", type=Path, default=None, help="keep the generated studies here (reused when present)")
    parser.add_argument("--curves-only", action="store_true", help="only draw the validation curves of the runs kept in --work")
    parser.add_argument("--compare", nargs="*", default=[], help="settings (--name of earlier runs in --work) drawn beside this one's")
    args = parser.parse_args()
    out = REPO / "bench" / "results" / "first_model"
    if args.curves_only:
        if args.work is None:
            raise SystemExit("--curves-only needs --work, the folder of earlier runs")
        out.mkdir(parents=True, exist_ok=True)
        curves = out / ("validation_curves.png" if args.labels == DEFAULT_LABEL_SET else f"validation_curves_{args.labels}.png")
        plot_curves(args.work, curves, args.compare or None)
        print(f"validation curves: {curves}")
        return 0
    overrides = parse_overrides(args.set)
    settings = dataclasses.replace(TrainSettings(), **overrides)
    work = args.work or Path(tempfile.mkdtemp(prefix="first_model_"))
    label_set = LABEL_SETS[args.labels]
    profile = dataclasses.replace(PROFILES["cpu"], label_set=label_set)
    post = ["--post-treatment"] if args.labels != DEFAULT_LABEL_SET else []
    sample, held_out = work / "sample", work / "held_out"
    if not sample.is_dir():
        generate(["--out", str(sample), "--cases", str(DEMO_LABELLED), "--labelled", str(DEMO_LABELLED), "--seed", str(DEMO_SEED), "--spacing", str(args.spacing), *post])
    if not held_out.is_dir():
        generate(
            ["--out", str(held_out), "--cases", str(args.held_out), "--seed", str(DEMO_SEED), "--first-index", str(HELD_OUT_FIRST_INDEX), "--spacing", str(args.spacing), *post]
        )
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        items = items_of(held_out, Path(scratch), label_set)
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            run_dir = work / f"{args.name}_seed{seed}"
            shutil.rmtree(run_dir, ignore_errors=True)
            datastore = StudyFolderDatastore(sample, run_dir / "ws", label_set=label_set)
            trainer = BratsSegmentationTrainer(run_dir / "model", profile, settings, publish_path=run_dir / "model.pt")
            started = time.monotonic()
            stats = trainer({"device": "cpu", "seed": seed}, datastore)  # the epochs of a first model, as the demo asks
            seconds = time.monotonic() - started
            means, labels, regions = held_out_scores(profile, run_dir / "model.pt", items)
            run = {
                "seed": seed,
                "validation_mean_dice": round(float(stats.get("best_metric", 0.0)), 4),
                "held_out_mean_dice": round(float(np.mean(means)), 4),
                "held_out_min_study": round(float(np.min(means)), 4),
                "held_out_region_dice": {name: round(float(np.mean(values)), 4) for name, values in regions.items()},
                "held_out_label_dice": {name: round(float(np.mean([study[name] for study in labels])), 4) for name in labels[0]},
                "held_out_first_label_min_study": round(float(np.min([study[next(iter(study))] for study in labels])), 4),
                "train_s": round(seconds, 1),
            }
            runs.append(run)
            print(json.dumps(run), flush=True)
    runs = earlier_runs(out / f"{args.name}.json", settings, {r["seed"] for r in runs}) + runs
    held = [r["held_out_mean_dice"] for r in runs]
    summary = {
        "name": args.name,
        "labels": args.labels,
        "settings": dataclasses.asdict(settings),
        "overrides": overrides,
        "threads": torch.get_num_threads(),
        "held_out_studies": args.held_out,
        "runs": runs,
        "held_out_mean_dice": {"mean": round(float(np.mean(held)), 4), "min": round(float(np.min(held)), 4), "std": round(float(np.std(held)), 4)},
    }
    necrosis = [r["held_out_label_dice"]["necrotic_core"] for r in runs if "necrotic_core" in r.get("held_out_label_dice", {})]
    if necrosis:
        summary["held_out_necrotic_core_dice"] = {"mean": round(float(np.mean(necrosis)), 4), "min": round(float(np.min(necrosis)), 4)}
    (out / f"{args.name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_curves(work, out / ("validation_curves.png" if args.labels == DEFAULT_LABEL_SET else f"validation_curves_{args.labels}.png"), [args.name, *args.compare])
    print(f"\n{args.name}: held-out mean Dice over {len(runs)} seeds: mean {summary['held_out_mean_dice']['mean']:.3f}, min {summary['held_out_mean_dice']['min']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
