"""A melody → musicgen-melody's condition: the chroma of the audio, one-hot per frame.

Why our own chroma: transformers' `MusicgenMelodyFeatureExtractor` computes its spectrogram
with torchaudio, whose wheels pin an older torch than the engine's. The arithmetic is the
same: a Hann-windowed STFT (n_fft 16384, hop 4096 at 32 kHz, centred), power, transformers'
own `chroma_filter_bank`, then the loudest pitch class of each frame set to 1 and the rest to
0 — so only which bin is loudest matters, not the spectrogram's scale.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from engine.errors import MgsteerError

SAMPLE_RATE = 32000  # the feature extractor's rate for every musicgen-melody checkpoint
N_FFT = 16384
HOP = 4096
NUM_CHROMA = 12
MAX_SECONDS = 30  # what the extractor keeps of a longer melody (the model's chroma_length frames)
FRAME_RATE = SAMPLE_RATE / HOP  # chroma frames per second (7.8)


def _filters() -> torch.Tensor:
    from transformers.audio_utils import chroma_filter_bank

    bank = chroma_filter_bank(sampling_rate=SAMPLE_RATE, num_frequency_bins=N_FFT, tuning=0, num_chroma=NUM_CHROMA)
    return torch.from_numpy(bank).float()


def chroma(audio: np.ndarray, sample_rate: int) -> torch.Tensor:
    """Mono or `[n, channels]` audio → one-hot chroma `[frames, 12]` (at most 30 s of it)."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    if audio.size == 0 or not np.isfinite(audio).all():
        raise MgsteerError("the melody is empty or not finite: give a few seconds of audio")
    if sample_rate != SAMPLE_RATE:
        from scipy.signal import resample_poly

        g = math.gcd(SAMPLE_RATE, sample_rate)
        audio = resample_poly(audio, SAMPLE_RATE // g, sample_rate // g).astype(np.float32)
    wave = torch.from_numpy(np.ascontiguousarray(audio[: MAX_SECONDS * SAMPLE_RATE]))
    if wave.shape[0] < N_FFT:  # the extractor pads a short melody to one window, centred
        pad = N_FFT - wave.shape[0]
        wave = torch.nn.functional.pad(wave, (pad // 2, pad - pad // 2))
    window = torch.hann_window(N_FFT)
    spec = torch.stft(wave, N_FFT, HOP, window=window, center=True, pad_mode="reflect", return_complex=True)
    power = spec.abs().pow(2)  # [freq, frames]
    raw = _filters() @ power  # [12, frames]
    loudest = raw.argmax(dim=0)
    return torch.nn.functional.one_hot(loudest, NUM_CHROMA).float()


def read_melody(path: str | Path) -> torch.Tensor:
    """A melody file (WAV; any format soundfile reads) → its chroma `[frames, 12]`."""
    from engine.wavfile import read_audio

    path = Path(path).expanduser()
    if not path.is_file():
        raise MgsteerError(f"melody file '{path}' does not exist")
    audio, rate = read_audio(path, seconds=MAX_SECONDS)
    return chroma(audio, rate)


@torch.no_grad()
def melody_states(lm, melodies: torch.Tensor | None, batch: int) -> torch.Tensor:
    """Chroma `[batch, frames, 12]` (None: no melody) → the condition's first `chroma_length`
    positions `[batch, chroma_length, hidden]`, as transformers' generate builds them: the
    null melody (pitch class 0 everywhere) where none is given, projected, and repeated (or cut)
    to `chroma_length` frames."""
    model, config = lm.model, lm.model.config
    if melodies is None:
        melodies = null_chroma(batch)
    melodies = melodies.to(device=lm.device, dtype=lm.dtype)
    if getattr(model, "audio_enc_to_dec_proj", None) is not None:
        melodies = model.audio_enc_to_dec_proj(melodies)
    length = int(config.chroma_length)
    if melodies.shape[1] < length:
        melodies = melodies.repeat(1, math.ceil(length / melodies.shape[1]), 1)
    return melodies[:, :length]


def null_chroma(batch: int) -> torch.Tensor:
    """The unconditional melody of classifier-free guidance: one frame of pitch class 0."""
    null = torch.zeros(batch, 1, NUM_CHROMA)
    null[:, :, 0] = 1
    return null
