"""The codec seam: how codes become audio (and, where a codec can, audio becomes codes).

Why a seam: EnCodec is one codec; a synthetic codec whose tokens mean something audible
(`engine.synth_codec`) is another. Streaming, chunked decoding, recording and labeling call
`LoadedModel.codec` and never EnCodec directly.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn


class Codec(Protocol):
    sample_rate: int
    frame_rate: int
    num_codebooks: int
    codebook_size: int

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes `[B, K, frames]` → mono audio `[B, frames × hop]`, float32."""
        ...

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """Mono audio `[B, samples]` at `sample_rate` → codes `[B, K, frames]`."""
        ...


class EncodecCodec:
    """MusicGen's own EnCodec, on the model's device, with the decoder's codebook count."""

    def __init__(self, model: nn.Module, device: torch.device, num_codebooks: int) -> None:
        self.model, self.device = model, device
        config = model.config
        self.sample_rate = int(config.sampling_rate)
        self.frame_rate = int(config.frame_rate)
        self.num_codebooks = num_codebooks
        self.codebook_size = int(config.codebook_size)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        audio = self.model.decode(codes[None].to(self.device), audio_scales=[None] * codes.shape[0])
        return audio.audio_values[:, 0].float()

    @torch.no_grad()
    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        values = audio[:, None].to(self.device, next(self.model.parameters()).dtype)
        return self.model.encode(input_values=values).audio_codes[0, :, : self.num_codebooks]


def decode_codes(lm, codes: torch.Tensor) -> torch.Tensor:
    """Codes `[batch, K, frames]` → audio `[batch, samples]` (mono) through the model's codec."""
    return lm.codec.decode(codes)
