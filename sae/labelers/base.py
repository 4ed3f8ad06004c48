"""One interface for every labeler: audio windows in, (label, score, evidence) out.

Each labeler sees a feature's top windows *and* random windows, so a label is chosen for what
sets the feature apart, not for what all music has. A labeler that can also say how strongly
a window shows a given label (`score`) can validate other labelers' labels.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Label:
    label: str
    score: float
    evidence: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"label": self.label, "score": round(float(self.score), 4), "evidence": self.evidence}


@dataclass
class WindowSet:
    """Audio (mono float32) of a feature's top windows and of random windows."""

    top: list[np.ndarray]
    random: list[np.ndarray]
    sample_rate: int


class LabelerError(Exception):
    """This feature could not be labeled: a rerun tries again when `retry` (a timeout, a bad
    reply), not when the answer is final (a refusal)."""

    def __init__(self, message: str, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


class Labeler(ABC):
    name: str = ""

    @abstractmethod
    def label(self, windows: WindowSet) -> list[Label]:
        """Labels for the feature, best first (possibly none)."""

    def score(self, label: str, audio: list[np.ndarray], sample_rate: int) -> np.ndarray | None:
        """How strongly each window shows `label`; None when this labeler cannot judge that label."""
        return None


def resample(audio: np.ndarray, sr: int, target: int) -> np.ndarray:
    if sr == target:
        return np.asarray(audio, dtype=np.float32)
    from scipy.signal import resample_poly

    g = math.gcd(sr, target)
    return resample_poly(audio, target // g, sr // g).astype(np.float32)
