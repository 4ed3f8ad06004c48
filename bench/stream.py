"""Streaming benchmark on the real musicgen-small architecture (random weights, offline).

Prints one JSON object: per-step ms of our token loop vs transformers' `generate()` measured
in the same run; the steered step with 4 meters, eager and (on CUDA) replayed as a graph,
with the GPU's busy time per step; the cost of steering and of meters as a fraction of a
step; the EnCodec chunk decode; time to first audio; and the speed as `x_realtime` (audio
seconds per second of compute; real time needs ≥ 1). Those loop timings run on a short
context; `in_play` times each runtime where `play` runs it (a 10–30 s context, re-prime
pieces, the chunk the default profile settles on). Speed does not depend on weight values,
so the figures hold for the real checkpoint.

    python bench/stream.py [--model random-small|random-medium|random-large] [--device auto]
                           [--dtype float16] [--steps 30] [--graph/--no-graph]
                           [--backend onnx --onnx-dir DIR]   # ONNX Runtime beside torch, same run
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from functools import partial

import torch
from common import machine, one_line_errors
from transformers import LogitsProcessor, LogitsProcessorList

from engine.codec_stream import ChunkConfig, ChunkedDecoder, codec_right_reach
from engine.device import sync
from engine.host import CHUNK_BUDGET, DEFAULT_CHUNKS, HostConfig
from engine.model import load_musicgen
from engine.runtime_choice import chunk_decode_ms, decoder_ms, divergence
from engine.static_decoder import StaticDecoder
from engine.steering import Steerer
from engine.tokenloop import SamplingConfig, TokenLoop
from sae.bootstrap import init_from_activations, measure
from sae.files import LoadedSAE
from sae.topk import SAEConfig


class _StepClock(LogitsProcessor):
    """Timestamps every sampling step inside generate()."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.stamps = device, []

    def __call__(self, input_ids, scores):
        sync(self.device)
        self.stamps.append(time.perf_counter())
        return scores


def hf_generate_step_ms(lm, steps: int, warmup: int) -> float:
    tok = lm.tokenizer(["simple melody"], return_tensors="pt").to(lm.device)
    clock = _StepClock(lm.device)
    torch.manual_seed(0)
    lm.model.generate(
        **tok,
        max_new_tokens=steps + warmup,
        do_sample=True,
        guidance_scale=3.0,
        top_k=250,
        logits_processor=LogitsProcessorList([clock]),
    )
    gaps = [b - a for a, b in zip(clock.stamps[warmup:], clock.stamps[warmup + 1 :], strict=False)]
    return 1000 * statistics.median(gaps)


def loop_step_ms(lm, steps: int, warmup: int, graph: bool, steerer: Steerer | None = None, backend=None) -> float:
    """Mean wall ms per step over `steps` steps after `warmup` (which includes any capture),
    read-backs included: what the generation thread pays per frame."""
    context = steps + warmup + 8
    loop = TokenLoop(lm, ["simple melody"], SamplingConfig(seed=0), max_context=context, graph=graph, backend=backend)
    if steerer is not None:
        steerer.attach(loop)
    for _ in range(warmup):
        loop.step()
    sync(lm.device)
    t = time.perf_counter()
    for _ in range(steps):
        loop.step()
    loop.flush()
    sync(lm.device)
    if loop.graphs is not None and loop.graphs.error:
        raise SystemExit(loop.graphs.error)
    return 1000 * (time.perf_counter() - t) / steps


def gpu_busy_ms(lm, steps: int, graph: bool, steerer: Steerer | None) -> float | None:
    """GPU kernel time per step (profiler), the floor a launch-free step could reach."""
    if lm.device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    loop = TokenLoop(lm, ["simple melody"], SamplingConfig(seed=0), max_context=steps + 16, graph=graph)
    if steerer is not None:
        steerer.attach(loop)
    for _ in range(8):
        loop.step()
    sync(lm.device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            loop.step()
        sync(lm.device)
    return kernel_us(prof.key_averages()) / 1000 / steps


def kernel_us(events) -> float:
    """GPU time of the kernels alone. An operator's device time includes its kernels', so a
    sum of every event's total counts an eager step's kernels twice (once under the operator
    that launched them) and a replayed graph's once; each kernel's self time counts it once."""
    return sum(e.self_device_time_total for e in events)


def first_audio_ms(lm, chunk: ChunkConfig, graph: bool) -> float:
    """Prompt in → first playable block out: text encoding, K − 1 + chunk + holdback steps
    (graph capture included) and one chunk decode, on a loaded model."""
    sync(lm.device)
    t = time.perf_counter()
    loop = TokenLoop(lm, ["simple melody"], SamplingConfig(seed=1), graph=graph)
    decoder = ChunkedDecoder(lm, chunk)
    block = None
    while block is None:
        for frame in loop.step()[0].unbind(-1):
            block = decoder.push(frame) if block is None else block
    return 1000 * (time.perf_counter() - t)


def edit_ms(steerer: Steerer, lm, repeats: int = 200) -> float:
    """Cost of the hook's work on one generation step's residual `[2, 1, hidden]`."""
    hidden = torch.randn(2, 1, lm.hidden_size, device=lm.device, dtype=lm.dtype)
    cond = slice(0, 1)
    for _ in range(10):
        steerer._edit(hidden, cond)
    sync(lm.device)
    t = time.perf_counter()
    for _ in range(repeats):
        steerer._edit(hidden, cond)
    sync(lm.device)
    return 1000 * (time.perf_counter() - t) / repeats


def play_figures(lm, make_decoder, codec_ms: dict[int, float]) -> dict:
    """What a step costs where `play` runs it: its context fills from the re-prime's keep
    (10 s) to the model's trained length (30 s) and back, so the mean step is timed at five
    fills across that span; a re-prime adds a prefill piece a step until it catches up, once
    per cycle; the codec's share is that of the chunk the default profile settles on
    (`codec_ms`: chunk → ms per frame). Short-context step times flatter a long context."""
    config = HostConfig()
    at_s, keep_s = config.reprime_span(lm)
    first, last = int(keep_s * lm.frame_rate), int(at_s * lm.frame_rate) - 1
    fills = [first + (last - first) * i // 4 for i in range(5)]
    decoder = make_decoder(last + 1)
    by_fill = {fill: decoder_ms(decoder, lm, fill) for fill in fills}
    piece_ms = decoder_ms(make_decoder(first + config.reprime_piece), lm, first // 2, config.reprime_piece, repeats=3)
    cycle_steps = last + 1 - first
    reprime_ms = config.catch_up_steps(lm) * piece_ms / cycle_steps
    step_ms = statistics.mean(by_fill.values())
    fits = CHUNK_BUDGET[0] * 1000 / lm.frame_rate
    chunk = next((c for c in DEFAULT_CHUNKS if step_ms + codec_ms[c] <= fits), DEFAULT_CHUNKS[-1])
    frame_ms = step_ms + reprime_ms + codec_ms[chunk]
    return {
        "step_ms_by_context": {str(fill): round(ms, 2) for fill, ms in by_fill.items()},
        "mean_step_ms": round(step_ms, 2),
        "reprime_piece_ms": round(piece_ms, 1),
        "reprime_ms_per_step": round(reprime_ms, 2),
        "chunk": chunk,
        "codec_ms_per_frame": round(codec_ms[chunk], 2),
        "ms_per_audio_frame": round(frame_ms, 2),
        "x_realtime": round(1000 / lm.frame_rate / frame_ms, 3),
    }


def codec_per_frame(lm, decode=None) -> dict[int, float]:
    """Ms of codec per frame at each chunk size the default profile chooses among."""
    return {c: chunk_decode_ms(lm, ChunkConfig(chunk=c), decode=decode) / c for c in DEFAULT_CHUNKS}


def make_sae(lm, expansion: int, k: int) -> LoadedSAE:
    """An SAE of the paper's best shape (×32, k = 100) at layer 12; weights do not affect speed."""
    layer = lm.num_layers // 2
    acts = torch.randn(4096, lm.hidden_size)
    cfg = SAEConfig(d_in=lm.hidden_size, d_sae=expansion * lm.hidden_size, k=k, hook_layer=layer, model_name=lm.name)
    sae = init_from_activations(acts, cfg)
    stats = measure(sae, acts[:512])
    stats.max_activation = stats.max_activation.clamp(min=1.0)
    return LoadedSAE(sae=sae.to(lm.device), stats=stats, path="<bench>")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random-small", help="a model, or several comma-separated (one JSON)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--expansion", type=int, default=32)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument(
        "--graph",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the step replayed as a CUDA graph (CUDA only)",
    )
    parser.add_argument("--backend", default="torch", choices=("torch", "onnx"), help="onnx: also time ONNX Runtime")
    parser.add_argument("--onnx-dir", help="with --backend onnx: a folder from mgsteer export-onnx for --model")
    args = parser.parse_args()
    if args.backend == "onnx" and (not args.onnx_dir or "," in args.model):
        parser.error("--backend onnx needs --onnx-dir and one --model (the one exported)")
    torch.set_grad_enabled(False)
    runs = [bench_model(model, args) for model in args.model.split(",")]
    print(json.dumps(runs[0] if len(runs) == 1 else {"runs": runs}, indent=2))


def memory_read_gbs(megabytes: int = 1024, repeats: int = 10) -> float:
    """Memory read bandwidth on the threads torch uses: the best of `repeats` sums of a tensor
    far larger than any cache. A step that reads every weight once cannot beat bytes ÷ this."""
    data = torch.ones(megabytes * 2**20 // 4)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - t)
    return data.numel() * 4 / best / 1e9


def torch_weight_bytes(lm) -> int:
    """Bytes of decoder weights one torch step reads: every decoder parameter but the
    embedding tables (a step reads K rows of them)."""
    decoder = lm.model.decoder
    embedded = {id(p) for p in decoder.model.decoder.embed_tokens.parameters()}
    return sum(p.numel() * p.element_size() for p in decoder.parameters() if id(p) not in embedded)


def graph_weight_bytes(path) -> int:
    """Bytes of the initializers an ONNX step graph reads in full each step: all but those
    only gathered from (embedding tables)."""
    import onnx
    from onnx import helper

    graph = onnx.load(str(path)).graph
    readers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    total = 0
    for init in graph.initializer:
        if readers.get(init.name, {"Gather"}) <= {"Gather"}:
            continue
        count = math.prod(init.dims)
        bits = 4 if init.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4) else None
        size = helper.tensor_dtype_to_np_dtype(init.data_type).itemsize if bits is None else bits / 8
        total += int(count * size)
    return total


def floor(step_ms: float, weight_bytes: int, gbs: float) -> dict:
    floor_ms = weight_bytes / gbs / 1e6
    return {"weight_mb": round(weight_bytes / 1e6, 1), "floor_ms": round(floor_ms, 2),
            "step_over_floor": round(step_ms / floor_ms, 2)}  # fmt: skip


def onnx_figures(lm, args: argparse.Namespace, sae: LoadedSAE, chunk: ChunkConfig, torch_ms: float, gbs: float):
    """The ONNX Runtime backend beside the torch step measured in the same run: every precision
    the export holds, its distance from float32 and its step over the weight-read floor."""
    from engine.onnx_backend import OnnxBackend
    from engine.onnx_export import STEP_FILES

    fp32 = OnnxBackend(args.onnx_dir, lm, sae.cfg.hook_layer, "fp32")
    backends = {"fp32": fp32} | {
        name: OnnxBackend(args.onnx_dir, lm, sae.cfg.hook_layer, name) for name in fp32.manifest.precisions[1:]
    }
    steps = {}
    with Steerer(lm, sae, cfg_doubled=True) as steerer:
        steerer.set_vector(steerer.vector_for({0: 1.0, 1: -0.5}))
        steerer.watch([0, 1, 2, 3])
        for name, backend in backends.items():
            steps[name] = loop_step_ms(lm, args.steps, args.warmup, False, steerer, backend)
    decode_ms = chunk_decode_ms(lm, chunk, decode=fp32.decode_codes)
    frame_ms = {name: ms + decode_ms / chunk.chunk for name, ms in steps.items()}
    codec = codec_per_frame(lm, fp32.decode_codes)
    play = {
        name: play_figures(lm, lambda context, b=backend: b.decoder(lm, 2, context, True), codec)
        for name, backend in backends.items()
    }
    return {
        "threads": fp32.threads,
        "steered_metered_step_ms": {name: round(ms, 2) for name, ms in steps.items()},
        "torch_step_over_onnx_step": {name: round(torch_ms / ms, 2) for name, ms in steps.items()},
        "weight_read_floor": {
            name: floor(ms, graph_weight_bytes(fp32.folder / STEP_FILES[name]), gbs) for name, ms in steps.items()
        },
        "codec_chunk_decode_ms": round(decode_ms, 2),
        "codec_ms_per_frame": round(decode_ms / chunk.chunk, 2),
        "ms_per_audio_frame": {name: round(ms, 2) for name, ms in frame_ms.items()},
        "x_realtime": {name: round(1000 / lm.frame_rate / ms, 3) for name, ms in frame_ms.items()},
        "in_play": play,
        "vs_fp32": {name: divergence(lm, fp32, backend) for name, backend in backends.items() if name != "fp32"},
    }


def bench_model(model: str, args: argparse.Namespace) -> dict:
    lm = load_musicgen(model, args.device, args.dtype)
    graph = args.graph and lm.device.type == "cuda"
    sae = make_sae(lm, args.expansion, args.k)
    chunk = ChunkConfig()

    hf_ms = hf_generate_step_ms(lm, args.steps, args.warmup)
    eager_ms = loop_step_ms(lm, args.steps, args.warmup, graph=False)
    with Steerer(lm, sae, cfg_doubled=True) as steerer:
        steerer.set_vector(steerer.vector_for({0: 1.0, 1: -0.5}))
        steer_edit_ms = edit_ms(steerer, lm)
        steerer.watch([0, 1, 2, 3])
        metered_edit_ms = edit_ms(steerer, lm)
        steered = {"eager": loop_step_ms(lm, args.steps, args.warmup, False, steerer)}
        busy = {"eager": gpu_busy_ms(lm, args.steps, False, steerer)}
        if graph:
            steered["graph"] = loop_step_ms(lm, args.steps, args.warmup, True, steerer)
            busy["graph"] = gpu_busy_ms(lm, args.steps, True, steerer)
    best = "graph" if graph else "eager"
    decode_ms = chunk_decode_ms(lm, chunk)
    frame_ms = 1000 / lm.frame_rate
    per_frame_ms = steered[best] + decode_ms / chunk.chunk
    result = {
        "model": model,
        "device": str(lm.device),
        "machine": machine(lm.device),
        "dtype": str(lm.dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "parameters_m": round(lm.parameter_count() / 1e6, 1),
        "steps_timed": args.steps,
        "hf_generate_step_ms": round(hf_ms, 2),
        "our_loop_step_ms": round(eager_ms, 2),
        "our_vs_generate": round(eager_ms / hf_ms, 3),
        "sae": {"d_sae": sae.cfg.d_sae, "k": sae.cfg.k, "layer": sae.cfg.hook_layer},
        "steered_metered_step_ms": {name: round(ms, 3) for name, ms in steered.items()},
        "gpu_busy_ms_per_step": {name: None if ms is None else round(ms, 3) for name, ms in busy.items()},
        "steering_hook_ms": round(steer_edit_ms, 4),
        "steering_overhead_frac": round(steer_edit_ms / eager_ms, 4),
        "steering_plus_meters_hook_ms": round(metered_edit_ms, 4),
        "steering_plus_meters_overhead_frac": round(metered_edit_ms / eager_ms, 4),
        "chunk_frames": {"chunk": chunk.chunk, "context": chunk.context, "holdback": chunk.holdback},
        "encodec_chunk_decode_ms": round(decode_ms, 2),
        "codec_right_reach_frames": codec_right_reach(lm),
        "first_audio_ms": round(first_audio_ms(lm, chunk, graph), 1),
        "step_used": best,
        "ms_per_audio_frame": round(per_frame_ms, 2),
        "x_realtime": round(frame_ms / per_frame_ms, 3),
        "realtime_needs_ms_per_frame": frame_ms,
    }
    result["in_play"] = play_figures(lm, partial(StaticDecoder, lm, 2, cfg=True), codec_per_frame(lm))
    gbs = memory_read_gbs()
    result["memory_read_gbs"] = round(gbs, 1)
    result["weight_read_floor"] = floor(steered["eager"], torch_weight_bytes(lm), gbs)
    if args.backend == "onnx":
        result["onnx"] = onnx_figures(lm, args, sae, chunk, steered["eager"], gbs)
    del lm
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


if __name__ == "__main__":
    one_line_errors(main)
