"""Where a melody model's melody comes from while it plays: a file, or a live sound input.

The host asks `current()` for the chroma at each re-prime (and when a controller presses
"follow now"); the answer must be ready, never computed on the generation thread. A live input
keeps its last `seconds` of audio in a ring written by the input callback (no allocation, no
lock) and a worker thread turns it into chroma twice a second, so `current()` only reads an
attribute.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from engine.audio import MAX_CALLBACK_FRAMES, import_sounddevice
from engine.errors import MgsteerError
from engine.melody import chroma

SILENCE_RMS = 1e-3  # a window quieter than this has no melody: the null melody plays
REFRESH_S = 0.5  # how often the worker renews the chroma


@dataclass
class FileMelody:
    """A melody read once (`engine.melody.read_melody`): the same condition at every re-prime."""

    chroma: torch.Tensor
    live = False

    def current(self) -> torch.Tensor:
        return self.chroma


class LiveMelody:
    """A sound input's last `seconds`, as the chroma a melody model follows.

    `stream_factory` makes the input stream (sounddevice.InputStream's signature); a test hands
    a fake one that calls the callback with blocks of a WAV."""

    live = True

    def __init__(
        self,
        device: str | int | None = None,
        seconds: float = 10.0,
        stream_factory: Callable | None = None,
        sample_rate: int | None = None,
        channels: int | None = None,
    ) -> None:
        if not 1.0 <= seconds <= 30.0:
            raise MgsteerError(f"--melody-seconds must be within 1–30 s (the model reads 30 s at most), got {seconds}")
        if stream_factory is None:
            try:
                sd = import_sounddevice()
            except MgsteerError as exc:
                why = exc.args[0].split(";")[0]
                raise MgsteerError(f"no audio input for --melody-input: {why}; use --melody FILE") from exc
            try:
                info = sd.query_devices(device, kind="input")
            except (sd.PortAudioError, ValueError) as exc:
                raise MgsteerError(f"no audio input device for --melody-input ({exc}); use --melody FILE") from exc
            stream_factory = sd.InputStream
            sample_rate = sample_rate or int(info["default_samplerate"])
            channels = channels or max(1, min(2, int(info["max_input_channels"])))
            self.device_name = str(info["name"])
        else:
            self.device_name = "test input"
        self.sample_rate = int(sample_rate or 32000)
        self.channels = int(channels or 1)
        self._ring = np.zeros(int(seconds * self.sample_rate), dtype=np.float32)
        self._mono = np.zeros(MAX_CALLBACK_FRAMES, dtype=np.float32)
        self.written = 0  # samples the callback has written, ever
        self.level = 0.0  # RMS of the last block (the window's input meter)
        self.latest: torch.Tensor | None = None  # the chroma the host takes; None: silence so far
        self.refreshed_at = 0  # `written` when `latest` was made
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._stream = stream_factory(
            device=device, samplerate=self.sample_rate, channels=self.channels, dtype="float32",
            callback=self._callback,
        )  # fmt: skip

    def _callback(self, indata, frames, time_info, status) -> None:
        if frames > MAX_CALLBACK_FRAMES:
            return
        mono = self._mono[:frames]
        np.sum(indata, axis=1, out=mono)
        mono *= 1.0 / indata.shape[1]
        size = len(self._ring)
        start = self.written % size
        first = min(frames, size - start)
        self._ring[start : start + first] = mono[:first]
        self._ring[: frames - first] = mono[first:]
        self.level = float(np.sqrt(np.dot(mono, mono) / max(frames, 1)))
        self.written += frames

    def window(self) -> np.ndarray:
        """The last `seconds` heard (fewer at the start), oldest first: a copy."""
        written, size = self.written, len(self._ring)
        if written < size:
            return self._ring[:written].copy()
        start = written % size
        return np.concatenate([self._ring[start:], self._ring[:start]])

    def refresh(self) -> None:
        """Renew `latest` from the window (the worker's job; a test calls it directly)."""
        written = self.written
        audio = self.window()
        loud = len(audio) > 0 and float(np.sqrt(np.mean(audio * audio))) >= SILENCE_RMS
        self.latest = chroma(audio, self.sample_rate) if loud else None
        self.refreshed_at = written

    def current(self) -> torch.Tensor | None:
        return self.latest

    def start(self) -> None:
        self._stream.start()
        self._worker = threading.Thread(target=self._work, name="mgsteer-melody", daemon=True)
        self._worker.start()

    def _work(self) -> None:
        while not self._stop.wait(REFRESH_S):
            if self.written != self.refreshed_at:
                self.refresh()

    def stop(self) -> None:
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout=5)
        self._stream.stop()
        self._stream.close()


def open_melody(
    lm, path: str | None = None, input_device: str | int | None = None, seconds: float = 10.0
) -> FileMelody | LiveMelody | None:
    """The melody source the flags ask for (`--melody FILE`, `--melody-input [DEVICE]`), checked
    against the model in one line each; None when neither is given. `input_device` "" is the
    system's default input."""
    if path is None and input_device is None:
        return None
    if path is not None and input_device is not None:
        raise MgsteerError("give --melody FILE or --melody-input DEVICE, not both")
    if not lm.melody:
        raise MgsteerError(
            f"model '{lm.spec}' is not a melody model: --melody needs musicgen-melody "
            "(facebook/musicgen-melody, or tiny-melody offline)"
        )
    if path is not None:
        from engine.melody import read_melody

        return FileMelody(read_melody(path))
    return LiveMelody(None if input_device == "" else input_device, seconds)
