"""Knobs from examples at every layer at once, measured against the planted truth.

Other steering work on MusicGen adds a difference-of-means vector to every block, not one.
A knob here steers one layer (the concept's folder is a one-feature dictionary at its layer),
so this asks first whether every layer at once would steer further on the world models: for
each value of tempo and drum density, the difference of means of 32 + 32 prompted clips at
each of `--layers`, each scaled by its own β, added together at α (both CFG halves), α chosen
on bench/concepts.py's selection pairs and tested on its test pairs against random vectors of
the same norms at the same layers. Forward hooks on the layers, outside the engine: a
measurement, not a knob.

    python bench/every_layer.py --model demo_out/world[,WORLD2,…] [--layers 0,1,2,3] [--examples 32]
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator

import torch
from common import machine, one_line_errors
from concepts import best_alpha, example_prompts

from engine.model import load_musicgen
from engine.render import render
from engine.tokenloop import SamplingConfig
from sae.concept import build_concept
from sae.harvest import harvest_generation
from sae.labelers.base import WindowCodes
from sae.labelers.world import WorldLabeler, label_text
from sae.world.grammar import attribute_values
from sae.world.pipeline import SteerSelection, moves, neutral_prompts

ALPHAS = (0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.35, 0.5)


@contextlib.contextmanager
def added(lm, vectors: dict[int, torch.Tensor]) -> Iterator[None]:
    """`vectors[layer]` added to the output of each of those decoder layers while it is open."""

    def hook_for(vector: torch.Tensor):
        def hook(module, args, output):
            if isinstance(output, tuple):
                return (output[0] + vector, *output[1:])
            return output + vector

        return hook

    handles = [lm.decoder_layers[layer].register_forward_hook(hook_for(v)) for layer, v in vectors.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def scored(lm, pairs, concept: str, sel: SteerSelection, vectors: dict[int, torch.Tensor] | None):
    """The world scorer's posterior of `concept` per pair, whether each clip is still music,
    and the mean grammar log-likelihood per token."""
    scorer = WorldLabeler(lm.codebook_size)
    with added(lm, vectors or {}):
        codes = [WindowCodes(render(lm, p, sel.seconds, SamplingConfig(seed=s)).codes.cpu().numpy()) for p, s in pairs]
    loglik = scorer.code_quality(codes)["grammar_loglik"]
    return scorer.score_codes(concept, codes), loglik >= sel.quality_floor, float(loglik.mean())


def value_row(lm, attribute: str, value: str, args, sel: SteerSelection) -> dict:
    others = [v for v in attribute_values()[attribute] if v != value]
    frames = round(sel.seconds * lm.frame_rate)
    pos, _ = harvest_generation(lm, example_prompts(attribute, value, args.examples, 1), args.layers, frames,
                                SamplingConfig(seed=1))  # fmt: skip
    neg_prompts = [p for v in others for p in example_prompts(attribute, v, args.examples, 2)]
    neg, _ = harvest_generation(lm, neg_prompts, args.layers, frames, SamplingConfig(seed=2))
    push = {}
    for layer in args.layers:
        concept = build_concept(list(pos[layer].unbind(0)), list(neg[layer].unbind(0)), "mean-diff")
        push[layer] = concept.direction * concept.beta
    gen = torch.Generator().manual_seed(5)
    noise = {layer: torch.randn(v.shape, generator=gen) for layer, v in push.items()}
    random = {layer: n / n.norm() * push[layer].norm() for layer, n in noise.items()}
    concept = label_text(attribute, value)
    selection = [(p, s) for p in neutral_prompts(attribute, sel.prompts, sel.seed) for s in sel.seeds]
    before = scored(lm, selection, concept, sel, None)[0]
    tried = []
    for alpha in ALPHAS:
        after, kept, loglik = scored(lm, selection, concept, sel, {k: alpha * v for k, v in push.items()})
        tried.append({"alpha": alpha, "moved_share": moves(before, after, kept)["moved_share_of_all_pairs"],
                      "grammar_loglik": round(loglik, 3)})  # fmt: skip
    alpha = best_alpha(tried, sel.quality_floor)["alpha"]
    test = [(p, s) for p in neutral_prompts(attribute, args.prompts, 0) for s in range(args.seeds)]
    plain, plain_kept, _ = scored(lm, test, concept, sel, None)
    row = {"alpha": alpha, "selection": tried, "pairs": len(test),
           "unsteered_music_share": round(float(plain_kept.mean()), 3)}  # fmt: skip
    for name, vectors in (("steered", push), ("random", random)):
        after, kept, _ = scored(lm, test, concept, sel, {k: alpha * v for k, v in vectors.items()})
        moved = moves(plain, after, kept)
        movable = len(test) - moved["pairs_already_at_target"]
        share = moved["toward_target_share"] or 0.0
        row[name] = {
            "moved": round(share * movable),
            "movable": movable,
            "music_kept_share": round(float(kept.mean()), 3),
        }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="world model folders, comma-separated")
    parser.add_argument("--layers", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2, 3])
    parser.add_argument("--examples", type=int, default=32, help="example clips per side")
    parser.add_argument("--prompts", type=int, default=8, help="neutral test prompts")
    parser.add_argument("--seeds", type=int, default=6, help="seeds per test prompt")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    runs = {}
    for model in args.model.split(","):
        lm = load_musicgen(model, "cpu")
        for layer in args.layers:
            lm.check_layer(layer)
        runs[model] = {}
        for attribute in ("tempo", "density"):
            for value in attribute_values()[attribute]:
                runs[model][f"{attribute}={value}"] = row = value_row(lm, attribute, value, args, SteerSelection())
                print(json.dumps({model: {f"{attribute}={value}": row}}), flush=True)
    print(json.dumps({"machine": machine(), "layers": args.layers, "examples_per_side": args.examples,
                      "worlds": runs}, indent=1))  # fmt: skip


if __name__ == "__main__":
    one_line_errors(main)
