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
        """Codes `[B, K, frames]` → audio `[B, frames × hop]` (mono) or `[B, 2, frames × hop]`
        (stereo), float32."""
        ...

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """Mono audio `[B, samples]` at `sample_rate` → codes `[B, K, frames]`."""
        ...


class EncodecCodec:
    """MusicGen's own EnCodec, on the model's device, with the decoder's codebook count.

    A stereo decoder's codebooks are two channels of this mono EnCodec, interleaved (0, 2, 4, …
    left): each channel is decoded on its own, as transformers' `generate()` does."""

    def __init__(self, model: nn.Module, device: torch.device, num_codebooks: int, channels: int = 1) -> None:
        self.model, self.device = model, device
        config = model.config
        self.sample_rate = int(config.sampling_rate)
        self.frame_rate = int(config.frame_rate)
        self.num_codebooks = num_codebooks
        self.channels = channels
        self.codebook_size = int(config.codebook_size)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        if self.channels == 2:
            return torch.stack([self._decode(codes[:, side::2]) for side in (0, 1)], dim=1)
        return self._decode(codes)

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        audio = self.model.decode(codes[None].to(self.device), audio_scales=[None] * codes.shape[0])
        return audio.audio_values[:, 0].float()

    @torch.no_grad()
    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """A stereo model hears mono audio in both channels (the same codes left and right)."""
        values = audio[:, None].to(self.device, next(self.model.parameters()).dtype)
        codes = self.model.encode(input_values=values).audio_codes[0, :, : self.num_codebooks // self.channels]
        return codes.repeat_interleave(self.channels, dim=1)


def decode_codes(lm, codes: torch.Tensor) -> torch.Tensor:
    """Codes `[batch, K, frames]` → audio `[batch, samples]` (mono) or `[batch, 2, samples]`
    (stereo) through the model's codec."""
    return lm.codec.decode(codes)
