"""Input drift: new studies whose grid or intensities lie outside those of the studies the served model learned from.

Each prepared study has a few numbers (``studies/input_statistics.py``): voxel spacing, extent, the volume of its
support (the brain once extracted), and per sequence the median intensity and the 99th percentile over it. The
reference is the served version's training studies. A new study's number is out of range when it is further from
the reference median than ``DRIFT_ROBUST_SD`` robust standard deviations (1.4826 x the median absolute deviation),
and than ``DRIFT_MIN_FRACTION`` of the median: a handful of near-identical training studies would otherwise flag
every small difference. Such studies are named, with each number out of range and the range it should be in.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np

from ..config import DRIFT_MIN_FRACTION, DRIFT_ROBUST_SD


def features(stats: Mapping[str, Any]) -> Dict[str, float]:
    """The numbers compared, flat: spacing and extent per axis, support, each sequence's median and contrast."""
    out: Dict[str, float] = {}
    for key, value in stats.items():
        if isinstance(value, list):
            out.update({f"{key}[{axis}]": float(v) for axis, v in zip("xyz", value)})
        elif isinstance(value, (int, float)):
            out[key] = float(value)
    return out


def reference_ranges(training: Iterable[Mapping[str, Any]]) -> Dict[str, Tuple[float, float, float]]:
    """{feature: (median, low, high)} over the training studies' statistics."""
    table: Dict[str, List[float]] = {}
    for stats in training:
        for name, value in features(stats).items():
            table.setdefault(name, []).append(value)
    ranges = {}
    for name, values in table.items():
        median = float(np.median(values))
        spread = max(DRIFT_ROBUST_SD * 1.4826 * float(np.median(np.abs(np.asarray(values) - median))), DRIFT_MIN_FRACTION * abs(median))
        ranges[name] = (median, median - spread, median + spread)
    return ranges


def out_of_range(stats: Mapping[str, Any], ranges: Mapping[str, Tuple[float, float, float]]) -> List[Dict[str, Any]]:
    """The study's features outside their reference range, each with its value and the range."""
    found = []
    for name, value in features(stats).items():
        if name in ranges:
            _, low, high = ranges[name]
            if not low <= value <= high:
                found.append({"feature": name, "value": round(value, 3), "low": round(low, 3), "high": round(high, 3)})
    return found


def input_drift(training: Mapping[str, Mapping[str, Any]], new: Mapping[str, Mapping[str, Any]], served: Optional[str]) -> Dict[str, Any]:
    """New studies (``new``: case -> statistics, {} when not prepared yet) against ``training`` (the served model's)."""
    measured = {case: stats for case, stats in training.items() if stats}
    ranges = reference_ranges(measured.values())
    flagged, unmeasured = [], 0
    for case, stats in sorted(new.items()):
        if not stats:
            unmeasured += 1
            continue
        found = out_of_range(stats, ranges) if ranges else []
        if found:
            flagged.append({"case": case, "out_of_range": found})
    return {
        "served": served,
        "reference_studies": len(measured),
        "new_studies": len(new) - unmeasured,
        "not_prepared_yet": unmeasured,
        "ranges": {name: {"median": round(m, 3), "low": round(lo, 3), "high": round(hi, 3)} for name, (m, lo, hi) in sorted(ranges.items())},
        "out_of_range": flagged,
    }
