"""How much a quantized step costs in music: int8 and int4 beside float32, one model, one run.

For every precision an export holds: the KL of the sampling distributions vs the float32 step
and the share of tokens changed with the same seed (bench/stream.py's `divergence`). For a
planted world (docs/WORLD.md), also what the world can check exactly: the exact scorer's
prompted accuracy and the grammar log-likelihood per token, for torch and every ONNX
precision on the same prompts and seed. Prints one JSON object.

    python bench/onnx_quality.py --model demo_out/world [--onnx-dir DIR] [--generations 50]
    python bench/onnx_quality.py --model random-small --onnx-dir DIR
Without --onnx-dir it exports float32, int8 and int4 into a temporary folder first.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from common import machine, one_line_errors

from engine.model import load_musicgen
from engine.onnx_backend import OnnxBackend
from engine.onnx_export import export_onnx, load_manifest
from engine.runtime_choice import divergence


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random-small")
    parser.add_argument("--onnx-dir", help="a folder from mgsteer export-onnx for --model (default: export now)")
    parser.add_argument("--steps", type=int, default=200, help="steps for the KL")
    parser.add_argument("--generations", type=int, default=50, help="world prompts for the prompted accuracy")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    lm = load_musicgen(args.model, "cpu", "float32")
    world = lm.own_codec is not None  # a planted world speaks its synth codec
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.onnx_dir or tmp)
        if not args.onnx_dir:
            export_onnx(lm, folder, lm.num_layers // 2, 512, int8=True, int4=True, progress=lambda _: None)
        backends = {p: OnnxBackend(folder, lm, None, p) for p in load_manifest(folder, lm).precisions}
        prompt = "a melody" if not world else _world_prompt()
        result = {
            "model": args.model,
            "machine": machine("cpu"),
            "vs_fp32": {
                name: divergence(lm, backends["fp32"], backend, args.steps, prompt=prompt)
                for name, backend in backends.items()
                if name != "fp32"
            },
        }
        if world:
            from sae.world.train import prompted_accuracy

            runs = {"torch": None} | backends
            result["prompted_accuracy"] = {
                name: prompted_accuracy(lm, args.generations, seed=args.seed, backend=backend)
                for name, backend in runs.items()
            }
    print(json.dumps(result, indent=1))


def _world_prompt() -> str:
    import numpy as np

    from sae.world.grammar import prompt_for, sample_attributes

    return prompt_for(sample_attributes(np.random.default_rng(0)))


if __name__ == "__main__":
    one_line_errors(main)
