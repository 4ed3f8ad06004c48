"""The offline demo behind `make demo`: the whole steer-a-feature story on the tiny model.

It harvests activations while generating, trains a small TopK SAE on them (saved in the
SAELens layout), labels the strongest features with music descriptors and writes the HTML
feature browser, then renders the same seed twice — plain and steered — so the difference is
the steering alone.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine.model import load_musicgen
from engine.render import render, write_wav
from engine.steering import FeatureSteer, SteeringSpec
from engine.tokenloop import SamplingConfig
from sae.browse import write_browser
from sae.catalog import load_catalog
from sae.examples import ExampleConfig
from sae.files import load_sae
from sae.harvest import Clip, harvest_to_store
from sae.label import LabelConfig, choose_features, label_features
from sae.store import ActivationStore
from sae.train import TrainConfig, Trainer

DEMO_PROMPTS = [
    "simple melody",
    "calm piano melody with soft strings",
    "techno groove with a driving kick",
    "sad minor key cello solo",
    "happy upbeat ukulele tune",
    "ambient drone with slow evolving pads",
    "funky bass and clavinet with tight drums",
    "orchestral film score with brass",
]
DEMO_PROMPT = "simple melody"


def pick_features(rates: torch.Tensor, betas: torch.Tensor, count: int = 2) -> list[int]:
    """The strongest features among those the paper's filter keeps (0.01 ≤ rate ≤ 0.25)."""
    keep = (rates >= 0.01) & (rates <= 0.25)
    pool = keep if keep.any() else rates > 0
    order = torch.argsort(torch.where(pool, betas, torch.full_like(betas, -1.0)), descending=True)
    return [int(i) for i in order[:count]]


def run_demo(out: Path, layer: int = 2, seconds: float = 5.0, seed: int = 0, progress: bool = False) -> dict:
    lm = load_musicgen("tiny")
    lm.check_layer(layer)
    sampling = SamplingConfig(seed=seed)
    print(f"[1/4] harvesting layer {layer} activations while generating {len(DEMO_PROMPTS)} prompts (tiny model)")
    clips = [Clip(f"prompt{i}", seconds=4.0, text=p) for i, p in enumerate(DEMO_PROMPTS)]
    harvest_to_store(lm, clips, [layer], out / "acts", "generation", sampling=sampling, progress=progress)
    store = ActivationStore(out / "acts")
    cfg = TrainConfig(k=8, expansion=4, steps=300, batch_size=256, lr=2e-3, log_every=100, seed=seed)
    last = Trainer(store, out / "sae", cfg).run(progress=progress, overwrite=True)  # the demo's own folder
    sae_dir = out / "sae"
    loaded = load_sae(sae_dir, lm.device)
    stats = loaded.require_stats()
    features = pick_features(stats.firing_rate, stats.max_activation)
    print(
        f"[2/4] trained a {loaded.cfg.d_sae}-feature TopK SAE (k={cfg.k}) on {store.rows()} frames: "
        f"FVU {last['fvu']:.3f}; saved to {sae_dir}"
    )

    chosen = tuple(dict.fromkeys(features + choose_features(loaded, LabelConfig(limit=6))))
    examples = ExampleConfig(top_n=6, window_s=2.0, negatives=10, seed=seed)
    label_features(sae_dir, out / "acts", lm, LabelConfig(features=chosen, examples=examples), progress=progress)
    page = write_browser(sae_dir, out / "features.html")
    names = {
        r["id"]: [lab["label"] for lab in r["labels"].get("descriptors", [])] for r in load_catalog(sae_dir)["features"]
    }
    print(f"[3/4] labeled {len(chosen)} features with music descriptors; browse them: {page.resolve()}")
    for f in features:
        print(f"      feature {f}: {', '.join(names.get(f, [])[:4]) or '(nothing stands out)'}")

    steers = (FeatureSteer(features[0], 1.0), FeatureSteer(features[-1], 0.8))
    spec = SteeringSpec(steers=steers)
    plain = render(lm, DEMO_PROMPT, seconds, sampling, progress=progress)
    steered = render(lm, DEMO_PROMPT, seconds, sampling, loaded, spec, progress=progress)
    changed = (plain.codes != steered.codes).float().mean().item()
    plain_path = write_wav(out / "plain.wav", plain.audio, plain.sample_rate)
    steered_path = write_wav(out / "steered.wav", steered.audio, steered.sample_rate)
    steer_args = " ".join(f"--steer {s.feature}={s.alpha:g}" for s in steers)
    print(f"[4/4] rendered '{DEMO_PROMPT}' for {plain.seconds:.1f} s, seed {seed}, plain and steered")
    print(f"      steering {steer_args.replace('--steer ', '')} changed {100 * changed:.0f}% of the tokens")
    print(f"plain WAV:   {plain_path.resolve()}")
    print(f"steered WAV: {steered_path.resolve()}")
    print(
        f"again by hand: mgsteer render --model tiny --sae {sae_dir} {steer_args} --seconds {seconds:g} "
        f"--seed {seed} --out steered.wav"
    )
    return {
        "sae": sae_dir,
        "plain": plain_path,
        "steered": steered_path,
        "changed": changed,
        "features": features,
        "browser": page,
    }
