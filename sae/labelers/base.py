"""One interface for every labeler: audio windows in, (label, score, evidence) out.

Each labeler sees a feature's top windows *and* random windows, so a label is chosen for what
sets the feature apart, not for what all music has. A labeler that can also say how strongly
a window shows a given label (`score`) can validate other labelers' labels.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from hashlib import blake2b

import numpy as np


@dataclass
class Label:
    label: str
    score: float
    evidence: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"label": self.label, "score": round(float(self.score), 4), "evidence": self.evidence}


@dataclass(frozen=True)
class WindowCodes:
    """A window's codec tokens `[codebooks, frames]` and where it starts in its clip."""

    codes: np.ndarray
    start: int = 0


@dataclass
class WindowSet:
    """Audio (mono float32) of a feature's top windows and of random windows, and their tokens
    where the store kept them (for labelers that read tokens, not sound)."""

    top: list[np.ndarray]
    random: list[np.ndarray]
    sample_rate: int
    top_codes: list[WindowCodes] | None = None
    random_codes: list[WindowCodes] | None = None


class LabelerError(Exception):
    """This feature could not be labeled: a rerun tries again when `retry` (a timeout, a bad
    reply), not when the answer is final (a refusal)."""

    def __init__(self, message: str, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


class Labeler(ABC):
    name: str = ""
    reads_tokens: bool = False  # labels from the windows' tokens (the store's), not their sound

    @abstractmethod
    def label(self, windows: WindowSet) -> list[Label]:
        """Labels for the feature, best first (possibly none)."""

    def score(self, label: str, audio: list[np.ndarray], sample_rate: int) -> np.ndarray | None:
        """How strongly each window shows `label`; None when this labeler cannot judge that label."""
        return None

    def score_codes(self, label: str, codes: list[WindowCodes]) -> np.ndarray | None:
        """The same from the windows' tokens, for labelers that read tokens; None otherwise."""
        return None

    def code_quality(self, codes: list[WindowCodes]) -> dict[str, np.ndarray] | None:
        """Per-window quality measures computed from tokens (how well-formed the music is), for
        labelers that know what well-formed means; None otherwise."""
        return None

    def well_formed(self, quality: dict[str, np.ndarray]) -> np.ndarray | None:
        """Per window, from its `code_quality` measures: is it still music by this labeler's
        measure of form? None when it has none. A push that breaks the music can raise a
        concept's score by itself (noise is easily heard as fast), so eval-steer also counts
        only what stays music."""
        return None


def window_scores(
    scorer: Labeler, label: str, audio: list[np.ndarray], sample_rate: int, codes: list[WindowCodes] | None = None
) -> np.ndarray | None:
    """`scorer`'s scores of `label` on the windows: from their tokens when it reads tokens and
    they are known, else from their audio."""
    if codes is not None:
        from_codes = scorer.score_codes(label, codes)
        if from_codes is not None:
            return from_codes
    return scorer.score(label, audio, sample_rate)


def effect_size(top: np.ndarray, rand: np.ndarray) -> float:
    """Standardised difference of means (top − random) over the pooled spread."""
    spread = np.sqrt((top.var() + rand.var()) / 2) or 1e-9
    return float((top.mean() - rand.mean()) / spread)


def resample(audio: np.ndarray, sr: int, target: int) -> np.ndarray:
    if sr == target:
        return np.asarray(audio, dtype=np.float32)
    from scipy.signal import resample_poly

    g = math.gcd(sr, target)
    return resample_poly(audio, target // g, sr // g).astype(np.float32)


def extracted(extractor, audio: list[np.ndarray], sample_rate: int, device, batch: int = 8) -> Iterator:
    """A transformers feature extractor's model inputs for `audio`, `batch` windows at a time,
    each window resampled to the extractor's rate first."""
    rate = extractor.sampling_rate
    for i in range(0, len(audio), batch):
        clips = [resample(a, sample_rate, rate) for a in audio[i : i + batch]]
        yield extractor(clips, sampling_rate=rate, return_tensors="pt").to(device)


class WindowCache:
    """Per-window results keyed by the audio itself (and its rate), so the random windows every
    feature is contrasted with, and windows scored again for validation, are computed once."""

    def __init__(self, size: int = 4096) -> None:
        self._rows: OrderedDict[bytes, object] = OrderedDict()
        self.size = size

    def get(self, audio: list[np.ndarray], sample_rate: int, compute: Callable[[list[np.ndarray]], Sequence]) -> list:
        keys = [_key(a, sample_rate) for a in audio]
        missing = list({k: i for i, k in enumerate(keys) if k not in self._rows}.values())
        if missing:
            for i, row in zip(missing, compute([audio[i] for i in missing]), strict=True):
                self._rows[keys[i]] = row
        out = [self._rows[k] for k in keys]
        for k in keys:
            self._rows.move_to_end(k)
        while len(self._rows) > self.size:
            self._rows.popitem(last=False)
        return out


def _key(audio: np.ndarray, sample_rate: int) -> bytes:
    digest = blake2b(np.ascontiguousarray(audio, dtype=np.float32).tobytes(), digest_size=16)
    digest.update(sample_rate.to_bytes(8, "little"))
    return digest.digest()
