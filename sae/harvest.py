"""Harvest residual-stream activations from MusicGen.

Generation harvest: generate from prompts and record, per decoder step, the conditional
half of the residual at each requested layer — what the SAE will see when it steers.
"""

from __future__ import annotations

import torch

from engine.hooks import ResidualTap
from engine.model import LoadedModel
from engine.tokenloop import SamplingConfig, TokenLoop


def harvest_generation(
    lm: LoadedModel,
    prompts: list[str],
    layers: list[int],
    frames: int,
    sampling: SamplingConfig | None = None,
) -> dict[int, torch.Tensor]:
    """Activations `{layer: [prompts, steps, hidden]}` recorded while generating `frames` frames."""
    sampling = sampling or SamplingConfig()
    taps = {layer: ResidualTap(lm, layer, cfg_doubled=sampling.cfg) for layer in layers}
    try:
        for tap in taps.values():
            tap.recording = True
        TokenLoop(lm, prompts, sampling, max_context=frames + lm.num_codebooks).frames(frames)
        return {layer: tap.take().float().cpu() for layer, tap in taps.items()}
    finally:
        for tap in taps.values():
            tap.close()
