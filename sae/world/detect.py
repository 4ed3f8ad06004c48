"""Do an SAE's features detect the planted attributes? AUROC on held-out windows.

Every clip of a world-model store has a known truth: the exact scorer's most probable
attributes given the clip's tokens (what the music is, whatever the prompt asked for). Each
clip is cut into windows, and a window's feature activations are their means over its frames.
For every attribute value, the best feature is chosen on the windows of half of the clips and
its AUROC reported on the other half's windows, so the figure is not the maximum of many noisy
ones measured on the same data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import rankdata

from sae.files import LoadedSAE
from sae.store import ActivationStore
from sae.world.grammar import ATTRIBUTES, ExactScorer


@dataclass(frozen=True)
class Windows:
    activations: np.ndarray  # [windows, d_sae]: mean feature activation over the window's frames
    clip: np.ndarray  # [windows]: store clip index


@torch.no_grad()
def window_activations(store: ActivationStore, loaded: LoadedSAE, layer: int, frames: int) -> Windows:
    """Mean SAE activations over consecutive `frames`-frame windows of every clip."""
    acts, clips = [], []
    for shard, offset in store.iter_shards(store.check_layer(layer)):
        codes = loaded.sae.encode(shard["acts"].float().to(loaded.sae.W_enc.device)).cpu()
        clip, frame = shard["clip"].long() + offset, shard["frame"].long()
        key = clip * 1_000_000 + frame // frames  # one id per (clip, window)
        ids, inverse = torch.unique(key, return_inverse=True)
        sums = torch.zeros(len(ids), codes.shape[1]).index_add_(0, inverse, codes)
        counts = torch.bincount(inverse, minlength=len(ids)).clamp(min=1)
        whole = counts == frames  # a clip's last, shorter window is left out
        acts.append((sums / counts[:, None])[whole].numpy())
        clips.append((ids // 1_000_000)[whole].numpy())
    return Windows(np.concatenate(acts), np.concatenate(clips))


def clip_truth(store: ActivationStore, codebook_size: int = 128) -> list[dict[str, str]]:
    """The exact scorer's most probable attributes of each clip of the store."""
    scorer = ExactScorer(codebook_size)
    return [scorer.predict(codes.numpy()).as_dict() for codes in store.iter_codes()]


def aurocs(acts: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """AUROC of every column of `acts` for picking out the `positive` rows (ties count half)."""
    ranks = rankdata(acts, axis=0)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    u = ranks[positive].sum(0) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def feature_detection(
    store: ActivationStore,
    loaded: LoadedSAE,
    layer: int,
    window_s: float = 2.0,
    frame_rate: int = 50,
    codebook_size: int = 128,
) -> dict:
    """Per attribute value: the best feature (chosen on even clips) and its held-out AUROC (odd
    clips); JSON-ready."""
    windows = window_activations(store, loaded, layer, max(1, round(window_s * frame_rate)))
    truth = clip_truth(store, codebook_size)
    chosen = windows.clip % 2 == 0
    values: dict[str, dict] = {}
    for name in ATTRIBUTES:
        labels = np.array([truth[c][name] for c in windows.clip])
        for value in sorted(set(labels)):
            positive = labels == value
            if any(half.all() or not half.any() for half in (positive[chosen], positive[~chosen])):
                values[f"{name}={value}"] = {"skipped": "too few clips with and without it in both halves"}
                continue
            scores = aurocs(windows.activations[chosen], positive[chosen])
            best = int(np.argmax(scores))
            held = float(aurocs(windows.activations[~chosen][:, [best]], positive[~chosen])[0])
            values[f"{name}={value}"] = {
                "feature": best,
                "auroc_selection": round(float(scores[best]), 4),
                "auroc_held_out": round(held, 4),
                "held_out_windows": int((~chosen).sum()),
                "held_out_positive": int(positive[~chosen].sum()),
            }
    measured = [v["auroc_held_out"] for v in values.values() if "auroc_held_out" in v]
    return {
        "window_s": window_s,
        "windows": len(windows.clip),
        "clips": len(truth),
        "values_measured": len(measured),
        "values_at_least_0.9": sum(a >= 0.9 for a in measured),
        "min_auroc_held_out": round(min(measured), 4) if measured else None,
        "values": values,
    }
