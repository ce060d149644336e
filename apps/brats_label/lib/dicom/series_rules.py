"""Which series of a study is T1, T1c, T2 and FLAIR, from what scanners write in their descriptions.

Rules (``config.SERIES_RULES``) are regular expressions on the lower-cased SeriesDescription and
ProtocolName, tried in order, so "AX T1 POST GAD" is T1c before the plain T1 rule can claim it.
Non-MR series (SEG, SR, presentation states), localisers and derived maps are never channels.
When two series claim a channel the study is refused with both names, rather than guessing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from ..config import CHANNELS, IGNORED_SERIES, SERIES_RULES


@dataclass(frozen=True)
class SeriesSummary:
    """What QIDO-RS says of one series."""

    series_uid: str
    modality: str
    description: str
    protocol: str
    instances: int
    number: Optional[int] = None

    @property
    def name(self) -> str:
        return self.description or self.protocol or self.series_uid


@dataclass
class ChannelAssignment:
    channels: Dict[str, SeriesSummary] = field(default_factory=dict)
    ignored: List[Tuple[str, str]] = field(default_factory=list)  # (series name, why)
    problem: Optional[str] = None


class SeriesRules:
    def __init__(self, rules: Sequence[Tuple[str, str]] = SERIES_RULES, ignored: str = IGNORED_SERIES):
        unknown = {channel for channel, _ in rules} - set(CHANNELS)
        if unknown:
            raise ValueError(f"series rules name unknown channels {sorted(unknown)}; channels are {', '.join(CHANNELS)}")
        self.rules = [(channel, re.compile(pattern)) for channel, pattern in rules]
        self.ignored = re.compile(ignored)

    def channel_of(self, series: SeriesSummary) -> Tuple[Optional[str], str]:
        """(channel or None, why) for one series."""
        if series.modality != "MR":
            return None, f"modality {series.modality or 'unknown'}, not MR"
        text = f"{series.description} {series.protocol}".lower()
        if self.ignored.search(text):
            return None, "localiser, derived map or reformat"
        for channel, pattern in self.rules:
            if pattern.search(text):
                return channel, f"matches the {channel} rule"
        return None, "description matches no channel rule"

    def assign(self, series: Sequence[SeriesSummary]) -> ChannelAssignment:
        result = ChannelAssignment()
        claims: Dict[str, List[SeriesSummary]] = {}
        for s in series:
            channel, why = self.channel_of(s)
            if channel is None:
                result.ignored.append((s.name, why))
            else:
                claims.setdefault(channel, []).append(s)
        clashes = {c: ss for c, ss in claims.items() if len(ss) > 1}
        missing = [c for c in CHANNELS if c not in claims]
        if clashes:
            text = "; ".join(f"{c}: {', '.join(repr(s.name) for s in ss)}" for c, ss in clashes.items())
            result.problem = f"more than one series for a channel ({text}); remove the extra series or rename it"
        elif missing:
            seen = ", ".join(repr(s.name) for s in series if s.modality == "MR") or "none"
            result.problem = f"no series for {', '.join(missing)} (MR series: {seen}); the study needs {', '.join(CHANNELS)}"
        result.channels = {c: ss[0] for c, ss in claims.items()}
        return result
