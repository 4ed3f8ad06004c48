"""What a melody model follows: the input's level, the melody's pitch classes, "follow now".

Shown only when the session plays a melody model with a melody (`--melody FILE` or
`--melody-input`). The chroma bars are the share of each pitch class over the melody the
model would take now (the input's last seconds, or the file's), so a performer sees what the
next re-prime will hear before pressing "Follow now".
"""

from __future__ import annotations

import numpy as np
from PyQt6.QtCore import pyqtSignal
from PyQt6.QtGui import QColor, QPainter
from PyQt6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QSizePolicy, QVBoxLayout, QWidget

PITCH_CLASSES = ("C", "C♯", "D", "D♯", "E", "F", "F♯", "G", "G♯", "A", "A♯", "B")


class ChromaBars(QWidget):
    """Twelve bars: each pitch class's share of the melody's frames."""

    def __init__(self) -> None:
        super().__init__()
        self.shares = np.zeros(12)
        self.setMinimumSize(12 * 18, 60)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def show_chroma(self, chroma) -> None:
        """One-hot chroma `[frames, 12]` (a tensor or array), or None for no melody."""
        shares = np.zeros(12) if chroma is None else np.asarray(chroma, dtype=np.float64).mean(axis=0)
        if not np.array_equal(shares, self.shares):
            self.shares = shares
            self.update()

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        width, height = self.width() / 12, self.height() - 14
        top = max(float(self.shares.max()), 1e-9)
        for i, share in enumerate(self.shares):
            bar = int(height * share / top) if share > 0 else 0
            painter.fillRect(int(i * width) + 2, height - bar, int(width) - 4, bar, QColor("#4fa3e0"))
            painter.setPen(QColor("#888"))
            painter.drawText(int(i * width) + 3, self.height() - 2, PITCH_CLASSES[i])
        painter.end()


class MelodyPanel(QWidget):
    """Input level, chroma and the "Follow now" button for one melody source."""

    follow = pyqtSignal()

    def __init__(self) -> None:
        super().__init__()
        self.title = QLabel()
        self.level = QLabel()
        self.level.setMinimumWidth(90)
        self.chroma = ChromaBars()
        self.follow_button = QPushButton("Follow now")
        self.follow_button.setToolTip("Re-prime on the input's last seconds now, not at the next scheduled re-prime")
        self.follow_button.clicked.connect(self.follow.emit)
        head = QHBoxLayout()
        head.addWidget(self.title, 1)
        head.addWidget(self.level)
        head.addWidget(self.follow_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(head)
        layout.addWidget(self.chroma)
        self.source = None
        self.setVisible(False)

    def set_source(self, source, name: str) -> None:
        """The session's melody source (engine.melody_input), or None to hide the panel."""
        self.source = source
        self.setVisible(source is not None)
        if source is None:
            return
        self.title.setText(f"melody: {name}")
        self.follow_button.setVisible(source.live)
        self.level.setVisible(source.live)
        self.refresh()

    def refresh(self) -> None:
        source = self.source
        if source is None:
            return
        if source.live:
            db = 20 * np.log10(max(source.level, 1e-6))
            self.level.setText(f"input {db:5.1f} dBFS")
        current = source.current()
        self.chroma.show_chroma(None if current is None else current.numpy())
