"""WAV in and out with the standard library; other formats through soundfile when it is there.

Why not soundfile everywhere: it needs libsndfile through cffi, which a bare GPU image or a
minimal server may lack, and everything the engine itself writes is 16-bit PCM WAV, which
Python's `wave` module writes as well. Whatever is written passes the soft
limiter (`engine.levels`) first. The stdlib writer also rewrites the header's sizes
after every block, so a recording cut short by a kill is a valid WAV up to its last block.
Reading any other format (FLAC, Ogg, MP3…) needs soundfile, and says so in one line.
"""

from __future__ import annotations

import os
import wave
from pathlib import Path
from typing import BinaryIO

import numpy as np

from engine.errors import MgsteerError
from engine.inputs import os_reason
from engine.levels import soft_limit

_INT_SCALE = {1: 128.0, 2: 32768.0, 3: 8388608.0, 4: 2147483648.0}


def _pcm16(audio: np.ndarray) -> bytes:
    """Float samples, through the soft limiter (engine.levels: nothing reaches full scale), as
    little-endian 16-bit PCM."""
    return np.round(soft_limit(audio) * 32767.0).astype("<i2").tobytes()


class WavWriter:
    """A 16-bit PCM WAV written block by block; the header is valid after every `write`.

    A file named by path is written unbuffered, header first: `wave` patches the sizes in the
    header after every block, and with no buffer in between every patch is in the file at
    once, so a recording cut by a kill (even SIGKILL) is a valid WAV up to its last block."""

    def __init__(self, target: str | Path | BinaryIO, sample_rate: int, channels: int = 1) -> None:
        self._own = open(target, "wb", buffering=0) if isinstance(target, str | Path) else None  # noqa: SIM115
        self._wave = wave.open(self._own or target, "wb")  # noqa: SIM115
        self._wave.setnchannels(channels)
        self._wave.setsampwidth(2)
        self._wave.setframerate(int(sample_rate))
        self._wave.writeframes(b"")  # the header, for zero frames

    def write(self, block: np.ndarray) -> None:
        """`block`: `[n]` mono or `[n, channels]` float samples."""
        self._wave.writeframes(_pcm16(block))

    def close(self) -> None:
        try:
            self._wave.close()
        finally:
            if self._own is not None:
                self._own.close()


def write_wav(target: str | Path | BinaryIO, audio: np.ndarray, sample_rate: int) -> None:
    """Write a whole clip (`[n]` or `[n, channels]` floats) as 16-bit PCM WAV. A file named
    by path is written under a temporary name and renamed: a full disk or a kill leaves no
    partial file behind (one line says why)."""
    audio = np.asarray(audio)
    channels = 1 if audio.ndim == 1 else audio.shape[1]
    if not isinstance(target, str | Path):
        _write_whole(target, audio, sample_rate, channels)
        return
    path = Path(target)
    part = path.with_name(f".{path.name}.part")
    try:
        _write_whole(part, audio, sample_rate, channels)
        os.replace(part, path)
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise MgsteerError(f"cannot write '{path}': {os_reason(exc)}; nothing was written there") from exc


def _write_whole(target, audio: np.ndarray, sample_rate: int, channels: int) -> None:
    writer = WavWriter(target, sample_rate, channels)
    try:
        writer.write(audio)
    finally:
        writer.close()


def _soundfile():
    try:
        import soundfile
    except (ImportError, OSError):
        return None
    return soundfile


def _is_wav(path: Path) -> bool:
    return path.suffix.lower() in (".wav", ".wave")


def audio_info(path: str | Path) -> tuple[float, int]:
    """(duration in seconds, sample rate) of an audio file."""
    path = Path(path)
    sf = _soundfile()
    try:
        if sf is not None:
            info = sf.info(str(path))
            return float(info.duration), int(info.samplerate)
        if _is_wav(path):
            with wave.open(str(path), "rb") as w:
                return w.getnframes() / w.getframerate(), w.getframerate()
    except (RuntimeError, OSError, EOFError, wave.Error) as exc:
        raise MgsteerError(f"cannot read audio file '{path}': {exc}") from exc
    raise MgsteerError(f"cannot read '{path}': formats other than WAV need soundfile (pip install soundfile)")


def read_audio(path: str | Path, start_s: float = 0.0, seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Samples `[n, channels]` float32 in ±1 from `start_s` for `seconds` (to the end if None),
    and the file's sample rate."""
    path = Path(path)
    sf = _soundfile()
    try:
        if sf is not None:
            rate = sf.info(str(path)).samplerate
            start = int(start_s * rate)
            frames = -1 if seconds is None else int(seconds * rate)
            audio, rate = sf.read(str(path), start=start, frames=frames, dtype="float32", always_2d=True)
            return audio, int(rate)
        if _is_wav(path):
            return _read_wav(path, start_s, seconds)
    except (RuntimeError, OSError, EOFError, wave.Error) as exc:
        raise MgsteerError(f"cannot read audio file '{path}': {exc}") from exc
    raise MgsteerError(f"cannot read '{path}': formats other than WAV need soundfile (pip install soundfile)")


def _read_wav(path: Path, start_s: float, seconds: float | None) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
        w.setpos(min(int(start_s * rate), w.getnframes()))
        raw = w.readframes(w.getnframes() if seconds is None else int(seconds * rate))
    if width == 3:  # 24-bit: widen each sample to 32 bits
        padded = np.zeros((len(raw) // 3, 4), dtype=np.uint8)
        padded[:, 1:] = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3)
        ints = padded.view("<i4").reshape(-1)
        width = 4
    elif width == 1:  # 8-bit WAV is unsigned
        ints = np.frombuffer(raw, dtype=np.uint8).astype(np.int16) - 128
    else:
        ints = np.frombuffer(raw, dtype=f"<i{width}")
    audio = (ints.astype(np.float32) / _INT_SCALE[width]).reshape(-1, channels)
    return audio, rate
