"""What attention over the self-attention cache costs a step, in float32 and in int8.

A step's attention reads every cached key and value of every layer, so it grows with the
context while the weight products do not (docs/ONNX.md). This times ONNX Runtime's fused
`GroupQueryAttention` (com.microsoft) for all layers of one step (2 CFG rows, one new
position) over a cache kept in float32 and in int8 (per-tensor and per-channel scales), at
`--contexts` positions, the cache bound in place as the step graph's is. Prints one JSON
object. The step graph itself does not use this op yet: these are the figures for it.

    python bench/cache_attention.py [--layers 24] [--heads 16] [--head-dim 64] [--contexts 500,1000,1499]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
from common import machine, one_line_errors

ROWS = 2  # CFG's two halves
CACHES = {"float32": ("NONE", np.float32), "int8, per-tensor scale": ("PER_TENSOR", np.int8),
          "int8, per-channel scales": ("PER_CHANNEL", np.int8)}  # fmt: skip


def attention_graph(layers: int, heads: int, head_dim: int, room: int, quant: str, dtype) -> bytes:
    """`layers` GroupQueryAttention nodes sharing one query/key/value, each over its own cache
    (past and present the same buffer)."""
    from onnx import TensorProto, helper

    cache = TensorProto.INT8 if dtype is np.int8 else TensorProto.FLOAT
    width = heads * head_dim
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [ROWS, 1, width]) for n in ("q", "k", "v")]
    inputs += [helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [ROWS]),
               helper.make_tensor_value_info("total", TensorProto.INT32, [])]  # fmt: skip
    scales = [] if quant == "NONE" else ["k_scale", "v_scale"]
    inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in scales]
    quantized = {} if quant == "NONE" else {"k_quant_type": quant, "v_quant_type": quant, "kv_cache_bit_width": 8}
    nodes, outputs = [], []
    for i in range(layers):
        inputs += [helper.make_tensor_value_info(f"{kv}{i}", cache, [ROWS, heads, room, head_dim]) for kv in "kv"]
        names = ["q", "k", "v", f"k{i}", f"v{i}", "seqlens_k", "total", "", "", "", "", "", *scales]
        node = helper.make_node("GroupQueryAttention", names, [f"out{i}", f"new_k{i}", f"new_v{i}"],
                                domain="com.microsoft", num_heads=heads, kv_num_heads=heads, **quantized)  # fmt: skip
        nodes.append(node)
        outputs += [helper.make_tensor_value_info(f"out{i}", TensorProto.FLOAT, None)]
        outputs += [helper.make_tensor_value_info(f"new_{kv}{i}", cache, None) for kv in "kv"]
    graph = helper.make_graph(nodes, "cache_attention", inputs, outputs)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def step_ms(args, quant: str, dtype, context: int, room: int) -> float:
    """Median ms of one step's attention, every layer, over `context` cached positions."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    graph = attention_graph(args.layers, args.heads, args.head_dim, room, quant, dtype)
    session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    binding = session.io_binding()
    for name in ("q", "k", "v"):
        binding.bind_cpu_input(name, rng.standard_normal((ROWS, 1, args.heads * args.head_dim)).astype(np.float32))
    binding.bind_cpu_input("seqlens_k", np.full(ROWS, context, np.int32))  # the new position is `context`
    binding.bind_cpu_input("total", np.array(context + 1, np.int32))
    if quant != "NONE":
        scale = np.full(1 if quant == "PER_TENSOR" else args.heads * args.head_dim, 0.02, np.float32)
        binding.bind_cpu_input("k_scale", scale)
        binding.bind_cpu_input("v_scale", scale)
    caches = []
    for i in range(args.layers):
        for kv in "kv":
            shape = (ROWS, args.heads, room, args.head_dim)
            data = rng.integers(-100, 100, shape).astype(np.int8) if dtype is np.int8 else rng.standard_normal(shape)
            caches.append(ort.OrtValue.ortvalue_from_numpy(data.astype(dtype)))
            binding.bind_ortvalue_input(f"{kv}{i}", caches[-1])
            binding.bind_ortvalue_output(f"new_{kv}{i}", caches[-1])  # written in place, as a cache is
        binding.bind_output(f"out{i}")
    for _ in range(3):
        session.run_with_iobinding(binding)
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        session.run_with_iobinding(binding)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=24, help="musicgen-small: 24")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--contexts", type=lambda s: [int(c) for c in s.split(",")], default=[500, 1000, 1499],
                        help="cached positions (50 a second: 10, 20 and 30 s)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    room = max(args.contexts) + 1
    rows = {}
    for name, (quant, dtype) in CACHES.items():
        cache_mb = 2 * args.layers * ROWS * args.heads * args.head_dim * np.dtype(dtype).itemsize / 1e6
        rows[name] = {"ms_by_context": {str(c): round(step_ms(args, quant, dtype, c, room), 2) for c in args.contexts},
                      "cache_mb_per_1000_positions": round(cache_mb * 1000, 3)}  # fmt: skip
        print(json.dumps({name: rows[name]}), flush=True)
    print(json.dumps({"machine": machine("cpu"), "layers": args.layers, "heads": args.heads, "head_dim": args.head_dim,
                      "rows": ROWS, "threads": args.threads, "caches": rows}, indent=1))  # fmt: skip


if __name__ == "__main__":
    one_line_errors(main)
