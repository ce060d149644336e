"""Where a guided network's answer to clicks is used: near them, or (the default) nowhere, and what a click then costs.

A click is a statement about the tissue near it, and an annotator must be able to trust that a click never changes
a region far from where it was put. A network guarantees no such thing (its receptive field spans the brain, and a
few minutes of training from the segmentation weights teach it little about where a click matters). So clicks
change the network's answer only within ``ClickGrowth.network_radius_mm`` of a click; beyond, it is the answer to no
clicks (the clicks' grown regions, ``click_growth``, reach ``ClickGrowth.radius_mm``). At 0 mm, the default since
2026-12-07, the guided answer is used nowhere: on every robot-user set it added nothing to the clicks' growth and was
most of a click's time (``ClickGrowth``'s comment has the figures).

That is also what makes a click fast. The answer to no clicks is the same for every click on a study: it is kept
(``UnclickedAnswers``, per study and network) and computed once. With a reach, the guided answer is needed only within it,
so the network runs on one sliding window placed round it (the window size it was trained on, so its normalisation
sees what it saw in training: a 64^3 window round the clicks made the answers far worse), not on the whole brain:
at 2 mm a brain takes two windows, so a click costs one window where it cost four. Where the clicks spread wider
than a window allows, the whole brain is run as before. With no reach, or a network that never read clicks (the
segmentation model's weights before a refinement model is trained), a click costs no pass at all.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict
from typing import Any, Callable, Hashable, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from monai.inferers import Inferer
from scipy import ndimage

from ..config import CLICK_WINDOW_CONTEXT_MM, GUIDANCE_PEAK, PREPARED_INPUT_TTL_S, UNCLICKED_ANSWERS_KEPT

CLICK_CORE = float(np.exp(-0.5))  # a click's own voxels: its Gaussian above this share of its peak (within one width)


def within_mm(mask: np.ndarray, spacing_mm: Union[Sequence[float], np.ndarray], radius_mm: float) -> np.ndarray:
    """The voxels within ``radius_mm`` of ``mask``'s. The distance map is made on the mask's own box and the radius
    round it only: over a click's whole box, or the whole grid, it was half the time of growing a click."""
    near = np.zeros_like(mask, dtype=bool)
    found = np.argwhere(mask)
    if not len(found):
        return near
    spacing = np.asarray(spacing_mm, dtype=float)
    margin = np.ceil(radius_mm / spacing).astype(int) + 1
    lo, hi = np.maximum(found.min(axis=0) - margin, 0), np.minimum(found.max(axis=0) + 1 + margin, mask.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    near[box] = ndimage.distance_transform_edt(~mask[box], sampling=spacing) <= radius_mm
    return near


class UnclickedAnswers:
    """The network's answer to no clicks, per study (a key that changes with the study's file) and network (a new
    model version is a new network object): a bounded, expiring store shared by the requests on a study."""

    def __init__(self, max_entries: int = UNCLICKED_ANSWERS_KEPT, ttl_s: float = PREPARED_INPUT_TTL_S):
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._entries: OrderedDict[Hashable, Tuple[Any, float, torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, network: torch.nn.Module) -> Optional[torch.Tensor]:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0]() is not network or time.monotonic() - entry[1] > self.ttl_s:
                return None
            self._entries.move_to_end(key)
            return entry[2]

    def put(self, key: Hashable, network: torch.nn.Module, answer: torch.Tensor) -> None:
        with self._lock:
            self._entries[key] = (weakref.ref(network), time.monotonic(), answer.detach())
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)


class ClickReachInferer(Inferer):
    """Wraps the sliding-window inferer of a guided network (inputs: ``sequences`` channels, then the guidance).
    ``unclicked``/``key``: where the answer to no clicks is kept for this study (none: computed on each request)."""

    def __init__(
        self,
        inferer: Inferer,
        sequences: int,
        spacing_mm: Sequence[float],
        radius_mm: float,
        unclicked: Optional[UnclickedAnswers] = None,
        key: Hashable = None,
        context_mm: float = CLICK_WINDOW_CONTEXT_MM,
        on_unclicked: Optional[Callable[[torch.Tensor], None]] = None,
    ):
        """``on_unclicked``: given the answer to no clicks whenever a request with clicks has it (the clicks' growth
        starts from it: ``click_growth.follow_clicks``)."""
        self.inferer = inferer
        self.sequences = sequences
        self.spacing = np.asarray(spacing_mm, dtype=float)
        self.radius_mm = radius_mm
        self.unclicked = unclicked
        self.key = key
        self.context = np.ceil(context_mm / self.spacing).astype(int)
        roi = getattr(inferer, "roi_size", None)  # the window the network was trained on; none: no window of its own
        self.window = np.asarray(roi, dtype=int) if roi is not None else None
        self.on_unclicked = on_unclicked

    def near_clicks(self, guidance: torch.Tensor) -> np.ndarray:
        """(X, Y, Z) voxels within the reach of a click, from one sample's guidance channels."""
        clicked = guidance.amax(dim=0).cpu().numpy() >= CLICK_CORE * GUIDANCE_PEAK
        return within_mm(clicked, self.spacing, self.radius_mm)

    def reads_guidance(self, network: Any) -> bool:
        """False for a segmentation model's weights served as the refinement model (guidance weights all zero): its
        answer is the same with or without clicks, one pass is enough."""
        first = getattr(getattr(getattr(network, "convInit", None), "conv", None), "weight", None)
        return first is None or bool(first[:, self.sequences :].abs().sum() > 0)

    def window_around(self, near: np.ndarray) -> Optional[Tuple[slice, ...]]:
        """One window (clipped to the image) holding every voxel in reach with ``context`` beyond it on every side
        the image allows; None when the reach is too wide for one."""
        if self.window is None or not near.any():
            return None
        shape = np.asarray(near.shape)
        reached = np.argwhere(near)
        lo, hi = reached.min(axis=0), reached.max(axis=0) + 1
        need_lo, need_hi = np.maximum(lo - self.context, 0), np.minimum(hi + self.context, shape)
        size = np.minimum(self.window, shape)
        if ((need_hi - need_lo) > size).any():
            return None
        start = np.clip((need_lo + need_hi) // 2 - size // 2, 0, shape - size)
        start = np.minimum(start, need_lo)  # centred, then moved so that the window holds what it needs
        start = np.maximum(start, need_hi - size)
        return tuple(slice(int(a), int(a + n)) for a, n in zip(start, size))

    def answer_to_no_clicks(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        kept = self.unclicked.get(self.key, network) if self.unclicked is not None else None
        if kept is not None and kept.shape[0] == inputs.shape[0] and kept.shape[2:] == inputs.shape[2:]:
            return kept.to(inputs.device)
        plain = inputs.clone()
        plain[:, self.sequences :] = 0
        answer = self.inferer(plain, network, *args, **kwargs)
        if self.unclicked is not None:
            self.unclicked.put(self.key, network, answer)
        return answer

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        guidance = inputs[:, self.sequences :]
        if not bool((guidance > 0).any()):
            return self.answer_to_no_clicks(inputs, network, *args, **kwargs)
        unclicked = self.answer_to_no_clicks(inputs, network, *args, **kwargs)
        if self.on_unclicked is not None:
            self.on_unclicked(unclicked)
        if self.radius_mm <= 0 or not self.reads_guidance(network):
            return unclicked  # the guided answer used nowhere, or the same as it (a network that never read clicks)
        near_np = np.stack([self.near_clicks(g) for g in guidance])
        window = self.window_around(near_np.any(axis=0))
        if window is None:
            guided = self.inferer(inputs, network, *args, **kwargs)
        else:
            guided = unclicked.clone()
            guided[(slice(None), slice(None), *window)] = self.inferer(inputs[(slice(None), slice(None), *window)], network, *args, **kwargs)
        near = torch.as_tensor(near_np, device=guided.device)[:, None]
        return torch.where(near, guided, unclicked)
