"""What attention over the self-attention cache costs a step, in float32 and in int8.

A step's attention reads every cached key and value of every layer, so it grows with the
context while the weight products do not (docs/ONNX.md). This times ONNX Runtime's fused
`GroupQueryAttention` (com.microsoft) for all layers of one step (2 CFG rows, one new
position) over a cache kept in float32 and in int8 (per-tensor and per-channel scales), at
`--contexts` positions, the cache bound in place as the step graph's is. Prints one JSON
object. The step graph itself does not use this op yet: these are the figures for it.

`--model M` adds what an int8 cache would cost in music: transformers' decoder on four
generated clips, teacher-forced, with every layer's self-attention keys and values rounded to
int8 under static scales (the op's `k_scale`/`v_scale`) taken from four other clips, against
float32: the KL of the next-token distributions and how often their top token agrees.

    python bench/cache_attention.py [--layers 24] [--heads 16] [--head-dim 64] [--contexts 500,1000,1499]
                                    [--model random-small|demo_out/world] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from common import machine, one_line_errors, timed_ms

from engine.model import load_musicgen
from engine.prompts import encode_prompts, teacher_forced_logits
from engine.render import render
from engine.tokenloop import SamplingConfig
from sae.harvest import delayed_inputs

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
    return timed_ms(lambda: session.run_with_iobinding(binding), args.repeats, warmup=3)


QUALITY_PROMPTS = ("simple melody", "fast drums in C major", "slow bright tune", "busy drums low register")


def clips(lm, seconds: float, seed: int) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Delayed decoder inputs `[B·K, T]` of clips generated from QUALITY_PROMPTS, and their condition."""
    codes = []
    for i, prompt in enumerate(QUALITY_PROMPTS):
        out = render(lm, prompt, seconds, SamplingConfig(seed=seed + i)).codes
        codes.append(out[0] if out.dim() == 3 else out)
    frames = min(c.shape[1] for c in codes)
    inputs = torch.stack([delayed_inputs(c[:, :frames], lm.pad_token_id, lm.audio_channels) for c in codes])
    return inputs.reshape(-1, inputs.shape[-1]), encode_prompts(lm, list(QUALITY_PROMPTS))


def int8_cache_quality(model: str, seconds: float) -> dict:
    """KL and top-token agreement of the decoder with int8 keys and values vs float32."""
    lm = load_musicgen(model, "cpu", "float32")
    projections = [(i, kv, getattr(layer.self_attn, f"{kv}_proj")) for i, layer in enumerate(lm.decoder_layers)
                   for kv in "kv"]  # fmt: skip
    peaks: dict[tuple[int, str], torch.Tensor] = {}

    def record(key):
        def hook(module, args, out):
            peak = out.abs().amax(dim=(0, 1))
            peaks[key] = torch.maximum(peaks[key], peak) if key in peaks else peak

        return hook

    def rounded(scale: torch.Tensor):
        return lambda module, args, out: (out / scale).round().clamp(-127, 127) * scale

    with torch.inference_mode():
        handles = [proj.register_forward_hook(record((i, kv))) for i, kv, proj in projections]
        teacher_forced_logits(lm, *clips(lm, seconds, 100))  # the calibration clips
        for handle in handles:
            handle.remove()
        inputs, condition = clips(lm, seconds, 0)
        reference = teacher_forced_logits(lm, inputs, condition).double().log_softmax(-1)  # float64: KL ≥ 0
        out = {"positions": reference.shape[1]}
        for name, per_channel in (("per-channel scales", True), ("per-tensor scale", False)):
            scales = {key: (p if per_channel else p.max()).clamp_min(1e-8) / 127 for key, p in peaks.items()}
            handles = [proj.register_forward_hook(rounded(scales[(i, kv)])) for i, kv, proj in projections]
            quantized = teacher_forced_logits(lm, inputs, condition).double().log_softmax(-1)
            for handle in handles:
                handle.remove()
            kl = (reference.exp() * (reference - quantized)).sum(-1)
            agrees = (reference.argmax(-1) == quantized.argmax(-1)).float().mean()
            out[name] = {"kl_mean": float(f"{kl.mean():.3g}"), "kl_p95": float(f"{kl.quantile(0.95):.3g}"),
                         "top_token_agrees": round(float(agrees), 4)}  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=24, help="musicgen-small: 24")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--contexts", type=lambda s: [int(c) for c in s.split(",")], default=[500, 1000, 1499],
                        help="cached positions (50 a second: 10, 20 and 30 s)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--model", help="also measure an int8 cache's effect on this model's next-token distributions")
    parser.add_argument("--seconds", type=float, default=3.0, help="with --model: length of each clip")
    args = parser.parse_args()
    room = max(args.contexts) + 1
    rows = {}
    for name, (quant, dtype) in CACHES.items():
        cache_mb = 2 * args.layers * ROWS * args.heads * args.head_dim * np.dtype(dtype).itemsize / 1e6
        rows[name] = {"ms_by_context": {str(c): round(step_ms(args, quant, dtype, c, room), 2) for c in args.contexts},
                      "cache_mb_per_1000_positions": round(cache_mb * 1000, 3)}  # fmt: skip
        print(json.dumps({name: rows[name]}), flush=True)
    result = {"machine": machine("cpu"), "layers": args.layers, "heads": args.heads, "head_dim": args.head_dim,
              "rows": ROWS, "threads": args.threads, "caches": rows}  # fmt: skip
    if args.model:
        result["int8_cache_quality"] = {"model": args.model, **int8_cache_quality(args.model, args.seconds)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    one_line_errors(main)
