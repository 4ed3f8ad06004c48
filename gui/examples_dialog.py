""" "New knob from examples": two lists of audio files, a name and a method.

The dialog only gathers the choice; the window builds the knob on a worker thread
(gui.session.knob_from_examples) and puts it on the first free knob.
"""

from __future__ import annotations

from PyQt6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from sae.concept import METHODS
from sae.harvest import AUDIO_EXTENSIONS

AUDIO_FILTER = f"Audio ({' '.join('*' + e for e in AUDIO_EXTENSIONS)})"


class FileList(QWidget):
    """A list of examples: audio files (Add files…) or prompts typed in (each generated once)."""

    def __init__(self, title: str) -> None:
        super().__init__()
        self.title = title
        self.files = QListWidget()
        self.prompt = QLineEdit()
        self.prompt.setPlaceholderText("or a prompt, then Enter")
        self.prompt.returnPressed.connect(self._add_prompt)
        add, clear = QPushButton("Add files…"), QPushButton("Clear")
        add.clicked.connect(self._add_dialog)
        clear.clicked.connect(self.files.clear)
        buttons = QHBoxLayout()
        buttons.addWidget(add)
        buttons.addWidget(clear)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel(title))
        layout.addWidget(self.files)
        layout.addWidget(self.prompt)
        layout.addLayout(buttons)

    def _add_prompt(self) -> None:
        if self.prompt.text().strip():
            self.files.addItem(self.prompt.text().strip())  # a prompt may be given twice: two takes
        self.prompt.clear()

    def add(self, paths: list[str]) -> None:
        self.files.addItems([p for p in dict.fromkeys(paths) if p not in self.paths()])

    def paths(self) -> list[str]:
        return [self.files.item(i).text() for i in range(self.files.count())]

    def _add_dialog(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, self.title, "", AUDIO_FILTER)
        self.add(paths)


class ExamplesDialog(QDialog):
    """Pick clips that have a quality and clips that do not; name the knob."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("New knob from examples")
        self.positive = FileList("Clips WITH the quality (at least 2)")
        self.negative = FileList("Clips WITHOUT it (at least 2)")
        self.label = QLineEdit()
        self.label.setPlaceholderText("e.g. busier drums")
        self.method = QComboBox()
        self.method.addItems(METHODS)
        self.method.setToolTip(
            "mean-diff: robust with few clips; probe: discounts what varies inside each set; "
            "rfm: a kernel machine's most predictive direction"
        )
        sides = QHBoxLayout()
        sides.addWidget(self.positive)
        sides.addWidget(self.negative)
        form = QFormLayout()
        form.addRow("Knob name", self.label)
        form.addRow("Method", self.method)
        ok = QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        self.buttons = QDialogButtonBox(ok)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Build knob")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(sides)
        layout.addLayout(form)
        layout.addWidget(self.buttons)
        self.resize(760, 420)

    def choice(self) -> tuple[list[str], list[str], str, str]:
        """(files with, files without, method, knob name)."""
        label = self.label.text().strip() or "knob from examples"
        return self.positive.paths(), self.negative.paths(), self.method.currentText(), label
