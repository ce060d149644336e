"""A click corrects the tissue it lands on, not only its voxel: the refinement model's answer, grown from each click.

The guided network reads clicks as Gaussians of a few millimetres; an annotator clicks once in a missed edema of
several centimetres and expects it filled. So after the network answers, each click that lands on a voxel of a
different label relabels the connected tissue around it that looks like the clicked voxel (ITK's ConfidenceConnected
region growing, on the four z-scored sequences, restricted to voxels the answer gave that same wrong label, within
``ClickGrowth.radius_mm``), and looks more like it than like the rest of that label around the click (so a click on a
false edema beside a true one takes the false part, not both). The clicked tissue is what lies within a few
millimetres of the click and looks more like the clicked voxel than like that rest: a click at the heart of a thin
error has more of the tissue beside it than of the error within reach. ITK's filter has no mask, and its statistics would
mix in the regions it must not enter, hence the few lines here. MONAI Label's scribbles apps refine a network's
answer from the user's strokes the same way (an image-driven step after the network, rather than inside it).

Three rules shape the region further. A click just beyond the edge of the label it sets (the partial volume the answer
leaves along a tumour's edge) takes, within reach, what looks more like that label's tissue than like what lies
beyond the edge, connected through the label (``_label_edge``). Where nothing of the label under it lies beyond that
edge's band (a falsely thick enhancing ring), a click on a partial-volume voxel takes what looks at least as like the
clicked label as that voxel does (``_partial_volume_edge``). And a grown region must stop at an edge, else the click
takes only its clicked tissue (``_has_edge``: a click on smoothly brightening brain grew tens of millilitres). The
clicked label's look is read from the network's answer to no clicks, not from what earlier clicks relabelled.

What a click may change: only voxels of the label found under it, near it, into the clicked label; never another
region, never beyond the radius. The clicked voxels themselves (within ``seed_radius_mm``) always show the clicked
label: a click on a voxel the answer to no clicks already gave its label grows nothing, but keeps that label there
whatever the network made of it since (else the robot user, like an annotator, clicked the same error again and again).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Dict, Hashable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from scipy import ndimage

from ..config import CHANNELS, GROWN_REGIONS_KEPT, GUIDANCE_LABELS, LABELS, REGION_THRESHOLD, REGIONS, ClickGrowth
from .click_reach import within_mm
from .click_rounds import region_channels_to_label


class _Gaussian:
    """Mean and covariance of a sample of voxels' sequence values (N, C), each sequence's spread floored."""

    def __init__(self, sample: np.ndarray, min_std: float):
        channels = sample.shape[1]
        self.mean = sample.mean(axis=0)
        covariance = np.atleast_2d(np.cov(sample, rowvar=False)) if len(sample) > 1 else np.zeros((channels, channels))
        covariance = covariance + np.eye(channels) * min_std**2
        self.inverse = np.linalg.inv(covariance)
        self.log_det = float(np.linalg.slogdet(covariance)[1])

    def squared_distance(self, values: np.ndarray) -> np.ndarray:
        centred = values - self.mean
        return np.einsum("nc,cd,nd->n", centred, self.inverse, centred)

    def log_likelihood(self, values: np.ndarray) -> np.ndarray:
        return -0.5 * (self.squared_distance(values) + self.log_det)


def grown_region(
    image: np.ndarray,
    labels: np.ndarray,
    voxel: Sequence[int],
    spacing_mm: Union[Sequence[float], np.ndarray],
    growth: ClickGrowth,
    label: Optional[int] = None,
    label_voxels: Optional[np.ndarray] = None,
) -> Optional[np.ndarray]:
    """The voxels a click at ``voxel`` relabels: a boolean mask of ``labels``' shape, or None when the click has
    nothing to grow (off the grid, outside the brain, or no growth asked for). ``image``: the prepared sequences
    (C, X, Y, Z), zero outside the brain; ``labels``: the answer so far; ``label``: the clicked label;
    ``label_voxels``: for a click that relabels tumour, the labels the clicked label's own look is read from (the edge
    rules; ``labels`` when None). Read from the network's answer to no clicks, an earlier click's partial-volume voxels
    do not blur that look (a necrotic-core click after another took 54 % of a falsely thick ring: ET Dice 0.61 ->
    0.04). A click on background reads it from ``labels``: there an earlier click's edema is the edema's edge to move
    (read from the answer to no clicks, two weak studies of fresh 10000 needed a click more)."""
    around = _around(image, labels, voxel, spacing_mm, growth)
    if around is None:
        return None
    box, crop, local, allowed, own, reach = around
    channels_last = np.moveaxis(crop, 0, -1)
    values = channels_last[allowed]  # (N, C): the voxels the click may take
    seed, rest = own[allowed], ~own[allowed]
    # what the click would take from: the rest of that label around it, as the answer has it
    others = _Gaussian(values[rest], growth.min_std) if rest.sum() > values.shape[1] else None
    if others is not None and growth.seed_like_click:
        # the clicked tissue: the voxels round the click that look more like the clicked voxel than like the rest of
        # the label; a click at the heart of a thin missed edema has mostly normal brain within a few millimetres
        clicked = channels_last[tuple(local)]
        like = np.zeros_like(allowed)
        like[allowed] = np.linalg.norm(values - clicked, axis=1) < np.linalg.norm(values - others.mean, axis=1)
        like[tuple(local)] = True  # the clicked voxel itself
        seed = seed & like[allowed]
    relabels_tumour = labels[tuple(voxel)] != 0
    look_from = label_voxels if label_voxels is not None and relabels_tumour else labels
    labelled = look_from[box] == label if label is not None else None
    region: Optional[np.ndarray] = None
    label_nearby = _near_label(labelled, reach, allowed, own, spacing_mm, growth)  # read by both edge rules
    edge = _label_edge(channels_last, label_nearby, tuple(local), growth)
    if edge is not None:
        # a click just beyond the clicked label's edge: the voxels within reach more like that label's tissue than
        # like what lies beyond the edge, connected to the click through the label itself
        region = _edge_region(edge, values, allowed, tuple(local))
    elif relabels_tumour:
        edge = _partial_volume_edge(channels_last, label_nearby, tuple(local), growth)
        if edge is not None:
            # a click on partial volume near the clicked label: what looks at least as like that label, where it
            # stops at an edge (a uniform band cut in two has none: then as any click below)
            region = _edge_region(edge, values, allowed, tuple(local))
            region = region if _has_edge(channels_last, region, allowed, own, growth) else None
    if region is None:
        # Only a click that relabels tumour is judged so (``ClickGrowth.separate_from_background``): the background
        # round a missed tumour is brain and that tumour mixed, whose spread hides any tissue (a click on a missed
        # edema of 40 mL had grown 33 voxels).
        judged = growth.separate_from_background or relabels_tumour
        if judged and others is not None and np.sqrt(others.squared_distance(values[seed].mean(axis=0, keepdims=True))[0]) < growth.min_separation:
            # the clicked tissue looks like the rest of that label: nothing tells which of it the annotator meant
            near = np.zeros(labels.shape, dtype=bool)
            near[box] = own  # only the clicked voxels themselves
            return near
        region = _grown_from_clicked_tissue(values, seed, others, allowed, tuple(local), growth)
        if not _looks_like_label(channels_last, region, label_nearby, growth):
            region = np.zeros_like(allowed)  # grown over other tissue: only the clicked tissue below
    if not _has_edge(channels_last, region, allowed, own, growth):
        region = np.zeros_like(allowed)  # no edge stopped it: only the clicked tissue below
    mask = np.zeros(labels.shape, dtype=bool)
    mask[box] = region
    mask[box][allowed] |= seed  # the clicked tissue itself always takes the click's label
    return mask


def _edge_region(edge: Tuple[np.ndarray, _Gaussian, _Gaussian, float], values: np.ndarray, allowed: np.ndarray, at: Tuple[int, ...]) -> np.ndarray:
    """The voxels whose log-likelihood ratio, the clicked label's tissue against the label under the click, reaches the
    edge's threshold, connected to the click through the clicked label's voxels."""
    kin, tissue, beyond, threshold = edge
    inside = kin.copy()
    inside[allowed] = tissue.log_likelihood(values) - beyond.log_likelihood(values) >= threshold
    return _component_at(inside, at) & allowed


def _grown_from_clicked_tissue(values: np.ndarray, seed: np.ndarray, others: Optional[_Gaussian], allowed: np.ndarray, at: Tuple[int, ...], growth: ClickGrowth) -> np.ndarray:
    """ITK's ConfidenceConnected from the clicked tissue, within ``multiplier`` standard deviations of the grown
    region and more like it than like the rest of the label (``others``)."""
    rival = others.log_likelihood(values) if others is not None else np.full(len(values), -np.inf)
    taken = seed
    region = np.zeros_like(allowed)
    for _ in range(growth.iterations + 1):
        clicked = _Gaussian(values[taken], growth.min_std)
        alike = (clicked.squared_distance(values) <= growth.multiplier**2) & (clicked.log_likelihood(values) > rival)
        inside = np.zeros_like(allowed)
        inside[allowed] = alike
        region = _component_at(inside, at)
        taken = region[allowed]
    return region


def _component_at(inside: np.ndarray, at: Tuple[int, ...]) -> np.ndarray:
    """The connected part of ``inside`` that holds ``at``; the clicked voxel is always in its own region."""
    inside[at] = True
    components, _ = ndimage.label(inside)
    return components == components[at]


def _label_edge(
    values: np.ndarray, near: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]], clicked: Tuple[int, ...], growth: ClickGrowth
) -> Optional[Tuple[np.ndarray, _Gaussian, _Gaussian, float]]:
    """Whether a click stands just beyond the edge of the label it sets: the clicked label's voxels within reach
    (``_near_label``), the look of their tissue and of the label under the click beyond ``edge_band_mm`` from
    them, when the clicked voxel looks more like the first, and the log-likelihood ratio between the two a voxel must
    reach to be taken (0). A click there says "this too is that edema": the voxels between are partial volume, midway
    between the two, and the clicked tissue's own few voxels say too little of them (the band the answer leaves round
    a whole tumour breaks into hundreds of pieces; each click took 0.5-2 mL of it). ``near``: ``_near_label``'s answer.
    None: not such a click (the label too small there, or the clicked voxel more like what lies beyond)."""
    if near is None:
        return None
    kin, in_band, candidates = near
    beyond = candidates & ~in_band
    if beyond.sum() <= values.shape[-1]:
        return None
    tissue, rest = _Gaussian(values[kin], growth.min_std), _Gaussian(values[beyond], growth.min_std)
    at = values[clicked][None]
    return (kin, tissue, rest, 0.0) if tissue.log_likelihood(at)[0] > rest.log_likelihood(at)[0] else None


def _partial_volume_edge(
    values: np.ndarray, near: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]], clicked: Tuple[int, ...], growth: ClickGrowth
) -> Optional[Tuple[np.ndarray, _Gaussian, _Gaussian, float]]:
    """Where ``_label_edge`` finds no edge, a click that relabels tumour within ``edge_band_mm`` of the clicked label,
    on a voxel that is partial volume between the two (``edge_at_click_min_mix`` of the way from the label under it to
    the clicked label): the clicked label's voxels within reach, the look of their tissue and of the label under the
    click within reach, and the ratio a voxel must reach to be taken, the clicked voxel's own. A model that thickens
    an enhancing ring by a voxel each side leaves a ring all within the band of the edema and the necrosis round it
    (nothing of it beyond the band to judge by), its false voxels midway between them and the ring; a click on one
    took only its own voxels (fresh study 09011: ET 0.68 over 8 clicks). A click on the ring's own tissue is no such
    click."""
    if not growth.edge_at_click or near is None:
        return None
    kin, in_band, candidates = near
    if not in_band[clicked] or candidates.sum() <= values.shape[-1]:
        return None
    tissue, rest, at = _Gaussian(values[kin], growth.min_std), _Gaussian(values[candidates], growth.min_std), values[clicked][None]
    towards = tissue.mean - rest.mean
    if float((at[0] - rest.mean) @ towards / max(float(towards @ towards), 1e-6)) < growth.edge_at_click_min_mix:
        return None
    return kin, tissue, rest, min(0.0, float(tissue.log_likelihood(at)[0] - rest.log_likelihood(at)[0]))


def _near_label(
    labelled: Optional[np.ndarray], reach: np.ndarray, allowed: np.ndarray, own: np.ndarray, spacing_mm: Union[Sequence[float], np.ndarray], growth: ClickGrowth
) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The clicked label's voxels within reach, the voxels of the click's box within ``edge_band_mm`` of them, and the
    voxels the click may take beyond its own; None where the label is too small there to have an edge."""
    if labelled is None or not growth.grow_with_label_nearby:
        return None
    kin = labelled & reach
    if kin.sum() < growth.edge_min_region_voxels:
        return None
    return kin, within_mm(kin, spacing_mm, growth.edge_band_mm), allowed & ~own


def _looks_like_label(values: np.ndarray, region: np.ndarray, near: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]], growth: ClickGrowth) -> bool:
    """Whether a region grown from the clicked tissue looks, on average, more like the clicked label's voxels within
    reach than like the tissue it takes from; true where that label has too few voxels there to tell (a wholly
    missed edema). A click on the partial volume at a tumour's edge stands on tissue half like the tumour, half like
    the brain, and grew over the brain (fresh study 07006: an enhancing-tumour click took 76 mL of white matter,
    ET Dice 0.79 -> 0.07). ``near``: ``_near_label``'s answer."""
    if not growth.grown_like_label or near is None:
        return True
    kin, _, candidates = near
    if candidates.sum() <= values.shape[-1]:
        return True
    mean = values[region].mean(axis=0, keepdims=True)
    label, rest = _Gaussian(values[kin], growth.min_std), _Gaussian(values[candidates], growth.min_std)
    return bool(label.log_likelihood(mean)[0] >= rest.log_likelihood(mean)[0])


def _has_edge(values: np.ndarray, region: np.ndarray, allowed: np.ndarray, own: np.ndarray, growth: ClickGrowth) -> bool:
    """Whether a grown region stops at an edge: the voxels just beyond it that it could have taken (its rim) differ
    from it by at least ``growth.min_edge`` standard deviations (Mahalanobis, the spread of the rest of the label
    round the click). A missed edema ends at normal brain; a click on a smooth continuum of normal brain (a bias field,
    partial volume at the edge of a thin error) grows as far as the multiplier lets it and stops on tissue as like
    it as what it took (fresh study 07005: 47 mL of normal brain). Too small a region or rim to tell: it has one."""
    if growth.min_edge <= 0 or region.sum() < growth.edge_min_region_voxels:
        return True
    rim = ndimage.binary_dilation(region) & ~region & allowed
    others = allowed & ~own & ~region
    if rim.sum() < growth.edge_min_rim_voxels or others.sum() <= values.shape[-1]:
        return True
    difference = values[region].mean(axis=0) - values[rim].mean(axis=0)
    spread = _Gaussian(values[others], growth.min_std)
    return bool(np.sqrt(difference @ spread.inverse @ difference) >= growth.min_edge)


def own_voxels(image: np.ndarray, labels: np.ndarray, voxel: Sequence[int], spacing_mm: Union[Sequence[float], np.ndarray], growth: ClickGrowth) -> Optional[np.ndarray]:
    """The voxels a click is put on: those of the label under it within ``growth.seed_radius_mm``, in the brain."""
    around = _around(image, labels, voxel, spacing_mm, growth)
    if around is None:
        return None
    mask = np.zeros(labels.shape, dtype=bool)
    mask[around[0]] = around[4]
    return mask


def _around(
    image: np.ndarray, labels: np.ndarray, voxel: Sequence[int], spacing_mm: Union[Sequence[float], np.ndarray], growth: ClickGrowth
) -> Optional[Tuple[Tuple[slice, ...], np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """The click's box (slices), the sequences in it, the click's index in it, the voxels it may take (the label under
    it, within ``radius_mm``, in the brain), its own voxels (those within ``seed_radius_mm``) and its reach (the brain
    within ``radius_mm``); None when it has nothing to take (off the grid, outside the brain, or no growth asked for)."""
    spacing = np.asarray(spacing_mm, dtype=float)
    at = np.asarray(voxel, dtype=int)
    shape = np.asarray(labels.shape)
    if growth.radius_mm <= 0 or (at < 0).any() or (at >= shape).any() or not image[:, at[0], at[1], at[2]].any():
        return None
    box = _click_box(at, labels.shape, spacing, growth.radius_mm)
    lo, hi = np.array([b.start for b in box]), np.array([b.stop for b in box])
    crop, current, local = image[(slice(None), *box)], labels[box], at - lo
    grid = np.meshgrid(*[(np.arange(a, b) - c) * s for a, b, c, s in zip(lo, hi, at, spacing)], indexing="ij")
    distance_sq = sum(g**2 for g in grid)
    reach = (distance_sq <= growth.radius_mm**2) & crop.any(axis=0)
    allowed = (current == current[tuple(local)]) & reach
    return box, crop, local, allowed, allowed & (distance_sq <= growth.seed_radius_mm**2), reach


def _click_box(at: np.ndarray, shape: Sequence[int], spacing: np.ndarray, radius_mm: float) -> Tuple[slice, ...]:
    """The box round a click that holds every voxel within ``radius_mm`` of it, clipped to the grid."""
    reach = np.ceil(radius_mm / spacing).astype(int)
    lo, hi = np.maximum(at - reach, 0), np.minimum(at + reach + 1, np.asarray(shape))
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


class GrownRegions:
    """The regions clicks grew on a study, kept between its answers. Every answer applies all the clicks so far again
    (``follow_clicks``), each over what the ones before it left; a click of the same label at the same voxel, whose
    surroundings (the labels within its reach) are unchanged, grows the same region, so only a new click or one whose
    surroundings a new click changed is grown again (growing every click again made each answer about 10 ms slower per
    click so far). Bounded, least recently used out first; ``study``: a key that changes with the study's file."""

    def __init__(self, max_entries: int = GROWN_REGIONS_KEPT):
        self.max_entries = max_entries
        self.grown = 0  # regions computed, not found kept
        self._entries: OrderedDict[Hashable, Optional[np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def region(
        self,
        study: Hashable,
        image: np.ndarray,
        labels: np.ndarray,
        voxel: Sequence[int],
        spacing_mm: np.ndarray,
        growth: ClickGrowth,
        label: int,
        label_voxels: Optional[np.ndarray] = None,
    ) -> Optional[np.ndarray]:
        """``grown_region(image, labels, voxel, spacing_mm, growth, label, label_voxels)``, kept."""
        at = np.asarray(voxel, dtype=int)
        if not _on_grid(voxel, labels.shape) or growth.radius_mm <= 0:
            return grown_region(image, labels, voxel, spacing_mm, growth, label, label_voxels)
        box = _click_box(at, labels.shape, np.asarray(spacing_mm, dtype=float), growth.radius_mm)
        digest = hashlib.blake2b(np.ascontiguousarray(labels[box]).tobytes(), digest_size=16)
        if label_voxels is not None:
            digest.update(np.ascontiguousarray(label_voxels[box]).tobytes())
        surroundings = digest.digest()
        key = (study, labels.shape, tuple(at.tolist()), label, growth, tuple(np.asarray(spacing_mm, dtype=float).tolist()), surroundings)
        with self._lock:
            found = key in self._entries
            packed = self._entries.get(key)
            if found:
                self._entries.move_to_end(key)
        if found:
            if packed is None:
                return None
            unpacked = np.zeros(labels.shape, dtype=bool)
            size = tuple(b.stop - b.start for b in box)
            unpacked[box] = np.unpackbits(packed, count=int(np.prod(size))).reshape(size).astype(bool)
            return unpacked
        grown = grown_region(image, labels, voxel, spacing_mm, growth, label, label_voxels)
        with self._lock:
            self.grown += 1
            self._entries[key] = None if grown is None else np.packbits(grown[box])  # a click's region lies in its box
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return grown


def follow_clicks(
    labels: np.ndarray,
    image: np.ndarray,
    clicks: Mapping[str, Sequence[Sequence[int]]],
    spacing_mm: Union[Sequence[float], np.ndarray],
    growth: ClickGrowth,
    before: Optional[np.ndarray] = None,
    kept: Optional[GrownRegions] = None,
    study: Hashable = None,
) -> np.ndarray:
    """``labels`` (the network's answer) with each click's region relabelled, labels in ``GUIDANCE_LABELS`` order and
    each label's clicks in the order given (the server and the robot user apply them alike). Each click grows over
    the tissue as ``before`` (the network's answer to no clicks) labelled it, the earlier clicks' regions applied: a
    network that learnt from clicks takes the clicked voxel itself, and the click must still correct the tissue
    around it (judged on that answer, a click the network had followed grew nothing). None: ``labels``. ``kept``:
    the regions grown for ``study`` by earlier answers (none: every click grown again)."""
    out = labels.copy()
    base = out if before is None else before.copy()
    unclicked = labels if before is None else before  # the tissue each click stands on (read only)
    spacing = np.asarray(spacing_mm, dtype=float)
    for name in GUIDANCE_LABELS:
        others = np.array([p for other in GUIDANCE_LABELS if other != name for p in clicks.get(other, ()) if _on_grid(p, base.shape)], dtype=float).reshape(-1, 3)
        under_others = unclicked[tuple(others.astype(int).T)]
        for voxel in clicks.get(name, ()):
            confirms = _on_grid(voxel, base.shape) and base[tuple(int(v) for v in voxel)] == LABELS[name]
            # already its label before any click: the click confirms it there, whatever the network made of it since
            if confirms:
                region = own_voxels(image, base, voxel, spacing_mm, growth)
            elif kept is not None and study is not None:
                region = kept.region(study, image, base, voxel, spacing, growth, LABELS[name], unclicked)
            else:
                region = grown_region(image, base, voxel, spacing_mm, growth, LABELS[name], unclicked)
            if region is None:
                continue
            if len(others):
                # a voxel nearer a click of another label put on what this click took, on the same tissue, is that
                # click's to say: the clients send each label's clicks apart, in no order between labels, and a later
                # correction must not be grown over again. Tissue another click could never take stays this one's (an
                # enhancing-tumour click had undone 181 voxels of an edema click's region 26 mm away), and so does
                # all of it where the other click lies outside this region: it corrects something else (a
                # necrotic-core click beside a filled edema had emptied 3239 voxels of it, tuning study 02005).
                points = np.argwhere(region)
                own = np.linalg.norm((points - np.asarray(voxel, dtype=float)) * spacing, axis=1)
                distance = np.linalg.norm((points[:, None, :] - others[None]) * spacing, axis=2)
                distance[unclicked[tuple(points.T)][:, None] != under_others[None]] = np.inf
                distance[:, ~region[tuple(others.astype(int).T)]] = np.inf
                region[tuple(points[distance.min(axis=1) < own].T)] = False
            out[region] = LABELS[name]
            base[region] = LABELS[name]
    return out


def _on_grid(voxel: Sequence[int], shape: Sequence[int]) -> bool:
    return all(0 <= int(v) < n for v, n in zip(voxel, shape))


class FollowClicksd(MapTransform):
    """The refinement model's region probabilities ((3, X, Y, Z), TC, WT, ET, on the network's grid) with each click's
    region (``follow_clicks``) set to its label's regions; the other voxels keep their probabilities. Clicks are world
    points (``data[clicks_key]``: label -> (N, 3) RAS mm), placed on the grid of ``data[ref_key]``, whose first
    ``sequences`` channels are the prepared study. Use before the probabilities leave that grid."""

    def __init__(
        self,
        keys: KeysCollection = "pred",
        ref_key: str = "image",
        clicks_key: str = "clicks_world",
        growth: ClickGrowth = ClickGrowth(),
        sequences: int = len(CHANNELS),
        unclicked_key: str = "pred_unclicked",
        kept: Optional[GrownRegions] = None,
        study_key: str = "case_version",
    ):
        """``data[unclicked_key]``: the network's logits for no clicks, where the request had them (taken out of the
        data here): each click grows over that answer (``follow_clicks``' ``before``). ``kept``: the regions earlier
        answers grew, per study (``data[study_key]``, a key that changes with the study's file)."""
        super().__init__(keys)
        self.kept = kept
        self.study_key = study_key
        self.unclicked_key = unclicked_key
        self.ref_key = ref_key
        self.clicks_key = clicks_key
        self.growth = growth
        self.sequences = sequences

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> Dict[Hashable, torch.Tensor]:
        d = dict(data)
        unclicked = d.pop(self.unclicked_key, None)
        clicks_world: Mapping[str, np.ndarray] = d.get(self.clicks_key) or {}
        if not any(len(points) for points in clicks_world.values()):
            return d
        image = d[self.ref_key]
        affine = np.asarray(image.affine if isinstance(image, MetaTensor) else np.eye(4), dtype=float)
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        world_to_voxel = np.linalg.inv(affine)
        clicks = {
            label: [tuple(int(v) for v in np.round(world_to_voxel @ np.append(np.asarray(p, dtype=float), 1.0))[:3]) for p in points] for label, points in clicks_world.items()
        }
        sequences = np.asarray(torch.as_tensor(image)[: self.sequences].detach().cpu())
        before = region_channels_to_label(torch.sigmoid(torch.as_tensor(unclicked).detach().cpu()) > REGION_THRESHOLD) if unclicked is not None else None
        for key in self.key_iterator(d):
            pred = d[key]
            labels = region_channels_to_label(torch.as_tensor(pred) > REGION_THRESHOLD)
            followed = follow_clicks(labels, sequences, clicks, spacing, self.growth, before, self.kept, d.get(self.study_key))
            changed = torch.as_tensor(followed != labels, device=pred.device)
            if not bool(changed.any()):
                continue
            regions = torch.as_tensor(np.stack([np.isin(followed, REGIONS[name]) for name in REGIONS]), dtype=pred.dtype, device=pred.device)
            d[key] = torch.where(changed[None], regions, pred)
        return d
