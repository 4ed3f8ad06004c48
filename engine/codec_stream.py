"""Chunked EnCodec decoding for streaming, with left context, a right hold-back and crossfades.

MusicGen's 32 kHz EnCodec is non-causal: a sample depends on a few frames on either side
(about 4 frames, 80 ms, to the right; its LSTM carries a fading memory of the left). So each
decode of `chunk` new frames
- includes `context` frames already played on the left, so the new samples start right;
- holds back the last `holdback` frames (not yet played), because their right neighbours are
  still unknown; they are played after the next decode, which sees their right context;
- blends the first `crossfade` samples of each new block with the previous decode's version
  of the same samples, so any remaining difference fades instead of clicking.

Both sides of a crossfade decode the *same* tokens, so they are nearly identical (correlated):
the default curve is therefore equal-gain (raised cosine, gains sum to 1). An equal-power
curve (gains' squares sum to 1) is available, but on correlated signals it swells by up to
+3 dB mid-fade.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from engine.codec import decode_codes
from engine.errors import MgsteerError
from engine.model import LoadedModel

Curve = Literal["equal-gain", "equal-power"]


@dataclass(frozen=True)
class ChunkConfig:
    chunk: int = 8  # frames decoded at a time (160 ms at 50 Hz)
    context: int = 10  # frames of left context per decode (≥ 10: ~200 ms ≥ the codec's reach)
    holdback: int = 6  # frames kept back for right context (codec reach 4 + crossfade 2)
    crossfade_ms: float = 40.0
    curve: Curve = "equal-gain"

    def validate(self, hop: int, sample_rate: int) -> None:
        xf = self.crossfade_samples(sample_rate)
        if self.chunk < 1 or self.context < 0 or self.holdback < 0:
            raise MgsteerError(f"bad chunking: chunk {self.chunk} ≥ 1, context {self.context} and holdback ≥ 0")
        if xf > self.holdback * hop or xf > self.chunk * hop:
            raise MgsteerError(
                f"crossfade {self.crossfade_ms} ms must fit in the hold-back ({self.holdback} frames) and a chunk"
            )
        if self.curve not in ("equal-gain", "equal-power"):
            raise MgsteerError(f"unknown crossfade curve '{self.curve}': use equal-gain or equal-power")

    def crossfade_samples(self, sample_rate: int) -> int:
        return round(self.crossfade_ms * sample_rate / 1000)


def fade_curves(samples: int, curve: Curve) -> tuple[np.ndarray, np.ndarray]:
    """(fade_out, fade_in) over `samples` samples."""
    t = (np.arange(samples, dtype=np.float64) + 0.5) / max(samples, 1)
    if curve == "equal-power":
        return np.cos(t * math.pi / 2).astype(np.float32), np.sin(t * math.pi / 2).astype(np.float32)
    fade_in = np.sin(t * math.pi / 2) ** 2
    return (1.0 - fade_in).astype(np.float32), fade_in.astype(np.float32)


class ChunkedDecoder:
    """Feed complete frames with `push`; get audio blocks as they are ready: float32 `[n]`
    (mono) or `[n, 2]` (stereo, time first like a sound device's buffer)."""

    def __init__(self, lm: LoadedModel, cfg: ChunkConfig | None = None, decode=None) -> None:
        self.lm = lm
        # codes [1, K, frames] → audio [1, samples]: the model's EnCodec, or another runtime's
        self.decode = decode or (lambda codes: decode_codes(lm, codes))
        self.cfg = cfg or ChunkConfig()
        self.hop = lm.sample_rate // lm.frame_rate
        self.cfg.validate(self.hop, lm.sample_rate)
        self.xf = self.cfg.crossfade_samples(lm.sample_rate)
        self._fade_out, self._fade_in = fade_curves(self.xf, self.cfg.curve)
        self._frames: list[torch.Tensor] = []  # frames from index self._base on
        self._base = 0  # absolute index of self._frames[0]
        self.received = 0  # frames pushed so far
        self.emitted = 0  # frames whose audio has been returned (crossfade start of the next block)
        self._tail: np.ndarray | None = None  # previous decode's samples just after `emitted`
        self.joins: list[int] = []  # sample index of each crossfade start, for diagnostics

    def push(self, frame: torch.Tensor) -> np.ndarray | None:
        """Add one complete frame `[K]`; returns a block when `chunk` new frames can be played."""
        self._frames.append(frame.reshape(-1).cpu())
        self.received += 1
        if self.received - self.cfg.holdback - self.emitted >= self.cfg.chunk:
            return self._decode(self.received - self.cfg.holdback)
        return None

    def flush(self) -> np.ndarray | None:
        """Everything not yet played, up to the last frame (end of a stream)."""
        return self._decode(self.received) if self.received > self.emitted else None

    def _decode(self, until: int) -> np.ndarray:
        start = max(self._base, self.emitted - self.cfg.context)
        window = torch.stack(self._frames[start - self._base : self.received - self._base], dim=-1)
        audio = self.decode(window[None])[0].cpu().numpy()
        audio = audio.T if audio.ndim == 2 else audio  # stereo `[2, n]` → `[n, 2]`
        offset = (self.emitted - start) * self.hop
        block = audio[offset : (until - start) * self.hop].copy()
        if self._tail is not None and self.xf:
            n = min(self.xf, len(block), len(self._tail))
            shape = (n,) + (1,) * (block.ndim - 1)  # the curves over every channel alike
            fade_out, fade_in = self._fade_out[:n].reshape(shape), self._fade_in[:n].reshape(shape)
            block[:n] = self._tail[:n] * fade_out + block[:n] * fade_in
            self.joins.append(self.emitted * self.hop)
        tail_at = (until - start) * self.hop
        self._tail = audio[tail_at : tail_at + self.xf].copy() if until < self.received else None
        self.emitted = until
        drop = max(0, self.emitted - self.cfg.context - self._base)
        if drop:
            del self._frames[:drop]
            self._base += drop
        return block


def codec_right_reach(lm: LoadedModel, frames: int = 40, tolerance: float = 1e-3, seed: int = 0) -> int:
    """How many frames before a window's right edge EnCodec's output still differs from a
    decode that sees more: the minimum useful hold-back (crossfade excluded)."""
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, lm.codebook_size, (1, lm.num_codebooks, frames), generator=gen)
    hop = lm.sample_rate // lm.frame_rate
    full = decode_codes(lm, codes)[0].reshape(-1, frames * hop)  # [channels, samples]
    cut = frames // 2
    part = decode_codes(lm, codes[..., :cut])[0].reshape(-1, cut * hop)
    err = (part - full[:, : cut * hop]).abs().reshape(-1, cut, hop).amax(dim=(0, 2))
    bad = torch.nonzero(err > tolerance * full.abs().max()).flatten()
    return int(cut - bad.min()) if len(bad) else 0
