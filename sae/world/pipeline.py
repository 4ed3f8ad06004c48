"""The SAE pipeline on a world model, as the demo and the world benchmark run it: harvest
prompted generations, train a TopK SAE, find which feature detects each planted attribute
value, and steer with it under prompts that do not name that attribute."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.model import LoadedModel
from engine.tokenloop import SamplingConfig
from sae.harvest import Clip, harvest_to_store, prompt_inputs
from sae.store import ActivationStore
from sae.train import TrainConfig, Trainer
from sae.world.grammar import ATTRIBUTES, prompt_for, sample_attributes


@dataclass(frozen=True)
class WorldSAEConfig:
    clips: int = 96
    seconds: float = 4.0
    layer: int = 2
    expansion: int = 2  # 256 features for the world's 128-wide residual: few, broad ones
    k: int = 16
    steps: int = 1000
    batch_size: int = 1024
    seed: int = 0


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
                        log_every=max(1, cfg.steps // 4), ce_clips=0, seed=cfg.seed, device="cpu")  # fmt: skip
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


def steering_targets(detection: dict) -> dict[str, tuple[str, int, float]]:
    """Per attribute: (value, feature, held-out AUROC) of its best-detected value."""
    best: dict[str, tuple[str, int, float]] = {}
    for auroc, name, value, feature in detected(detection):
        best.setdefault(name, (value, feature, auroc))
    return best
