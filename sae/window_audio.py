"""The audio of an example window, for listening and for the labelers.

Teacher-forced clips are cut from their source file when it is still where the harvest found
it (the real recording, not a codec round trip); otherwise — generated clips, or a moved
dataset — the window is EnCodec-decoded from the tokens the store kept. Decoding takes a few
frames of context on both sides, so the window's edges sound as they did inside the clip.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engine.codec import decode_codes
from engine.errors import MgsteerError
from engine.model import LoadedModel
from sae.examples import Window
from sae.harvest import Clip, load_audio
from sae.labelers.base import WindowCodes
from sae.store import ActivationStore

CONTEXT_FRAMES = 10  # ≥ the codec's reach (4 frames, docs/STREAMING.md), with margin


class WindowAudio:
    def __init__(self, store: ActivationStore, lm: LoadedModel) -> None:
        self.store, self.lm = store, lm
        self.sample_rate = lm.sample_rate
        self.hop = lm.sample_rate // lm.frame_rate

    def __call__(self, window: Window) -> np.ndarray:
        """Mono float32 at the model's sample rate."""
        source = self.store.sources[window.clip] or {}
        path = source.get("path")
        if path and Path(path).is_file():
            start_s = source["start_s"] + window.start / self.lm.frame_rate
            clip = Clip(
                self.store.clips[window.clip], Path(path), start_s, (window.stop - window.start) / self.lm.frame_rate
            )
            return load_audio(clip, self.sample_rate)
        return self._decoded(window)

    def codes(self, windows: list[Window]) -> list[WindowCodes] | None:
        """The windows' tokens, or None when the store kept no tokens for one of them."""
        out = []
        for w in windows:
            codes = self.store.clip_codes(w.clip)
            if codes is None:
                return None
            out.append(WindowCodes(codes[:, w.start : w.stop].cpu().numpy(), w.start))
        return out

    @torch.no_grad()
    def _decoded(self, window: Window) -> np.ndarray:
        codes = self.store.clip_codes(window.clip)
        if codes is None:
            raise MgsteerError(
                f"clip '{self.store.clips[window.clip]}' has neither its source audio nor its tokens in the store; "
                "re-harvest it with this version of mgsteer harvest"
            )
        lo = max(0, window.start - CONTEXT_FRAMES)
        hi = min(codes.shape[1], window.stop + CONTEXT_FRAMES)
        audio = decode_codes(self.lm, codes[None, :, lo:hi])[0].cpu().numpy()
        if audio.ndim == 2:  # a stereo model's [2, samples]: the labelers hear the mix
            audio = audio.mean(axis=0)
        first = (window.start - lo) * self.hop
        return audio[first : first + (window.stop - window.start) * self.hop].astype(np.float32)
