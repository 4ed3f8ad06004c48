"""The main window: knob bank, feature browser, prompt and transport, presets, status and scope.

The window only writes to the parameter bus and reads what the engine publishes: knob and
meter feedback arrives from the bus's own thread (≤ 30 Hz) as a queued Qt signal, status is
polled at 4 Hz, and the scope drains the host's latest blocks at 20 Hz. Loading runs on a
worker thread, so the window never freezes; a failed load or an engine error is shown in the
window, which stays usable.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from PyQt6.QtCore import QObject, QSettings, Qt, QThread, QTimer, pyqtSignal
from PyQt6.QtGui import QAction, QKeySequence
from PyQt6.QtWidgets import (
    QFileDialog,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from engine.errors import MgsteerError
from engine.params import Feedback, Knob
from engine.presets import apply_preset, capture_preset, load_preset, save_preset
from engine.wavfile import read_audio
from gui.browser import FeatureBrowser, catalog_rows
from gui.examples_dialog import ExamplesDialog
from gui.knobs import KnobBank
from gui.melody_panel import MelodyPanel
from gui.scope import LevelMeter, Spectrogram
from gui.session import (
    Controllers,
    ExampleKnob,
    Session,
    SessionSpec,
    example_audio_path,
    knob_from_examples,
    open_session,
)

Attach = Callable[[Session], Controllers]
RECENT = 8


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class Loader(QThread):
    """Opens a session off the GUI thread."""

    progress = pyqtSignal(str)
    loaded = pyqtSignal(object)
    failed = pyqtSignal(str)

    def __init__(self, spec: SessionSpec) -> None:
        super().__init__()
        self.spec = spec

    def run(self) -> None:
        try:
            self.loaded.emit(open_session(self.spec, self.progress.emit))
        except Exception as exc:  # any failure is shown, and the window goes on
            self.failed.emit(f"could not load {self.spec.model}: {one_line(exc)}")


class ExampleBuilder(QThread):
    """Builds a knob from examples off the GUI thread (gui.session.knob_from_examples)."""

    progress = pyqtSignal(str)
    built = pyqtSignal(object)
    failed = pyqtSignal(str)

    def __init__(self, session: Session, positive: list[str], negative: list[str], method: str, label: str) -> None:
        super().__init__()
        self.args = (session, positive, negative, method, label)

    def run(self) -> None:
        try:
            self.built.emit(knob_from_examples(*self.args, progress=self.progress.emit))
        except Exception as exc:  # any failure is shown, and the window and the music go on
            self.failed.emit(f"no knob from examples: {one_line(exc)}")


class Bridge(QObject):
    """Bus feedback (bus thread) → a queued signal handled on the GUI thread; so are errors
    that escaped a slot on any thread (`SlotGuard`)."""

    feedback = pyqtSignal(object)
    failed = pyqtSignal(str)


class SlotGuard:
    """One guard for every slot: an exception that leaves a slot is shown in the window.

    Why: PyQt6 aborts the process (the music with it) on an exception that leaves a slot or a
    virtual method, unless `sys.excepthook` was replaced; then it calls the hook and carries
    on. A preset, an example clip or the engine can raise anything (a file's fault is not a
    bug in the window), so the window installs this hook while it is open: the error goes to
    the window by a queued signal (safe from any thread), its traceback to stderr for a bug
    report, and the window and the music go on."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.previous = sys.excepthook

    def __call__(self, kind, exc, tb) -> None:
        if issubclass(kind, KeyboardInterrupt):
            self.previous(kind, exc, tb)
            return
        traceback.print_exception(kind, exc, tb, file=sys.stderr)
        self.bridge.failed.emit(f"{kind.__name__}: {one_line(exc)}" if not isinstance(exc, MgsteerError) else str(exc))

    def install(self) -> None:
        sys.excepthook = self

    def remove(self) -> None:
        if sys.excepthook is self:
            sys.excepthook = self.previous


# The window shares its process with the generation thread. CPython hands the GIL from the
# thread holding it (here: painting, feedback) to one waiting for it (generation, between two
# torch calls) only every switch interval, 5 ms by default: a quarter of a 20 ms frame, paid
# many times a step. A shorter interval gives it back sooner, at a small cost in switches.
GIL_SWITCH_S = 0.0005


class MainWindow(QMainWindow):
    installed = pyqtSignal(object)  # a session was loaded and started

    def __init__(self, spec: SessionSpec, attach: Attach | None = None, settings: QSettings | None = None) -> None:
        super().__init__()
        sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_S))
        self.spec = spec
        self.attach = attach
        self.settings = settings or QSettings("mgsteer", "mgsteer")
        self.session: Session | None = None
        self.errors: list[str] = []  # every error shown, newest last
        self._loader: Loader | None = None
        self._builder: ExampleBuilder | None = None
        self._loading = False
        self._unsubscribe: Callable[[], None] = lambda: None
        self._pending_preset: str | None = None
        self._auditions: list = []
        self._engine_error_shown = False
        self._recording_error_shown = False
        self.bridge = Bridge()
        self.bridge.feedback.connect(self._on_feedback)
        self.bridge.failed.connect(self.show_error)
        self.guard = SlotGuard(self.bridge)
        self.guard.install()
        self.setWindowTitle("mgsteer")
        self.resize(1280, 800)
        self._build(spec.knobs)
        self._status_timer = QTimer(self, interval=250, timeout=self._refresh_status)
        self._scope_timer = QTimer(self, interval=50, timeout=self._refresh_scope)

    # ---- layout -----------------------------------------------------------------------------
    def _build(self, knob_count: int) -> None:
        self.prompt = QLineEdit()
        self.prompt.setPlaceholderText("text prompt, e.g. 80s synth pop with a driving bass")
        apply = QPushButton("Apply prompt")
        self.play_button = QPushButton("▶ Play")
        self.stop_button = QPushButton("■ Stop")
        self.reset_button = QPushButton("Reset")
        self.reset_button.setToolTip("Start the music again from the prompt")
        self.model_label = QLabel()
        self.model_label.setStyleSheet("color: #888")
        self.busy = QProgressBar()
        self.busy.setRange(0, 0)
        self.busy.setMaximumWidth(160)
        self.busy_label = QLabel()
        transport = QHBoxLayout()
        transport.addWidget(QLabel("Prompt"))
        transport.addWidget(self.prompt, 1)
        for widget in (apply, self.play_button, self.stop_button, self.reset_button):
            transport.addWidget(widget)
        info = QHBoxLayout()
        info.addWidget(self.model_label, 1)
        info.addWidget(self.busy_label)
        info.addWidget(self.busy)

        self.bank = KnobBank(knob_count)
        for knob in self.bank.knobs:
            knob.turned.connect(self._turned)
            knob.assigned.connect(self._assigned)
            knob.cleared.connect(lambda i: self._configure(i, label="", features=[], lo=0.0, hi=1.0, curve="linear"))
            knob.curve_chosen.connect(lambda i, c: self._configure(i, curve=c))
            knob.range_chosen.connect(lambda i, lo, hi: self._configure(i, lo=lo, hi=hi))
            knob.learn_clicked.connect(self._learn)

        self.status_fields: dict[str, QLabel] = {}
        grid = QGridLayout()
        names = ("speed", "step", "lookahead", "underruns", "knob→sound", "re-primes", "non-finite", "controllers")
        for i, name in enumerate(names):
            label = QLabel("—")
            self.status_fields[name] = label
            grid.addWidget(QLabel(f"{name}:"), i // 2, 2 * (i % 2))
            grid.addWidget(label, i // 2, 2 * (i % 2) + 1)
        self.level = LevelMeter()
        self.spectrogram = Spectrogram()
        bottom = QHBoxLayout()
        status_box = QFrame()
        status_box.setLayout(grid)
        status_box.setMinimumWidth(440)
        bottom.addWidget(status_box)
        bottom.addWidget(self.level)
        bottom.addWidget(self.spectrogram, 1)
        self.melody = MelodyPanel()
        self.melody.follow.connect(lambda: self._bus_call("follow_melody"))

        body = QWidget()
        layout = QVBoxLayout(body)
        layout.addLayout(transport)
        layout.addLayout(info)
        layout.addWidget(self.bank, 3)
        layout.addWidget(self.melody)
        layout.addLayout(bottom, 1)
        self.setCentralWidget(body)

        self.browser = FeatureBrowser()
        self.browser.audition.connect(self.audition)
        self.browser.assign.connect(self._assign_to_free_knob)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.browser)
        self.browser.setMinimumWidth(460)

        apply.clicked.connect(self._apply_prompt)
        self.prompt.returnPressed.connect(self._apply_prompt)
        self.play_button.clicked.connect(lambda: self._bus_call("play"))
        self.stop_button.clicked.connect(lambda: self._bus_call("stop"))
        self.reset_button.clicked.connect(lambda: self._bus_call("reset"))
        self._menus()
        self._set_busy(None)

    def _menus(self) -> None:
        file = self.menuBar().addMenu("&File")
        for text, shortcut, slot in (
            ("&Open preset…", QKeySequence.StandardKey.Open, self._open_preset_dialog),
            ("&Save preset…", QKeySequence.StandardKey.Save, self._save_preset_dialog),
        ):
            action = QAction(text, self)
            action.setShortcut(shortcut)
            action.triggered.connect(slot)
            file.addAction(action)
        self.recent_menu = file.addMenu("Recent presets")
        file.addSeparator()
        file.addAction("Load &model or SAE…", self._load_dialog)
        file.addSeparator()
        file.addAction("&Quit", self.close)
        self._fill_recent()
        knobs = self.menuBar().addMenu("&Knobs")
        knobs.addAction("New knob from &examples…", self._examples_dialog)

    # ---- sessions -----------------------------------------------------------------------------
    def load(self, spec: SessionSpec) -> None:
        """Open `spec` in the background; the current session plays on until it is ready."""
        if self.loading:
            self.show_error("still loading the previous model; try again when it is ready")
            return
        self._loading = True
        self._loader = Loader(spec)
        self._loader.progress.connect(self._set_busy)
        self._loader.loaded.connect(self._install)
        self._loader.failed.connect(self._load_failed)
        self._set_busy(f"loading {spec.model} …")
        self._loader.start()

    def queue_preset(self, path: str) -> None:
        """Apply a preset once the session being loaded is ready."""
        self._pending_preset = path

    @property
    def loading(self) -> bool:
        """From `load` until the session is installed or the failure shown (the worker thread
        ends before its queued result arrives here)."""
        return self._loading

    def _install(self, session: Session) -> None:
        self._loading = False
        self._set_busy(None)
        self._retire()
        self.session, self.spec = session, session.spec
        if self.attach is not None:
            try:
                session.controllers = self.attach(session)
            except MgsteerError as exc:
                self.show_error(one_line(exc))
        self._unsubscribe = session.bus.subscribe(self.bridge.feedback.emit)
        self._show_model(session)
        self.browser.set_rows(
            catalog_rows(session.catalog, session.spec.sae, session.feature_count),
            session.catalog_note or ("" if session.sae else "no SAE loaded: start with --sae DIR to steer"),
        )
        snap = session.bus.snapshot()
        self.prompt.setText(snap.prompt)
        self._show_knobs(snap.knobs)
        for feature, name in session.concept_knobs:
            self._assign_to_free_knob(feature, name)
        self._engine_error_shown = self._recording_error_shown = False
        session.host.start()
        self._status_timer.start()
        self._scope_timer.start()
        self.spectrogram.set_rate(session.lm.sample_rate)
        self.melody.set_source(session.host.config.melody, _melody_name(session.spec))
        if self._pending_preset is not None:
            path, self._pending_preset = self._pending_preset, None
            self.open_preset(path, reload=False)
        self.installed.emit(session)

    def _show_model(self, session: Session) -> None:
        sae = session.spec.sae or (str(session.sae.path) if session.sae else "none")
        self.model_label.setText(
            f"model {session.lm.spec} on {session.lm.device.type} · SAE {sae}"
            + (f" (layer {session.sae.cfg.hook_layer}, {session.feature_count} features)" if session.sae else "")
        )

    def _load_failed(self, message: str) -> None:
        self._loading = False
        self._set_busy(None)
        self._pending_preset = None
        self.show_error(message)

    def _retire(self) -> None:
        self._unsubscribe()
        self._unsubscribe = lambda: None
        if self.session is not None:
            self.session.close()
            self.session = None

    def _set_busy(self, text: str | None) -> None:
        self.busy.setVisible(text is not None)
        self.busy_label.setText(text or "")

    # ---- knobs → bus ------------------------------------------------------------------------
    def _bus_call(self, name: str, *args):
        if self.session is None:
            self.show_error("no model is loaded yet")
            return None
        try:
            return getattr(self.session.bus, name)(*args)
        except MgsteerError as exc:
            self.show_error(one_line(exc))
            return None

    def _turned(self, index: int, value: float) -> None:
        self._bus_call("set_knob", index, value)

    def _configure(self, index: int, **changes) -> None:
        if self.session is None:
            self.show_error("no model is loaded yet")
            return
        knob: Knob = self.session.bus.snapshot().knobs[index]
        settings = {"label": knob.label, "features": list(knob.features), "lo": knob.lo, "hi": knob.hi}
        settings["curve"] = knob.curve
        settings.update(changes)
        try:
            self.session.bus.configure_knob(index, **settings)
        except MgsteerError as exc:
            self.show_error(one_line(exc))

    def _assigned(self, index: int, feature: int, label: str) -> None:
        if self.session is None or self.session.sae is None:
            self.show_error("no SAE is loaded: features need one (--sae DIR)")
            return
        if not 0 <= feature < self.session.feature_count:
            self.show_error(
                f"feature {feature} does not exist: this SAE has features 0–{self.session.feature_count - 1}"
            )
            return
        self._configure(index, label=label or f"feature {feature}", features=[(feature, 1.0)])

    def _assign_to_free_knob(self, feature: int, label: str) -> None:
        if self.session is None:
            return
        knobs = self.session.bus.snapshot().knobs
        free = next((i for i, k in enumerate(knobs) if not k.features), None)
        if free is None:
            self.show_error("every knob has a feature: drop this one on a knob to replace its feature")
            return
        self._assigned(free, feature, label)

    def steer_on_knob(self, feature: int, alpha: float) -> None:
        """A strength given at start (`--steer F=A`) on the first free knob, so it shows and can
        be turned: labelled from the catalog, bipolar around it (±2|α|, at least ±1)."""
        if self.session is None:
            return
        knobs = self.session.bus.snapshot().knobs
        free = next((i for i, k in enumerate(knobs) if not k.features), None)
        if free is None or not 0 <= feature < self.session.feature_count:
            self._bus_call("set_feature", feature, alpha)  # refused in one line if it does not exist
            if free is None:
                self.statusBar().showMessage(f"feature {feature} at α {alpha:+g}: no free knob to show it on")
            return
        label = next((r.label for r in self.browser.model.rows if r.feature == feature and r.label), "")
        reach = max(1.0, 2 * abs(alpha))
        self._configure(free, label=f"{label or 'feature'} #{feature}", features=[(feature, 1.0)], lo=-reach, hi=reach)
        self._bus_call("set_knob", free, self.session.bus.snapshot().knobs[free].value_for(alpha))

    def _examples_dialog(self) -> None:
        dialog = ExamplesDialog(self)
        if dialog.exec():
            self.new_knob_from_examples(*dialog.choice())

    def new_knob_from_examples(self, positive: list[str], negative: list[str], method: str, label: str) -> None:
        """Build a concept from the two sets of clips on a worker thread (the music plays on),
        add it to the SAE as one more feature and put it on the first free knob."""
        if self.session is None or self.session.sae is None:
            self.show_error("no SAE is loaded: a knob from examples is added to one (start with --sae DIR)")
            return
        if self._builder is not None and self._builder.isRunning():
            self.show_error("a knob from examples is still being built; try again when it is ready")
            return
        self._builder = ExampleBuilder(self.session, positive, negative, method, label)
        self._builder.progress.connect(self._set_busy)
        self._builder.built.connect(self._example_knob_built)
        self._builder.failed.connect(lambda message: (self._set_busy(None), self.show_error(message)))
        self._set_busy(f"building '{label}' from {len(positive)} + {len(negative)} clips …")
        self._builder.start()

    def _example_knob_built(self, knob: ExampleKnob) -> None:
        self._set_busy(None)
        if self.session is not None:
            self._show_model(self.session)
        self._assign_to_free_knob(knob.feature, knob.label)
        self.statusBar().showMessage(
            f"knob '{knob.label}' (feature {knob.feature}) from {knob.positive_clips} + {knob.negative_clips} clips "
            f"in {knob.seconds:.0f} s, held-out AUROC {knob.heldout_auroc:.2f}; saved as {knob.folder}",
            15000,
        )

    def _learn(self, index: int) -> None:
        midi = self.session.controllers.midi if self.session is not None else None
        if midi is None:
            self.show_error("MIDI is off: start with --midi to learn controllers")
            return
        midi.learn(index)
        self.bank.knobs[index].show_binding("move a control…")

    def _apply_prompt(self) -> None:
        text = self.prompt.text()
        self._bus_call("set_prompt", text)
        if self.session is not None and self.session.bus.snapshot().prompt == text:
            self.prompt.setModified(False)  # taken: what the bus says next may show again

    # ---- engine → window ----------------------------------------------------------------------
    def _on_feedback(self, feedback: Feedback) -> None:
        if feedback.knobs is not None:
            self._show_knobs(feedback.knobs)
        if feedback.meters is not None:
            self._show_meters(feedback.meters)
        # the bus's prompt (a preset's, OSC's) shows unless the musician is typing a new one:
        # a focused but untouched field (as at start-up) must not keep showing a stale prompt
        if feedback.prompt is not None and not self.prompt.isModified():
            self.prompt.setText(feedback.prompt)

    def _show_knobs(self, knobs: tuple[Knob, ...]) -> None:
        for widget, knob in zip(self.bank.knobs, knobs, strict=False):
            widget.show_knob(knob)

    def _show_meters(self, meters) -> None:
        if self.session is None or self.session.sae is None:
            return
        beta = self.session.sae.require_stats().max_activation
        for widget in self.bank.knobs:
            levels = [meters[f] / max(float(beta[f]), 1e-6) for f, _ in widget.knob.features if f in meters]
            widget.meter.set_level(max(levels, default=0.0))

    def _refresh_status(self) -> None:
        session = self.session
        if session is None:
            return
        host = session.host
        if host.error is not None and not self._engine_error_shown:
            self._engine_error_shown = True
            self.show_error(f"generation stopped: {one_line(host.error)} (load a model or preset to go on)")
        st = host.status()
        if st.recording and not self._recording_error_shown:
            self._recording_error_shown = True
            self.show_error(st.recording)
        latency = "n/a" if st.latency_ms_p50 is None else f"{st.latency_ms_p50:.0f}/{st.latency_ms_p95:.0f} ms p50/p95"
        values = {
            "speed": f"{st.x_realtime:.2f}× real time",
            "step": f"{st.step_ms_p50:.1f}/{st.step_ms_p95:.1f} ms p50/p95",
            "lookahead": f"{st.lookahead_ms:.0f} ms",
            "underruns": str(st.underruns),
            "knob→sound": latency,
            "re-primes": str(st.reprimes),
            "non-finite": str(st.nonfinite_steps),
            "controllers": session.controllers.describe(),
        }
        for name, text in values.items():
            self.status_fields[name].setText(text)
        midi = session.controllers.midi
        if midi is not None:
            for i, widget in enumerate(self.bank.knobs):
                binding = midi.binding_for(i)
                if binding is not None:
                    widget.show_binding(f"CC {binding.cc} (ch {binding.channel + 1})")

    def _refresh_scope(self) -> None:
        if self.session is None:
            return
        monitor = self.session.host.monitor
        blocks = []
        while monitor:
            blocks.append(monitor.popleft())
        self.melody.refresh()
        if blocks:
            audio = np.concatenate(blocks)
            self.level.feed(audio[-4096:])
            self.spectrogram.feed(audio)

    # ---- presets ------------------------------------------------------------------------------
    def open_preset(self, path: str, reload: bool = True) -> bool:
        """Validate, then apply; an invalid preset changes nothing and says why. A preset for
        another model or SAE loads that first (in the background), then applies."""
        try:
            preset = load_preset(path, None, self.spec.knobs)
        except MgsteerError as exc:
            self.show_error(one_line(exc))
            return False
        self._remember(path)
        sae = preset.sae  # made absolute by load_preset
        session = self.session
        same = (
            session is not None
            and preset.model == session.spec.model
            and _same_folder(sae, session.spec.sae)
            and [str(Path(c).resolve()) for c in session.concepts] == list(preset.concepts)
            and preset.halves == session.spec.halves
        )
        if not same and reload:
            self._pending_preset = path
            self.load(replace(self.spec, model=preset.model, sae=sae, concepts=preset.concepts, halves=preset.halves))
            return True
        try:
            preset = load_preset(path, session.feature_count if session.sae else None, self.spec.knobs)
            apply_preset(preset, session.bus)
        except MgsteerError as exc:
            self.show_error(one_line(exc))
            return False
        self.statusBar().showMessage(f"preset '{preset.name}' loaded", 4000)
        return True

    def save_preset(self, path: str, name: str | None = None) -> Path | None:
        session = self.session
        if session is None:
            self.show_error("no model is loaded yet")
            return None
        sae = str(Path(session.spec.sae).resolve()) if session.spec.sae else None
        concepts = tuple(str(Path(c).resolve()) for c in session.concepts)
        preset = capture_preset(
            session.bus, name or Path(path).stem, session.spec.model, sae, concepts=concepts,
            latency=session.spec.latency, halves=session.spec.halves,
        )  # fmt: skip
        try:
            saved = save_preset(preset, path)
        except (MgsteerError, OSError) as exc:
            self.show_error(one_line(exc))
            return None
        self._remember(str(saved))
        self.statusBar().showMessage(f"saved {saved}", 4000)
        return saved

    def _remember(self, path: str) -> None:
        recent = [p for p in self.settings.value("recent", [], type=list) if p != path]
        self.settings.setValue("recent", [path, *recent][:RECENT])
        self._fill_recent()

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        recent = self.settings.value("recent", [], type=list)
        for path in recent:
            self.recent_menu.addAction(path, lambda p=path: self.open_preset(p))
        self.recent_menu.setEnabled(bool(recent))

    def _open_preset_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open preset", "", "Presets (*.json)")
        if path:
            self.open_preset(path)

    def _save_preset_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save preset", "untitled.json", "Presets (*.json)")
        if path:
            self.save_preset(path)

    def _load_dialog(self) -> None:
        model, ok = QInputDialog.getText(self, "Load model", "Model (tiny, random-small, a hub id or a folder):",
                                         text=self.spec.model)  # fmt: skip
        if not ok or not model.strip():
            return
        sae = QFileDialog.getExistingDirectory(self, "SAE folder (cancel: none)")
        self.load(replace(self.spec, model=model.strip(), sae=sae or None))

    # ---- audition and errors ------------------------------------------------------------------
    def audition(self, feature: int) -> None:
        """Play the feature's strongest example window on its own sink, beside the stream."""
        from engine.audio import DeviceSink, NullSink

        session = self.session
        path = example_audio_path(session, feature) if session is not None else None
        if path is None:
            self.show_error(f"feature {feature} has no example window to play (label the SAE to make some)")
            return
        try:
            audio, sr = read_audio(path)
            sink = NullSink(sr) if session.spec.no_audio else DeviceSink(sr, session.spec.audio_device)
            sink.start()
            sink.write(audio.mean(1))
        except MgsteerError as exc:
            self.show_error(one_line(exc))
            return
        self._auditions.append(sink)
        seconds = len(audio) / sr
        QTimer.singleShot(int(1000 * seconds) + 300, lambda: self._end_audition(sink))
        where = "null sink" if session.spec.no_audio else "output device"
        self.statusBar().showMessage(f"auditioning feature {feature} ({seconds:.1f} s, {where})", int(1000 * seconds))

    def _end_audition(self, sink) -> None:
        sink.stop()
        self._auditions.remove(sink)

    def show_error(self, message: str) -> None:
        """Non-modal: the music and the window go on while the message is up."""
        self.errors.append(message)
        self.statusBar().showMessage(message, 10000)
        box = QMessageBox(QMessageBox.Icon.Warning, "mgsteer", message, QMessageBox.StandardButton.Ok, self)
        box.setModal(False)
        box.show()

    def closeEvent(self, event) -> None:
        self.guard.remove()
        self._status_timer.stop()
        self._scope_timer.stop()
        for worker in (self._loader, self._builder):
            if worker is not None:
                worker.wait()
        self._retire()
        for sink in self._auditions:
            sink.stop()
        super().closeEvent(event)


def _melody_name(spec: SessionSpec) -> str:
    if spec.melody:
        return spec.melody
    device = "the default input" if spec.melody_input == "" else f"input {spec.melody_input}"
    return f"the last {spec.melody_seconds:g} s of {device}"


def _same_folder(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return Path(a).resolve() == Path(b).resolve()
