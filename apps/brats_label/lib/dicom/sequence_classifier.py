"""Which MR sequence a series is, from how it was acquired: the header first, the name second.

Scanner names mislead: GE's "Ax T1 FLAIR" is a T1-weighted inversion recovery (TI about 800 ms), not a
dark-fluid FLAIR; Siemens marks post-contrast series "KM" (Kontrastmittel); Philips calls a 3D T1 "T1W_3D_TFE".
So, as published header-based classifiers do (Gauriau et al. 2020, "Using DICOM metadata for radiological
image series categorization"; Cluceru et al. 2022; the weighting rules of MR physics textbooks), a series is
decided by its acquisition where the header says enough:

- derived products are never a channel: ImageType naming a reformat, map, diffusion, perfusion or projection
  product (MPR, REFORMATTED, ADC, TRACE, FA, MIP, SUBTRACTION, T1 MAP, ...). A series that is only DERIVED
  or SECONDARY (a conversion, such as this project's own import of NIfTI studies) may be a channel, but where
  it competes with an ORIGINAL series for one, the original wins;
- diffusion (echo-planar with a b-value or DIFFUSION in ImageType) and dynamic series (several temporal
  positions: perfusion) are not channels;
- inversion recovery with a long inversion time (TI >= 1400 ms) nulls fluid: FLAIR; with a shorter one
  (T1-FLAIR, MPRAGE, IR-FSPGR/BRAVO, TI 300-1400 ms) and a short TE it is T1-weighted;
- spin echo / turbo spin echo with long TR and long TE is T2-weighted; short TR and short TE is T1-weighted;
  long TR with short TE is proton density (not a channel);
- a short-TR gradient echo (SPGR, FLASH, TFE, VIBE) is T1-weighted;
- a T1-weighted series is post-contrast (T1c) when its header names a contrast agent, when its name says
  so (KM, Gd, +C, C+, post, contrast, ...), or when it was acquired after a series that names one.

Where the header has no timing (a secondary capture, an anonymiser that stripped it), the name rules decide.
Site rules (``--conf series_rules``) override both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Tuple

FLAIR_MIN_TI_MS = 1400.0  # fluid's null point at 1.5-3 T is about 1700-2500 ms; T1-FLAIR and MPRAGE use 300-1300
T1_IR_MIN_TI_MS = 300.0
T1_MAX_TE_MS = 30.0
T2_MIN_TE_MS = 60.0
LONG_TR_MS = 1500.0
SHORT_TR_MS = 1000.0
GRADIENT_ECHO_T1_MAX_TR_MS = 100.0
ORIGINAL_IMAGE_TYPE = "ORIGINAL"
DERIVED_PRODUCTS = ("LOCALIZER", "MPR", "REFORMATTED", "PROJECTION IMAGE", "MIP", "MNIP", "ADC", "TRACE", "FA", "EADC", "EXP", "SUBTRACTION", "SUB", "MOCO", "PERFUSION", "TTP", "CBF", "CBV", "MTT", "MAP", "T1 MAP", "T2 MAP", "COLLAPSE")  # fmt: skip
POST_CONTRAST_NAME = re.compile(r"\bkm\b|_km\b|\bgd\b|gad|\+ ?c\b|\bc\+|\bpost\b|contrast|\bce\b|t1ce|t1c\b|t1gd|\bmdc\b", re.IGNORECASE)


@dataclass(frozen=True)
class Acquisition:
    """The acquisition attributes of a series (from one of its instances); None where the header is silent."""

    repetition_time: Optional[float] = None  # ms
    echo_time: Optional[float] = None
    inversion_time: Optional[float] = None
    scanning_sequence: Tuple[str, ...] = ()  # SE, GR, IR, EP, RM
    sequence_variant: Tuple[str, ...] = ()
    acquisition_type: str = ""  # 2D or 3D
    contrast_agent: str = ""  # ContrastBolusAgent
    image_type: Tuple[str, ...] = ()
    diffusion_b_value: Optional[float] = None
    temporal_positions: Optional[int] = None

    @property
    def has_timing(self) -> bool:
        return self.repetition_time is not None and self.echo_time is not None


@dataclass(frozen=True)
class Verdict:
    """A series' sequence (t1, t2, flair, t1c) or None, and the evidence, in words an annotator can check."""

    sequence: Optional[str]
    evidence: str


def _ms(value: Optional[float]) -> str:
    return "?" if value is None else f"{value:g} ms"


def excluded(acq: Acquisition) -> Optional[str]:
    """Why a series can never be a channel, or None."""
    kinds = [t.upper() for t in acq.image_type]
    if any(k in DERIVED_PRODUCTS for k in kinds[2:]):
        return f"derived image: {', '.join(k for k in kinds[2:] if k in DERIVED_PRODUCTS)} (ImageType {'/'.join(acq.image_type)})"
    if "DIFFUSION" in kinds or ("EP" in acq.scanning_sequence and (acq.diffusion_b_value or 0) > 0):
        return f"diffusion-weighted (echo-planar, b = {acq.diffusion_b_value or '?'})"
    if (acq.temporal_positions or 0) > 1:
        return f"dynamic series ({acq.temporal_positions} temporal positions: perfusion)"
    return None


def weighting(acq: Acquisition) -> Optional[Verdict]:
    """T1 / T2 / FLAIR from timing and sequence, or None when the header does not say enough."""
    if not acq.has_timing:
        return None
    tr, te, ti = acq.repetition_time or 0.0, acq.echo_time or 0.0, acq.inversion_time
    timing = f"TR {_ms(tr)}, TE {_ms(te)}" + (f", TI {_ms(ti)}" if ti else "")
    inversion = "IR" in acq.scanning_sequence or (ti or 0) > 0
    if inversion and ti is not None and ti >= FLAIR_MIN_TI_MS:
        return Verdict("flair", f"inversion recovery with TI >= {FLAIR_MIN_TI_MS:g} ms nulls fluid ({timing})")
    if inversion and ti is not None and T1_IR_MIN_TI_MS <= ti < FLAIR_MIN_TI_MS and te <= T1_MAX_TE_MS:
        return Verdict("t1", f"T1-weighted inversion recovery, TI {T1_IR_MIN_TI_MS:g}-{FLAIR_MIN_TI_MS:g} ms and short TE ({timing})")
    gradient_echo = "GR" in acq.scanning_sequence and "SE" not in acq.scanning_sequence
    if gradient_echo and tr <= GRADIENT_ECHO_T1_MAX_TR_MS and te <= T1_MAX_TE_MS:
        return Verdict("t1", f"short-TR gradient echo, T1-weighted ({timing})")
    if tr >= LONG_TR_MS and te >= T2_MIN_TE_MS:
        return Verdict("t2", f"long TR and long TE, T2-weighted ({timing})")
    if tr <= SHORT_TR_MS and te <= T1_MAX_TE_MS:
        return Verdict("t1", f"short TR and short TE, T1-weighted ({timing})")
    if tr >= LONG_TR_MS and te <= T1_MAX_TE_MS:
        return Verdict(None, f"long TR and short TE: proton density, not a channel ({timing})")
    return None


def post_contrast(acq: Acquisition, name: str, after_contrast: bool) -> Optional[str]:
    """Why a T1-weighted series is post-contrast, or None."""
    if acq.contrast_agent.strip():
        return f"ContrastBolusAgent '{acq.contrast_agent.strip()}'"
    match = POST_CONTRAST_NAME.search(name.replace("_", " ") + " " + name)
    if match:
        return f"its name says post-contrast ('{match.group(0).strip()}')"
    if after_contrast:
        return "acquired after a series that names a contrast agent"
    return None
