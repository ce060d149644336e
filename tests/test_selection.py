"""Batch selection: stochastic power sampling and the TypiClust cold start."""

from __future__ import annotations

from collections import Counter

import numpy as np

from lib.activelearning.selection import power_sample, study_features, typiclust


def test_power_sampling_prefers_uncertain_studies_without_always_taking_the_top():
    scores = {"a": 4.0, "b": 2.0, "c": 1.0, "d": 1.0}
    rng = np.random.default_rng(0)
    firsts = Counter(power_sample(scores, 1, rng)[0] for _ in range(4000))
    assert abs(firsts["a"] / 4000 - 0.5) < 0.03 and abs(firsts["b"] / 4000 - 0.25) < 0.03, firsts
    batch = power_sample(scores, 3, rng)
    assert len(set(batch)) == 3 and set(batch) <= set(scores)
    assert sorted(power_sample(scores, 9, rng)) == sorted(scores)
    sharper = Counter(power_sample(scores, 1, rng, beta=4.0)[0] for _ in range(2000))
    assert sharper["a"] > 1800, "a larger beta is closer to the top score"


def _blobs(rng):
    centres = {"x": (0.0, 0.0), "y": (10.0, 0.0), "z": (0.0, 10.0)}
    features = {}
    for name, centre in centres.items():
        for i in range(8):
            features[f"{name}{i}"] = np.array(centre) + rng.normal(0, 0.5, 2)
        features[f"{name}_centre"] = np.array(centre)  # the most typical member of its blob
    return features


def _typical(features, picked) -> bool:
    """Each pick nearer its blob's centre than most of its blob."""
    for case in picked:
        blob = [v for k, v in features.items() if k[0] == case[0]]
        distances = [np.linalg.norm(v - features[f"{case[0]}_centre"]) for v in blob]
        if np.linalg.norm(features[case] - features[f"{case[0]}_centre"]) > np.median(distances):
            return False
    return True


def test_typiclust_takes_a_typical_study_of_each_cluster():
    features = _blobs(np.random.default_rng(1))
    picked = typiclust(features, 3, np.random.default_rng(2))
    assert sorted(p[0] for p in picked) == ["x", "y", "z"] and _typical(features, picked), picked


def test_typiclust_skips_clusters_that_already_hold_a_label():
    features = _blobs(np.random.default_rng(1))
    picked = typiclust(features, 2, np.random.default_rng(2), labelled=["x3"])
    assert sorted(p[0] for p in picked) == ["y", "z"] and _typical(features, picked), picked


def test_study_features_see_all_four_sequences_and_ignore_overall_brightness():
    rng = np.random.default_rng(3)
    volume = np.zeros((4, 20, 20, 20), dtype=np.float32)
    volume[:, 5:15, 5:15, 5:15] = rng.gamma(4.0, 100.0, (4, 10, 10, 10))
    features = study_features(volume)
    assert features.shape == (4 * 16,) and np.allclose(features.reshape(4, 16).sum(axis=1), 1.0, atol=0.02)
    assert np.allclose(study_features(volume * 3.0), features), "a scanner's gain does not move a study"
    brighter_flair = volume.copy()
    brighter_flair[3, 8:12, 8:12, 8:12] *= 4.0  # a FLAIR-bright lesion
    assert not np.allclose(study_features(brighter_flair)[48:], features[48:])
