"""Which series of a study is T1, T1c, T2 and FLAIR: a site's rules, then the acquisition, then the name.

1. A site's own rules (``--conf series_rules``: regular expressions on SeriesDescription and ProtocolName)
   override everything.
2. Otherwise the acquisition decides where the header says enough (``sequence_classifier``: derived
   products, diffusion and perfusion excluded; TR, TE, TI and the sequence give T1, T2 or FLAIR; a contrast
   agent, a post-contrast name, or acquisition after a contrast series makes a T1 the T1c).
3. Where the header has no timing, the built-in name rules (``config.SERIES_RULES``) decide.

Non-MR series (SEG, SR, presentation states) and localisers are never channels. When two series claim a
channel, an ORIGINAL acquisition is taken over derived ones, then a 3D acquisition over 2D ones (BraTS
protocols prefer the 3D T1c: thin slices, reformattable); if that does not decide, the study is refused
naming the candidates and the evidence for each, rather than guessing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from ..config import CHANNELS, IGNORED_SERIES, SERIES_RULES
from .sequence_classifier import ORIGINAL_IMAGE_TYPE, Acquisition, excluded, post_contrast, weighting


@dataclass(frozen=True)
class SeriesSummary:
    """What the archive says of one series: QIDO-RS's series attributes and one instance's acquisition."""

    series_uid: str
    modality: str
    description: str
    protocol: str
    instances: int
    number: Optional[int] = None
    time: str = ""  # SeriesTime (HHMMSS.frac), to order series of one study
    acquisition: Optional[Acquisition] = None

    @property
    def name(self) -> str:
        return self.description or self.protocol or self.series_uid


@dataclass
class ChannelAssignment:
    channels: Dict[str, SeriesSummary] = field(default_factory=dict)
    ignored: List[Tuple[str, str]] = field(default_factory=list)  # (series name, why)
    evidence: Dict[str, str] = field(default_factory=dict)  # channel -> why its series was given it
    problem: Optional[str] = None


def _is_original(series: SeriesSummary) -> bool:
    return bool(series.acquisition) and ORIGINAL_IMAGE_TYPE in [t.upper() for t in series.acquisition.image_type[:1]]  # type: ignore[union-attr]


def _is_3d(series: SeriesSummary) -> bool:
    return bool(series.acquisition) and series.acquisition.acquisition_type.upper() == "3D"  # type: ignore[union-attr]


class SeriesRules:
    def __init__(self, site_rules: Sequence[Tuple[str, str]] = (), name_rules: Sequence[Tuple[str, str]] = SERIES_RULES, ignored: str = IGNORED_SERIES):
        unknown = {channel for channel, _ in (*site_rules, *name_rules)} - set(CHANNELS)
        if unknown:
            raise ValueError(f"series rules name unknown channels {sorted(unknown)}; channels are {', '.join(CHANNELS)}")
        self.site_rules = [(channel, re.compile(pattern)) for channel, pattern in site_rules]
        self.name_rules = [(channel, re.compile(pattern)) for channel, pattern in name_rules]
        self.ignored = re.compile(ignored)

    def channel_of(self, series: SeriesSummary, after_contrast: bool = False) -> Tuple[Optional[str], str]:
        """(channel or None, why) for one series; ``after_contrast``: acquired after a contrast series."""
        if series.modality != "MR":
            return None, f"modality {series.modality or 'unknown'}, not MR"
        text = f"{series.description} {series.protocol}".lower()
        for channel, pattern in self.site_rules:
            if pattern.search(text):
                return channel, f"the site's rule for {channel} matches its name"
        acq = series.acquisition or Acquisition()
        why_not = excluded(acq)
        if why_not:
            return None, why_not
        if self.ignored.search(text):
            return None, "localiser, derived map or reformat (by its name)"
        verdict = weighting(acq)
        if verdict is not None and verdict.sequence is None:
            return None, verdict.evidence
        if verdict is not None:
            channel, why = str(verdict.sequence), verdict.evidence
        else:
            named = next((c for c, pattern in self.name_rules if pattern.search(text)), None)
            if named is None:
                return None, "no acquisition timing in its header, and its name matches no channel rule"
            channel, why = named, f"no acquisition timing in its header; its name matches the {named} rule"
        if channel in ("t1", "t1c"):
            contrast = post_contrast(acq, f"{series.description} {series.protocol}", after_contrast)
            if contrast:
                return "t1c", f"{why}; post-contrast: {contrast}"
            if channel == "t1c":  # a name rule said post-contrast without a keyword post_contrast knows
                return "t1c", why
            return "t1", f"{why}; no contrast agent in its header, name or timing"
        return channel, why

    def assign(self, series: Sequence[SeriesSummary]) -> ChannelAssignment:
        result = ChannelAssignment()
        claims: Dict[str, List[Tuple[SeriesSummary, str]]] = {}
        contrast_times = [s.time for s in series if s.acquisition and s.acquisition.contrast_agent.strip() and s.time]
        first_contrast = min(contrast_times) if contrast_times else None
        for s in series:
            after = first_contrast is not None and bool(s.time) and s.time > first_contrast
            channel, why = self.channel_of(s, after)
            if channel is None:
                result.ignored.append((s.name, why))
            else:
                claims.setdefault(channel, []).append((s, why))
        for channel, candidates in claims.items():
            for preferred, what in ((_is_original, "an original acquisition"), (_is_3d, "a 3D acquisition (thin slices, any plane)")):
                chosen = [c for c in candidates if preferred(c[0])]
                if len(candidates) > 1 and len(chosen) == 1:
                    winner = chosen[0][0]
                    result.ignored += [(s.name, f"another {channel} candidate; {winner.name!r} is {what} and this is not") for s, _ in candidates if s is not winner]
                    candidates = chosen
            claims[channel] = candidates
        clashes = {c: ss for c, ss in claims.items() if len(ss) > 1}
        missing = [c for c in CHANNELS if c not in claims]
        if clashes:
            text = "; ".join(f"{c}: " + ", ".join(f"{s.name!r} ({why})" for s, why in ss) for c, ss in clashes.items())
            result.problem = f"more than one series for a channel ({text}); nothing in their headers tells them apart: remove the extra series or name them in --conf series_rules"
        elif missing:
            seen = "; ".join(f"{name!r}: {why}" for name, why in result.ignored) or "none"
            result.problem = f"no series for {', '.join(missing)} (series not taken: {seen}); the study needs {', '.join(CHANNELS)}"
        result.channels = {c: ss[0][0] for c, ss in claims.items()}
        result.evidence = {c: ss[0][1] for c, ss in claims.items()}
        return result
