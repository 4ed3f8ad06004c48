"""The knob bank: one dial per concept knob, writing only to the parameter bus.

A knob shows its label, value, α range and curve, a live meter of its features, and the MIDI
CC bound to it. Features are assigned by dropping a row of the feature browser on it or from
its context menu. The dial moves with the bus (OSC, MIDI, presets) through `show_knob`,
which never writes back, so feedback cannot loop.
"""

from __future__ import annotations

from PyQt6.QtCore import QMimeData, Qt, pyqtSignal
from PyQt6.QtGui import QColor, QPainter
from PyQt6.QtWidgets import (
    QDial,
    QFrame,
    QGridLayout,
    QInputDialog,
    QLabel,
    QMenu,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from engine.params import CURVES, Knob

FEATURE_MIME = "application/x-mgsteer-feature"
STEPS = 1000  # dial resolution: 0.1 % of the knob's travel


def feature_mime(feature: int, label: str) -> QMimeData:
    """What a browser row carries when dragged: the id, and its label for the knob's title."""
    mime = QMimeData()
    mime.setData(FEATURE_MIME, f"{feature}\t{label}".encode())
    mime.setText(str(feature))
    return mime


def read_feature_mime(mime: QMimeData) -> tuple[int, str] | None:
    if not mime.hasFormat(FEATURE_MIME):
        return None
    feature, _, label = bytes(mime.data(FEATURE_MIME)).decode().partition("\t")
    return int(feature), label


class Dial(QDial):
    """A QDial (mouse drag, wheel and arrow keys built in) that double-click resets to 0."""

    reset = pyqtSignal()

    def mouseDoubleClickEvent(self, event) -> None:
        self.reset.emit()


class Meter(QWidget):
    """A thin horizontal bar: the activation of the knob's features as a share of their β."""

    def __init__(self) -> None:
        super().__init__()
        self.level = 0.0
        self.setFixedHeight(6)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def set_level(self, level: float) -> None:
        level = min(1.0, max(0.0, level))
        if abs(level - self.level) > 1e-3:
            self.level = level
            self.update()

    def paintEvent(self, event) -> None:
        p = QPainter(self)
        p.fillRect(self.rect(), QColor("#2b2b2b"))
        p.fillRect(0, 0, int(self.width() * self.level), self.height(), QColor("#5fd38d"))


class KnobWidget(QFrame):
    """One knob. Signals carry the knob's index; the bank turns them into bus writes."""

    turned = pyqtSignal(int, float)  # index, value in [0, 1]
    assigned = pyqtSignal(int, int, str)  # index, feature, label
    cleared = pyqtSignal(int)
    curve_chosen = pyqtSignal(int, str)
    range_chosen = pyqtSignal(int, float, float)
    learn_clicked = pyqtSignal(int)

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index
        self.knob = Knob()
        self._showing = False  # set while the dial follows the bus: no write back
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setAcceptDrops(True)
        self.setMinimumWidth(150)
        self.title = QLabel()
        self.title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.title.setWordWrap(True)
        self.title.setMinimumHeight(34)
        self.dial = Dial()
        self.dial.setRange(0, STEPS)
        self.dial.setNotchesVisible(True)
        self.dial.setMinimumSize(84, 84)
        self.dial.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.value = QLabel()
        self.value.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.detail = QLabel()
        self.detail.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.detail.setStyleSheet("color: #888; font-size: 10px")
        self.meter = Meter()
        self.learn = QPushButton("MIDI learn")
        self.learn.setToolTip("Move a controller after clicking: its CC drives this knob")
        layout = QVBoxLayout(self)
        for widget in (self.title, self.dial, self.value, self.detail, self.meter, self.learn):
            layout.addWidget(widget)
        self.dial.valueChanged.connect(self._dial_moved)
        self.dial.reset.connect(self.to_zero)
        self.learn.clicked.connect(lambda: self.learn_clicked.emit(self.index))
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.customContextMenuRequested.connect(self._menu)
        self.show_knob(self.knob)

    # ---- the bus → the widget ---------------------------------------------------------------
    def show_knob(self, knob: Knob) -> None:
        self.knob = knob
        self._showing = True
        try:
            self.dial.setValue(round(knob.value * STEPS))
        finally:
            self._showing = False
        features = ", ".join(f"#{f}" + ("" if w == 1 else f"×{w:g}") for f, w in knob.features)
        self.title.setText(knob.label or (f"feature {features}" if features else f"knob {self.index + 1}"))
        if knob.bipolar:  # where the dial sits says less than which way it pushes
            self.value.setText(f"α {knob.alpha():+.2f}" + (" (no push)" if abs(knob.alpha()) < 5e-3 else ""))
            span = f"α {knob.lo:+g}…{knob.hi:+g}, 0 at {knob.value_for(0.0):.0%}"
        else:
            self.value.setText(f"{knob.value:.2f} → α {knob.alpha():+.2f}")
            span = f"α {knob.lo:g}…{knob.hi:g}"
        self.detail.setText(f"{span} · {knob.curve}" + (f" · {features}" if features else ""))
        self.setToolTip("Drop a feature here, or right-click to assign one")

    def to_zero(self) -> None:
        """Turn the dial to no push (α 0: the middle of a bipolar knob, or its bottom)."""
        self.dial.setValue(round(self.knob.value_for(0.0) * STEPS))

    def show_binding(self, text: str | None) -> None:
        self.learn.setText(text or "MIDI learn")

    # ---- the widget → the bank --------------------------------------------------------------
    def _dial_moved(self, value: int) -> None:
        if not self._showing:
            self.turned.emit(self.index, value / STEPS)

    def dragEnterEvent(self, event) -> None:
        if read_feature_mime(event.mimeData()) is not None:
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        dropped = read_feature_mime(event.mimeData())
        if dropped is not None:
            self.assigned.emit(self.index, *dropped)
            event.acceptProposedAction()

    def _menu(self, pos) -> None:
        menu = QMenu(self)
        menu.addAction("Assign feature…", self._ask_feature)
        menu.addAction("Range…", self._ask_range)
        curves = menu.addMenu("Curve")
        for curve in CURVES:
            action = curves.addAction(curve, lambda c=curve: self.curve_chosen.emit(self.index, c))
            action.setCheckable(True)
            action.setChecked(curve == self.knob.curve)
        menu.addAction("Reset to α 0", self.to_zero)
        menu.addAction("Clear", lambda: self.cleared.emit(self.index))
        menu.popup(self.mapToGlobal(pos))

    def _ask_feature(self) -> None:
        feature, ok = QInputDialog.getInt(self, "Assign feature", "Feature id:", 0, 0, 2**31 - 1)
        if ok:
            self.assigned.emit(self.index, feature, "")

    def _ask_range(self) -> None:
        text, ok = QInputDialog.getText(
            self, "α range", "lo, hi (units of β):", text=f"{self.knob.lo:g}, {self.knob.hi:g}"
        )
        if ok:
            try:
                lo, hi = (float(part) for part in text.split(","))
            except ValueError:
                return
            self.range_chosen.emit(self.index, lo, hi)


class KnobBank(QWidget):
    """The knobs in rows of four."""

    def __init__(self, count: int, per_row: int = 4) -> None:
        super().__init__()
        self.knobs = [KnobWidget(i) for i in range(count)]
        grid = QGridLayout(self)
        for i, knob in enumerate(self.knobs):
            grid.addWidget(knob, i // per_row, i % per_row)
