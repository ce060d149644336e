"""A picture of a training run: loss and validation Dice per region against epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..runtime.atomic import atomic_path  # noqa: E402

REGION_PREFIX, MEAN_KEY = "val_dice_", "val_mean_dice"  # the trainer's per-region and mean validation Dice


def region_keys(records: Iterable[Mapping[str, Any]]) -> Dict[str, str]:
    """{metric key: region name} of the validation Dice in ``records`` (TC, WT, ET, and RC after treatment, in the
    network's order), then the mean."""
    keys: Dict[str, str] = {}
    for record in records:
        keys.update({key: key[len(REGION_PREFIX) :].upper() for key in record if key.startswith(REGION_PREFIX) and key not in keys})
    return {**keys, MEAN_KEY: "mean"}


def save_training_curve(history: List[Dict[str, Any]], path: Path, title: str = "") -> Path:
    epochs = [h["epoch"] for h in history]
    figure, (dice_ax, loss_ax) = plt.subplots(1, 2, figsize=(9, 3.4))
    for key, name in region_keys(history).items():
        values = [h.get(key) for h in history]
        if any(v is not None for v in values):
            dice_ax.plot(epochs, values, marker="o", markersize=3, label=name, linewidth=2.5 if name == "mean" else 1.5)
    dice_ax.set(xlabel="epoch", ylabel="validation Dice", ylim=(0, 1), title="validation Dice")
    dice_ax.grid(alpha=0.3)
    if dice_ax.lines:  # runs without a validation split have no Dice to show
        dice_ax.legend(loc="lower right", fontsize=8)
    losses = [h.get("loss") for h in history]
    loss_ax.plot(epochs, losses, marker="o", markersize=3, color="black")
    loss_ax.set(xlabel="epoch", ylabel="training loss (Dice + cross-entropy)", title="training loss")
    loss_ax.grid(alpha=0.3)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    with atomic_path(Path(path)) as tmp:
        figure.savefig(tmp, dpi=90, format="png")
    plt.close(figure)
    return Path(path)
