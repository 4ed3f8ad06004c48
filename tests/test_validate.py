"""Validation: AUROC, the choice of an independent scorer, and the shuffled-label baseline."""

from __future__ import annotations

import numpy as np
import pytest

from sae.labelers.base import Label, Labeler, WindowSet
from sae.validate import auroc, detection, shuffled_baseline


def test_auroc_matches_pairwise_counting():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1, 1, 30).round(1), rng.normal(0, 1, 40).round(1)  # rounding makes ties
    pairs = (pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean()
    assert auroc(pos, neg) == pytest.approx(pairs)
    assert auroc([2, 3], [0, 1]) == 1.0 and auroc([0, 1], [2, 3]) == 0.0 and auroc([1, 1], [1, 1]) == 0.5


class Loudness(Labeler):
    """Scores 'loud' by RMS; cannot judge anything else."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0

    def label(self, windows: WindowSet) -> list[Label]:
        return [Label("loud", 1.0)]

    def score(self, label, audio, sample_rate):
        self.calls += 1
        return np.array([np.sqrt(np.mean(a**2)) for a in audio]) if label == "loud" else None


def test_detection_prefers_another_scorer_and_says_when_none_can():
    rng = np.random.default_rng(1)
    top = [rng.standard_normal(100) * 2 for _ in range(5)]
    rand = [rng.standard_normal(100) * 0.5 for _ in range(5)]
    source, other = Loudness("a"), Loudness("b")
    result = detection(Label("loud", 1.0), "a", [source, other], top, rand, 8000)
    assert result["scorer"] == "b" and result["independent"] and result["auroc"] == 1.0
    assert source.calls == 0
    alone = detection(Label("loud", 1.0), "a", [source], top, rand, 8000)
    assert alone["scorer"] == "a" and not alone["independent"]
    flipped = detection(Label("loud", 1.0), "a", [other], rand, top, 8000)
    assert flipped["auroc"] == 0.0
    nobody = detection(Label("quiet", 1.0), "a", [source, other], top, rand, 8000)
    assert nobody["auroc"] is None and nobody["reason"] == "no scorer can judge this label"
    assert detection(Label("loud", 1.0), "a", [other], [], rand, 8000)["reason"] == "too few windows held out"


def test_shuffled_baseline_separates_matched_from_shuffled_labels():
    rng = np.random.default_rng(2)
    n, dim = 12, 16
    labels = rng.standard_normal((n, dim))
    labels /= np.linalg.norm(labels, axis=1, keepdims=True)
    audio = labels + 0.3 * rng.standard_normal((n, dim))  # each feature's audio sits near its own label
    audio /= np.linalg.norm(audio, axis=1, keepdims=True)
    match, shuffled, p = shuffled_baseline(audio, labels, permutations=500)
    assert match.mean() > shuffled.mean() + 0.5 and p < 0.01
    unrelated = rng.standard_normal((n, dim))
    unrelated /= np.linalg.norm(unrelated, axis=1, keepdims=True)
    _, _, p_null = shuffled_baseline(unrelated, labels, permutations=500)
    assert p_null > 0.05
