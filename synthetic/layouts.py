"""Write studies in the folder layouts real BraTS data come in.

- ``brats2023``: ``<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz``, labels 1 NETC, 2 SNFH, 3 ET.
- ``brats2021``: ``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``, enhancing tumour stored as 4.
- ``msd``: Medical Segmentation Decathlon Task01: ``imagesTr/<case>.nii.gz`` 4D in the order
  FLAIR, T1w, t1gd, T2w; ``labelsTr/<case>.nii.gz`` with 1 edema, 2 non-enhancing, 3 enhancing;
  unlabelled cases in ``imagesTs/``; ``dataset.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional

import nibabel as nib
import numpy as np

from .glioma import EDEMA, ENHANCING, NECROTIC_CORE
from .study import SyntheticStudy

LAYOUTS = ("brats2023", "brats2021", "msd")

BRATS2023_SUFFIX = {"t1": "t1n", "t1c": "t1c", "t2": "t2w", "flair": "t2f"}
BRATS2021_SUFFIX = {"t1": "t1", "t1c": "t1ce", "t2": "t2", "flair": "flair"}
BRATS2021_ENHANCING = 4
MSD_ORDER = ("flair", "t1", "t1c", "t2")
MSD_MODALITY_NAMES = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
MSD_LABELS = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}
MSD_VALUE = {NECROTIC_CORE: 2, EDEMA: 1, ENHANCING: 3}


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))


def case_name(layout: str, index: int) -> str:
    return {"brats2023": f"BraTS-GLI-{index:05d}-000", "brats2021": f"BraTS2021_{index:05d}", "msd": f"BRATS_{index:03d}"}[layout]


def write_study(study: SyntheticStudy, out_dir: Path, layout: str, with_label: bool, label_dir: Optional[Path] = None) -> Dict[str, str]:
    """Write one study; return {role: path}. ``label_dir``, if given, receives the ground truth of an unlabelled study."""
    name = study.case_id
    written: Dict[str, str] = {}
    if layout in ("brats2023", "brats2021"):
        suffixes = BRATS2023_SUFFIX if layout == "brats2023" else BRATS2021_SUFFIX
        sep = "-" if layout == "brats2023" else "_"
        for modality, suffix in suffixes.items():
            path = out_dir / name / f"{name}{sep}{suffix}.nii.gz"
            _save(study.images[modality], study.affine, path)
            written[modality] = str(path)
        label = study.label.copy()
        if layout == "brats2021":
            label[label == ENHANCING] = BRATS2021_ENHANCING
        target = out_dir / name / f"{name}{sep}seg.nii.gz" if with_label else (label_dir / f"{name}{sep}seg.nii.gz" if label_dir else None)
    elif layout == "msd":
        stacked = np.stack([study.images[m] for m in MSD_ORDER], axis=-1)
        path = out_dir / ("imagesTr" if with_label else "imagesTs") / f"{name}.nii.gz"
        _save(stacked, study.affine, path)
        written["image"] = str(path)
        label = np.zeros_like(study.label)
        for value, msd_value in MSD_VALUE.items():
            label[study.label == value] = msd_value
        target = out_dir / "labelsTr" / f"{name}.nii.gz" if with_label else (label_dir / f"{name}.nii.gz" if label_dir else None)
    else:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if target is not None:
        _save(label.astype(np.uint8), study.affine, target)
        written["label"] = str(target)
    return written


def write_msd_dataset_json(out_dir: Path) -> None:
    training = sorted(p.name for p in (out_dir / "imagesTr").glob("*.nii.gz"))
    test = sorted(p.name for p in (out_dir / "imagesTs").glob("*.nii.gz"))
    description = {
        "name": "BRATS",
        "description": "Synthetic BraTS-like studies (BraTS Label sample generator)",
        "tensorImageSize": "4D",
        "modality": MSD_MODALITY_NAMES,
        "labels": MSD_LABELS,
        "numTraining": len(training),
        "numTest": len(test),
        "training": [{"image": f"./imagesTr/{n}", "label": f"./labelsTr/{n}"} for n in training],
        "test": [f"./imagesTs/{n}" for n in test],
    }
    (out_dir / "dataset.json").write_text(json.dumps(description, indent=2))


def write_raw_study(raw, out_dir: Path, with_label: bool, truth_dir: Optional[Path] = None) -> Dict[str, str]:
    """A ``head.RawStudy`` in the BraTS 2023 layout, each series on its own grid as the scanner wrote it (what a
    lab's ``dcm2niix`` export gives); the label, if written, on the T1c's grid. ``truth_dir`` receives what a
    benchmark scores against: the brain mask (T1c grid) and each series' motion (JSON, 4x4 RAS)."""
    name = raw.case_id
    written: Dict[str, str] = {}
    for modality, suffix in BRATS2023_SUFFIX.items():
        volume, affine = raw.series[modality]
        path = out_dir / name / f"{name}-{suffix}.nii.gz"
        _save(volume, affine, path)
        written[modality] = str(path)
    reference = raw.series["t1c"][1]
    if with_label:
        _save(raw.label.astype(np.uint8), reference, out_dir / name / f"{name}-seg.nii.gz")
        written["label"] = str(out_dir / name / f"{name}-seg.nii.gz")
    if truth_dir is not None:
        _save(raw.label.astype(np.uint8), reference, truth_dir / f"{name}-seg.nii.gz")
        _save(raw.brain.astype(np.uint8), reference, truth_dir / f"{name}-brain.nii.gz")
        (truth_dir / f"{name}-motion.json").write_text(json.dumps({m: t.tolist() for m, t in raw.motion.items()}, indent=1))
        written["truth"] = str(truth_dir)
    return written
