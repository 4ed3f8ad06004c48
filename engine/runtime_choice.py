"""`--backend auto`: on a CPU, the fastest runtime that plays in real time within a quality
budget, measured once per model and machine and remembered.

Why measured, not a rule: which runtime wins depends on the CPU (on one Intel with AVX-512
and AMX, torch float32 beat ONNX float32; on an AMD EPYC, ONNX float32 was 2.6× faster) and
on the model (a planted world's decoder steps in a millisecond in torch, and exporting it
gains nothing). Why remembered: exporting and timing musicgen-small takes a minute or two.

Each runtime is timed where `play` runs it: one step with the context two-thirds full (a
context fills from a third to all of the trained length between re-primes), plus its codec's
share of a chunk decode. A quantized step is eligible when its sampling distributions stay
within `KL_BUDGET` of float32's on this model.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

import torch

from engine.codec_stream import ChunkConfig
from engine.device import cpu_model_and_simd, sync
from engine.errors import MgsteerError
from engine.model import LoadedModel
from engine.tokenloop import SamplingConfig, TokenLoop

KL_BUDGET = 0.01  # mean per-step KL (nats) of a quantized step's sampling distribution vs float32
TORCH_ENOUGH_X = 2.0  # torch at ≥ this × real time is kept without exporting anything
CHOICE_FILE = "auto.json"
QUALITY_STEPS = 32  # steps over which a quantized step's KL is measured


@dataclass(frozen=True)
class Choice:
    """What auto chose on one machine, and the figures it chose by."""

    runtime: str  # "torch float32", "onnx int4", …
    x_realtime: dict[str, float]  # every runtime timed → × real time
    kl: dict[str, float]  # quantized precision → mean per-step KL vs float32
    machine: dict
    measured: str  # ISO date

    @property
    def precision(self) -> str | None:
        """The ONNX step graph's weights; None for torch."""
        backend, _, precision = self.runtime.partition(" ")
        return precision if backend == "onnx" else None

    def line(self, folder: Path, remembered: bool) -> str:
        """What was chosen and why, in one line."""
        others = ", ".join(f"{name} {x:.2f}×" for name, x in self.x_realtime.items() if name != self.runtime)
        shut = [f"{p} KL {kl:.3f} > {KL_BUDGET}" for p, kl in self.kl.items() if kl > KL_BUDGET]
        why = f"{self.runtime}, {self.x_realtime[self.runtime]:.2f}× real time ({others}"
        why += f"; not used: {', '.join(shut)})" if shut else ")"
        when = f"measured on this CPU on {self.measured}" if remembered else "measured now on this CPU"
        slow = "; below real time here: expect gaps" if self.x_realtime[self.runtime] < 1 else ""
        return f"backend auto: {why}{slow}; {when}, kept in {folder / CHOICE_FILE} (--backend torch or onnx to choose)"


def cache_root() -> Path:
    """Where mgsteer keeps what it derives once per machine: $MGSTEER_CACHE, else the user's
    cache folder."""
    if os.environ.get("MGSTEER_CACHE"):
        return Path(os.environ["MGSTEER_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mgsteer"


def machine_key() -> dict:
    """What a choice holds for: the CPU, its cores and the runtimes' versions."""
    from engine.onnx_backend import physical_cores

    model, simd = cpu_model_and_simd()
    key = {"cpu": model, "simd": simd, "cores": physical_cores(), "torch": torch.__version__}
    try:
        import onnxruntime

        key["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        key["onnxruntime"] = None
    return key


def export_folder(lm: LoadedModel, layer: int) -> Path:
    """Where auto keeps a model's export and choice: one folder per model, layer and weights."""
    from engine.onnx_export import weights_fingerprint

    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", lm.spec).strip("_") or "model"
    return cache_root() / "onnx" / f"{slug}-layer{layer}-{weights_fingerprint(lm.model)[:12]}"


def choose_backend(lm: LoadedModel, layer: int | None, onnx_dir: str | None = None, say: Callable[[str], None] = print):
    """The backend auto picks for `lm` steered at `layer` (None: no SAE): an `OnnxBackend`, or
    None for torch. `say` gets the one line saying what and why (and progress on first use)."""
    if lm.device.type != "cpu":
        say(f"backend auto: torch on {lm.device.type} (a GPU steps fastest in torch)")
        return None
    steer_layer = layer if layer is not None else lm.num_layers // 2
    folder = Path(onnx_dir) if onnx_dir else export_folder(lm, steer_layer)
    here = machine_key()
    choice = _remembered(folder, here)
    if choice is not None:
        say(choice.line(folder, remembered=True))
        return _open(choice, folder, lm, layer)
    torch_name = f"torch {str(lm.dtype).removeprefix('torch.')}"
    torch_x = _x_realtime(lm, _torch_decoder(lm), _codec_frame_ms(lm, None))
    if torch_x >= TORCH_ENOUGH_X:
        say(f"backend auto: {torch_name}, {torch_x:.1f}× real time on this CPU (nothing to export)")
        return None
    if here["onnxruntime"] is None:
        say(
            f"backend auto: {torch_name}, {torch_x:.2f}× real time (onnxruntime is not installed: "
            "pip install 'musicgen-steer[onnx]' for the faster CPU runtime)"
        )
        return None
    try:
        choice = _measure(lm, steer_layer, folder, onnx_dir is None, here, {torch_name: torch_x}, say)
    except (MgsteerError, RuntimeError, OSError) as exc:  # an export or a runtime that fails: torch plays
        if onnx_dir:
            raise
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        say(f"backend auto: {torch_name}, {torch_x:.2f}× real time (the ONNX Runtime backend failed here: {reason})")
        return None
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CHOICE_FILE).write_text(json.dumps(asdict(choice), indent=1))
    say(choice.line(folder, remembered=False))
    return _open(choice, folder, lm, layer)


def _remembered(folder: Path, here: dict) -> Choice | None:
    """The choice kept in `folder` for this machine; None if there is none (or a stale one)."""
    try:
        raw = json.loads((folder / CHOICE_FILE).read_text())
        choice = Choice(**raw)
    except (OSError, ValueError, TypeError):
        return None
    return choice if choice.machine == here else None


def _open(choice: Choice, folder: Path, lm: LoadedModel, layer: int | None):
    if choice.precision is None:
        return None
    from engine.onnx_backend import OnnxBackend

    return OnnxBackend(folder, lm, layer, choice.precision)


def _measure(lm, layer: int, folder: Path, may_export: bool, here: dict, x_realtime: dict, say) -> Choice:
    """Export (once) and time every ONNX precision beside torch's figure; the fastest within
    the quality budget wins (torch and ONNX float32 are exact, always eligible)."""
    from engine.onnx_backend import OnnxBackend
    from engine.onnx_export import load_manifest

    if may_export and not _exported(folder, lm, layer):
        from engine.onnx_export import export_onnx

        say(f"backend auto: exporting {lm.spec} for ONNX Runtime once (a minute or two for musicgen-small) …")
        export_onnx(lm, folder, layer, _play_context(lm), int8=True, int4=True, progress=say)
    precisions = load_manifest(folder, lm, layer).precisions
    say(f"backend auto: timing {', '.join(f'onnx {p}' for p in precisions)} on this CPU (once) …")
    backends = {p: OnnxBackend(folder, lm, layer, p) for p in precisions}
    kl = {p: divergence(lm, backends["fp32"], b, QUALITY_STEPS)["kl_mean"] for p, b in backends.items() if p != "fp32"}
    codec = _codec_frame_ms(lm, backends["fp32"].decode_codes)  # one codec graph for every precision
    for p, backend in backends.items():
        x_realtime[f"onnx {p}"] = _x_realtime(lm, lambda context, b=backend: b.decoder(lm, 2, context, True), codec)
    eligible = {name: x for name, x in x_realtime.items() if kl.get(name.removeprefix("onnx "), 0.0) <= KL_BUDGET}
    return Choice(
        runtime=max(eligible, key=eligible.get),
        x_realtime={name: round(x, 3) for name, x in x_realtime.items()},
        kl={p: round(v, 5) for p, v in kl.items()},
        machine=here,
        measured=date.today().isoformat(),
    )


def _exported(folder: Path, lm: LoadedModel, layer: int) -> bool:
    from engine.onnx_export import load_manifest

    try:
        return len(load_manifest(folder, lm, layer).precisions) == 3
    except MgsteerError:
        return False


def _torch_decoder(lm: LoadedModel):
    from engine.static_decoder import StaticDecoder

    return lambda context: StaticDecoder(lm, 2, context, cfg=True)


def _play_context(lm: LoadedModel) -> int:
    """Positions a `play` context may hold: what the export must allow and where a step is timed."""
    from engine.host import HostConfig

    return min(lm.max_positions, HostConfig().context_positions(lm))


def _x_realtime(lm: LoadedModel, make_decoder, codec_ms: float) -> float:
    """Audio seconds per second of compute: a step two-thirds into play's context, plus
    `codec_ms`, the codec's share of a chunk decode per frame."""
    context = _play_context(lm)
    step = decoder_ms(make_decoder(context), lm, context * 2 // 3, repeats=6)
    return 1000 / lm.frame_rate / (step + codec_ms)


def chunk_decode_ms(lm: LoadedModel, cfg: ChunkConfig, repeats: int = 5, decode=None) -> float:
    """Median ms of one chunk window's decode: the model's codec, or `decode` (another runtime's)."""
    from engine.codec import decode_codes

    decode = decode or (lambda codes: decode_codes(lm, codes))
    frames = cfg.context + cfg.chunk + cfg.holdback
    codes = torch.randint(0, lm.codebook_size, (1, lm.num_codebooks, frames), device=lm.device)
    times = []
    with torch.inference_mode():
        decode(codes)
        for _ in range(repeats):
            sync(lm.device)
            t = time.perf_counter()
            decode(codes)
            sync(lm.device)
            times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def _codec_frame_ms(lm: LoadedModel, decode) -> float:
    """Ms per frame of one default chunk window's decode: `decode` (another runtime's), or the model's codec."""
    chunk = ChunkConfig()
    return chunk_decode_ms(lm, chunk, repeats=1, decode=decode) / chunk.chunk


def decoder_ms(decoder, lm: LoadedModel, position: int, width: int = 1, repeats: int = 8) -> float:
    """Mean ms of one decoder call on `width` new positions starting at `position`, the cache
    holding the positions before it: a step (width 1) or a re-prime's prefill piece."""
    with torch.inference_mode():
        condition = decoder.encode(["simple melody"])
        cache = decoder.cache_for(None, decoder.condition_length(condition))
        decoder.set_prompt(cache, condition)
        columns = torch.full((2, lm.num_codebooks, width), 5, dtype=torch.long, device=lm.device)
        positions = torch.arange(position, position + width, device=lm.device)
        for _ in range(2):
            decoder.forward(columns, cache, positions)
        sync(lm.device)
        t = time.perf_counter()
        for _ in range(repeats):
            decoder.forward(columns, cache, positions)
        sync(lm.device)
    return 1000 * (time.perf_counter() - t) / repeats


def divergence(lm, fp32, quantized, steps: int = 200, guidance: float = 3.0, prompt: str = "simple melody") -> dict:
    """How far a quantized step is from the float32 one: the KL of the sampling distributions
    (after CFG) on the float32 run's own context, every step and codebook, and the share of
    tokens that change when both sample freely with the same seed."""
    sampling = SamplingConfig(seed=0, guidance=guidance)
    reference = TokenLoop(lm, [prompt], sampling, max_context=steps + 8, backend=fp32)
    ref_frames = reference.frames(steps - lm.delay_steps + 1)
    columns = torch.stack(list(reference._history)[:steps], dim=-1)  # inputs of steps 0 … steps − 1
    rows = torch.cat([columns, columns], dim=0)
    logp = {}
    for name, backend in (("fp32", fp32), ("quantized", quantized)):
        decoder = backend.decoder(lm, 2, steps + 8, True)
        condition = decoder.encode([prompt])
        cache = decoder.cache_for(None, decoder.condition_length(condition))
        decoder.set_prompt(cache, condition)
        cond, uncond = decoder.forward(rows, cache, torch.arange(steps)).float().split(1, dim=0)
        logp[name] = torch.log_softmax(uncond + (cond - uncond) * guidance, dim=-1)
    kl = (logp["fp32"].exp() * (logp["fp32"] - logp["quantized"])).sum(-1)
    free = TokenLoop(lm, [prompt], sampling, max_context=steps + 8, backend=quantized)
    changed = (free.frames(ref_frames.shape[-1]) != ref_frames).float().mean()
    return {
        "steps": steps,
        "kl_mean": round(float(kl.mean()), 5),
        "kl_p95": round(float(kl.flatten().quantile(0.95)), 5),
        "tokens_changed_share": round(float(changed), 4),
    }
