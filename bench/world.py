"""The planted world, measured against its ground truth, as JSON.

1. Prompt following: the exact scorer's per-attribute accuracy on prompted generations.
2. Features: harvest prompted generations, train a TopK SAE, and for every planted attribute
   value the best feature's detection AUROC on held-out windows (sae/world/detect.py).
3. Steering: per attribute, a value, a feature and an α chosen on selection pairs of their own
   (sae/world/pipeline.py `choose_steering`: among each value's best detectors and the features
   aligned with the direction its clips' openings take, the one that moves the most pairs
   toward its value without breaking the grammar), then tested on other prompts and seeds that
   never name the attribute (`eval-steer` with the world scorer): of the (prompt, seed) pairs
   whose unsteered clip is not at the target already, the share whose exact posterior of the
   target rises by more than 0.01 against the same seed unsteered; the Wilcoxon p against the
   unsteered and the matched-norm random direction, the prompt baseline (the target named in
   the prompt), and how the quality proxies (grammar log-likelihood per token, token entropy)
   move with α. `well_formed` repeats the count and the test against the random direction with
   every clip below the grammar's floor (−1 per token) scored 0: noise is easily heard as
   fast, so a push that only breaks the music must not count as steering.

    python bench/world.py --model WORLD_DIR [--clips 256] [--layer 2] [--sae-seed 0] [--alphas 1,2,4,8]
        [--select-margin 1] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from common import machine, one_line_errors

from engine.model import load_musicgen
from engine.render import render
from engine.steering import FeatureSteer, SteeringSpec, build_plan
from engine.tokenloop import SamplingConfig
from sae.eval_steer import EvalConfig, evaluate_steering, paired_test
from sae.files import load_sae
from sae.labelers.base import WindowCodes
from sae.labelers.world import WorldLabeler, label_text
from sae.world.detect import feature_detection
from sae.world.grammar import ATTRIBUTES
from sae.world.pipeline import (
    SteerSelection,
    WorldSAEConfig,
    choose_steering,
    contrast_direction,
    harvest_and_train,
    moves,
    neutral_prompts,
)
from sae.world.train import prompted_accuracy

# The SAE every world bench trains (bench/concepts.py's SAE column too): 512 features, k 16.
BENCH_SAE = WorldSAEConfig(clips=256, expansion=4, k=16, steps=1000)
DETECTION_WINDOW_S = 2.0  # window of the detection AUROC


def steering(lm, loaded, detection: dict, args) -> dict:
    scorer, out = WorldLabeler(lm.codebook_size), {}
    selection = SteerSelection(prompts=args.selection_prompts, seconds=args.seconds, alphas=tuple(args.select_alphas),
                               margin=args.select_margin)  # fmt: skip
    for attribute in ATTRIBUTES:
        choice = choose_steering(lm, loaded, detection, attribute, selection)
        chosen = choice["chosen"]
        if chosen is None:
            why = "no detector reaches the selection AUROC and no aligned feature is listed"
            out[attribute] = {"skipped": why, **choice}
            continue
        feature, alpha = chosen["feature"], chosen["alpha"]
        concept = label_text(attribute, chosen["value"])
        prompts = tuple(neutral_prompts(attribute, args.prompts, args.seed))
        seeds = tuple(range(args.seeds))
        pairs = [(p, s) for p in prompts for s in seeds]
        base = EvalConfig(features=(feature,), concepts={feature: concept}, prompts=prompts, seeds=seeds,
                          seconds=args.seconds, alpha=alpha, significance=0.01)  # fmt: skip
        report = evaluate_steering(lm, loaded, scorer, base)["features"][0]
        vs = report["vs"]
        sweep = {}
        for a in args.alphas:  # fewer pairs: the quality curve, not the significance test
            cfg = EvalConfig(features=(feature,), concepts={feature: concept}, prompts=prompts[:2], seeds=seeds,
                             seconds=args.seconds, alpha=a, prompt_baseline=False)  # fmt: skip
            r = evaluate_steering(lm, loaded, scorer, cfg)["features"][0]
            sweep[f"{a:g}"] = {
                "target_posterior": r["mean_score"]["steered"],
                **moves(r["scores"]["none"], r["scores"]["steered"]),
                "quality": r["quality"],
            }
        value = detection["values"][f"{attribute}={chosen['value']}"]
        contrast = contrast_baseline(lm, loaded, attribute, chosen, pairs, report, args)
        out[attribute] = {
            "target": concept,
            "feature": feature,
            "detection_auroc": value["auroc_held_out"] if value["feature"] == feature else None,
            "alpha": alpha,
            "selection": {k: choice[k] for k in ("chosen", "selection_pairs")} | {"tried": len(choice["tried"])},
            "pairs": vs["none"]["pairs"],
            **moves(report["scores"]["none"], report["scores"]["steered"]),
            "mean_target_posterior": report["mean_score"],
            "p_vs_none": vs["none"]["p"],
            "p_vs_random": vs["random"]["p"],
            "steered_minus_prompt": vs["prompt"]["gain"],
            "well_formed": well_formed(report),
            "quality": report["quality"],
            "contrast_direction": contrast,
            "alpha_sweep": sweep,
        }
    return out


def well_formed(report: dict) -> dict:
    """The test again with a clip below the grammar's floor scored 0: toward the target *and*
    still music, against a random push held to the same."""
    kept = report["well_formed"]
    return {
        "share": kept["share"],
        **moves(report["scores"]["none"], kept["scores"]["steered"]),
        "p_vs_random": kept["vs"]["random"]["p"],
    }


def contrast_baseline(lm, loaded, attribute: str, chosen: dict, pairs, report: dict, args) -> dict:
    """The same test pairs pushed along the target's prompt-contrast direction at the chosen
    feature's norm: the best one direction at this layer could do, to compare the feature with."""
    spec = SteeringSpec((FeatureSteer(chosen["feature"], chosen["alpha"]),))
    pushed = build_plan(spec, loaded, torch.device("cpu"), torch.float32).vector
    direction = contrast_direction(lm, loaded.cfg.hook_layer, attribute, chosen["value"], seed=args.seed)
    vector = direction / direction.norm() * pushed.norm()
    concept = label_text(attribute, chosen["value"])
    codes = [
        WindowCodes(render(lm, p, args.seconds, SamplingConfig(seed=s), sae=loaded, vector=vector).codes.numpy())
        for p, s in pairs
    ]
    scores = WorldLabeler(lm.codebook_size).score_codes(concept, codes)
    return {
        "cosine_with_feature": round(float(direction @ pushed / (direction.norm() * pushed.norm())), 3),
        **moves(report["scores"]["none"], scores),
        "mean_target_posterior": round(float(scores.mean()), 5),
        "p_vs_none": paired_test(scores, report["scores"]["none"])["p"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a world model folder (mgsteer world train)")
    p.add_argument("--clips", type=int, default=BENCH_SAE.clips, help="prompted clips harvested for the SAE")
    p.add_argument("--sae-steps", type=int, default=BENCH_SAE.steps)
    p.add_argument("--expansion", type=int, default=BENCH_SAE.expansion)
    p.add_argument("--k", type=int, default=BENCH_SAE.k)
    p.add_argument("--window-s", type=float, default=DETECTION_WINDOW_S, help="window of the detection AUROC")
    p.add_argument("--layer", type=int, default=2)
    p.add_argument("--generations", type=int, default=50, help="prompted clips for the accuracy")
    p.add_argument("--prompts", type=int, default=8, help="neutral prompts per attribute")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--seconds", type=float, default=3.0, help="seconds per steering clip")
    p.add_argument("--select-alphas", default=",".join(f"{a:g}" for a in SteerSelection.alphas),
                   help="strengths tried when choosing each attribute's feature")  # fmt: skip
    p.add_argument("--select-margin", type=int, default=SteerSelection.margin,
                   help="α grid steps above the weakest α that moves the most selection pairs")  # fmt: skip
    p.add_argument("--selection-prompts", type=int, default=4, help="neutral prompts (× seeds 100–103) to choose on")
    p.add_argument("--alphas", default="1,2,4,8", help="strengths of the quality sweep")
    p.add_argument("--seed", type=int, default=0, help="harvest, prompts and sampling")
    p.add_argument("--sae-seed", type=int, default=0, help="the SAE's initialisation and batch order alone")
    p.add_argument("--out", help="folder for the store and the SAE (default: a temporary one)")
    args = p.parse_args()
    args.alphas = [float(a) for a in args.alphas.split(",")]
    args.select_alphas = [float(a) for a in args.select_alphas.split(",")]
    lm = load_musicgen(args.model, "cpu")
    started = time.perf_counter()
    result: dict = {
        "model": args.model,
        "machine": machine(),
        "prompted_accuracy": prompted_accuracy(lm, args.generations, seed=args.seed),
    }
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        cfg = WorldSAEConfig(clips=args.clips, layer=args.layer, expansion=args.expansion, k=args.k,
                             steps=args.sae_steps, seed=args.seed, sae_seed=args.sae_seed)  # fmt: skip
        store, sae_dir, last = harvest_and_train(lm, out, cfg)
        loaded = load_sae(sae_dir)
        result["sae"] = {"d_sae": loaded.cfg.d_sae, "k": loaded.cfg.k, "layer": args.layer, "seed": args.sae_seed,
                         "fvu": last["fvu"]}  # fmt: skip
        detection = feature_detection(store, loaded, args.layer, args.window_s, lm.frame_rate)
        result["features"] = detection
        result["steering"] = steering(lm, loaded, detection, args)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    one_line_errors(main)
