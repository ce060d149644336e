"""Promotion: a candidate is compared with its parent study by study on the held-out set."""

from __future__ import annotations

from lib.trainers.promotion import compare


def _studies(dice: list) -> dict:
    return {f"S{i}": {region: {"dice": d} for region in ("et", "tc", "wt")} for i, d in enumerate(dice)}


PARENT = [0.80, 0.70, 0.90, 0.60, 0.75, 0.85, 0.65, 0.78]


def test_a_small_loss_on_every_study_is_refused_although_within_the_tolerance():
    result = compare(_studies([d - 0.02 for d in PARENT]), _studies(PARENT), tolerance=0.05, alpha=0.05)
    assert not result.promote and result.worse == 8 and result.p_worse is not None and result.p_worse < 0.05
    assert "worse study by study" in result.reason and "paired over 8 held-out studies" in result.reason


def test_mixed_differences_within_the_tolerance_are_served():
    candidate = [d + (0.03 if i % 2 else -0.03) for i, d in enumerate(PARENT)]
    result = compare(_studies(candidate), _studies(PARENT), tolerance=0.05, alpha=0.05)
    assert result.promote and result.better == 4 and result.worse == 4 and abs(result.mean_difference) < 1e-9


def test_a_mean_loss_beyond_the_tolerance_is_refused_even_on_few_studies():
    result = compare(_studies([0.5, 0.9]), _studies([0.8, 0.85]), tolerance=0.05, alpha=0.05)
    assert not result.promote and "below the parent by more than 0.05" in result.reason


def test_only_studies_scored_by_both_are_paired():
    candidate, parent = _studies([0.8, 0.8, 0.8]), _studies([0.8, 0.8])
    result = compare(candidate, parent, tolerance=0.01, alpha=0.05)
    assert result.studies == 2 and result.promote and result.p_worse is None
    assert compare({}, parent, 0.01, 0.05).promote
