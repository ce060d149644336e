"""Whether a new model version is served: a paired, study-by-study comparison with its parent.

Both models are scored on the same held-out studies, so each study gives one paired difference of mean Dice
(over TC, WT and ET). A candidate is refused when the mean of those differences is below ``-tolerance``, or
when a one-sided Wilcoxon signed-rank test finds it worse study by study (p < ``alpha``): a model that loses
a little on every study is worse even if the loss stays within the tolerance. With fewer than five differing
studies the test cannot reach 0.05 and the tolerance alone decides; the reason says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Mapping, Optional

import numpy as np
from scipy.stats import wilcoxon


def study_dice(scores: Mapping[str, Mapping[str, Any]]) -> float:
    """A study's mean Dice over its regions (``evaluation.evaluate_on``'s per-study scores: et, tc, wt; and rc after
    treatment)."""
    return float(np.mean([float(region["dice"]) for region in scores.values()]))


@dataclass(frozen=True)
class PairedComparison:
    studies: int  # held-out studies scored by both models
    candidate_mean: float
    parent_mean: float
    mean_difference: float  # candidate minus parent, mean over studies
    better: int  # studies where the candidate's Dice is higher
    worse: int
    p_worse: Optional[float]  # one-sided Wilcoxon signed-rank: the candidate is worse; None without differences
    promote: bool
    reason: str

    def record(self) -> Dict[str, Any]:
        return asdict(self)


def compare(candidate: Mapping[str, Mapping], parent: Mapping[str, Mapping], tolerance: float, alpha: float) -> PairedComparison:
    """Candidate against parent on the studies both were scored on ({study: {region: {"dice": ...}}})."""
    common = sorted(set(candidate) & set(parent))
    ours = np.array([study_dice(candidate[s]) for s in common])
    theirs = np.array([study_dice(parent[s]) for s in common])
    difference = ours - theirs
    n = len(common)
    if n == 0:
        return PairedComparison(0, float("nan"), float("nan"), 0.0, 0, 0, None, True, "no held-out studies to compare on yet")
    better, worse = int((difference > 0).sum()), int((difference < 0).sum())
    p_worse = float(wilcoxon(difference, alternative="less").pvalue) if better + worse else None
    mean_difference = float(difference.mean())
    counts = f"paired over {n} held-out {'study' if n == 1 else 'studies'}: better on {better}, worse on {worse}"
    test = f"Wilcoxon p(worse) = {p_worse:.3f}" if p_worse is not None else "no differences to test"
    means = f"mean Dice {ours.mean():.3f} against the parent's {theirs.mean():.3f}"
    if mean_difference < -tolerance:
        promote, reason = False, f"{means}: below the parent by more than {tolerance} ({counts}; {test})"
    elif p_worse is not None and p_worse < alpha:
        promote, reason = False, f"{means}: worse study by study ({counts}; {test} < {alpha}), below the parent although within {tolerance}"
    else:
        promote, reason = True, f"{means}: not worse beyond {tolerance} ({counts}; {test})"
    return PairedComparison(n, round(float(ours.mean()), 4), round(float(theirs.mean()), 4), round(mean_difference, 4), better, worse, p_worse, promote, reason)
