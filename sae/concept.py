"""Concept directions from examples: a knob from clips that have a quality and clips that do not.

Why beside SAE features: a quality a musician can point at (drums busier, a darker timbre)
need not be one feature of a dictionary trained without it in mind; on the planted worlds the
direction by which whole clips differ moved drum density in 9 of 9 selection pairs where the
best single feature moved 6. Three methods:

- `mean-diff`: the difference of the two sets' mean residuals. Robust with a handful of
  examples, and what the emotion-control work on MusicGen steers with.
- `probe`: the weight vector of an L2-regularised logistic regression on the frames (the
  genre-fusion work's linear probes). Where the sets also differ along directions that vary a
  lot inside each set, a probe discounts those and keeps what separates them.

The result is written as a one-feature SAE (d_sae = k = 1) so every path that takes an SAE
(steering, meters, presets, OSC, MIDI, the window, ONNX export) takes a concept unchanged:
W_dec and W_enc hold the unit direction, b_dec the midpoint of the two means and b_enc 0, so
the feature reads how far past the midpoint a frame lies toward the positive side, and its β
(max activation) is the largest such reading among the positive examples: α = 1 moves a
frame by as much as the most positive example sits past the midpoint.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from engine.errors import MgsteerError
from sae.files import FeatureStats, LoadedSAE, save_sae
from sae.topk import SAEConfig, TopKSAE

METHODS = ("mean-diff", "probe", "rfm")
CONCEPT_FILE = "concept.json"


@dataclass(frozen=True)
class Concept:
    """A direction in the residual at `layer`, with how well it separates held-out examples."""

    direction: torch.Tensor  # [d_in], unit norm, pointing toward the positive examples
    midpoint: torch.Tensor  # [d_in]: halfway between the two sets' means
    beta: float  # largest projection past the midpoint among the positive frames
    heldout_auroc: float  # frame-level, on clips left out of the fit (alternate clips)
    method: str
    positive_clips: int
    negative_clips: int

    def metadata(self, layer: int, model: str) -> dict:
        meta = {k: v for k, v in asdict(self).items() if k not in ("direction", "midpoint")}
        return {**meta, "layer": layer, "model": model, "heldout_auroc": round(self.heldout_auroc, 4)}


def fit_direction(positive: torch.Tensor, negative: torch.Tensor, method: str) -> torch.Tensor:
    """Unit direction separating frames `positive [n, d]` from `negative [m, d]`."""
    if method == "mean-diff":
        direction = positive.mean(0) - negative.mean(0)
    elif method == "probe":
        direction = _logistic_probe(positive, negative)
    elif method == "rfm":
        direction = _rfm_direction(positive, negative)
    else:
        raise MgsteerError(f"unknown concept method '{method}': use {', '.join(METHODS)}")
    norm = direction.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise MgsteerError("the two example sets have the same mean residual: no direction separates them")
    return direction / norm


def _logistic_probe(positive: torch.Tensor, negative: torch.Tensor, l2: float = 1e-2, steps: int = 100) -> torch.Tensor:
    """Logistic regression weights on standardised frames (LBFGS, balanced classes), mapped
    back to residual coordinates."""
    x = torch.cat([positive, negative]).double()
    y = torch.cat([torch.ones(len(positive)), torch.zeros(len(negative))]).double()
    weight = torch.where(y > 0, 0.5 / len(positive), 0.5 / len(negative))
    mean, scale = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / scale
    w = torch.zeros(x.shape[1], dtype=torch.double, requires_grad=True)
    b = torch.zeros((), dtype=torch.double, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        opt.zero_grad()
        value = (torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y, reduction="none") * weight).sum()
        value = value + l2 * w.square().sum()
        value.backward()
        return value

    with torch.enable_grad():
        opt.step(loss)
    return (w.detach() / scale).float()


@dataclass(frozen=True)
class RFMConfig:
    iterations: int = 5  # the AGOP settles in a few (the RFM papers use 3 to 10)
    ridge: float = 1e-3
    max_frames: int = 2000  # a seeded subsample beyond this: the kernel is frames × frames
    seed: int = 0


def _rfm_direction(positive: torch.Tensor, negative: torch.Tensor, cfg: RFMConfig = RFMConfig()) -> torch.Tensor:
    """Top eigenvector of the AGOP of a Laplace-kernel ridge regression on ±1 labels, refit
    `cfg.iterations` times under the metric M it learns, in residual coordinates (M itself
    learns which dimensions matter, so a direction needs no mapping back); pointed toward the
    positive side. The bandwidth is the median distance between frames under M, so the kernel
    neither sees every frame alone nor all of them as one."""
    pos = _frame_sample(positive, cfg.max_frames // 2, cfg.seed)
    neg = _frame_sample(negative, cfg.max_frames // 2, cfg.seed)
    labels = torch.cat([torch.ones(len(pos)), -torch.ones(len(neg))]).double()
    x = torch.cat([pos, neg]).double()
    z = x - x.mean(0)
    n, d = z.shape
    metric = torch.eye(d, dtype=torch.double) / d
    for _ in range(cfg.iterations):
        zm = z @ metric
        sq = (zm * z).sum(1)
        dist = (sq[:, None] + sq[None, :] - 2 * zm @ z.T).clamp_min(0).sqrt()
        bandwidth = dist[dist > 0].median().clamp_min(1e-12)
        kernel = torch.exp(-dist / bandwidth)
        coef = torch.linalg.solve(kernel + cfg.ridge * n * torch.eye(n, dtype=torch.double), labels)
        # ∇f(z_j) = −Σ_i coef_i K_ji M (z_j − z_i) / (L ‖z_j − z_i‖_M)
        weight = torch.where(dist > 0, kernel * coef[None, :] / (bandwidth * dist.clamp_min(1e-12)), 0.0)
        grads = -(weight.sum(1, keepdim=True) * z - weight @ z) @ metric
        agop = grads.T @ grads / n
        metric = agop / agop.trace().clamp_min(1e-30)
    direction = torch.linalg.eigh(metric).eigenvectors[:, -1]
    side = (x[labels > 0] @ direction).mean() - (x[labels < 0] @ direction).mean()
    return (direction if side >= 0 else -direction).float()


def _frame_sample(frames: torch.Tensor, most: int, seed: int) -> torch.Tensor:
    """At most `most` rows of `frames`, a seeded choice without replacement."""
    if len(frames) <= most:
        return frames
    pick = torch.randperm(len(frames), generator=torch.Generator().manual_seed(seed))[:most]
    return frames[pick]


def auroc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """Probability that a positive score exceeds a negative one (ties count half)."""
    greater = (positive[:, None] > negative[None, :]).double().mean()
    ties = (positive[:, None] == negative[None, :]).double().mean()
    return float(greater + 0.5 * ties)


def build_concept(positive: list[torch.Tensor], negative: list[torch.Tensor], method: str = "mean-diff") -> Concept:
    """A concept from clips' residuals (each `[frames, d_in]`). The held-out AUROC comes from a
    fit on every other clip, scored on the rest; the direction written is fitted on all."""
    if len(positive) < 2 or len(negative) < 2:
        raise MgsteerError(
            f"a concept needs at least 2 examples on each side (got {len(positive)} and {len(negative)}): "
            "one is kept out to measure how well the direction separates them"
        )
    train_p, test_p = torch.cat(positive[0::2]), torch.cat(positive[1::2])
    train_n, test_n = torch.cat(negative[0::2]), torch.cat(negative[1::2])
    held = fit_direction(train_p, train_n, method)
    score = auroc(test_p @ held, test_n @ held)
    pos, neg = torch.cat(positive), torch.cat(negative)
    direction = fit_direction(pos, neg, method)
    midpoint = (pos.mean(0) + neg.mean(0)) / 2
    beta = float(((pos - midpoint) @ direction).max().clamp_min(1e-6))
    return Concept(direction, midpoint, beta, score, method, len(positive), len(negative))


def save_concept(concept: Concept, folder: str | Path, layer: int, model: str) -> Path:
    """The concept as a one-feature SAE folder (module docstring), its metadata beside it."""
    d_in = concept.direction.shape[0]
    sae = TopKSAE(SAEConfig(d_in=d_in, d_sae=1, k=1, hook_layer=layer, model_name=model))
    with torch.no_grad():
        sae.W_dec.copy_(concept.direction[None])
        sae.W_enc.copy_(concept.direction[:, None])
        sae.b_enc.zero_()
        sae.b_dec.copy_(concept.midpoint)
    beta = torch.tensor([concept.beta])
    stats = FeatureStats(firing_rate=torch.ones(1), mean_activation=beta / 2, max_activation=beta)
    save_sae(sae, folder, stats)
    (Path(folder) / CONCEPT_FILE).write_text(json.dumps(concept.metadata(layer, model), indent=1) + "\n")
    return Path(folder)


def prompt_residuals(lm, prompts: list[str], layer: int, seconds: float, takes: int, seed: int) -> list[torch.Tensor]:
    """Residuals `[frames, d_in]` at `layer` of clips generated from `prompts`, `takes` seeds each."""
    from dataclasses import replace

    from engine.tokenloop import SamplingConfig
    from sae.harvest import check_clip_length, harvest_generation

    check_clip_length(lm, seconds, generated=True)
    frames = round(seconds * lm.frame_rate)
    clips = []
    for take in range(takes):
        sampling = replace(SamplingConfig(), seed=seed + take)
        acts, _ = harvest_generation(lm, prompts, [layer], frames, sampling)
        clips += list(acts[layer].unbind(0))
    return clips


def audio_residuals(lm, source: str | list[Path], layer: int, seconds: float) -> list[torch.Tensor]:
    """Residuals `[frames, d_in]` at `layer` of the clips of `seconds` in an audio folder (or a
    list of audio files), teacher-forced (unconditional), as `harvest` records them."""
    from sae.harvest import (
        audio_clips,
        check_clip_length,
        encode_audio,
        file_windows,
        load_audio,
        teacher_forced_activations,
    )

    check_clip_length(lm, seconds, generated=False)
    if isinstance(source, list):
        for path in source:
            if not Path(path).is_file():
                raise MgsteerError(f"example '{path}' is not a file")
        clips = [clip for path in source for clip in file_windows(Path(path), Path(path).name, seconds)]
    else:
        clips = audio_clips(source, seconds)
    codes = [encode_audio(lm, load_audio(clip, lm.sample_rate)) for clip in clips]
    return [acts[layer] for acts in teacher_forced_activations(lm, codes, [layer])]


def append_concept(loaded: LoadedSAE, concept: Concept) -> int:
    """Grow a loaded SAE by one feature, the concept, and return its id (the next one): a knob
    made from examples while playing then steers, meters and fills knobs like any feature.

    Its decoder row is the unit direction and its β the concept's; its encoder column reads
    ReLU(w·(x − midpoint)) as the concept's own folder does (the SAE's b_dec folded into b_enc).
    Each tensor is replaced whole and the new id is valid only once the config says so, last,
    so a generation thread reading the SAE meanwhile sees the old dictionary or the new one."""
    sae, stats = loaded.sae, loaded.require_stats()
    w = concept.direction.to(sae.W_dec.device, sae.W_dec.dtype)
    bias = (w @ (sae.b_dec.detach() - concept.midpoint.to(w.device, w.dtype))).reshape(1)
    beta = torch.tensor([concept.beta], dtype=stats.max_activation.dtype, device=stats.max_activation.device)
    one = torch.ones_like(beta)
    loaded.stats = FeatureStats(
        firing_rate=torch.cat([stats.firing_rate, one]),
        mean_activation=torch.cat([stats.mean_activation, beta / 2]),
        max_activation=torch.cat([stats.max_activation, beta]),
        firing_rate_clip=None if stats.firing_rate_clip is None else torch.cat([stats.firing_rate_clip, one]),
    )
    with torch.no_grad():
        sae.W_enc = torch.nn.Parameter(torch.cat([sae.W_enc, w[:, None]], dim=1), requires_grad=False)
        sae.b_enc = torch.nn.Parameter(torch.cat([sae.b_enc, bias]), requires_grad=False)
        sae.W_dec = torch.nn.Parameter(torch.cat([sae.W_dec, w[None]]), requires_grad=False)
    sae.cfg = replace(sae.cfg, d_sae=sae.cfg.d_sae + 1)
    return sae.cfg.d_sae - 1


def load_concept(folder: str | Path, device: torch.device | str = "cpu") -> tuple[Concept, LoadedSAE]:
    """A concept folder (`mgsteer concept`, or a knob the window made) back as the concept and
    the one-feature SAE the folder holds (its layer is the SAE's)."""
    from sae.files import load_sae

    folder = Path(folder)
    meta_path = folder / CONCEPT_FILE
    if not meta_path.is_file():
        raise MgsteerError(f"'{folder}' is not a concept folder (no {CONCEPT_FILE}): make one with mgsteer concept")
    loaded = load_sae(folder, device)
    if loaded.cfg.d_sae != 1:
        raise MgsteerError(f"concept '{folder}' holds {loaded.cfg.d_sae} features; a concept holds one")
    meta = json.loads(meta_path.read_text())
    direction = loaded.sae.W_dec.detach()[0]
    concept = Concept(
        direction=direction / direction.norm(),
        midpoint=loaded.sae.b_dec.detach().clone(),
        beta=float(loaded.require_stats().max_activation[0]),
        heldout_auroc=float(meta.get("heldout_auroc", float("nan"))),
        method=str(meta.get("method", "?")),
        positive_clips=int(meta.get("positive_clips", 0)),
        negative_clips=int(meta.get("negative_clips", 0)),
    )
    return concept, loaded


def with_concepts(
    loaded: LoadedSAE | None, folders: list[str], device: torch.device | str = "cpu"
) -> tuple[LoadedSAE | None, list[tuple[int, str]]]:
    """`loaded` grown by the concepts in `folders`, in order (their ids follow its features),
    with (id, folder name) of each. Without an SAE the first concept is the dictionary: a
    concept folder is an SAE folder. A concept taken at another layer than the SAE's, or from
    a residual of another width, is refused in one line before anything plays."""
    added: list[tuple[int, str]] = []
    rest = list(folders)
    if loaded is None and rest:
        first = rest.pop(0)
        loaded = load_concept(first, device)[1]  # a concept folder, not any SAE
        added.append((0, Path(first).name))
    for folder in rest:
        concept, own = load_concept(folder, device)
        layer = own.cfg.hook_layer
        if layer != loaded.cfg.hook_layer or concept.direction.shape[0] != loaded.cfg.d_in:
            raise MgsteerError(
                f"concept '{folder}' was made at layer {layer} (width {concept.direction.shape[0]}); the SAE "
                f"steers layer {loaded.cfg.hook_layer} (width {loaded.cfg.d_in}): make it again with --layer "
                f"{loaded.cfg.hook_layer}"
            )
        added.append((append_concept(loaded, concept), Path(folder).name))
    return loaded, added
