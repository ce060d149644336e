"""A cohort as varied as a real multi-site glioma collection: tumour kinds and acquisition sites, in a set mix.

Kinds (what a model must learn beyond the textbook ring-enhancing glioblastoma):

    typical          one ring-enhancing tumour with a necrotic centre, in white matter
    low_grade        non-enhancing: a tumour core without enhancement (label 1) in edema, no ET at all
    multifocal       two or three separate lesions
    thin_rim         a large necrosis inside a thin enhancing rim
    large_necrosis   a large tumour whose core is mostly necrotic
    periventricular  next to the lateral ventricles, where tumour and CSF meet
    small            a lesion of a few millilitres

Sites (how the same tumour looks from different scanners and protocols): tumour contrast, noise, bias-field
strength, slice thickness (2D acquisitions resampled to an isotropic grid, as BraTS does, are blurred across
slices) and in-plane resolution.

Each case draws its kind and site from the mix with a stream of its own (seed, index), so a case is the
same whatever else is generated, and a kind given a small weight stays rare in expectation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Mapping, Tuple

import numpy as np

Range = Tuple[float, float]


@dataclass(frozen=True)
class TumourKind:
    whole_radius_mm: Range
    core_fraction: Range  # core radius / whole radius
    necrosis_fraction: Range  # necrosis radius / core radius; (0, 0): no necrosis
    foci: Tuple[int, int] = (1, 1)  # number of separate lesions, inclusive
    enhancing: bool = True  # False: the core is non-enhancing tumour (label 1), there is no ET
    placement: str = "white_matter"  # or "periventricular"


KINDS: Dict[str, TumourKind] = {
    # BraTS glioblastomas: the tumour core about a third of the whole tumour's volume, the necrotic core about half
    # the core's (radius fractions of 0.55-0.8 and 0.55-0.85: 17-51 % and 17-61 % by volume), inside an enhancing
    # rim a few millimetres thick
    "typical": TumourKind((16.0, 32.0), (0.55, 0.8), (0.55, 0.85)),
    "low_grade": TumourKind((14.0, 30.0), (0.35, 0.6), (0.0, 0.0), enhancing=False),
    "multifocal": TumourKind((9.0, 16.0), (0.45, 0.7), (0.2, 0.5), foci=(2, 3)),
    "thin_rim": TumourKind((20.0, 32.0), (0.6, 0.75), (0.86, 0.93)),
    "large_necrosis": TumourKind((26.0, 36.0), (0.65, 0.8), (0.72, 0.82)),
    "periventricular": TumourKind((14.0, 26.0), (0.55, 0.8), (0.55, 0.85), placement="periventricular"),
    "small": TumourKind((5.0, 9.0), (0.4, 0.7), (0.0, 0.4)),
}


@dataclass(frozen=True)
class Site:
    tumour_contrast: Range  # 1: the textbook contrast; less pulls the tumour towards healthy tissue
    noise_scale: Range
    bias_strength: Range  # log-amplitude of the smooth multiplicative field
    slice_thickness_mm: float  # through-plane resolution (z), before resampling to the grid
    in_plane_mm: float  # in-plane resolution (x, y)


SITES: Dict[str, Site] = {
    "3t_3d": Site((0.85, 1.0), (0.8, 1.2), (0.08, 0.2), 1.0, 1.0),  # a recent 3 T scanner, 3D sequences
    "15t_2d": Site((0.6, 0.9), (1.4, 2.4), (0.15, 0.35), 5.0, 1.0),  # 1.5 T, 2D axial 5 mm slices
    "older_3mm": Site((0.5, 0.8), (1.2, 2.0), (0.2, 0.4), 3.0, 1.8),  # an older protocol: 3 mm slices, coarse matrix
}

DEFAULT_KIND_MIX: Dict[str, float] = {
    "typical": 0.40,
    "low_grade": 0.15,
    "multifocal": 0.10,
    "thin_rim": 0.10,
    "large_necrosis": 0.10,
    "periventricular": 0.10,
    "small": 0.05,
}
DEFAULT_SITE_MIX: Dict[str, float] = {"3t_3d": 0.5, "15t_2d": 0.3, "older_3mm": 0.2}


def parse_mix(text: str, known: Mapping[str, object], what: str) -> Dict[str, float]:
    """``name=weight,...`` (weights need not sum to 1; unnamed kinds get 0)."""
    mix: Dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition("=")
        if name not in known:
            raise ValueError(f"unknown {what} '{name}': choose from {', '.join(known)}")
        try:
            mix[name] = float(weight)
        except ValueError:
            raise ValueError(f"{what} '{name}' needs a weight, e.g. {name}=0.1") from None
        if mix[name] < 0:
            raise ValueError(f"{what} '{name}': a weight cannot be negative")
    if sum(mix.values()) <= 0:
        raise ValueError(f"give at least one {what} a positive weight")
    return mix


def _draw(mix: Mapping[str, float], rng: np.random.Generator) -> str:
    names = sorted(mix)
    weights = np.array([mix[n] for n in names], dtype=float)
    return names[int(rng.choice(len(names), p=weights / weights.sum()))]


@dataclass(frozen=True)
class CaseDesign:
    """What case ``index`` of a cohort is: its kind and site, and the acquisition drawn from the site."""

    kind: str
    site: str
    tumour_contrast: float
    noise_scale: float
    bias_strength: Range
    slice_thickness_mm: float
    in_plane_mm: float

    def record(self) -> Dict[str, object]:
        return asdict(self)


def design_case(seed: int, index: int, kinds: Mapping[str, float] = DEFAULT_KIND_MIX, sites: Mapping[str, float] = DEFAULT_SITE_MIX) -> CaseDesign:
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, 2]))  # apart from the anatomy's and tumour's
    kind, site_name = _draw(kinds, rng), _draw(sites, rng)
    site = SITES[site_name]
    return CaseDesign(
        kind,
        site_name,
        float(rng.uniform(*site.tumour_contrast)),
        float(rng.uniform(*site.noise_scale)),
        site.bias_strength,
        site.slice_thickness_mm,
        site.in_plane_mm,
    )
