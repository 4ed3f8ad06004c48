"""How near each weight format's matrix product comes to the memory floor on this CPU.

A step multiplies 2 rows (CFG's two halves) by every decoder weight once, so its weight
products cannot beat the bytes of the weights over the memory bandwidth. This times those
products alone — the decoder's linear layers, cross-attention's keys and values excepted
(projected once per prompt), at the step's shapes, nothing else of the step — in every format
this host could run them in: torch float32 and bfloat16, torch's weight-only int8 and int4
kernels (bfloat16 activations), and ONNX Runtime's float32 MatMul, dynamic int8 and 4-bit
MatMulNBits (what `export-onnx --int8 --int4` writes). Prints one JSON object: per kernel the
ms for all products, the bytes read, the floor and their ratio.

    python bench/weight_kernels.py [--model random-small] [--repeats 20] [--groups 32,128]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from common import machine, one_line_errors, timed_ms
from stream import floor, graph_weight_bytes, memory_read_gbs

from engine.errors import MgsteerError
from engine.model import load_musicgen
from engine.onnx_export import INT4_ACCURACY_LEVEL, quantize_step, quantize_step_int4

ROWS = 2  # a step's rows: CFG's conditional and null halves


def step_weights(lm) -> list[torch.Tensor]:
    """The weights ([out, in]) a step multiplies by: every decoder linear layer and lm head,
    but cross-attention's key and value projections (the prompt's, computed once)."""
    return [
        module.weight.detach().float()
        for name, module in lm.model.decoder.named_modules()
        if isinstance(module, torch.nn.Linear) and not name.endswith(("encoder_attn.k_proj", "encoder_attn.v_proj"))
    ]


def torch_kernels(weights: list[torch.Tensor], groups: list[int]) -> dict[str, tuple[Callable[[], object], int]]:
    """name → (one pass over every product, bytes of weights it reads)."""
    inputs = {w.shape[1]: torch.randn(ROWS, w.shape[1]) for w in weights}
    bf16_inputs = {n: x.bfloat16() for n, x in inputs.items()}
    kernels: dict[str, tuple[Callable[[], object], int]] = {}

    def linear_pass(ws: list[torch.Tensor], xs: dict) -> Callable[[], object]:
        return lambda: [torch.nn.functional.linear(xs[w.shape[1]], w) for w in ws]

    kernels["torch float32"] = (linear_pass(weights, inputs), sum(w.numel() * 4 for w in weights))
    bf16 = [w.bfloat16() for w in weights]
    kernels["torch bfloat16"] = (linear_pass(bf16, bf16_inputs), sum(w.numel() * 2 for w in bf16))
    int8 = []
    for w in weights:
        scale = w.abs().amax(1).clamp_min(1e-8) / 127
        int8.append(((w / scale[:, None]).round().to(torch.int8), scale.bfloat16()))
    kernels["torch int8 (weight-only)"] = (
        lambda: [torch.ops.aten._weight_int8pack_mm(bf16_inputs[q.shape[1]], q, s) for q, s in int8],
        sum(q.numel() + s.numel() * 2 for q, s in int8),
    )
    for group in groups:
        packed = [int4_pack(w, group) for w in weights]
        kernels[f"torch int4 (weight-only, group {group})"] = (
            lambda packed=packed, group=group: [
                torch.ops.aten._weight_int4pack_mm_for_cpu(bf16_inputs[n], p, group, sz) for p, sz, n in packed
            ],
            sum(w.numel() // 2 + w.numel() // group * 4 for w in weights),
        )
    return kernels


def int4_pack(w: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """torch's CPU int4 layout: asymmetric 4-bit per `group` inputs, scales and zero points in bfloat16."""
    out, n = w.shape
    grouped = w.reshape(out, n // group, group)
    low, high = grouped.amin(-1, keepdim=True), grouped.amax(-1, keepdim=True)
    scale = (high - low).clamp_min(1e-8) / 15
    q = ((grouped - low) / scale).round().clamp(0, 15).to(torch.int32).reshape(out, n)
    zero = low + 8 * scale
    scales_zeros = torch.cat([scale, zero], -1).transpose(0, 1).contiguous().bfloat16()  # [n/group, out, 2]
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1), scales_zeros, n


def onnx_kernels(weights: list[torch.Tensor], folder: Path) -> dict[str, tuple[Callable[[], object], int]]:
    """The same products as one ONNX graph of MatMuls, in float32, and quantised the way
    `export-onnx` quantises its step graph."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    widths = sorted({w.shape[1] for w in weights})
    nodes, inits, outputs = [], [], []
    for i, w in enumerate(weights):
        inits.append(numpy_helper.from_array(w.T.contiguous().numpy(), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [f"x{w.shape[1]}", f"w{i}"], [f"y{i}"], name=f"matmul{i}"))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [ROWS, w.shape[0]]))
    graph = helper.make_graph(
        nodes, "weights", [helper.make_tensor_value_info(f"x{n}", TensorProto.FLOAT, [ROWS, n]) for n in widths],
        outputs, inits,
    )  # fmt: skip
    fp32 = folder / "fp32.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(fp32))
    quantize_step(fp32, folder / "int8.onnx")
    quantize_step_int4(fp32, folder / "int4.onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    feed = {f"x{n}": np.random.randn(ROWS, n).astype(np.float32) for n in widths}
    kernels = {}
    for label, name in (("onnx float32", "fp32"), ("onnx int8 (dynamic)", "int8"),
                        (f"onnx int4 (MatMulNBits, level {INT4_ACCURACY_LEVEL})", "int4")):  # fmt: skip
        session = ort.InferenceSession(str(folder / f"{name}.onnx"), options, providers=["CPUExecutionProvider"])
        kernels[label] = (lambda session=session: session.run(None, feed), graph_weight_bytes(folder / f"{name}.onnx"))
    return kernels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random-small")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--groups", default="32,128", help="torch int4 group sizes")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    weights = step_weights(load_musicgen(args.model, "cpu", "float32"))
    groups = [int(g) for g in args.groups.split(",")]
    widths = sorted({w.shape[1] for w in weights})
    uneven = [g for g in groups if any(n % g for n in widths)]
    if uneven:
        raise MgsteerError(f"--groups {uneven[0]} does not divide this model's input widths {widths}")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        kernels = torch_kernels(weights, groups) | onnx_kernels(weights, Path(tmp))
        timed = {name: (timed_ms(run, args.repeats), weight_bytes) for name, (run, weight_bytes) in kernels.items()}
    # A shared machine's bandwidth moves by a third from one second to the next: the best of
    # many reads, taken after the kernels, is the floor's.
    gbs = memory_read_gbs()
    for name, (ms, weight_bytes) in timed.items():
        rows[name] = {"ms": round(ms, 2), **floor(ms, weight_bytes, gbs)}
    print(json.dumps({"model": args.model, "machine": machine("cpu"), "rows": ROWS, "products": len(weights),
                      "parameters_m": round(sum(w.numel() for w in weights) / 1e6, 1),
                      "memory_read_gbs": round(gbs, 1), "kernels": rows}, indent=1))  # fmt: skip


if __name__ == "__main__":
    one_line_errors(main)
