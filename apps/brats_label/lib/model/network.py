"""SegResNet as the model-zoo brats_mri_segmentation bundle defines it, and loading its weights safely."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import torch
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import SegResNet

from ..config import GUIDANCE_LABELS, LABEL_SETS, PROFILES, NetworkProfile
from ..errors import ModelNotReady
from ..runtime.atomic import atomic_path


def build_network(profile: NetworkProfile) -> SegResNet:
    return SegResNet(**profile.network_kwargs())  # type: ignore[arg-type]


def build_guided_network(profile: NetworkProfile, segmentation: Optional[Mapping[str, torch.Tensor]] = None) -> SegResNet:
    """The segmentation network with one more input channel per guidance label (``GUIDANCE_LABELS``). From
    ``segmentation`` weights every layer is copied and the guidance channels' first-layer weights are zero: until it
    has learnt from clicks it answers exactly as the segmentation model, clicks or not."""
    network = SegResNet(**{**profile.network_kwargs(), "in_channels": profile.in_channels + len(GUIDANCE_LABELS)})  # type: ignore[arg-type]
    if segmentation is not None:
        state = dict(segmentation)
        first = state["convInit.conv.weight"]
        silent = torch.zeros((first.shape[0], len(GUIDANCE_LABELS), *first.shape[2:]), dtype=first.dtype)
        state["convInit.conv.weight"] = torch.cat([first, silent], dim=1)
        network.load_state_dict(state, strict=True)
    return network


FINAL_WEIGHT, FINAL_BIAS = "conv_final.2.conv.weight", "conv_final.2.conv.bias"  # one output per region


def with_outputs_of(state: Mapping[str, torch.Tensor], profile: NetworkProfile, prior: float) -> Optional[Dict[str, torch.Tensor]]:
    """Weights of a model whose outputs are the first regions of ``profile``'s label set (a pre-operative model:
    TC, WT, ET) widened to all of them (after treatment: RC too): every layer kept, the new outputs' weights zero and
    their bias at ``prior`` (so they answer the prior everywhere until trained, as a fresh network starts). None when
    ``state`` is no such model."""
    weight, bias = state.get(FINAL_WEIGHT), state.get(FINAL_BIAS)
    wanted = len(profile.label_set.regions)
    if weight is None or bias is None or weight.shape[0] >= wanted:
        return None
    first = [(region.name, region.values) for region in profile.label_set.regions[: weight.shape[0]]]
    known = [s for s in LABEL_SETS.values() if [(region.name, region.values) for region in s.regions] == first]
    if not known:
        return None
    widened = dict(state)
    added = wanted - weight.shape[0]
    widened[FINAL_WEIGHT] = torch.cat([weight, torch.zeros((added, *weight.shape[1:]), dtype=weight.dtype)])
    widened[FINAL_BIAS] = torch.cat([bias, torch.full((added,), math.log(prior / (1.0 - prior)), dtype=bias.dtype)])
    return widened


def starting_weights(path: Path, profile: NetworkProfile, folder: Path, prior: float) -> Tuple[Path, Dict[str, torch.Tensor]]:
    """``path``, or where its outputs do not cover the label set's regions but are their beginning (a pre-operative
    model started for the post-treatment set), a widened copy in ``folder`` (``with_outputs_of``), made once; and the
    weights it holds (read once, for start-up to check)."""
    state = read_state_dict(path)
    widened = with_outputs_of(state, profile, prior)
    if widened is None:
        return path, state
    target = Path(folder) / f"starting_weights_{profile.label_set.name}.pt"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            torch.save(widened, tmp)
    return target, widened


def set_foreground_prior(network: SegResNet, prior: float) -> SegResNet:
    """Start the sigmoid outputs at ``prior`` instead of 0.5 (bias = logit(prior)).

    Tumour is a few percent of the voxels; from sigmoid 0.5 everywhere, the first hundreds of steps
    only learn that. Starting from the prior, as detection networks do (Lin et al., focal loss), the
    CPU demo model reaches a useful Dice several times sooner. Checkpoints loaded later overwrite it.
    """
    with torch.no_grad():
        network.conv_final[-1].conv.bias.fill_(math.log(prior / (1.0 - prior)))
    return network


def read_state_dict(path: Path) -> Dict[str, torch.Tensor]:
    """Weights from a bundle ``model.pt`` (a bare state dict) or one of our checkpoints ({"model": ...})."""
    try:
        checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelNotReady(f"{path} is not a PyTorch weights file this server can read ({e})") from None
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("model"), Mapping):
        checkpoint = checkpoint["model"]
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ModelNotReady(f"{path} holds no state dict (expected the weights of a SegResNet)")
    return dict(checkpoint)


def _profile_of(state: Mapping[str, torch.Tensor]) -> Optional[str]:
    weight = state.get("convInit.conv.weight")
    if weight is None:
        return None
    for name, profile in PROFILES.items():
        if tuple(weight.shape[:2]) == (profile.init_filters, profile.in_channels):
            return name
    return None


def check_weights(state: Mapping[str, torch.Tensor], profile: NetworkProfile, path: Path, guided: bool = False) -> None:
    """Raise ModelNotReady naming what differs when ``state`` does not fit the profile's network (its guided form, with
    the guidance channels, when ``guided``)."""
    expected = (build_guided_network(profile) if guided else build_network(profile)).state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or mismatched):
        return
    details = []
    if missing:
        details.append(f"{len(missing)} layers missing (e.g. {missing[0]})")
    if unexpected:
        details.append(f"{len(unexpected)} unknown layers (e.g. {unexpected[0]})")
    if mismatched:
        k = mismatched[0]
        details.append(f"{len(mismatched)} layers of another size (e.g. {k}: file {tuple(state[k].shape)}, network {tuple(expected[k].shape)})")
    guess = _profile_of(state)
    hint = (
        f" The file looks like the '{guess}' profile: start the server with --conf profile {guess}."
        if guess and guess != profile.name
        else f" Expected SegResNet weights with 4 input channels (T1c, T1, T2, FLAIR) and {profile.out_channels} outputs"
        f" ({', '.join(profile.label_set.region_values)}), such as the model-zoo brats_mri_segmentation bundle's models/model.pt"
        " (or, for a label set with more regions, a model of its first ones, which is widened)."
    )
    raise ModelNotReady(f"{path} does not fit the '{profile.name}' network: {'; '.join(details)}.{hint}")


def sliding_window_inferer(profile: NetworkProfile) -> SlidingWindowInferer:
    """The profile's windows: one inferer for serving, validation, scoring and benchmarks, so that a model is judged
    as it is served."""
    return SlidingWindowInferer(roi_size=profile.roi_size, overlap=profile.sw_overlap, sw_batch_size=1, mode="gaussian")


def load_network(profile: NetworkProfile, path: Path, device: torch.device, guided: bool = False) -> SegResNet:
    """The network in ``path``; ``guided``: with guidance channels, and a segmentation model's weights then load with
    those channels' weights at zero (``build_guided_network``), answering as the segmentation model does."""
    state = read_state_dict(path)
    first = state.get("convInit.conv.weight")
    if guided and first is not None and first.shape[1] == profile.in_channels:
        check_weights(state, profile, path)
        return on_device(build_guided_network(profile, state), device)
    check_weights(state, profile, path, guided)
    network = build_guided_network(profile) if guided else build_network(profile)
    network.load_state_dict(state)
    return on_device(network, device)


def on_device(network: SegResNet, device: torch.device) -> SegResNet:
    """On CPU, the weights in channels-last order: oneDNN's 3D convolutions, most of a forward pass, run faster on it
    (cpu profile, 2 cores: one window 1.25x for the refinement network, 1.19x for the segmentation network, a whole
    brain 1.35x and 1.14x; logits within 1.2e-3; ``bench/network_speed.py``). Elsewhere as they are (not measured on
    a GPU)."""
    if torch.device(device).type == "cpu":
        return network.to(device, memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    return network.to(device)
