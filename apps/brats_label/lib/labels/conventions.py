"""Label values: map imported conventions to ours, and check labels before they are stored."""

from __future__ import annotations

import re
from typing import Dict, Iterable, Optional

import numpy as np

from ..config import LABEL_CONVENTIONS, LABEL_VALUES, LABELS, REGIONS


class LabelError(ValueError):
    """A label cannot be stored; the message says what is wrong and what to send instead."""


def segment_name_key(name: str) -> str:
    """Viewers spell segment names their own way: "Enhancing tumour", "enhancing_tumour", "enhancing-tumour"."""
    return re.sub(r"[\s_-]+", "_", name.strip().lower())


def value_of_segment_name(name: str) -> Optional[int]:
    """Our label value for a segment name, or None; the one place names are matched (SEG, NRRD, NIfTI uploads)."""
    value = {segment_name_key(k): v for k, v in LABELS.items() if v}.get(segment_name_key(name))
    return int(value) if value is not None else None


def brats_convention(values: Iterable[int]) -> str:
    """BraTS files do not say their convention: enhancing tumour is 4 before 2023 and 3 since."""
    present = set(int(v) for v in values)
    if 3 in present and 4 in present:
        raise LabelError("label holds both 3 and 4: neither the BraTS 2021 (enhancing = 4) nor the 2023 (enhancing = 3) convention")
    return "brats2021" if 4 in present else "brats2023"


def to_project_convention(label: np.ndarray, convention: str) -> np.ndarray:
    """(X, Y, Z) label in ``convention`` -> uint8 label in ours (see config.LABELS)."""
    mapping = LABEL_CONVENTIONS[convention]
    values = np.unique(label)
    unknown = sorted(int(v) for v in values if int(v) not in mapping or v != int(v))
    if unknown:
        raise LabelError(f"label values {unknown} are not part of the {convention} convention (allowed: {sorted(mapping)})")
    lookup = np.zeros(max(mapping) + 1, dtype=np.uint8)
    for source, target in mapping.items():
        lookup[source] = target
    return lookup[label.astype(np.int64)]


def check_label_values(label: np.ndarray) -> np.ndarray:
    """Return ``label`` as uint8 if every value is one of ours; otherwise say which are not."""
    values = np.unique(label)
    bad = [v for v in values.tolist() if v not in LABEL_VALUES]
    if bad:
        shown = ", ".join(f"{v:g}" for v in bad[:8])
        raise LabelError(
            f"label has values {shown}: allowed are {list(LABEL_VALUES)} "
            "(0 background, 1 necrotic core, 2 edema, 3 enhancing tumour; BraTS 2021 files with 4 are imported, not saved)"
        )
    return label.astype(np.uint8)


def region_masks(label: np.ndarray) -> Dict[str, np.ndarray]:
    """{TC, WT, ET: bool mask} from a label in our convention."""
    return {name: np.isin(label, values) for name, values in REGIONS.items()}
