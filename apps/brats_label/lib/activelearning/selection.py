"""Choosing several studies at once, beyond "the highest scores".

- ``power_sample``: stochastic power sampling (Kirsch et al., "Stochastic Batch Acquisition", TMLR 2023). The
  top-k of a per-study score picks near-duplicates: studies that are uncertain for the same reason. Drawing
  without replacement with probability proportional to score**beta keeps the preference for uncertain
  studies and spreads the batch, at the cost of one sort.
- ``typiclust``: a cold-start pick (Hacohen et al., "Active Learning on a Budget", ICML 2022). With no model
  worth asking, label the most typical study of each cluster of the pool, so the first labels cover the
  kinds of studies the pool holds. Features come from all four sequences (``study_features``).
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Sequence

import numpy as np

FEATURE_BINS = 16  # histogram bins per sequence of brain intensities, z-scored within the brain
FEATURE_RANGE = (-3.0, 5.0)  # z-scores: tumour is bright on T2, FLAIR and T1c (the upper tail matters)
TYPICALITY_NEIGHBOURS = 5  # TypiClust's k for the typicality of a study within its cluster


def power_sample(scores: Mapping[str, float], count: int, rng: np.random.Generator, beta: float = 1.0) -> List[str]:
    """``count`` studies drawn without replacement, each with probability proportional to score**beta."""
    ids = sorted(scores)
    if count >= len(ids):
        return ids
    weights = np.array([max(float(scores[i]), 0.0) for i in ids]) ** beta + 1e-12
    picked = rng.choice(len(ids), size=count, replace=False, p=weights / weights.sum())
    return [ids[i] for i in picked]


def study_features(volume: np.ndarray) -> np.ndarray:
    """(C, X, Y, Z) image -> one vector: each sequence's histogram of z-scored brain intensities (the brain is
    where any sequence is non-zero: BraTS studies are skull-stripped)."""
    brain = np.any(volume != 0, axis=0)
    features = []
    for channel in volume:
        values = channel[brain].astype(np.float32)
        values = (values - values.mean()) / (values.std() + 1e-6)
        histogram, _ = np.histogram(values, bins=FEATURE_BINS, range=FEATURE_RANGE)
        features.append(histogram / max(1, values.size))
    return np.concatenate(features)


def typiclust(features: Mapping[str, np.ndarray], count: int, rng: np.random.Generator, labelled: Sequence[str] = ()) -> List[str]:
    """The most typical study of each of the ``count`` largest clusters that hold no labelled study; the pool is
    clustered into len(labelled) + count clusters (k-means)."""
    from sklearn.cluster import KMeans

    ids = sorted(features)
    candidates = [i for i in ids if i not in set(labelled)]
    if count >= len(candidates):
        return candidates
    matrix = np.stack([features[i] for i in ids])
    clusters = min(len(ids), len(labelled) + count)
    assignment = KMeans(clusters, n_init=10, random_state=int(rng.integers(2**31))).fit_predict(matrix)
    covered = {assignment[ids.index(i)] for i in labelled if i in features}
    sizes: Dict[int, int] = {int(c): int((assignment == c).sum()) for c in set(assignment.tolist()) - covered}
    picked: List[str] = []
    for cluster in sorted(sizes, key=lambda c: -sizes[c])[:count]:
        members = [i for i, c in zip(ids, assignment) if c == cluster and i in candidates]
        if not members:
            continue
        points = np.stack([features[i] for i in members])
        distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
        neighbours = np.sort(distances, axis=1)[:, 1 : TYPICALITY_NEIGHBOURS + 1]
        typicality = 1.0 / (neighbours.mean(axis=1) + 1e-8) if neighbours.size else np.ones(len(members))
        picked.append(members[int(np.argmax(typicality))])
    rest = [i for i in candidates if i not in picked]
    while len(picked) < count and rest:  # fewer uncovered clusters than asked: fill at random
        picked.append(rest.pop(int(rng.integers(len(rest)))))
    return picked
