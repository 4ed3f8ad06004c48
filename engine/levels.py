"""Levels: a soft limiter on everything written or played, and loudness for fair A/B.

Why a limiter and not a hard clip: a codec (EnCodec, or a world's synth codec stacking a note,
its octave and a drum hit) can overshoot full scale, and a hard clip at ±1 is a flat-topped
click. Above LIMIT_KNEE the limiter bends the wave smoothly toward LIMIT_CEILING, which it
never passes, so nothing written or played sits at full scale. It is memoryless (no
look-ahead, no gain riding): the same tokens always give the same samples, and everything
below the knee passes unchanged.
"""

from __future__ import annotations

import numpy as np

LIMIT_KNEE = 0.9  # samples below this pass unchanged
LIMIT_CEILING = 0.98  # …and none reaches this (−0.18 dBFS): no 16-bit sample at full scale


def soft_limit(audio: np.ndarray) -> np.ndarray:
    """`audio` with every sample beyond ±LIMIT_KNEE bent (tanh) toward ±LIMIT_CEILING."""
    audio = np.asarray(audio, dtype=np.float32)
    over = np.abs(audio) > LIMIT_KNEE
    if not over.any():
        return audio
    out = audio.copy()
    span = LIMIT_CEILING - LIMIT_KNEE
    excess = np.abs(audio[over]) - LIMIT_KNEE
    out[over] = np.sign(audio[over]) * (LIMIT_KNEE + span * np.tanh(excess / span))
    return out


def rms_dbfs(audio: np.ndarray) -> float:
    """Loudness as RMS in dB relative to full scale (−inf for silence)."""
    rms = float(np.sqrt(np.mean(np.square(np.asarray(audio, dtype=np.float64))))) if len(audio) else 0.0
    return 20 * np.log10(rms) if rms > 0 else float("-inf")


def match_loudness(clips: list[np.ndarray]) -> tuple[list[np.ndarray], list[float]]:
    """The clips at the RMS of the quietest (the louder ones turned down, never one up, so no
    new overshoot), and each one's RMS in dBFS before."""
    before = [rms_dbfs(c) for c in clips]
    target = min(before)
    if not np.isfinite(target):
        return list(clips), before
    return [c * np.float32(10 ** ((target - db) / 20)) for c, db in zip(clips, before, strict=True)], before
