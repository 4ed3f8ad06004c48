"""Which 4-bit block size and compute level to export: step time and divergence from float32.

For each (block, accuracy level) it quantizes the float32 step graph of an existing export
(`mgsteer export-onnx --out DIR`), then times the steered, metered step and measures the KL
of the sampling distributions and the share of tokens changed vs float32, all in one run.
Level 0 dequantizes to float32 inside the MatMul; level 4 quantizes activations to int8 and
computes in int8 (VNNI where the CPU has it). Prints one JSON object.

    python bench/int4_blocks.py --model random-small --onnx-dir DIR [--blocks 16,32,64,128] [--levels 0,4]
                                [--heads 4,32]
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from common import machine, one_line_errors
from stream import loop_step_ms, make_sae

from engine.model import load_musicgen
from engine.onnx_backend import OnnxBackend
from engine.onnx_export import FILES, STEP_FILES, load_manifest, quantize_step_int4, write_manifest
from engine.runtime_choice import divergence
from engine.steering import Steerer


def variant_folder(src: Path, dst: Path) -> None:
    """`dst` holds `src`'s graphs (links) and a manifest that says it has an int4 step."""
    dst.mkdir()
    for name in (FILES["prompt"], FILES["step"], FILES["codec"]):
        if (src / name).exists():
            (dst / name).symlink_to((src / name).resolve())
    write_manifest(dst, replace(load_manifest(src), int8=False, int4=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random-small")
    parser.add_argument("--onnx-dir", required=True, help="a folder from mgsteer export-onnx for --model")
    parser.add_argument("--blocks", default="16,32,64,128")
    parser.add_argument("--levels", default="0,4")
    parser.add_argument("--heads", default="4,32", help="lm heads in 4 bits, float32 (32), or both")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--kl-steps", type=int, default=100)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    lm = load_musicgen(args.model, "cpu", "float32")
    sae = make_sae(lm, 32, 100)
    src = Path(args.onnx_dir)
    fp32 = OnnxBackend(src, lm, sae.cfg.hook_layer, "fp32")
    rows = []
    with tempfile.TemporaryDirectory() as tmp, Steerer(lm, sae, cfg_doubled=True) as steerer:
        steerer.set_vector(steerer.vector_for({0: 1.0, 1: -0.5}))
        steerer.watch([0, 1, 2, 3])
        fp32_ms = loop_step_ms(lm, args.steps, 5, False, steerer, fp32)
        for block in map(int, args.blocks.split(",")):
            for level, heads in itertools.product(map(int, args.levels.split(",")), map(int, args.heads.split(","))):
                folder = Path(tmp) / f"b{block}_l{level}_h{heads}"
                variant_folder(src, folder)
                quantize_step_int4(src / FILES["step"], folder / STEP_FILES["int4"], block, level, heads == 4)
                backend = OnnxBackend(folder, lm, sae.cfg.hook_layer, "int4")
                ms = loop_step_ms(lm, args.steps, 5, False, steerer, backend)
                rows.append({"block": block, "accuracy_level": level, "lm_head_bits": heads, "step_ms": round(ms, 2),
                             **divergence(lm, fp32, backend, steps=args.kl_steps)})  # fmt: skip
                del backend
                shutil.rmtree(folder)
    print(json.dumps({"model": args.model, "machine": machine("cpu"), "fp32_step_ms": round(fp32_ms, 2),
                      "int4": rows}, indent=1))  # fmt: skip


if __name__ == "__main__":
    one_line_errors(main)
