"""Music-theory and signal descriptors of a short window, with no model weights.

Why: neither a multimodal LLM nor the usual taggers can name a key, a chord or a tempo, yet
those are exactly what a musician would want a knob for. Everything here is numpy/scipy:
chroma → key (Krumhansl–Kessler profiles) and triad; YIN → f0, note and register; spectral
flux → onsets and tempo; median-filter HPSS → percussive share; RMS and spectral centroid.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.ndimage import median_filter
from scipy.signal import butter, fftconvolve, find_peaks, sosfiltfilt, stft

NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
# Krumhansl–Kessler key profiles, tonic first
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
MAJOR_TRIAD = np.zeros(12)
MAJOR_TRIAD[[0, 4, 7]] = 1
MINOR_TRIAD = np.zeros(12)
MINOR_TRIAD[[0, 3, 7]] = 1
LOW_REGISTER_HZ, HIGH_REGISTER_HZ = 130.81, 523.25  # below C3: low; C5 and above: high
# YIN hears the waveform's period, so a tone rich in harmonics keeps its f0 when its fundamental
# is filtered out; a kick drum's body is a near-sine at 45–60 Hz and does not. Filtering below
# this before YIN keeps the kick from outweighing the melody (it said 58 Hz for an F5 melody
# over busy drums). A low sine alone is still heard: YIN's measure does not depend on level.
F0_HIGHPASS_HZ = 100.0


@dataclass(frozen=True)
class Descriptors:
    key: str  # e.g. "C major"
    key_strength: float  # correlation with the key profile, −1..1
    chord: str  # e.g. "A minor"
    chord_strength: float  # cosine of the chroma with the triad template, 0..1
    tempo_bpm: float
    tempo_strength: float  # autocorrelation at the beat lag / at lag 0
    onset_rate: float  # onsets per second
    loudness_db: float  # RMS in dB full scale
    centroid_hz: float  # brightness
    f0_hz: float  # median f0 of voiced frames (0 when none)
    voiced: float  # share of frames with a clear f0
    note: str  # f0 as a note name, e.g. "A4" ("" when unvoiced)
    register: str  # low, mid or high ("" when unvoiced)
    percussive: float  # share of spectral energy in the percussive part, 0..1

    def to_json(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def note_name(f0: float) -> str:
    midi = round(69 + 12 * math.log2(f0 / 440.0))
    return f"{NOTE_NAMES[midi % 12]}{midi // 12 - 1}"


def register_of(f0: float) -> str:
    return "low" if f0 < LOW_REGISTER_HZ else "high" if f0 >= HIGH_REGISTER_HZ else "mid"


def chroma(audio: np.ndarray, sr: int) -> np.ndarray:
    """Pitch-class energy, 12 values summing to 1 (C first)."""
    freqs, _, spec = stft(audio, sr, nperseg=4096, noverlap=3072)
    mag = np.abs(spec).sum(axis=1)
    band = (freqs >= 55) & (freqs <= 5000)
    classes = (np.round(12 * np.log2(freqs[band] / 440.0)).astype(int) + 9) % 12
    out = np.bincount(classes, weights=mag[band] ** 2, minlength=12)
    return out / max(out.sum(), 1e-12)


def key_of(pcp: np.ndarray) -> tuple[str, float]:
    best = ("C major", -1.0)
    for tonic in range(12):
        for mode, profile in (("major", MAJOR_PROFILE), ("minor", MINOR_PROFILE)):
            r = float(np.corrcoef(np.roll(profile, tonic), pcp)[0, 1]) if pcp.std() > 0 else 0.0
            if r > best[1]:
                best = (f"{NOTE_NAMES[tonic]} {mode}", r)
    return best


def chord_of(pcp: np.ndarray) -> tuple[str, float]:
    norm = np.linalg.norm(pcp) or 1.0
    best = ("C major", -1.0)
    for root in range(12):
        for quality, triad in (("major", MAJOR_TRIAD), ("minor", MINOR_TRIAD)):
            score = float(np.roll(triad, root) @ pcp / (norm * math.sqrt(3)))
            if score > best[1]:
                best = (f"{NOTE_NAMES[root]} {quality}", score)
    return best


def yin_f0(audio: np.ndarray, sr: int, fmin: float = 50.0, fmax: float = 2000.0) -> tuple[float, float]:
    """(median f0 over voiced frames, share of non-silent frames that are voiced), by YIN on
    the audio above `F0_HIGHPASS_HZ`; silence is judged on the audio as it came."""
    n, hop = 2048, 1024
    if len(audio) < n:
        return 0.0, 0.0
    filtered = sosfiltfilt(butter(4, F0_HIGHPASS_HZ, "highpass", fs=sr, output="sos"), audio)
    lo, hi = max(2, int(sr / fmax)), min(int(sr / fmin), n // 2)
    w = n - hi
    f0s, frames = [], 0
    for start in range(0, len(audio) - n + 1, hop):
        if np.sqrt(np.mean(audio[start : start + n] ** 2)) < 1e-4:
            continue
        frame = filtered[start : start + n]
        frames += 1
        head = frame[:w]
        energy = np.concatenate([[0.0], np.cumsum(frame**2)])
        corr = fftconvolve(frame, head[::-1], mode="valid")  # corr[τ] = Σ head[j]·frame[j+τ]
        diff = energy[w] + (energy[w : w + hi + 1] - energy[: hi + 1]) - 2 * corr[: hi + 1]
        cmnd = np.ones_like(diff)
        cmnd[1:] = diff[1:] * np.arange(1, len(diff)) / np.maximum(np.cumsum(diff[1:]), 1e-12)
        dips = np.nonzero(cmnd[lo:hi] < 0.15)[0]
        if len(dips) == 0:
            continue
        lag = lo + dips[0]
        while lag + 1 < hi and cmnd[lag + 1] < cmnd[lag]:
            lag += 1
        a, b, c = cmnd[lag - 1], cmnd[lag], cmnd[lag + 1]
        shift = 0.5 * (a - c) / (a - 2 * b + c) if a - 2 * b + c != 0 else 0.0
        f0s.append(sr / (lag + shift))
    if not f0s:
        return 0.0, 0.0
    return float(np.median(f0s)), len(f0s) / max(frames, 1)


def onset_envelope(audio: np.ndarray, sr: int) -> tuple[np.ndarray, float]:
    """Half-wave-rectified log-spectral flux and its frame rate."""
    hop = max(1, sr // 125)
    _, _, spec = stft(audio, sr, nperseg=4 * hop, noverlap=3 * hop, boundary=None)
    log_mag = np.log1p(100 * np.abs(spec))
    flux = np.maximum(np.diff(log_mag, axis=1), 0).sum(axis=0)
    return flux, sr / hop


def tempo_of(envelope: np.ndarray, rate: float) -> tuple[float, float]:
    """Beat period from the envelope's autocorrelation in 60–200 BPM, with a prior around 120."""
    env = envelope - envelope.mean()
    if len(env) < 4 or not np.any(env):
        return 0.0, 0.0
    acf = np.correlate(env, env, "full")[len(env) - 1 :]
    lags = np.arange(len(acf))
    lo, hi = int(rate * 60 / 200), min(int(rate * 60 / 60) + 1, len(acf) - 1)
    if hi - lo < 3:
        return 0.0, 0.0
    bpm = 60 * rate / np.maximum(lags[lo:hi], 1)
    prior = np.exp(-0.5 * (np.log2(bpm / 120.0) / 1.0) ** 2)
    weighted = acf[lo:hi] * prior
    i = int(np.argmax(weighted)) + lo
    a, b, c = acf[i - 1], acf[i], acf[i + 1] if i + 1 < len(acf) else acf[i]
    shift = 0.5 * (a - c) / (a - 2 * b + c) if a - 2 * b + c != 0 else 0.0
    return float(60 * rate / (i + shift)), float(max(acf[i] / acf[0], 0.0))


def percussive_share(audio: np.ndarray, sr: int) -> float:
    """Median-filter HPSS: energy share of the percussive (vertical) component."""
    _, _, spec = stft(audio, sr, nperseg=1024, noverlap=768)
    mag = np.abs(spec)
    harmonic = median_filter(mag, size=(1, 17), mode="nearest")
    percussive = median_filter(mag, size=(17, 1), mode="nearest")
    total = harmonic**2 + percussive**2 + 1e-12
    p = (mag**2 * percussive**2 / total).sum()
    h = (mag**2 * harmonic**2 / total).sum()
    return float(p / max(p + h, 1e-12))


def describe(audio: np.ndarray, sr: int) -> Descriptors:
    audio = np.asarray(audio, dtype=np.float64)
    pcp = chroma(audio, sr)
    key, key_strength = key_of(pcp)
    chord, chord_strength = chord_of(pcp)
    env, rate = onset_envelope(audio, sr)
    height = max(env.mean() + 2 * env.std(), 4 * float(np.median(env)))
    peaks, _ = find_peaks(env, height=height, distance=max(1, int(0.05 * rate)))
    # a steady sound has flux too, but no onsets: no tempo
    tempo, tempo_strength = tempo_of(env, rate) if len(peaks) >= 3 else (0.0, 0.0)
    f0, voiced = yin_f0(audio, sr)
    freqs, _, spec = stft(audio, sr, nperseg=2048, noverlap=1536)
    power = np.abs(spec) ** 2
    centroid = float((freqs[:, None] * power).sum() / max(power.sum(), 1e-12))
    rms = float(np.sqrt(np.mean(audio**2)))
    return Descriptors(
        key=key,
        key_strength=key_strength,
        chord=chord,
        chord_strength=chord_strength,
        tempo_bpm=tempo,
        tempo_strength=tempo_strength,
        onset_rate=len(peaks) / max(len(audio) / sr, 1e-9),
        loudness_db=20 * math.log10(max(rms, 1e-10)),
        centroid_hz=centroid,
        f0_hz=f0,
        voiced=voiced,
        note=note_name(f0) if voiced >= 0.5 else "",
        register=register_of(f0) if voiced >= 0.5 else "",
        percussive=percussive_share(audio, sr),
    )
