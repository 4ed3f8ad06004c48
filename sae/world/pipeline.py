"""The SAE pipeline on a world model, as the demo and the world benchmark run it: harvest
prompted generations, train a TopK SAE, find which feature detects each planted attribute
value, and steer with it under prompts that do not name that attribute."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.hooks import recording
from engine.model import LoadedModel
from engine.render import render
from engine.steering import FeatureSteer, SteeringSpec
from engine.tokenloop import SamplingConfig
from sae.files import LoadedSAE
from sae.harvest import Clip, harvest_to_store, prompt_inputs
from sae.labelers.base import WindowCodes
from sae.labelers.world import WELL_FORMED_LOGLIK, WorldLabeler, label_text
from sae.store import ActivationStore
from sae.train import TrainConfig, Trainer
from sae.world.grammar import ATTRIBUTES, OPENING_FRAMES, Attributes, attribute_values, prompt_for, sample_attributes

AT_TARGET = 0.99  # an unsteered clip whose target posterior is above this cannot move toward it
MIN_MOVE = 0.01  # a rise of the target posterior smaller than this is not a move (1e-9 → 1e-7 is not)


@dataclass(frozen=True)
class WorldSAEConfig:
    clips: int = 96
    seconds: float = 4.0
    layer: int = 2
    expansion: int = 2  # 256 features for the world's 128-wide residual: few, broad ones
    k: int = 16
    steps: int = 1000
    batch_size: int = 1024
    seed: int = 0  # the harvested clips' prompts and sampling
    # The dictionary's initialisation and batch order, apart from the clips: which features an
    # SAE learns is partly luck, and telling that apart needs several on the same activations.
    sae_seed: int = 0


def world_clips(count: int, seconds: float, seed: int = 0) -> list[Clip]:
    """`count` clips whose prompts name every attribute of a seeded random draw, so the store
    holds every attribute value."""
    rng = np.random.default_rng([seed, 4241])
    return [Clip(f"world{i}", seconds=seconds, text=prompt_for(sample_attributes(rng))) for i in range(count)]


def harvest_and_train(
    lm: LoadedModel, out: Path, cfg: WorldSAEConfig, progress: bool = False
) -> tuple[ActivationStore, Path, dict]:
    """Harvest `cfg.clips` prompted generations into `out/acts` and train an SAE into `out/sae`
    (the folder's own: an earlier SAE there is replaced)."""
    clips = world_clips(cfg.clips, cfg.seconds, cfg.seed)
    sampling = SamplingConfig(seed=cfg.seed)
    inputs = prompt_inputs(clips, cfg.seconds, cfg.seed)
    harvest_to_store(lm, clips, [cfg.layer], out / "acts", "generation", sampling=sampling, inputs=inputs,
                     progress=progress)  # fmt: skip
    store = ActivationStore(out / "acts")
    train = TrainConfig(k=cfg.k, expansion=cfg.expansion, steps=cfg.steps, batch_size=cfg.batch_size, lr=2e-3,
                        log_every=max(1, cfg.steps // 4), ce_clips=0, seed=cfg.sae_seed, device="cpu")  # fmt: skip
    last = Trainer(store, out / "sae", train).run(progress=progress, overwrite=True)
    return store, out / "sae", last


def neutral_prompts(attribute: str, count: int = 8, seed: int = 0) -> list[str]:
    """Prompts that name some attributes but never `attribute`: the steering decides it."""
    rng = np.random.default_rng([seed, 77])
    others = [name for name in ATTRIBUTES if name != attribute]
    prompts: list[str] = []
    while len(prompts) < count:
        named = tuple(name for name in others if rng.random() < 0.5)
        prompt = prompt_for(sample_attributes(rng), named)
        if prompt not in prompts:
            prompts.append(prompt)
    return prompts


def detected(detection: dict) -> list[tuple[float, str, str, int]]:
    """(held-out AUROC, attribute, value, feature) of every measured value, best first."""
    rows = []
    for key, result in detection["values"].items():
        if "feature" in result:
            name, value = key.split("=", 1)
            rows.append((result["auroc_held_out"], name, value, result["feature"]))
    return sorted(rows, key=lambda r: -r[0])


def ranked_attributes(detection: dict, attributes: tuple[str, ...]) -> list[str]:
    """`attributes` that have a measured value, by their best value's held-out AUROC, best first."""
    best: dict[str, float] = {}
    for auroc, name, _, _ in detected(detection):
        if name in attributes:
            best.setdefault(name, auroc)
    return sorted(best, key=lambda name: -best[name])


def moves(plain: list[float] | np.ndarray, pushed: list[float] | np.ndarray, kept: np.ndarray | None = None) -> dict:
    """How many pairs could move toward the target, and the share of those, and of all pairs,
    that did (and, given `kept`, whose pushed clip is still music)."""
    movable = [i for i, x in enumerate(plain) if x <= AT_TARGET]
    moved = sum(pushed[i] - plain[i] > MIN_MOVE and (kept is None or kept[i]) for i in movable)
    return {
        "pairs_already_at_target": len(plain) - len(movable),
        "toward_target_share": round(moved / len(movable), 3) if movable else None,
        "moved_share_of_all_pairs": round(moved / len(plain), 3),
    }


@dataclass(frozen=True)
class SteerSelection:
    """How the feature to steer an attribute with is chosen, on pairs of its own."""

    prompts: int = 4
    seeds: tuple[int, ...] = (100, 101, 102, 103)  # never the test's seeds
    seconds: float = 3.0
    # A push is α × the feature's largest activation, and a strong detector's is large: on the
    # grammar-3 world a sparse-drums detector moved 11 of 16 pairs at α 0.5 and wrote noise from
    # α 2 on, so the weak strengths are tried too (docs/WORLD.md).
    alphas: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
    candidates: int = 2  # a value's best detectors tried
    min_auroc: float = 0.9  # a detector must detect its value this well on the selection clips
    aligned: int = 2  # and a value's features best aligned with its opening direction, and with its whole clips'
    quality_floor: float = WELL_FORMED_LOGLIK  # grammar log-likelihood per token a choice may not fall below
    # Steps up the α grid from the weakest α that moves the most selection pairs. That α is the
    # least that was enough on these few pairs, so on new ones it falls short (on the grammar-3
    # world: drums α 0.5 moved 11 of 11 selection pairs and 10 of 14 test pairs, α 1 all 14).
    margin: int = 1
    seed: int = 1  # of the selection prompts


def choose_steering(lm: LoadedModel, loaded: LoadedSAE, detection: dict, attribute: str, sel: SteerSelection) -> dict:
    """The (value, feature, α) that steers `attribute` best on selection pairs, for a test on
    other pairs.

    The feature that best *detects* a value need not be the one that *causes* it (a feature of
    note onsets detects fast music and does not make music fast), so every value's candidate
    detectors, and the features aligned with the direction its clips' openings take (where
    the model decides most) and with the direction its whole clips take (a drum density is
    decided at the second note), are tried at each α under neutral prompts, and the choice is
    the one that moves the most pairs toward its value (of all pairs: a value the model already
    writes leaves no room to show anything) with their music above the quality floor (the
    exact scorer hears broken music as fast: a pair pushed into noise has not moved), then the
    larger mean rise, then the smaller α, and then `sel.margin` steps stronger as long as the
    stronger α moves as many pairs; a choice whose music falls below the quality floor on
    average is never taken. None when no candidate qualifies."""
    scorer = WorldLabeler(lm.codebook_size)
    pairs = [(p, s) for p in neutral_prompts(attribute, sel.prompts, sel.seed) for s in sel.seeds]

    def codes(prompt: str, seed: int, spec: SteeringSpec | None = None) -> WindowCodes:
        out = render(lm, prompt, sel.seconds, SamplingConfig(seed=seed), sae=loaded if spec else None, spec=spec)
        return WindowCodes(out.codes.cpu().numpy())

    plain = [codes(p, s) for p, s in pairs]
    tried = []
    for key, result in detection["values"].items():
        name, value = key.split("=", 1)
        if name != attribute or "candidates" not in result:
            continue
        concept = label_text(name, value)
        before = scorer.score_codes(concept, plain)
        for feature, source in candidates(result, sel):
            for alpha in sel.alphas:
                steered = [codes(p, s, SteeringSpec((FeatureSteer(feature, alpha),))) for p, s in pairs]
                after = scorer.score_codes(concept, steered)
                loglik = scorer.code_quality(steered)["grammar_loglik"]
                tried.append({
                    "value": value,
                    "feature": int(feature),
                    "alpha": alpha,
                    "source": source,
                    "moved_share": moves(before, after, loglik >= sel.quality_floor)["moved_share_of_all_pairs"],
                    "mean_rise": round(float((after - before).mean()), 4),
                    "grammar_loglik": round(float(loglik.mean()), 3),
                })  # fmt: skip
    allowed = [t for t in tried if t["grammar_loglik"] >= sel.quality_floor]
    if not allowed:
        return {"attribute": attribute, "chosen": None, "tried": tried}
    best = with_margin(max(allowed, key=lambda t: (t["moved_share"], t["mean_rise"], -t["alpha"])), allowed, sel)
    return {"attribute": attribute, "chosen": best, "selection_pairs": len(pairs), "tried": tried}


def with_margin(weakest: dict, allowed: list[dict], sel: SteerSelection) -> dict:
    """The same value and feature up to `sel.margin` steps stronger on the α grid, as long as
    each step moves as many selection pairs and keeps above the quality floor."""
    same = {t["alpha"]: t for t in allowed if (t["value"], t["feature"]) == (weakest["value"], weakest["feature"])}
    grid = sorted(sel.alphas)
    chosen = weakest
    for alpha in grid[grid.index(weakest["alpha"]) + 1 :][: sel.margin]:
        stronger = same.get(alpha)
        if stronger is None or stronger["moved_share"] < weakest["moved_share"]:
            break
        chosen = stronger
    return chosen | {"weakest_alpha": weakest["alpha"]}


def candidates(result: dict, sel: SteerSelection) -> list[tuple[int, str]]:
    """(feature, why it is tried) for one value: its best detectors above the AUROC bar, then
    its features best aligned with its openings' direction and then with its whole clips'
    (`feature_detection`), each not already among them."""
    out = [(int(f), "detector") for f, auroc in result["candidates"][: sel.candidates] if auroc >= sel.min_auroc]
    for key, source in (("aligned", "aligned"), ("aligned_whole", "aligned whole")):
        seen = {f for f, _ in out}
        out += [(int(f), source) for f, _ in result.get(key, [])[: sel.aligned] if int(f) not in seen]
    return out


@torch.no_grad()
def contrast_direction(lm: LoadedModel, layer: int, attribute: str, value: str, draws: int = 16, seed: int = 0):
    """The residual direction at `layer` by which the model's opening (its first
    `OPENING_FRAMES` frames) differs when the prompt asks for `value` instead of the attribute's
    other values, everything else drawn alike, seed for seed. A direction, not a feature: what
    a push at this layer reaches when the SAE has no feature for it, so a miss can be told
    apart as the dictionary's or the layer's."""
    rng = np.random.default_rng([seed, 31])
    values = attribute_values()[attribute]
    sums = {v: torch.zeros(lm.hidden_size) for v in values}
    for draw in range(draws):
        drawn = sample_attributes(rng).as_dict()
        for v in values:
            prompt = prompt_for(Attributes(**(drawn | {attribute: v})), (attribute,))
            with recording(lm, [layer], cfg_doubled=True) as taps:
                render(lm, prompt, OPENING_FRAMES / lm.frame_rate, SamplingConfig(seed=draw), graph=False)
                sums[v] += taps[layer].take()[0].float().mean(0).cpu()
    others = torch.stack([sums[v] for v in values if v != value]).mean(0)
    return (sums[value] - others) / draws
