"""Streaming benchmark on the real musicgen-small architecture (random weights, offline).

Prints one JSON object: per-step ms of our token loop vs transformers' `generate()` measured
in the same run, the cost of steering and of meters as a fraction of a step, the EnCodec
chunk decode, the codec's right reach, and the speed as `x_realtime` (audio seconds per
second of compute; real time needs ≥ 1). Speed does not depend on weight values, so the
figures hold for the real checkpoint.

    python bench/stream.py [--model random-small|random-medium|random-large] [--device auto] [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from engine.codec_stream import ChunkConfig, codec_right_reach
from engine.model import load_musicgen
from engine.steering import Steerer
from engine.tokenloop import SamplingConfig, TokenLoop, decode_codes
from sae.bootstrap import init_from_activations, measure
from sae.files import LoadedSAE
from sae.topk import SAEConfig


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class _StepClock(LogitsProcessor):
    """Timestamps every sampling step inside generate()."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.stamps = device, []

    def __call__(self, input_ids, scores):
        _sync(self.device)
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


def loop_step_ms(lm, steps: int, warmup: int, steerer: Steerer | None = None) -> float:
    loop = TokenLoop(lm, ["simple melody"], SamplingConfig(seed=0), max_context=steps + warmup + 8)
    times = []
    for i in range(steps + warmup):
        _sync(lm.device)
        t = time.perf_counter()
        loop.step()
        _sync(lm.device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def edit_ms(steerer: Steerer, lm, repeats: int = 200) -> float:
    """Cost of the hook's work on one generation step's residual `[2, 1, hidden]`."""
    hidden = torch.randn(2, 1, lm.hidden_size, device=lm.device, dtype=lm.dtype)
    cond = slice(0, 1)
    for _ in range(10):
        steerer._edit(hidden, cond)
    _sync(lm.device)
    t = time.perf_counter()
    for _ in range(repeats):
        steerer._edit(hidden, cond)
    _sync(lm.device)
    return 1000 * (time.perf_counter() - t) / repeats


def chunk_decode_ms(lm, cfg: ChunkConfig, repeats: int = 5) -> float:
    frames = cfg.context + cfg.chunk + cfg.holdback
    codes = torch.randint(0, lm.codebook_size, (1, lm.num_codebooks, frames), device=lm.device)
    decode_codes(lm, codes)
    times = []
    for _ in range(repeats):
        _sync(lm.device)
        t = time.perf_counter()
        decode_codes(lm, codes)
        _sync(lm.device)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


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
    parser.add_argument("--model", default="random-small")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--expansion", type=int, default=32)
    parser.add_argument("--k", type=int, default=100)
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    lm = load_musicgen(args.model, args.device, args.dtype)
    sae = make_sae(lm, args.expansion, args.k)
    chunk = ChunkConfig()

    hf_ms = hf_generate_step_ms(lm, args.steps, args.warmup)
    ours_ms = loop_step_ms(lm, args.steps, args.warmup)
    with Steerer(lm, sae, cfg_doubled=True) as steerer:
        steerer.set_vector(steerer.vector_for({0: 1.0, 1: -0.5}))
        steer_edit_ms = edit_ms(steerer, lm)
        steered_ms = loop_step_ms(lm, args.steps, args.warmup, steerer)
        steerer.watch([0, 1, 2, 3])
        metered_edit_ms = edit_ms(steerer, lm)
    decode_ms = chunk_decode_ms(lm, chunk)
    frame_ms = 1000 / lm.frame_rate
    per_frame_ms = ours_ms + decode_ms / chunk.chunk
    result = {
        "model": args.model,
        "device": str(lm.device),
        "device_name": _device_name(lm.device),
        "dtype": str(lm.dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "parameters_m": round(lm.parameter_count() / 1e6, 1),
        "steps_timed": args.steps,
        "hf_generate_step_ms": round(hf_ms, 2),
        "our_loop_step_ms": round(ours_ms, 2),
        "our_vs_generate": round(ours_ms / hf_ms, 3),
        "steered_loop_step_ms": round(steered_ms, 2),
        "sae": {"d_sae": sae.cfg.d_sae, "k": sae.cfg.k, "layer": sae.cfg.hook_layer},
        "steering_hook_ms": round(steer_edit_ms, 4),
        "steering_overhead_frac": round(steer_edit_ms / ours_ms, 4),
        "steering_plus_meters_hook_ms": round(metered_edit_ms, 4),
        "steering_plus_meters_overhead_frac": round(metered_edit_ms / ours_ms, 4),
        "chunk_frames": {"chunk": chunk.chunk, "context": chunk.context, "holdback": chunk.holdback},
        "encodec_chunk_decode_ms": round(decode_ms, 2),
        "codec_right_reach_frames": codec_right_reach(lm),
        "ms_per_audio_frame": round(per_frame_ms, 2),
        "x_realtime": round(frame_ms / per_frame_ms, 3),
        "realtime_needs_ms_per_frame": frame_ms,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
