"""A level meter and a scrolling spectrogram of what the engine generates.

Plain Qt painting, not pyqtgraph: both are a few rectangles and one image scrolled a column
at a time, which QPainter draws in well under a millisecond, and it keeps the GUI's only
dependency PyQt6.
"""

from __future__ import annotations

import itertools

import numpy as np
from PyQt6.QtGui import QColor, QImage, QPainter
from PyQt6.QtWidgets import QSizePolicy, QWidget

FFT = 1024
BANDS = 96  # log-spaced rows from 40 Hz to Nyquist


def _db(x: float) -> float:
    return 20.0 * np.log10(max(x, 1e-6))


class LevelMeter(QWidget):
    """RMS (bar) and peak (line) of the latest audio, −60 … 0 dBFS."""

    def __init__(self) -> None:
        super().__init__()
        self.rms_db = self.peak_db = -60.0
        self.setMinimumSize(18, 80)
        self.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Expanding)

    def feed(self, audio: np.ndarray) -> None:
        if not len(audio):
            return
        self.rms_db = max(-60.0, _db(float(np.sqrt(np.mean(audio**2)))))
        self.peak_db = max(-60.0, _db(float(np.abs(audio).max())))
        self.update()

    def paintEvent(self, event) -> None:
        p = QPainter(self)
        p.fillRect(self.rect(), QColor("#1e1e1e"))
        h = self.height()
        top = int(h * (1 - (self.rms_db + 60) / 60))
        color = QColor("#e0584b") if self.peak_db > -1 else QColor("#5fd38d")
        p.fillRect(2, top, self.width() - 4, h - top, color)
        peak = int(h * (1 - (self.peak_db + 60) / 60))
        p.fillRect(0, peak, self.width(), 2, QColor("#f0f0f0"))


class Spectrogram(QWidget):
    """One column per `FFT` samples, newest on the right, log frequency upwards."""

    def __init__(self, sample_rate: int = 32000, columns: int = 400) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.image = QImage(columns, BANDS, QImage.Format.Format_Grayscale8)
        self.image.fill(0)
        self._pending = np.zeros(0, dtype=np.float32)
        self._window = np.hanning(FFT).astype(np.float32)
        self.set_rate(sample_rate)
        self.setMinimumHeight(80)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def set_rate(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        freqs = np.fft.rfftfreq(FFT, 1 / sample_rate)
        edges = np.geomspace(40, sample_rate / 2, BANDS + 1)
        bands = []
        for lo, hi in itertools.pairwise(edges):  # bands narrower than a bin take the nearest bin
            band = np.flatnonzero((freqs >= lo) & (freqs < hi))
            bands.append(band if len(band) else np.array([np.abs(freqs - np.sqrt(lo * hi)).argmin()]))
        # [BANDS, widest band] bin indices, each band padded with its own first bin: a band's
        # maximum is then one gather and one max over all columns at once
        widest = max(len(b) for b in bands)
        self._bins = np.stack([np.pad(b, (0, widest - len(b)), mode="edge") for b in bands])

    def feed(self, audio: np.ndarray) -> None:
        """Add audio; every whole FFT frame of it becomes a column (vectorised: this runs on the
        GUI thread, beside the generation thread, and must cost it as little as possible)."""
        self._pending = np.concatenate([self._pending, audio.astype(np.float32, copy=False)])
        count = len(self._pending) // FFT
        if not count:
            return
        frames = self._pending[: count * FFT].reshape(count, FFT)
        self._pending = self._pending[count * FFT :]
        mag = np.abs(np.fft.rfft(frames * self._window, axis=1))  # [columns, bins]
        db = 20.0 * np.log10(np.maximum(mag[:, self._bins].max(axis=2), 1e-6))  # [columns, BANDS]
        self._scroll(np.clip((db + 40) / 80 * 255, 0, 255).astype(np.uint8)[:, ::-1].T)

    def _scroll(self, new: np.ndarray) -> None:
        width = self.image.width()
        pixels = np.frombuffer(self.image.bits().asarray(self.image.sizeInBytes()), dtype=np.uint8)
        stride = self.image.bytesPerLine()
        grid = pixels.reshape(BANDS, stride)[:, :width].copy()
        n = min(new.shape[1], width)
        grid = np.concatenate([grid[:, n:], new[:, -n:]], axis=1)
        grid = np.ascontiguousarray(grid)
        self.image = QImage(grid.data, width, BANDS, width, QImage.Format.Format_Grayscale8).copy()
        self.update()

    def paintEvent(self, event) -> None:
        p = QPainter(self)
        p.drawImage(self.rect(), self.image)
