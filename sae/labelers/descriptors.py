"""Descriptor labels: what the top windows share in key, chord, pitch, tempo and sound,
compared with random windows (no weights, no network)."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

from sae.descriptors import Descriptors, describe
from sae.labelers.base import Label, Labeler, WindowCache, WindowSet, effect_size

# categorical descriptor → label template
CATEGORIES = {"key": "{} key", "chord": "{} chord", "note": "{}", "register": "{} register"}
# a window counts towards a category only when its estimate is confident (one note is no chord)
CONFIDENCE = {"key": ("key_strength", 0.5), "chord": ("chord_strength", 0.8)}
# continuous descriptor → (label when higher than random, label when lower, least audible difference)
CONTRASTS = {
    "centroid_hz": ("bright", "dark", 0.0),
    "loudness_db": ("loud", "quiet", 3.0),
    "onset_rate": ("dense onsets", "sparse onsets", 1.0),
    "percussive": ("percussive", "harmonic", 0.1),
}
MIN_CENTROID_RATIO = 1.25  # brightness differences are heard as ratios
MIN_SHARE = 0.5  # a categorical label needs at least half the top windows
MIN_EFFECT = 0.8  # a contrast label needs a standardised difference of at least this


class DescriptorLabeler(Labeler):
    name = "descriptors"

    def __init__(self) -> None:
        self._cache = WindowCache()

    def describe(self, audio: list[np.ndarray], sample_rate: int) -> list[Descriptors]:
        """Descriptors of each window (cached per window)."""
        return self._cache.get(audio, sample_rate, lambda clips: [describe(a, sample_rate) for a in clips])

    def label(self, windows: WindowSet) -> list[Label]:
        top = self.describe(windows.top, windows.sample_rate)
        rand = self.describe(windows.random, windows.sample_rate)
        if not top:
            return []
        labels = [*self._categorical(top, rand), *self._contrasts(top, rand)]
        tempo = self._tempo(top)
        if tempo is not None:
            labels.append(tempo)
        return sorted(labels, key=lambda lab: -lab.score)

    def _categorical(self, top: list[Descriptors], rand: list[Descriptors]) -> list[Label]:
        out = []
        for attr, template in CATEGORIES.items():
            values = Counter(getattr(d, attr) for d in top if _counts(d, attr))
            if not values:
                continue
            value, count = values.most_common(1)[0]
            share = count / len(top)
            base = sum(getattr(d, attr) == value and _counts(d, attr) for d in rand) / max(len(rand), 1)
            if share >= MIN_SHARE and share > base:
                label = template.format(value)
                out.append(Label(label, share - base, {"share_top": round(share, 3), "share_random": round(base, 3)}))
        return out

    def _contrasts(self, top: list[Descriptors], rand: list[Descriptors]) -> list[Label]:
        out = []
        for attr, (higher, lower, least) in CONTRASTS.items():
            t = np.array([getattr(d, attr) for d in top])
            r = np.array([getattr(d, attr) for d in rand])
            if len(r) < 2:
                continue
            effect = effect_size(t, r)
            if attr == "centroid_hz":
                ratio = max(t.mean(), 1.0) / max(r.mean(), 1.0)
                audible = max(ratio, 1 / ratio) >= MIN_CENTROID_RATIO
            else:
                audible = abs(t.mean() - r.mean()) >= least
            if abs(effect) >= MIN_EFFECT and audible:
                label = higher if effect > 0 else lower
                evidence = {"mean_top": round(float(t.mean()), 3), "mean_random": round(float(r.mean()), 3)}
                out.append(Label(label, min(abs(effect) / 4, 1.0), evidence | {"effect_size": round(effect, 3)}))
        return out

    def _tempo(self, top: list[Descriptors]) -> Label | None:
        tempos = np.array([d.tempo_bpm for d in top if d.tempo_bpm > 0 and d.tempo_strength > 0.3])
        if len(tempos) < max(1, len(top) // 2):
            return None
        median = float(np.median(tempos))
        agree = float(np.mean(np.abs(tempos - median) / median < 0.04))
        if agree < MIN_SHARE:
            return None
        return Label(f"~{round(median)} BPM", agree * len(tempos) / len(top), {"tempos": [round(t, 1) for t in tempos]})

    def score(self, label: str, audio: list[np.ndarray], sample_rate: int) -> np.ndarray | None:
        """Per-window evidence for one of this labeler's own labels (or a matching phrase)."""
        getter = _scorer_for(label)
        if getter is None:
            return None
        return np.array([getter(d) for d in self.describe(audio, sample_rate)], dtype=np.float64)


def _counts(d: Descriptors, attr: str) -> bool:
    if not getattr(d, attr):
        return False
    strength, minimum = CONFIDENCE.get(attr, ("", 0.0))
    return not strength or getattr(d, strength) >= minimum


def _scorer_for(label: str):
    text = label.strip()
    for attr, template in CATEGORIES.items():
        pattern = "^" + re.escape(template).replace(r"\{\}", "(.+)") + "$"
        match = re.match(pattern, text)
        if match and (attr != "note" or re.fullmatch(r"[A-G]#?-?\d", text)):
            value = match.group(1)
            return lambda d, a=attr, v=value: float(getattr(d, a) == v)
    for attr, (higher, lower, _) in CONTRASTS.items():
        if text == higher:
            return lambda d, a=attr: float(getattr(d, a))
        if text == lower:
            return lambda d, a=attr: -float(getattr(d, a))
    match = re.fullmatch(r"~(\d+) BPM", text)
    if match:
        bpm = float(match.group(1))
        return lambda d: -abs(d.tempo_bpm - bpm) / bpm
    return None
