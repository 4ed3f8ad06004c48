"""The feature browser: the SAE's catalog as a searchable, sortable table to drag onto knobs.

A model/view pair rather than a table widget: a ×32 SAE of musicgen-small has 32 768
features, and a view only asks for the rows it shows, so spectrogram thumbnails are made
for visible rows only, once each. Without a catalog the rows are feature ids alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PyQt6.QtCore import QAbstractTableModel, QSortFilterProxyModel, Qt, pyqtSignal
from PyQt6.QtGui import QImage, QPixmap
from PyQt6.QtWidgets import (
    QAbstractItemView,
    QDockWidget,
    QDoubleSpinBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from gui.knobs import feature_mime
from sae.catalog import best_label

COLUMNS = ("id", "label", "labeler", "label AUROC", "firing", "spectrogram")
THUMB_COLUMN = COLUMNS.index("spectrogram")


@dataclass(frozen=True)
class FeatureRow:
    feature: int
    label: str = ""
    labeler: str = ""
    auroc: float | None = None
    firing_rate: float | None = None
    example: Path | None = None  # the strongest example window's audio


def catalog_rows(catalog: dict | None, folder: str | None, feature_count: int) -> list[FeatureRow]:
    """One row per catalogued feature (its best-validated label first), or ids alone."""
    if catalog is None:
        return [FeatureRow(f) for f in range(feature_count)]
    rows = []
    for record in catalog.get("features", []):
        label, labeler, auroc = best_label(record)
        examples = record.get("examples") or []
        example = Path(folder) / examples[0]["audio"] if examples and folder else None
        rows.append(
            FeatureRow(
                feature=int(record["id"]),
                label=label,
                labeler=labeler,
                auroc=auroc,
                firing_rate=record.get("firing_rate"),
                example=example,
            )
        )
    return rows


def thumbnail(path: Path | None) -> QPixmap | None:
    """A spectrogram thumbnail of an example window (the browse page's, as a pixmap)."""
    if path is None or not path.is_file():
        return None
    import soundfile as sf

    from sae.browse import spectrogram_thumbnail

    try:
        audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, OSError):
        return None
    gray = np.ascontiguousarray(spectrogram_thumbnail(audio.mean(1), sr))
    image = QImage(gray.data, gray.shape[1], gray.shape[0], gray.shape[1], QImage.Format.Format_Grayscale8)
    return QPixmap.fromImage(image.copy())


class FeatureModel(QAbstractTableModel):
    def __init__(self, rows: list[FeatureRow]) -> None:
        super().__init__()
        self.rows = rows
        self._thumbs: dict[int, QPixmap | None] = {}

    def rowCount(self, parent=None) -> int:
        return 0 if parent is not None and parent.isValid() else len(self.rows)

    def columnCount(self, parent=None) -> int:
        return len(COLUMNS)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section]
        return None

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        row, column = self.rows[index.row()], index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return _display(row, column)
        if role == Qt.ItemDataRole.UserRole:  # sort key
            return _sort_key(row, column)
        if role == Qt.ItemDataRole.DecorationRole and column == THUMB_COLUMN:
            if row.feature not in self._thumbs:
                self._thumbs[row.feature] = thumbnail(row.example)
            return self._thumbs[row.feature]
        if role == Qt.ItemDataRole.ToolTipRole:
            return f"feature {row.feature}: drag onto a knob"
        return None

    def flags(self, index):
        return super().flags(index) | Qt.ItemFlag.ItemIsDragEnabled

    def mimeTypes(self) -> list[str]:
        from gui.knobs import FEATURE_MIME

        return [FEATURE_MIME]

    def mimeData(self, indexes):
        row = self.rows[indexes[0].row()]
        return feature_mime(row.feature, row.label)


def _display(row: FeatureRow, column: int) -> str | None:
    name = COLUMNS[column]
    if name == "id":
        return str(row.feature)
    if name == "label":
        return row.label
    if name == "labeler":
        return row.labeler
    if name == "label AUROC":
        return "" if row.auroc is None else f"{row.auroc:.2f}"
    if name == "firing":
        return "" if row.firing_rate is None else f"{100 * row.firing_rate:.1f} %"
    return None


def _sort_key(row: FeatureRow, column: int):
    name = COLUMNS[column]
    if name == "id":
        return row.feature
    if name == "label AUROC":
        return -1.0 if row.auroc is None else row.auroc
    if name == "firing":
        return -1.0 if row.firing_rate is None else row.firing_rate
    return (_display(row, column) or "").lower()


class FeatureFilter(QSortFilterProxyModel):
    """Text in the label or labeler (or the id), and a minimum AUROC."""

    def __init__(self) -> None:
        super().__init__()
        self.text = ""
        self.min_auroc = 0.0
        self.setSortRole(Qt.ItemDataRole.UserRole)

    def set_filter(self, text: str, min_auroc: float) -> None:
        self.text, self.min_auroc = text.strip().lower(), min_auroc
        self.invalidate()

    def filterAcceptsRow(self, source_row, source_parent) -> bool:
        row = self.sourceModel().rows[source_row]
        if self.min_auroc > 0 and (row.auroc or 0.0) < self.min_auroc:
            return False
        text = self.text
        return not text or text in row.label.lower() or text in row.labeler.lower() or text == str(row.feature)


class FeatureBrowser(QDockWidget):
    """The dock: search box, minimum AUROC, the table, and an audition button."""

    audition = pyqtSignal(int)
    assign = pyqtSignal(int, str)  # double-click: onto the first free knob

    def __init__(self) -> None:
        super().__init__("Features")
        self.setObjectName("features")
        self.search = QLineEdit()
        self.search.setPlaceholderText("search labels, labelers or an id")
        self.min_auroc = QDoubleSpinBox()
        self.min_auroc.setRange(0.0, 1.0)
        self.min_auroc.setSingleStep(0.05)
        self.min_auroc.setPrefix("label AUROC ≥ ")
        self.model = FeatureModel([])
        self.proxy = FeatureFilter()
        self.proxy.setSourceModel(self.model)
        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setDragEnabled(True)
        self.table.setDragDropMode(QAbstractItemView.DragDropMode.DragOnly)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(44)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(COLUMNS.index("label"), QHeaderView.ResizeMode.Stretch)
        self.table.setIconSize(QPixmap(96, 40).size())
        self.note = QLabel()
        self.note.setWordWrap(True)
        self.note.setStyleSheet("color: #888")
        self.play = QPushButton("Audition selected")
        self.play.setToolTip("Play the feature's strongest example window")
        top = QHBoxLayout()
        top.addWidget(self.search, 1)
        top.addWidget(self.min_auroc)
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.addLayout(top)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.note)
        layout.addWidget(self.play)
        self.setWidget(body)
        self.search.textChanged.connect(self._refilter)
        self.min_auroc.valueChanged.connect(self._refilter)
        self.play.clicked.connect(self._audition_selected)
        self.table.doubleClicked.connect(self._double_clicked)

    def set_rows(self, rows: list[FeatureRow], note: str = "") -> None:
        self.model.beginResetModel()
        self.model.rows = rows
        self.model._thumbs.clear()
        self.model.endResetModel()
        self.table.sortByColumn(COLUMNS.index("label AUROC"), Qt.SortOrder.DescendingOrder)
        self.note.setText(note or f"{len(rows)} features; drag one onto a knob")

    def visible_features(self) -> list[int]:
        return [self._row_at(r).feature for r in range(self.proxy.rowCount())]

    def _row_at(self, proxy_row: int) -> FeatureRow:
        return self.model.rows[self.proxy.mapToSource(self.proxy.index(proxy_row, 0)).row()]

    def _refilter(self) -> None:
        self.proxy.set_filter(self.search.text(), self.min_auroc.value())

    def _selected(self) -> FeatureRow | None:
        rows = self.table.selectionModel().selectedRows()
        return self._row_at(rows[0].row()) if rows else None

    def _audition_selected(self) -> None:
        row = self._selected()
        if row is not None:
            self.audition.emit(row.feature)

    def _double_clicked(self, index) -> None:
        row = self._row_at(index.row())
        self.assign.emit(row.feature, row.label)
