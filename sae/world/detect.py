"""Do an SAE's features detect the planted attributes? AUROC on held-out windows.

Every clip of a world-model store has a known truth: the exact scorer's most probable
attributes given the clip's tokens (what the music is, whatever the prompt asked for). Each
clip is cut into windows, and a feature is read over a window two ways (`POOLS`): its mean
over the window's frames, for a feature that holds a value all along, and its peak, for one
that marks an event the value brings (sparse drums' snare, once a bar: the mean dilutes it
with the frames between hits). For every attribute value, the best feature and reading are
chosen on the windows of half of the clips and its AUROC reported on the other half's
windows, so the figure is not the maximum of many noisy ones measured on the same data.

Two comparisons say what a miss means: a logistic probe on the residual windows themselves
(is the information there at all?), and the same measure for every key × register pair (does
the SAE spend its features on the pair instead of on the key?).

Beside the detectors, each value lists the features whose decoder directions best align with
the direction by which its clips' *openings* differ from the others' (the mean residual of the
first `OPENING_FRAMES` frames), and those best aligned with the direction by which the *whole*
clips differ: candidates to steer with. A detector fires on what the music shows (a fast
clip's note onsets); the model decides an attribute at the opening (its tempo at the first
note change) and then copies its own past, so what steers is what it reads then. But not every
attribute is decided there: a drum density is first heard at the second note, after the
opening, and on the default world the best feature aligned with the opening moved 7 of 12 test
pairs toward busy drums, and one aligned with the whole clips 11 of 12 (docs/WORLD.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import rankdata

from sae.files import LoadedSAE
from sae.store import ActivationStore
from sae.world.grammar import ATTRIBUTES, OPENING_FRAMES, ExactScorer

POOLS = ("mean", "peak")  # how a feature is read over a window, in the order of `Windows.pooled`


@dataclass(frozen=True)
class Windows:
    activations: np.ndarray  # [windows, d_sae]: mean feature activation over the window's frames
    peaks: np.ndarray  # [windows, d_sae]: largest feature activation over the window's frames
    residual: np.ndarray  # [windows, d_in]: mean residual activation (what the SAE reads)
    clip: np.ndarray  # [windows]: store clip index
    opening: np.ndarray  # [clips, d_in]: each clip's mean residual over its first opening frames
    whole: np.ndarray  # [clips, d_in]: each clip's mean residual over all its frames

    @property
    def pooled(self) -> np.ndarray:
        """[windows, 2 · d_sae]: every feature's mean, then every feature's peak."""
        return np.concatenate([self.activations, self.peaks], axis=1)


@torch.no_grad()
def window_activations(
    store: ActivationStore, loaded: LoadedSAE, layer: int, frames: int, opening_frames: int = 1
) -> Windows:
    """Mean and peak SAE activations, and mean residual activations, over consecutive
    `frames`-frame windows of every clip; and each clip's mean residual over its first
    `opening_frames` and over all its frames."""
    acts, peaks, residual, clips = [], [], [], []
    d_sae = loaded.cfg.d_sae
    # per clip, the residual summed over its opening frames (row 0) and over all of them (row 1)
    clip_sums = torch.zeros(2, len(store.clips), loaded.cfg.d_in, dtype=torch.float64)
    clip_counts = torch.zeros(2, len(store.clips), dtype=torch.float64)
    for shard, offset in store.iter_shards(store.check_layer(layer)):
        x = shard["acts"].float()
        both = torch.cat([loaded.sae.encode(x.to(loaded.sae.W_enc.device)).cpu(), x], dim=1)
        clip, frame = shard["clip"].long() + offset, shard["frame"].long()
        for row, taken in enumerate((frame < opening_frames, torch.ones_like(frame, dtype=torch.bool))):
            clip_sums[row].index_add_(0, clip[taken], x[taken].double())
            clip_counts[row].index_add_(0, clip[taken], torch.ones(int(taken.sum()), dtype=torch.float64))
        key = clip * 1_000_000 + frame // frames  # one id per (clip, window)
        ids, inverse = torch.unique(key, return_inverse=True)
        sums = torch.zeros(len(ids), both.shape[1]).index_add_(0, inverse, both)
        rows = inverse[:, None].expand(-1, d_sae)
        highest = torch.zeros(len(ids), d_sae).scatter_reduce_(0, rows, both[:, :d_sae], "amax", include_self=False)
        counts = torch.bincount(inverse, minlength=len(ids)).clamp(min=1)
        full = counts == frames  # a clip's last, shorter window is left out
        means = (sums / counts[:, None])[full].numpy()
        acts.append(means[:, :d_sae])
        peaks.append(highest[full].numpy())
        residual.append(means[:, d_sae:])
        clips.append((ids // 1_000_000)[full].numpy())
    opening, whole = (clip_sums / clip_counts.clamp(min=1)[..., None]).float().numpy()
    parts = (acts, peaks, residual, clips)
    return Windows(*(np.concatenate(p) for p in parts), opening, whole)


def aligned_features(loaded: LoadedSAE, residual: np.ndarray, positive: np.ndarray, count: int) -> list[list]:
    """The `count` features whose decoder directions have the largest cosine with the mean
    per-clip `residual` of the `positive` clips minus that of the others, with the cosines."""
    direction = torch.from_numpy(residual[positive].mean(0) - residual[~positive].mean(0)).float()
    w_dec = loaded.sae.W_dec.detach().float().cpu()
    cosine = (w_dec @ direction) / (w_dec.norm(dim=1) * direction.norm()).clamp(min=1e-12)
    return [[int(f), round(float(cosine[f]), 4)] for f in torch.argsort(-cosine)[:count]]


def probe_auroc(x: np.ndarray, positive: np.ndarray, chosen: np.ndarray, l2: float = 1e-3) -> float:
    """Held-out AUROC of an L2-regularised logistic probe fitted on the `chosen` rows of `x`:
    how well the information is there at all, in any direction, for comparison with the best
    single feature."""
    train = torch.from_numpy(x[chosen]).double()
    mean, std = train.mean(0), train.std(0) + 1e-6
    train = (train - mean) / std
    target = torch.from_numpy(positive[chosen]).double()
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def loss() -> torch.Tensor:
        opt.zero_grad()
        value = torch.nn.functional.binary_cross_entropy_with_logits(train @ w + b, target) + l2 * w.square().sum()
        value.backward()
        return value

    opt.step(loss)
    with torch.no_grad():
        held = ((torch.from_numpy(x[~chosen]).double() - mean) / std @ w + b).numpy()
    return float(aurocs(held[:, None], positive[~chosen])[0])


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
    candidates: int = 3,
) -> dict:
    """Per attribute value: the best feature and how it is read over a window (its mean or its
    peak; chosen on even clips) and its held-out AUROC (odd clips), with the `candidates` best
    by their selection AUROC and as many `aligned` with the value's opening direction on the
    even clips, and `aligned_whole` with its whole clips' direction (for choosing a feature to
    steer with), and a logistic probe's held-out AUROC on the residual itself; the same, but
    for `aligned`, for every key × register pair (`conjunctions`); JSON-ready."""
    frames = max(1, round(window_s * frame_rate))
    windows = window_activations(store, loaded, layer, frames, OPENING_FRAMES)
    truth = clip_truth(store, codebook_size)
    chosen = windows.clip % 2 == 0
    even_clips = np.arange(len(truth)) % 2 == 0
    openings, wholes = windows.opening[even_clips], windows.whole[even_clips]

    pooled, d_sae = windows.pooled, loaded.cfg.d_sae
    selection, held = pooled[chosen], pooled[~chosen]  # split once: every value reads both

    def held_out(column: int, positive: np.ndarray) -> float:
        return round(float(aurocs(held[:, [column]], positive[~chosen])[0]), 4)

    def detect(labels: np.ndarray) -> dict[str, dict]:
        found = {}
        for value in sorted(set(labels)):
            positive = labels == value
            if any(half.all() or not half.any() for half in (positive[chosen], positive[~chosen])):
                found[value] = {"skipped": "too few clips with and without it in both halves"}
                continue
            scores = aurocs(selection, positive[chosen])
            order = np.argsort(-scores, kind="stable")  # a tie goes to the mean, the first block
            ranked: dict[int, float] = {}  # feature → its best selection AUROC, best first
            for column in order:
                ranked.setdefault(int(column) % d_sae, round(float(scores[column]), 4))
                if len(ranked) == candidates:
                    break
            best = int(order[0])
            found[value] = {
                "feature": best % d_sae,
                "pool": POOLS[best // d_sae],
                "candidates": [[f, a] for f, a in ranked.items()],
                "auroc_selection": round(float(scores[best]), 4),
                "auroc_held_out": held_out(best, positive),
                # the best feature by its mean alone, as this measure read every feature before
                "auroc_held_out_mean_only": held_out(int(np.argmax(scores[:d_sae])), positive),
                "probe_auroc_held_out": round(probe_auroc(windows.residual, positive, chosen), 4),
                "held_out_windows": int((~chosen).sum()),
                "held_out_positive": int(positive[~chosen].sum()),
            }
        return found

    values: dict[str, dict] = {}
    for name in ATTRIBUTES:
        labels = np.array([truth[c][name] for c in windows.clip])
        per_clip = np.array([t[name] for t in truth])[even_clips]
        for value, result in detect(labels).items():
            if "feature" in result:
                positive = per_clip == value
                result["aligned"] = aligned_features(loaded, openings, positive, candidates)
                result["aligned_whole"] = aligned_features(loaded, wholes, positive, candidates)
            values[f"{name}={value}"] = result
    pairs = np.array([f"{truth[c]['key']}, {truth[c]['register']}" for c in windows.clip])
    conjunctions = {f"key×register={value}": result for value, result in detect(pairs).items()}
    measured = [v["auroc_held_out"] for v in values.values() if "auroc_held_out" in v]
    paired = [v["auroc_held_out"] for v in conjunctions.values() if "auroc_held_out" in v]
    return {
        "window_s": window_s,
        "windows": len(windows.clip),
        "clips": len(truth),
        "values_measured": len(measured),
        "values_at_least_0.9": sum(a >= 0.9 for a in measured),
        "values_at_least_0.9_mean_only": sum(
            v["auroc_held_out_mean_only"] >= 0.9 for v in values.values() if "auroc_held_out" in v
        ),
        "min_auroc_held_out": round(min(measured), 4) if measured else None,
        "values": values,
        "conjunctions_measured": len(paired),
        "conjunctions_at_least_0.9": sum(a >= 0.9 for a in paired),
        "conjunctions": conjunctions,
    }
