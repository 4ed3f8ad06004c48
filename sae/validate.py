"""Validation that is not circular: a label is tested on windows the labeler never saw, by a
scorer other than the labeler whenever one can judge it.

Detection AUROC: can the label's scores pick the feature's held-out top windows out from
held-out random windows (0.5 = chance, 1 = perfectly)? And for CLAP, the label↔audio cosine
against a shuffled-label baseline: the same feature's audio scored with other features' labels.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from sae.labelers.base import Label, Labeler, WindowCodes, window_scores


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counting half (Mann–Whitney U)."""
    pos, neg = np.asarray(positive, float), np.asarray(negative, float)
    ranks = rankdata(np.concatenate([pos, neg]))
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def detection(
    label: Label,
    source: str,
    scorers: list[Labeler],
    top: list[np.ndarray],
    random: list[np.ndarray],
    sample_rate: int,
    top_codes: list[WindowCodes] | None = None,
    random_codes: list[WindowCodes] | None = None,
) -> dict:
    """AUROC of `label` (from labeler `source`) on held-out windows; the first other scorer that
    can judge the label is used, the source itself only when none can (`independent` false)."""
    result = {"label": label.label, "scorer": None, "auroc": None, "independent": False}
    if not top or not random:
        return result | {"reason": "too few windows held out"}
    order = [s for s in scorers if s.name != source] + [s for s in scorers if s.name == source]
    for scorer in order:
        pos = window_scores(scorer, label.label, top, sample_rate, top_codes)
        if pos is None:
            continue
        neg = window_scores(scorer, label.label, random, sample_rate, random_codes)
        return result | {
            "scorer": scorer.name,
            "auroc": round(auroc(pos, neg), 4),
            "independent": scorer.name != source,
            "n_top": len(top),
            "n_random": len(random),
        }
    return result | {"reason": "no scorer can judge this label"}


def shuffled_baseline(embeddings: np.ndarray, label_embeddings: np.ndarray, permutations: int = 1000, seed: int = 0):
    """Per feature i: cos(label_i, audio_i) and the mean cos(label_j, audio_i) over j ≠ i; and a
    permutation p-value for the mean match over features (unit-norm rows in, `[n, dim]` each)."""
    sims = embeddings @ label_embeddings.T  # [feature audio, label]
    n = len(sims)
    match = np.diag(sims)
    shuffled = (sims.sum(1) - match) / max(n - 1, 1)
    rng = np.random.default_rng(seed)
    observed = match.mean()
    null = np.array([sims[np.arange(n), rng.permutation(n)].mean() for _ in range(permutations)])
    p = float((1 + (null >= observed).sum()) / (1 + permutations))
    return match, shuffled, p
