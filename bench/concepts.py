"""Knobs from examples, measured against the planted truth: concept directions on world models.

For every value of tempo and drum density (the attributes a single SAE feature steers worst,
docs/WORLD.md), on each world model given:

1. Examples (`--sources`), `--examples` per side: `prompts`, clips generated from prompts that
   name the value (positive) and the attribute's other value (negative), everything else drawn
   alike, as a musician would make them; `world`, the world's own labelled clips (the grammar
   sampled with the attribute set, everything else drawn at random), read teacher-forced with
   no prompt as `mgsteer concept --positive-audio` reads audio examples: examples that surely
   have the quality.
2. Directions: `mgsteer concept`'s methods (`--methods`: difference of means, logistic probe,
   recursive feature machine) at `--layer`.
3. Steering (`--steering`): `add` α·β·direction to both CFG halves (what a knob does),
   `cond` to the conditional half only (classifier-free guidance then scales the push), or
   `clamp` each frame's reading of the direction to α·β (each frame is moved by what it
   lacks, or pulled back by what it has beyond it, not all by the same push).
4. α chosen on selection pairs of their own (4 neutral prompts × seeds 100–103, as the SAE
   features' choice in bench/world.py): the α that moves the most pairs toward the value with
   the music above the grammar's quality floor (ties: the smaller α).
   The SAE column (`--sae-clips` > 0): bench/world.py's harvest and SAE per world, and
   bench/world.py's choice restricted to the value (its best detectors and aligned features,
   each at every α of `SteerSelection`, on the same selection pairs).
5. Test on other pairs (`--prompts` neutral prompts × `--seeds` seeds that never name the
   attribute, the world scorer's exact posterior), with eval-steer's baselines: unsteered,
   a random direction of the same norm, and the value named in the prompt. Reported: of the
   pairs not already at the value, the share moved toward it with the music kept, the share
   of steered clips that stay music, and the Wilcoxon p against the random direction with
   broken clips scored 0.

    python bench/concepts.py --model demo_out/world[,WORLD2,…] [--layer 2] [--examples 8]
        [--sources prompts,world] [--methods mean-diff,probe,rfm] [--steering add,cond,clamp]
        [--sae-clips 256] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from common import machine, one_line_errors
from world import BENCH_SAE, DETECTION_WINDOW_S

from engine.model import load_musicgen
from engine.render import render
from engine.steering import FeatureSteer, SteeringSpec
from engine.tokenloop import SamplingConfig
from sae.concept import METHODS, build_concept, save_concept
from sae.eval_steer import EvalConfig, evaluate_steering
from sae.files import load_sae
from sae.harvest import harvest_generation, teacher_forced_activations
from sae.labelers.base import WindowCodes
from sae.labelers.world import WorldLabeler, label_text
from sae.world.detect import feature_detection
from sae.world.grammar import Attributes, attribute_values, prompt_for, sample_attributes, sample_clip
from sae.world.pipeline import (
    SteerSelection,
    choose_steering,
    harvest_and_train,
    moves,
    neutral_prompts,
)

ATTRIBUTES = ("tempo", "density")
STEERING = {"add": ("add", "both"), "cond": ("add", "cond"), "clamp": ("clamp", "both")}  # → (mode, halves)


def example_prompts(attribute: str, value: str, count: int, seed: int) -> list[str]:
    """Prompts that name `attribute` = `value` and nothing else, the rest drawn as the world draws it."""
    rng = np.random.default_rng([seed, 53])
    return [prompt_for(Attributes(**(sample_attributes(rng).as_dict() | {attribute: value})), (attribute,))
            for _ in range(count)]  # fmt: skip


def residuals(lm, prompts: list[str], layer: int, seconds: float, seed: int) -> list[torch.Tensor]:
    acts, _ = harvest_generation(lm, prompts, [layer], round(seconds * lm.frame_rate), SamplingConfig(seed=seed))
    return list(acts[layer].unbind(0))


def world_residuals(lm, attribute: str, value: str, count: int, layer: int, seconds: float, seed: int):
    """Residuals of `count` of the world's own clips with `attribute` = `value`, the rest drawn
    at random, teacher-forced with no prompt."""
    rng = np.random.default_rng([seed, 59])
    frames = round(seconds * lm.frame_rate)
    codes = [torch.from_numpy(sample_clip(rng, Attributes(**(sample_attributes(rng).as_dict() | {attribute: value})),
                                          frames)) for _ in range(count)]  # fmt: skip
    return [acts[layer] for acts in teacher_forced_activations(lm, codes, [layer])]


def examples(lm, source: str, attribute: str, value: str, args) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(positive, negative) residuals for `value` from `source`."""
    others = [v for v in attribute_values()[attribute] if v != value]
    if source == "world":
        pos = world_residuals(lm, attribute, value, args.examples, args.layer, args.seconds, 1)
        neg = [r for v in others for r in world_residuals(lm, attribute, v, args.examples, args.layer, args.seconds, 2)]
        return pos, neg
    pos = residuals(lm, example_prompts(attribute, value, args.examples, 1), args.layer, args.seconds, 1)
    neg = residuals(lm, [p for v in others for p in example_prompts(attribute, v, args.examples, 2)], args.layer,
                    args.seconds, 2)  # fmt: skip
    return pos, neg


def choose_alpha(lm, loaded, attribute: str, value: str, alphas: list[float], sel: SteerSelection,
                 steering: str = "add") -> dict:  # fmt: skip
    """The α that moves the most selection pairs toward `value` with the music kept."""
    mode, halves = STEERING[steering]
    scorer, concept = WorldLabeler(lm.codebook_size), label_text(attribute, value)
    pairs = [(p, s) for p in neutral_prompts(attribute, sel.prompts, sel.seed) for s in sel.seeds]

    def codes(prompt: str, seed: int, spec: SteeringSpec | None = None) -> WindowCodes:
        out = render(lm, prompt, sel.seconds, SamplingConfig(seed=seed), sae=loaded if spec else None, spec=spec)
        return WindowCodes(out.codes.cpu().numpy())

    before = scorer.score_codes(concept, [codes(p, s) for p, s in pairs])
    tried = []
    for alpha in alphas:
        steered = [codes(p, s, SteeringSpec((FeatureSteer(0, alpha),), mode, halves)) for p, s in pairs]
        loglik = scorer.code_quality(steered)["grammar_loglik"]
        moved = moves(before, scorer.score_codes(concept, steered), loglik >= sel.quality_floor)
        tried.append({"alpha": alpha, "moved_share": moved["moved_share_of_all_pairs"],
                      "grammar_loglik": round(float(loglik.mean()), 3)})  # fmt: skip
    return {"chosen": best_alpha(tried, sel.quality_floor), "tried": tried}


def best_alpha(tried: list[dict], floor: float) -> dict:
    """Of the α tried on the selection pairs, the one that moves the most pairs with the music
    above the grammar's floor on average (all of them if none is); ties: the smaller α."""
    allowed = [t for t in tried if t["grammar_loglik"] >= floor] or tried
    return max(allowed, key=lambda t: (t["moved_share"], -t["alpha"]))


def test(lm, loaded, attribute: str, value: str, alpha: float, args, feature: int = 0, steering: str = "add") -> dict:
    prompts = tuple(neutral_prompts(attribute, args.prompts, 0))
    mode, halves = STEERING[steering]
    cfg = EvalConfig(features=(feature,), concepts={feature: label_text(attribute, value)}, prompts=prompts,
                     seeds=tuple(range(args.seeds)), seconds=args.seconds, alpha=alpha, mode=mode,
                     halves=halves)  # fmt: skip
    report = evaluate_steering(lm, loaded, WorldLabeler(lm.codebook_size), cfg)["features"][0]
    kept = report["well_formed"]
    scores = report["scores"]
    return {
        "pairs": len(scores["none"]),
        "kept_toward_target": moves(scores["none"], kept["scores"]["steered"]),
        "random_kept_toward_target": moves(scores["none"], kept["scores"]["random"]),
        "music_kept_share": kept["share"],
        "p_vs_random_kept": kept["vs"]["random"]["p"],
        "p_vs_none": report["vs"]["none"]["p"],
        "mean_target_posterior": report["mean_score"],
    }


def bench_world(model: str, args, folder: Path) -> dict:
    lm = load_musicgen(model, "cpu")
    out: dict = {}

    def report(key: str, row: dict) -> None:
        out[key] = row
        print(json.dumps({model: {key: row}}), flush=True)

    if args.sae_clips:
        for key, row in sae_features(lm, model, args, folder):
            report(key, row)
    for attribute in ATTRIBUTES:
        for value in attribute_values()[attribute]:
            for source in args.sources:
                started = time.perf_counter()
                pos, neg = examples(lm, source, attribute, value, args)
                examples_s = time.perf_counter() - started
                for method in args.methods:
                    t = time.perf_counter()
                    concept = build_concept(pos, neg, method)
                    path = save_concept(concept, folder / f"{Path(model).name}-{attribute}-{value}-{source}-{method}",
                                        args.layer, lm.spec)  # fmt: skip
                    built_s = examples_s + time.perf_counter() - t
                    loaded = load_sae(path)
                    for steering in args.steering:
                        choice = choose_alpha(lm, loaded, attribute, value, args.alphas, SteerSelection(), steering)
                        alpha = choice["chosen"]["alpha"]
                        suffix = "" if steering == "add" else f"/{steering}"
                        report(f"{attribute}={value}/{source}/{method}{suffix}", {
                            "heldout_auroc": round(concept.heldout_auroc, 3),
                            "built_in_s": round(built_s, 1),
                            "alpha": alpha,
                            "selection": choice["tried"],
                            **test(lm, loaded, attribute, value, alpha, args, steering=steering),
                        })  # fmt: skip
    return out


def sae_features(lm, model: str, args, folder: Path) -> Iterator[tuple[str, dict]]:
    """Per value, the SAE feature bench/world.py's selection picks among the value's own
    candidates, tested on the same pairs as the directions."""
    cfg = replace(BENCH_SAE, clips=args.sae_clips, layer=args.layer)
    store, sae_dir, _ = harvest_and_train(lm, folder / f"{Path(model).name}-sae", cfg)
    loaded = load_sae(sae_dir)
    detection = feature_detection(store, loaded, args.layer, DETECTION_WINDOW_S, lm.frame_rate)
    for attribute in ATTRIBUTES:
        for value in attribute_values()[attribute]:
            key = f"{attribute}={value}"
            one = {"values": {key: detection["values"][key]}}
            chosen = choose_steering(lm, loaded, one, attribute, SteerSelection())["chosen"]
            if chosen is None:
                yield f"{key}/sae", {"skipped": "no candidate keeps the music on the selection pairs"}
                continue
            row = {"feature": chosen["feature"], "source": chosen["source"], "alpha": chosen["alpha"],
                   "detection_auroc": detection["values"][key].get("auroc_held_out")}  # fmt: skip
            yield f"{key}/sae", row | test(lm, loaded, attribute, value, chosen["alpha"], args, chosen["feature"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="world model folders, comma-separated")
    parser.add_argument("--layer", type=int, default=2)
    parser.add_argument("--examples", type=int, default=8, help="example clips per side")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--prompts", type=int, default=8, help="neutral test prompts")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per test prompt")
    parser.add_argument("--alphas", type=lambda s: [float(a) for a in s.split(",")], default=[0.25, 0.5, 1.0])
    parser.add_argument("--sources", type=lambda s: s.split(","), default=["prompts", "world"],
                        help="where the examples come from: prompts, world")  # fmt: skip
    parser.add_argument("--methods", type=lambda s: s.split(","), default=list(METHODS))
    parser.add_argument("--steering", type=lambda s: s.split(","), default=["add"],
                        help="how a direction steers: add, cond (the conditional CFG half only), clamp")  # fmt: skip
    parser.add_argument("--sae-clips", type=int, default=BENCH_SAE.clips, help="clips for the SAE column (0: none)")
    parser.add_argument("--out", help="keep the concept folders here (default: a temporary folder)")
    args = parser.parse_args()
    for name, allowed in (("sources", ("prompts", "world")), ("methods", METHODS), ("steering", tuple(STEERING))):
        unknown = set(getattr(args, name)) - set(allowed)
        if unknown:
            parser.error(f"--{name}: unknown {', '.join(sorted(unknown))} (use {', '.join(allowed)})")
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.out or tmp)
        runs = {model: bench_world(model, args, folder) for model in args.model.split(",")}
    print(json.dumps({"machine": machine(), "layer": args.layer, "examples_per_side": args.examples,
                      "test_pairs": args.prompts * args.seeds, "worlds": runs}, indent=1))  # fmt: skip


if __name__ == "__main__":
    one_line_errors(main)
