"""Label values: map imported conventions to ours, and check labels before they are stored."""

from __future__ import annotations

import re
from typing import Iterable, Optional

import numpy as np

from ..config import DEFAULT_LABEL_SET, LABEL_CONVENTIONS
from .label_set import LabelSet


class LabelError(ValueError):
    """A label cannot be stored; the message says what is wrong and what to send instead."""


def segment_name_key(name: str) -> str:
    """Viewers spell segment names their own way: "Enhancing tumour", "enhancing_tumour", "enhancing-tumour"."""
    return re.sub(r"[\s_-]+", "_", name.strip().lower())


def value_of_segment_name(name: str, label_set: LabelSet) -> Optional[int]:
    """Our label value for a segment name, or None; the one place names are matched (SEG, NRRD, NIfTI uploads).
    A segment's reader's name ("non-enhancing tumour core") is matched as its name is."""
    key = segment_name_key(name)
    for segment in label_set.segments:
        if key in (segment_name_key(segment.name), segment_name_key(segment.title)):
            return segment.value
    return None


def brats_convention(values: Iterable[int], label_set: LabelSet) -> str:
    """BraTS files do not say their convention: before treatment, enhancing tumour is 4 before 2023 and 3 since;
    the post-treatment set (BraTS 2024) has its own values, 4 the resection cavity."""
    if label_set.name != DEFAULT_LABEL_SET:
        return label_set.name
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


def check_label_values(label: np.ndarray, label_set: LabelSet) -> np.ndarray:
    """Return ``label`` as uint8 if every value is one of the set's; otherwise say which are not."""
    values = np.unique(label)
    bad = [v for v in values.tolist() if v not in label_set.values]
    if bad:
        shown = ", ".join(f"{v:g}" for v in bad[:8])
        meanings = ", ".join(f"{segment.value} {segment.title}" for segment in label_set.segments)
        older = "; BraTS 2021 files with 4 are imported, not saved" if label_set.name == DEFAULT_LABEL_SET else ""
        raise LabelError(f"label has values {shown}: allowed are {list(label_set.values)} (0 background, {meanings}{older})")
    return label.astype(np.uint8)
