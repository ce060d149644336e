"""A PNG montage of a study: each modality through the tumour centre, and the label overlaid on FLAIR."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

# BraTS colours used by most viewers: necrotic core red, edema green, enhancing yellow.
LABEL_COLOURS = {1: (0.9, 0.1, 0.1), 2: (0.1, 0.8, 0.2), 3: (1.0, 0.85, 0.0)}
LABEL_NAMES = {1: "necrotic core", 2: "edema", 3: "enhancing"}
# BraTS 2024 post-treatment: the same colours for its first three labels, the resection cavity blue.
POST_TREATMENT_COLOURS = {**LABEL_COLOURS, 4: (0.2, 0.4, 1.0)}
POST_TREATMENT_NAMES = {1: "non-enhancing core", 2: "FLAIR hyperintensity", 3: "enhancing", 4: "resection cavity"}


def _slices(volume: np.ndarray, centre: tuple[int, int, int]) -> Dict[str, np.ndarray]:
    """Radiological display through ``centre``: anterior/superior up, patient's left on the image right,
    sagittal facing left."""
    x, y, z = centre
    planes = {"axial": volume[:, :, z], "coronal": volume[:, y, :], "sagittal": volume[x, :, :]}
    return {view: np.fliplr(np.rot90(plane)) for view, plane in planes.items()}


def save_montage(
    images: Dict[str, np.ndarray],
    label: Optional[np.ndarray],
    path: Path,
    title: str = "",
    channel_order=("t1", "t1c", "t2", "flair"),
    colours: Dict[int, tuple] = LABEL_COLOURS,
    names: Dict[int, str] = LABEL_NAMES,
) -> Path:
    """``images`` are (X, Y, Z) arrays in RAS; ``label`` (X, Y, Z) with the values of ``colours`` (1-3), or None."""
    values = sorted(colours)
    reference = label if label is not None and label.any() else images[channel_order[-1]]
    centre = tuple(int(c) for c in np.round(np.argwhere(reference > 0).mean(axis=0)))
    columns = list(channel_order) + (["label"] if label is not None else [])
    views = ("axial", "coronal", "sagittal")
    figure, axes = plt.subplots(len(views), len(columns), figsize=(2.6 * len(columns), 2.6 * len(views)), squeeze=False)
    overlay_cmap = ListedColormap([(0, 0, 0, 0)] + [(*colours[v], 0.55) for v in values])
    for col, name in enumerate(columns):
        base = images[channel_order[-1]] if name == "label" else images[name]
        vmax = float(np.percentile(base[base > 0], 99.5)) if (base > 0).any() else 1.0
        base_slices = _slices(base, centre)
        label_slices = _slices(label, centre) if name == "label" else None
        for row, view in enumerate(views):
            ax = axes[row, col]
            ax.imshow(base_slices[view], cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
            if label_slices is not None:
                ax.imshow(label_slices[view], cmap=overlay_cmap, vmin=0, vmax=len(values), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name.upper() if name != "label" else "FLAIR + label", fontsize=10)
            if col == 0:
                ax.set_ylabel(view, fontsize=10)
    if label is not None:
        handles = [plt.Rectangle((0, 0), 1, 1, color=colours[v]) for v in values]
        figure.legend(handles, [names[v] for v in values], loc="lower center", ncol=len(values), frameon=False)
    if title:
        figure.suptitle(title, fontsize=11)
    figure.tight_layout(rect=(0, 0.05 if label is not None else 0, 1, 0.95 if title else 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path
