"""A codec without weights whose tokens have a fixed musical meaning.

Four codebooks at 50 Hz, each token a direct instruction to a small synthesizer:

| codebook | token t means |
|---|---|
| 0 pitch class | 0: rest; otherwise pitch class (t − 1) mod 12 (0: C … 11: B) |
| 1 octave, level | 0: silent; otherwise octave (t − 1) div 16 and level step (t − 1) mod 16 |
| 2 timbre | t mod 4 is the waveform (sine, triangle, square, saw); t div 4 the brightness step |
| 3 percussion | t mod 4: none, kick, snare, hat; struck at the frame's start |

A sounding frame's MIDI note is 12 · (octave + 1) + pitch class (octave 4 holds middle C, f0 =
440 · 2^((note − 69) / 12)); its level is (step / 15 − 1) · 48 dBFS (step 15: 0 dB). Pitch class
and octave are separate codebooks so that what a key allows (its pitch classes) is the same
tokens in every register: a model, and a dictionary of its features, can then hold a key
apart from the octave it is played in.

Rendering is additive synthesis with a phase-continuous oscillator, frequency and level
interpolated across each frame (so notes glide and swell rather than click), a one-frame
fade in and out around rests, and percussion hits with their own decays. The noise of snares and hats
is seeded by the frame index, so decoding is deterministic. A window decoded on its own (the
chunked decoder's) starts its oscillator at phase 0, so it matches a whole decode up to the
phase of a note held across the window start: the chunk crossfade covers that.

There is no encoder: a world built on this codec generates its data from a grammar of
tokens (`encode` says so in one line).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from engine.errors import MgsteerError

WAVEFORMS = ("sine", "triangle", "square", "saw")
DRUMS = ("none", "kick", "snare", "hat")
# Which token meanings a world was trained on (its world.json says): 1 had codebook 0 a MIDI
# note and codebook 1 a level; 2 is the layout above. A model's tokens mean nothing in another.
TOKEN_LAYOUT = 2
RANGE_DB = 48.0
LEVEL_STEPS = 16
HARMONICS = 24


def midi_hz(note: float) -> float:
    return 440.0 * 2.0 ** ((note - 69.0) / 12.0)


def note_tokens(notes: np.ndarray, level: int) -> np.ndarray:
    """Codebooks 0 and 1 (`[2, frames]`) of a MIDI note per frame (12–107; 0: a rest) at level
    step `level` (0–15)."""
    notes = np.asarray(notes, dtype=np.int64)
    octave, pitch_class = np.divmod(notes, 12)
    tokens = np.stack([1 + pitch_class, 1 + LEVEL_STEPS * (octave - 1) + level])
    return np.where(notes > 0, tokens, 0)


def token_notes(pitch: np.ndarray, octave_level: np.ndarray) -> np.ndarray:
    """MIDI notes of codebooks 0 and 1 frame by frame (0 where a frame is a rest or silent)."""
    pitch, octave_level = np.asarray(pitch), np.asarray(octave_level)
    notes = 12 * ((octave_level - 1) // LEVEL_STEPS + 1) + (pitch - 1) % 12
    return np.where((pitch > 0) & (octave_level > 0), notes, 0)


def level_db(token: int) -> float | None:
    """The octave-level token's level in dBFS (None: silent)."""
    return None if token <= 0 else ((token - 1) % LEVEL_STEPS / (LEVEL_STEPS - 1) - 1.0) * RANGE_DB


def harmonic_weights(timbre: int, count: int = HARMONICS) -> np.ndarray:
    """Amplitudes of harmonics 1…count for a timbre token (before normalising)."""
    n = np.arange(1, count + 1, dtype=np.float64)
    shape = WAVEFORMS[timbre % 4]
    if shape == "sine":
        w = (n == 1).astype(np.float64)
    elif shape == "triangle":
        w = np.where(n % 2 == 1, 1.0 / n**2, 0.0)
    elif shape == "square":
        w = np.where(n % 2 == 1, 1.0 / n, 0.0)
    else:
        w = 1.0 / n
    brightness = 1 + timbre // 4  # higher: more upper harmonics survive
    return w * np.exp(-(n - 1) / (2.0 * brightness))


class SynthCodec:
    """`engine.codec.Codec` for the synthetic world (decode only)."""

    num_codebooks = 4

    def __init__(self, codebook_size: int = 128, sample_rate: int = 32000, frame_rate: int = 50) -> None:
        if sample_rate % frame_rate:
            raise MgsteerError(f"sample rate {sample_rate} must be a multiple of the frame rate {frame_rate}")
        self.codebook_size, self.sample_rate, self.frame_rate = codebook_size, sample_rate, frame_rate
        self.hop = sample_rate // frame_rate

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        raise MgsteerError("the synth codec has no encoder: its worlds are generated from token grammars, not audio")

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        codes = codes.detach().cpu().long().numpy()
        return torch.from_numpy(np.stack([self._render(c) for c in codes]).astype(np.float32))

    # ---- one sequence -----------------------------------------------------------------------
    def _render(self, codes: np.ndarray) -> np.ndarray:
        k = codes.shape[0]
        if k != self.num_codebooks:
            raise MgsteerError(f"the synth codec has {self.num_codebooks} codebooks, got {k}")
        codes = np.clip(codes, 0, self.codebook_size - 1)
        tone = self._tone(codes[0], codes[1], codes[2])
        drums = self._drums(codes[3])
        return np.clip(tone + drums, -1.0, 1.0)

    def _tone(self, pitch: np.ndarray, octave_level: np.ndarray, timbre: np.ndarray) -> np.ndarray:
        hop, frames, sr = self.hop, len(pitch), self.sample_rate
        notes = token_notes(pitch, octave_level)
        f0 = np.array([midi_hz(n) if n > 0 else 0.0 for n in notes])
        levels = [level_db(int(v)) for v in octave_level]
        amp = np.array([10 ** (db / 20) if n > 0 else 0.0 for n, db in zip(notes, levels, strict=True)])
        # Hold a rest's frequency at the next note's, so a note starts on pitch.
        for i in range(frames - 2, -1, -1):
            if f0[i] == 0.0:
                f0[i] = f0[i + 1]
        for i in range(1, frames):
            if f0[i] == 0.0:
                f0[i] = f0[i - 1]
        f0 = np.where(f0 > 0, f0, 1.0)
        t = (np.arange(frames * hop) + 0.5) / hop - 0.5  # frame-centred sample positions
        f = np.interp(t, np.arange(frames), f0)
        a = np.interp(t, np.arange(frames), amp)
        phase = 2 * math.pi * np.cumsum(f) / sr
        out = np.zeros(frames * hop)
        for i in range(frames):  # each frame's waveform, at the frame's own timbre
            lo, hi = i * hop, (i + 1) * hop
            weights = harmonic_weights(int(timbre[i]))
            usable = np.arange(1, HARMONICS + 1) * f0[i] < sr / 2 - 500  # no aliasing
            weights = weights * usable
            norm = weights.sum() or 1.0
            n = np.nonzero(weights)[0] + 1
            out[lo:hi] = (np.sin(np.outer(phase[lo:hi], n)) @ weights[n - 1]) / norm
        return out * a

    def _drums(self, hits: np.ndarray) -> np.ndarray:
        hop, sr = self.hop, self.sample_rate
        out = np.zeros(len(hits) * hop + sr)  # room for tails
        t = np.arange(int(0.3 * sr)) / sr
        for i, token in enumerate(hits):
            kind = DRUMS[int(token) % 4]
            if kind == "none":
                continue
            rng = np.random.default_rng(i)
            if kind == "kick":
                sweep = 2 * math.pi * (45 * t + 60 * (1 - np.exp(-t * 30)) / 30)
                hit = 0.8 * np.sin(sweep) * np.exp(-t * 12)
            elif kind == "snare":
                body = 0.2 * np.sin(2 * math.pi * 190 * t) * np.exp(-t * 20)
                hit = 0.4 * rng.standard_normal(len(t)) * np.exp(-t * 25) + body
            else:
                noise = rng.standard_normal(len(t))
                hit = 0.25 * np.diff(noise, prepend=0.0) * np.exp(-t * 80)
            out[i * hop : i * hop + len(t)] += hit
        return out[: len(hits) * hop]
