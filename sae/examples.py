"""Top examples of SAE features, per frame: the windows where each feature peaks.

Why windows and not clip means: mean pooling over a 10 s clip (the paper's choice) hides
anything that happens in a moment — a chord, a drum fill, a transition. Each feature gets its
top-N peaks, each with a few seconds around it and no two overlapping; the clip-mean ranking
is kept beside them for comparison, with an activation histogram, and a shared sample of
random windows serves as negatives. One streaming pass over the store, a batch at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from engine.errors import MgsteerError
from sae.files import LoadedSAE
from sae.store import ActivationStore


@dataclass(frozen=True)
class ExampleConfig:
    top_n: int = 10
    window_s: float = 3.0
    negatives: int = 20
    hist_bins: int = 20
    batch_rows: int = 2048  # the dense pre-activations of a batch: 256 MB at d_sae 32768
    oversample: int = 8  # candidates kept per wanted window, so overlapping peaks can be skipped
    seed: int = 0

    def __post_init__(self) -> None:
        if self.top_n < 1 or self.negatives < 0 or self.hist_bins < 1:
            raise MgsteerError("--top-n must be ≥ 1 and --negatives ≥ 0")
        if not self.window_s > 0:
            raise MgsteerError(f"--window-s must be positive, got {self.window_s}")


@dataclass(frozen=True)
class Window:
    """Frames [start, stop) of store clip `clip`, around `peak` where the feature reads `activation`."""

    clip: int
    start: int
    stop: int
    peak: int
    activation: float


@dataclass
class FeatureExamples:
    feature: int
    top: list[Window] = field(default_factory=list)
    top_clips: list[tuple[int, float]] = field(default_factory=list)  # (clip, mean activation)
    histogram: list[int] = field(default_factory=list)  # non-zero activations over bins of [0, hist_max]
    hist_max: float = 0.0


@dataclass
class Examples:
    features: dict[int, FeatureExamples]
    negatives: list[Window]


def window_around(peak: int, length: int, clip_frames: int) -> tuple[int, int]:
    """`length` frames centred on `peak`, shifted to lie inside the clip (shorter if the clip is)."""
    start = max(0, min(peak - length // 2, clip_frames - length))
    return start, min(clip_frames, start + length)


class _TopRows:
    """Running top-M (value, clip, frame) per feature over batches."""

    def __init__(self, features: int, m: int) -> None:
        self.values = torch.full((features, 0), -1.0)
        self.where = torch.zeros((features, 0, 2), dtype=torch.long)
        self.m = m

    def add(self, codes: torch.Tensor, clip: torch.Tensor, frame: torch.Tensor) -> None:
        take = min(self.m, codes.shape[0])
        values, rows = codes.topk(take, dim=0)  # [take, F]
        where = torch.stack([clip[rows], frame[rows]], dim=-1)  # [take, F, 2]
        values = torch.cat([self.values, values.T], dim=1)
        where = torch.cat([self.where, where.transpose(0, 1)], dim=1)
        keep = values.topk(min(self.m, values.shape[1]), dim=1).indices
        self.values = values.gather(1, keep)
        self.where = where.gather(1, keep[..., None].expand(-1, -1, 2))


@torch.no_grad()
def find_examples(
    store: ActivationStore,
    loaded: LoadedSAE,
    features: list[int],
    frame_rate: float,
    cfg: ExampleConfig | None = None,
    progress: bool = False,
) -> Examples:
    """Top windows, top clips and histograms of `features` over the store's rows at the SAE's layer."""
    from tqdm import tqdm

    cfg = cfg or ExampleConfig()
    for f in features:
        loaded.check_feature(f)
    layer = store.check_layer(loaded.cfg.hook_layer)
    sae = loaded.sae
    device = sae.W_enc.device
    ids = torch.tensor(features, dtype=torch.long)
    peak = loaded.require_stats().max_activation.cpu()[ids].clamp(min=1e-12)
    length = max(1, round(cfg.window_s * frame_rate))

    rows = _TopRows(len(features), cfg.top_n * cfg.oversample)
    clip_frames: dict[int, int] = {}
    clip_scores = torch.empty(len(features), 0)
    clip_ids = torch.empty(0, dtype=torch.long)
    hist = torch.zeros(len(features), cfg.hist_bins)
    bar = tqdm(total=store.rows(), unit="row", unit_scale=True, disable=not progress, desc="examples")
    for shard, offset in store.iter_shards(layer):
        clip = shard["clip"].long() + offset
        frame = shard["frame"].long()
        sums = torch.zeros(len(features), int(clip.max()) - int(clip.min()) + 1)
        base = int(clip.min())
        for start in range(0, len(clip), cfg.batch_rows):
            x = shard["acts"][start : start + cfg.batch_rows].to(device).float()
            codes = sae.encode(x)[:, ids.to(device)].cpu()
            c, fr = clip[start : start + len(x)], frame[start : start + len(x)]
            rows.add(codes, c, fr)
            sums.index_add_(1, c - base, codes.T)
            nz = codes > 0
            bins = (codes / peak * cfg.hist_bins).long().clamp(max=cfg.hist_bins - 1)
            hist.scatter_add_(1, (bins * nz).T, nz.T.float())
            bar.update(len(x))
        counts = torch.bincount(clip - base, minlength=sums.shape[1]).clamp(min=1)
        for cid, n in zip((torch.arange(sums.shape[1]) + base).tolist(), counts.tolist(), strict=True):
            clip_frames[cid] = n
        clip_scores = torch.cat([clip_scores, sums / counts], dim=1)
        clip_ids = torch.cat([clip_ids, torch.arange(sums.shape[1]) + base])
        keep = clip_scores.topk(min(cfg.top_n, clip_scores.shape[1]), dim=1).indices.unique()
        clip_scores, clip_ids = clip_scores[:, keep], clip_ids[keep]
    bar.close()

    out = {}
    for i, f in enumerate(features):
        windows = _non_overlapping(rows.values[i], rows.where[i], length, clip_frames, cfg.top_n)
        order = clip_scores[i].argsort(descending=True)[: cfg.top_n]
        top_clips = [(int(clip_ids[j]), float(clip_scores[i, j])) for j in order if clip_scores[i, j] > 0]
        out[f] = FeatureExamples(f, windows, top_clips, [int(v) for v in hist[i]], float(peak[i]))
    return Examples(out, _random_windows(clip_frames, length, cfg.negatives, cfg.seed))


def _non_overlapping(values, where, length: int, clip_frames: dict[int, int], n: int) -> list[Window]:
    chosen: list[Window] = []
    for value, (clip, frame) in zip(values.tolist(), where.tolist(), strict=True):
        if value <= 0 or len(chosen) == n:
            break
        if any(w.clip == clip and abs(w.peak - frame) < length for w in chosen):
            continue
        start, stop = window_around(frame, length, clip_frames[clip])
        chosen.append(Window(clip, start, stop, frame, value))
    return chosen


def _random_windows(clip_frames: dict[int, int], length: int, count: int, seed: int) -> list[Window]:
    """Windows drawn uniformly over all frames of the store (the same for every feature)."""
    if not clip_frames or count == 0:
        return []
    generator = torch.Generator().manual_seed(seed)
    clips = sorted(clip_frames)
    sizes = torch.tensor([clip_frames[c] for c in clips], dtype=torch.float)
    out = []
    for pick in torch.multinomial(sizes, count, replacement=True, generator=generator).tolist():
        frames = clip_frames[clips[pick]]
        peak = int(torch.randint(frames, (1,), generator=generator))
        start, stop = window_around(peak, length, frames)
        out.append(Window(clips[pick], start, stop, peak, 0.0))
    return out
