"""`mgsteer world train|eval`: the planted music world (sae/world), measured against its grammar."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cli import argtypes as types
from cli.common import progress_bars
from engine.errors import MgsteerError
from engine.outputs import output_dir


def add_world_command(sub) -> None:
    w = sub.add_parser("world", help="a small MusicGen trained on a token grammar with known attributes")
    ws = w.add_subparsers(dest="world_command", required=True)
    t = ws.add_parser("train", help="train (or resume) a world model into a folder that loads with --model DIR")
    t.add_argument("--out", required=True, help="folder for the model, its tokenizer and checkpoints")
    t.add_argument("--steps", type=types.COUNT, default=2000, help="training steps (≈ 0.25 s each on 2 CPU cores)")
    t.add_argument("--batch-size", type=types.whole(1, 4096), default=16, help="clips per step")
    t.add_argument("--seconds", type=types.CLIP_SECONDS, default=4.0, help="clip length")
    t.add_argument("--short-steps", type=types.whole(0, 10**9), default=None,
                   help="first steps on 1 s clips, a third of the cost each (default: 65 %% of --steps, "
                        "1300 of 2000; 0: every step on full clips)")  # fmt: skip
    t.add_argument("--lr", type=types.number(0.0, 1.0, above=True), default=2e-3, help="peak learning rate")
    t.add_argument("--checkpoint-every", type=types.COUNT, default=250, help="steps between checkpoints")
    t.add_argument("--seed", type=types.SEED, default=0, help="initialisation and data seed")
    t.add_argument("--generations", type=types.whole(0, 10_000), default=50, help="prompted clips scored afterwards")
    run = t.add_mutually_exclusive_group()
    run.add_argument("--resume", action="store_true", help="continue from the folder's last checkpoint")
    run.add_argument("--overwrite", action="store_true", help="clear the folder and start again")
    t.set_defaults(func=cmd_world_train)
    e = ws.add_parser("eval", help="score a world model's prompted generations with the exact scorer")
    e.add_argument("--model", required=True, help="a folder from mgsteer world train")
    e.add_argument("--generations", type=types.whole(1, 10_000), default=50, help="prompted clips to score")
    e.add_argument("--seconds", type=types.CLIP_SECONDS, default=4.0, help="seconds per clip")
    e.add_argument("--seed", type=types.SEED, default=0, help="sampling seed")
    e.add_argument("--json", action="store_true", help="print one JSON object instead of the lines")
    e.set_defaults(func=cmd_world_eval)


def cmd_world_train(args: argparse.Namespace) -> None:
    from engine.model import load_musicgen
    from sae.world.train import SHORT_SHARE, WorldTrainConfig, WorldTrainer, prompted_accuracy, saved_state

    short_steps = args.short_steps
    if short_steps is None:  # derived from --steps; a resume keeps the run's own (a new --steps may extend it)
        saved = saved_state(Path(args.out)) if args.resume and Path(args.out).is_dir() else None
        short_steps = saved["config"].get("short_steps", 0) if saved else round(SHORT_SHARE * args.steps)
    if short_steps > args.steps:
        raise MgsteerError(f"--short-steps {short_steps} is more than --steps {args.steps}")
    out = output_dir(args.out)
    cfg = WorldTrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        seconds=args.seconds,
        short_steps=short_steps,
        lr=args.lr,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
    )
    started = time.perf_counter()
    result = WorldTrainer(out, cfg).run(resume=args.resume, overwrite=args.overwrite, progress=progress_bars())
    print(f"trained {result['steps']} steps in {(time.perf_counter() - started) / 60:.1f} min, loss {result['loss']}")
    if args.generations:
        accuracy = prompted_accuracy(load_musicgen(str(out), "cpu"), args.generations, args.seconds, args.seed)
        print(accuracy_line(accuracy))
    print(f"use it: mgsteer render --model {out} --prompt 'fast A minor melody, bright' --out world.wav")


def cmd_world_eval(args: argparse.Namespace) -> None:
    from engine.model import load_musicgen
    from sae.world.train import prompted_accuracy

    lm = load_musicgen(args.model, "cpu")
    accuracy = prompted_accuracy(lm, args.generations, args.seconds, args.seed)
    print(json.dumps({"prompted_accuracy": shown(accuracy)}) if args.json else accuracy_line(accuracy))


def shown(accuracy: dict) -> dict:
    """The attributes by the names prompts use ("drums", not the grammar's "density")."""
    return {SHOWN.get(name, name): value for name, value in accuracy.items()}


SHOWN = {"density": "drums"}


def accuracy_line(accuracy: dict) -> str:
    """How often the exact scorer's most probable value is the one the prompt asked for."""
    from sae.world.grammar import ATTRIBUTES

    parts = " · ".join(f"{SHOWN.get(name, name)} {accuracy[name]:.2f}" for name in ATTRIBUTES)
    return (
        f"prompted accuracy over {accuracy['generations']} clips of {accuracy['seconds']:g} s (the exact "
        f"scorer's most probable value is the one the prompt named): {parts}"
    )
