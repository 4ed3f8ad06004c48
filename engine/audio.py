"""Audio sinks: a sound device, a real-time null clock, and WAV recording.

The audio callback is the one place where a stall is audible, so it only copies from a
preallocated ring buffer: no waiting, no buffer allocation, no lock, no logging. The ring is
single-producer (generation thread) / single-consumer (callback); each side only advances
its own counter, after its copy, so no lock is needed.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from pathlib import Path

import numpy as np

from engine.errors import MgsteerError
from engine.inputs import os_reason
from engine.levels import soft_limit

MAX_CALLBACK_FRAMES = 16384  # a mixdown's buffer: a larger block is mixed in pieces of this


class RingBuffer:
    """Float32 ring of `[frames]` (mono) or `[frames, channels]`; `write` from one thread,
    `read_into` from the audio callback. Counters count frames (a sample of every channel)."""

    def __init__(self, capacity: int, channels: int = 1) -> None:
        self._buf = np.zeros(capacity if channels == 1 else (capacity, channels), dtype=np.float32)
        self.channels = channels
        self.capacity = capacity
        self.written = 0  # total samples written (producer's counter)
        self.read = 0  # total samples played (consumer's counter)
        self.underruns = 0
        self.counting = False  # count underruns only while playing after the first block

    @property
    def queued(self) -> int:
        return self.written - self.read

    def write(self, block: np.ndarray) -> int:
        """Copy as much of `block` as fits; returns the number of samples taken."""
        n = min(len(block), self.capacity - self.queued)
        start = self.written % self.capacity
        first = min(n, self.capacity - start)
        self._buf[start : start + first] = block[:first]
        self._buf[: n - first] = block[first:n]
        self.written += n
        return n

    def read_into(self, out: np.ndarray) -> None:
        """Fill `out` (float32, the ring's shape) from the ring, zero-padding on underrun.
        Callback-safe."""
        want = out.shape[0]
        n = min(want, self.written - self.read)
        start = self.read % self.capacity
        first = min(n, self.capacity - start)
        out[:first] = self._buf[start : start + first]
        out[first:n] = self._buf[: n - first]
        if n < want:
            out[n:] = 0.0
            if self.counting:
                self.underruns += 1
        self.read += n


class StreamResampler:
    """Polyphase FIR resampling with carried state, e.g. 32 kHz → 48 kHz, block by block
    (`[n]` or `[n, channels]`, each channel on its own)."""

    def __init__(self, src_rate: int, dst_rate: int, taps_per_phase: int = 24, channels: int = 1) -> None:
        from scipy.signal import firwin

        g = math.gcd(src_rate, dst_rate)
        self.up, self.down = dst_rate // g, src_rate // g
        cutoff = 0.95 / max(self.up, self.down)
        self._taps = (firwin(self.up * taps_per_phase, cutoff, window=("kaiser", 8.0)) * self.up).astype(np.float64)
        self._zi = np.zeros((len(self._taps) - 1,) if channels == 1 else (len(self._taps) - 1, channels))
        self._phase = 0  # index, in the next upsampled block, of the next output sample

    def process(self, block: np.ndarray) -> np.ndarray:
        from scipy.signal import lfilter

        up = np.zeros((len(block) * self.up, *block.shape[1:]))
        up[:: self.up] = block
        filtered, self._zi = lfilter(self._taps, 1.0, up, axis=0, zi=self._zi)
        out = filtered[self._phase :: self.down]
        self._phase = (self._phase + len(out) * self.down) - len(up)
        return out.astype(np.float32)


class Sink(ABC):
    """Plays model-rate blocks through a ring buffer; subclasses provide the clock."""

    name = "sink"

    def __init__(self, model_rate: int, device_rate: int, buffer_seconds: float = 8.0, channels: int = 1) -> None:
        self.model_rate = model_rate
        self.sample_rate = device_rate
        self.channels = channels  # what `write` takes: `[n]` mono, `[n, 2]` stereo
        self.ring = RingBuffer(int(buffer_seconds * device_rate), channels)
        resample = device_rate != model_rate
        self._resampler = StreamResampler(model_rate, device_rate, channels=channels) if resample else None

    def write(self, block: np.ndarray) -> None:
        """Queue a block (model rate), through the soft limiter (engine.levels). Waits for room
        only if the caller outran the buffer."""
        data = soft_limit(self._resampler.process(block) if self._resampler else block)
        done = 0
        while done < len(data):
            done += self.ring.write(data[done:])
            if done < len(data):
                time.sleep(0.005)
        self.ring.counting = True

    @property
    def queued_seconds(self) -> float:
        return self.ring.queued / self.sample_rate

    @property
    def played_model_samples(self) -> float:
        """Playback position in model-rate samples (for latency markers)."""
        return self.ring.read * self.model_rate / self.sample_rate

    @property
    def underruns(self) -> int:
        return self.ring.underruns

    @property
    def block_seconds(self) -> float:
        """The most audio the consumer takes at once (its callback's block)."""
        return 0.0

    def pause_counting(self) -> None:
        """Stop counting underruns (transport stopped: silence is intended)."""
        self.ring.counting = False

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...


class NullSink(Sink):
    """No sound: a thread consumes the ring in real time, like a sound card would."""

    name = "null"

    def __init__(self, model_rate: int, block: int = 512, buffer_seconds: float = 8.0, channels: int = 1) -> None:
        super().__init__(model_rate, model_rate, buffer_seconds, channels)
        self.block = block
        self._scratch = np.zeros(block if channels == 1 else (block, channels), dtype=np.float32)
        self._running = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def block_seconds(self) -> float:
        return self.block / self.sample_rate

    def start(self) -> None:
        self._running.set()
        self._thread = threading.Thread(target=self._clock, name="mgsteer-null-clock", daemon=True)
        self._thread.start()

    def _clock(self) -> None:
        period = self.block / self.sample_rate
        due = time.perf_counter()
        while self._running.is_set():
            due += period
            self.ring.read_into(self._scratch)
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)

    def stop(self) -> None:
        self._running.clear()
        if self._thread is not None:
            self._thread.join(timeout=2)


class DeviceSink(Sink):
    """A sound device through sounddevice/PortAudio, at the device's own rate."""

    name = "device"

    def __init__(
        self, model_rate: int, device: str | int | None = None, buffer_seconds: float = 8.0, channels: int = 1
    ) -> None:
        sd = import_sounddevice()
        try:
            # PortAudio lists devices once, at start-up; rescan so a server or card that appeared
            # since (JACK started, USB interface plugged in) is found.
            sd._terminate()
            sd._initialize()
            info = sd.query_devices(device, kind="output")
        except (sd.PortAudioError, ValueError) as exc:
            raise MgsteerError(f"no audio output device ({exc}); use --no-audio, optionally with --out FILE") from exc
        super().__init__(model_rate, int(info["default_samplerate"]), buffer_seconds, channels)
        self.device_name = str(info["name"])
        self._channels = max(1, min(2, int(info["max_output_channels"])))
        # A stereo stream on a mono device is mixed down through this (allocated once: the
        # callback allocates nothing).
        self._mixdown = np.zeros((MAX_CALLBACK_FRAMES, 2), dtype=np.float32) if channels > self._channels else None
        self.device_underflows = 0
        self.callback_frames = 0  # the largest block the callback has asked for
        self._stream = sd.OutputStream(
            device=device, samplerate=self.sample_rate, channels=self._channels, dtype="float32",
            callback=self._callback,
        )  # fmt: skip

    def _callback(self, outdata, frames, time_info, status) -> None:
        if status.output_underflow:
            self.device_underflows += 1
        if frames > self.callback_frames:
            self.callback_frames = frames
        if self.channels == self._channels:
            self.ring.read_into(outdata if self.channels == 2 else outdata[:, 0])
        elif self._mixdown is not None:  # stereo stream, mono device: mixed in pieces the buffer holds
            piece = len(self._mixdown)
            for start in range(0, frames, piece):
                both = self._mixdown[: min(piece, frames - start)]
                self.ring.read_into(both)
                np.add(both[:, 0], both[:, 1], out=outdata[start : start + len(both), 0])
            outdata *= 0.5
        else:  # mono stream, stereo device: the same in both
            self.ring.read_into(outdata[:, 0])
            outdata[:, 1] = outdata[:, 0]

    @property
    def block_seconds(self) -> float:
        return self.callback_frames / self.sample_rate

    def start(self) -> None:
        self._stream.start()

    def stop(self) -> None:
        self._stream.stop()
        self._stream.close()


def import_sounddevice():
    """sounddevice needs the PortAudio library; without it, one clear line."""
    try:
        import sounddevice
    except (ImportError, OSError) as exc:
        raise MgsteerError(
            f"audio output unavailable ({exc}); install PortAudio (apt-get install libportaudio2) and "
            "`pip install sounddevice`, or use --no-audio"
        ) from exc
    return sounddevice


class WavRecorder:
    """Records the played stream (model rate) to a 16-bit WAV on a thread of its own.

    Why a thread: a disk can stall (a network share, a busy laptop disk) or fill up, and the
    generation thread must never wait on one. `write` only queues the block; the writer thread
    writes it with a header patched after every block and unbuffered (engine.wavfile), so a
    kill leaves a valid WAV up to the last block written. A write that fails (a full disk, a
    removed drive) ends the recording, not the music: `error` says why, in one line, and
    later blocks are dropped."""

    def __init__(self, path: str | Path, sample_rate: int, max_seconds: float | None = None, channels: int = 1) -> None:
        """`max_seconds`: record exactly this much and drop the rest (generation runs ahead of
        playback, so a timed session would otherwise record its lookahead too)."""
        from engine.wavfile import WavWriter

        self.limit = None if max_seconds is None else round(max_seconds * sample_rate)
        self.path = Path(path)
        self.sample_rate = sample_rate
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = WavWriter(self.path, sample_rate, channels)
        except OSError as exc:
            raise MgsteerError(f"cannot write '{self.path}': {os_reason(exc)}") from exc
        self.samples = 0  # queued for the file (what `limit` counts)
        self.written = 0  # samples in the file
        self.error: str | None = None
        self._queue: deque[np.ndarray] = deque()
        self._wake = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._drain, name="mgsteer-recorder", daemon=True)
        self._thread.start()

    def write(self, block: np.ndarray) -> None:
        """Queue a block (never waits: the generation thread calls this)."""
        if self.error is not None or self._closing:
            return
        if self.limit is not None:
            block = block[: max(0, self.limit - self.samples)]
        if len(block):
            self._queue.append(np.array(block, dtype=np.float32))
            self.samples += len(block)
            self._wake.set()

    def _drain(self) -> None:
        while True:
            self._wake.wait(0.5)
            self._wake.clear()
            while self._queue:
                block = self._queue.popleft()
                if self.error is None:
                    self._write(block)
            if self._closing and not self._queue:
                return

    def _write(self, block: np.ndarray) -> None:
        try:
            self._file.write(block)
            self.written += len(block)
        except OSError as exc:
            self.error = (
                f"recording to '{self.path.name}' stopped at {self.written / self.sample_rate:.1f} s: "
                f"{os_reason(exc)}; the music goes on"
            )
            self._queue.clear()
            with contextlib.suppress(OSError):
                self._file.close()

    def close(self) -> None:
        """Write what is queued, then close the file."""
        self._closing = True
        self._wake.set()
        self._thread.join(timeout=30)
        if self.error is None:
            try:
                self._file.close()
            except OSError as exc:
                self.error = f"recording to '{self.path.name}' could not be finished: {os_reason(exc)}"
