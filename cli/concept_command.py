"""`mgsteer concept`: a knob from examples: a direction from clips with and without a quality."""

from __future__ import annotations

import argparse
import time

from cli import argtypes as types
from cli.common import model_args
from engine.errors import MgsteerError
from engine.outputs import output_dir


def add_concept_command(sub) -> None:
    c = sub.add_parser("concept", help="make a knob from examples: a direction from clips with and without a quality")
    model_args(c)
    c.add_argument("--out", required=True, help="folder to write (an SAE folder with one feature: --sae it)")
    c.add_argument("--layer", type=types.whole(0, 1000), help="residual layer (not given: the middle one)")
    for side in ("positive", "negative"):
        group = c.add_mutually_exclusive_group(required=True)
        group.add_argument(f"--{side}", action="append", metavar="PROMPT", help=f"a {side} prompt (repeat the flag)")
        group.add_argument(f"--{side}-audio", metavar="DIR", help=f"an audio folder of {side} examples")
    c.add_argument("--method", default="mean-diff", help="how the direction is found: mean-diff, probe or rfm")
    c.add_argument("--seconds", type=types.SECONDS, default=4.0, help="seconds per clip")
    c.add_argument("--takes", type=types.whole(1, 100), default=4, help="clips generated per prompt (one seed each)")
    c.add_argument("--seed", type=types.SEED, default=0, help="first sampling seed for prompted clips")
    c.set_defaults(func=cmd_concept)


def cmd_concept(args: argparse.Namespace) -> None:
    from engine.model import load_musicgen
    from sae.concept import METHODS, audio_residuals, build_concept, prompt_residuals, save_concept

    if args.method not in METHODS:
        raise MgsteerError(f"unknown concept method '{args.method}': use {', '.join(METHODS)}")
    out = output_dir(args.out)
    if out.is_dir() and any(out.iterdir()) and not (out / "concept.json").is_file():
        raise MgsteerError(f"--out '{out}' holds other files; give an empty folder or an earlier concept to replace")
    started = time.perf_counter()
    lm = load_musicgen(args.model, args.device, args.dtype)
    layer = lm.check_layer(args.layer if args.layer is not None else lm.num_layers // 2)
    sides = []
    for side in ("positive", "negative"):
        prompts, folder = getattr(args, side), getattr(args, f"{side}_audio")
        source = f"generating {len(prompts) * args.takes} clips" if prompts else f"reading {folder}"
        print(f"{side}: {source} …")
        if prompts:
            sides.append(prompt_residuals(lm, prompts, layer, args.seconds, args.takes, args.seed))
        else:
            sides.append(audio_residuals(lm, folder, layer, args.seconds))
    concept = build_concept(*sides, method=args.method)
    save_concept(concept, out, layer, lm.spec)
    print(
        f"concept '{out}': {concept.method} direction at layer {layer} from {concept.positive_clips} + "
        f"{concept.negative_clips} clips in {time.perf_counter() - started:.0f} s, held-out AUROC "
        f"{concept.heldout_auroc:.2f}, β {concept.beta:.3g}"
    )
    print(f"steer it: mgsteer play --model {args.model} --sae {out} --steer 0=1")
