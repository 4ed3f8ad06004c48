"""Render one (optionally steered) clip offline: prompt → tokens → EnCodec → WAV."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from engine import wavfile
from engine.codec import decode_codes
from engine.errors import MgsteerError
from engine.model import LoadedModel
from engine.steering import Steerer, SteeringSpec, curve_lanes
from engine.tokenloop import SamplingConfig, TokenLoop
from sae.files import LoadedSAE


@dataclass
class Rendered:
    codes: torch.Tensor  # [K, frames]
    audio: np.ndarray  # float32 `[samples]` (mono) or `[samples, 2]` (stereo)
    sample_rate: int
    nonfinite_steps: int = 0  # steps whose steered logits were not finite and were run unsteered
    graph_error: str | None = None  # why a requested CUDA graph was not used

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.sample_rate


def frames_for(lm: LoadedModel, seconds: float) -> int:
    """Frames for `seconds` of audio; bounded by the model's positional table."""
    if not (math.isfinite(seconds) and seconds > 0):
        raise MgsteerError(f"--seconds must be a positive number, got {seconds}")
    frames = max(1, round(seconds * lm.frame_rate))
    limit = (lm.max_positions - lm.delay_steps) / lm.frame_rate
    if frames + lm.delay_steps > lm.max_positions:
        raise MgsteerError(f"--seconds {seconds} is longer than one pass of this model allows ({limit:.1f} s)")
    return frames


def render(
    lm: LoadedModel,
    prompt: str,
    seconds: float,
    sampling: SamplingConfig | None = None,
    sae: LoadedSAE | None = None,
    spec: SteeringSpec | None = None,
    progress: bool = False,
    vector: torch.Tensor | None = None,
    graph: bool = True,
    backend=None,
    melody: torch.Tensor | None = None,
) -> Rendered:
    """Generate `seconds` of audio for `prompt` (a melody model: following `melody`'s chroma),
    steered by `spec` through `sae` if given, or by adding a raw residual `vector` at the SAE's
    layer (a baseline direction); on an `engine.onnx_backend.OnnxBackend` if given."""
    sampling = sampling or SamplingConfig()
    if spec is not None and spec.steers and sae is None:
        raise MgsteerError("--steer needs --sae DIR: the features are that SAE's")
    frames = frames_for(lm, seconds)
    steerer = Steerer(lm, sae, cfg_doubled=sampling.cfg) if sae is not None else None
    try:
        if steerer is not None and vector is not None:
            steerer.set_vector(vector.to(lm.device, lm.dtype))
        elif steerer is not None and spec is not None and any(s.curve for s in spec.steers):
            if spec.mode != "add":
                raise MgsteerError("a steering curve moves an added direction: use --mode add")
            steerer.set(replace(spec, steers=tuple(s for s in spec.steers if not s.curve)))  # constant α: the vector
            steerer.set_lanes(curve_lanes(spec, sae, frames + lm.delay_steps, lm.frame_rate))
        elif steerer is not None:
            steerer.set(spec)
        loop = TokenLoop(
            lm, [prompt], sampling, max_context=frames + lm.delay_steps, graph=graph, backend=backend, melody=melody
        )
        if steerer is not None:
            steerer.attach(loop)
        codes = loop.frames(frames, progress=progress)
        eager_reason = loop.eager_reason  # while the steering tap is still on
    finally:
        if steerer is not None:
            steerer.close()
    audio = (backend.decode_codes(codes) if backend is not None else decode_codes(lm, codes))[0].cpu().numpy()
    audio = audio.T if audio.ndim == 2 else audio  # stereo `[2, samples]` → WAV's `[samples, 2]`
    return Rendered(
        codes=codes[0],
        audio=audio,
        sample_rate=lm.sample_rate,
        nonfinite_steps=loop.nonfinite_steps,
        graph_error=loop.graphs.error or eager_reason if loop.graphs is not None else None,
    )


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> Path:
    """16-bit PCM (what every DAW opens), through the soft limiter; written whole or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wavfile.write_wav(path, audio, sample_rate)
    return path
