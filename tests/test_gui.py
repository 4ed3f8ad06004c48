"""The desktop window, offscreen: knobs, browser, presets, MIDI learn, OSC feedback, failures."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mido
import numpy as np
import pytest
from conftest import alive_features
from PyQt6.QtCore import QMimeData, QPointF, QSettings, Qt
from PyQt6.QtGui import QDropEvent, QImage

from cli.main import main
from engine.wavfile import audio_info
from gui.knobs import STEPS, feature_mime
from gui.session import Controllers, SessionSpec
from gui.window import MainWindow
from sae.catalog import CATALOG_FILE, FORMAT

LOAD_MS = 60_000


@pytest.fixture()
def labelled_sae(tiny_sae_dir, tiny_sae, tmp_path):
    """The tiny SAE with a small hand-written catalog: two labelled features."""
    folder = tmp_path / "sae"
    shutil.copytree(tiny_sae_dir, folder)
    f1, f2 = alive_features(tiny_sae)
    records = [
        {"id": f1, "firing_rate": 0.1, "labels": {}, "examples": [],
         "validation": {"descriptors": {"label": "bright timbre", "scorer": "descriptors", "auroc": 0.93}}},
        {"id": f2, "firing_rate": 0.2, "labels": {"clap": [{"label": "slow tempo", "score": 0.3}]}, "examples": []},
    ]  # fmt: skip
    (folder / CATALOG_FILE).write_text(json.dumps({"format": FORMAT, "features": records}))
    return folder


def _window(qtbot, tmp_path, sae=None, attach=None, model="tiny") -> MainWindow:
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    spec = SessionSpec(model=model, sae=str(sae) if sae else None, no_audio=True, knobs=4)
    window = MainWindow(spec, attach, settings)
    qtbot.addWidget(window)
    window.show()
    window.load(spec)
    qtbot.waitUntil(lambda: not window.loading, timeout=LOAD_MS)
    return window


def _drop(widget, mime: QMimeData) -> None:
    event = QDropEvent(
        QPointF(10, 10),
        Qt.DropAction.CopyAction,
        mime,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    widget.dropEvent(event)


def test_turning_a_dial_writes_the_bus_and_the_status_follows(qtbot, tmp_path, tiny_sae_dir):
    window = _window(qtbot, tmp_path, tiny_sae_dir)
    bus = window.session.bus
    window.bank.knobs[1].dial.setValue(STEPS // 4)
    assert bus.snapshot().knobs[1].value == pytest.approx(0.25)
    qtbot.waitUntil(lambda: window.session.host.status().position_s > 0.5, timeout=LOAD_MS)
    qtbot.waitUntil(lambda: "real time" in window.status_fields["speed"].text(), timeout=5000)
    assert window.status_fields["underruns"].text().isdigit()
    window.bank.knobs[1].dial.mouseDoubleClickEvent(None)  # double-click resets
    assert bus.snapshot().knobs[1].value == 0.0
    window.close()


def test_dragging_a_browser_row_onto_a_knob_assigns_and_relabels_it(qtbot, tmp_path, labelled_sae, tiny_sae):
    window = _window(qtbot, tmp_path, labelled_sae)
    browser = window.browser
    assert browser.model.rowCount() == 2
    browser.search.setText("bright")
    assert browser.visible_features() == [alive_features(tiny_sae)[0]]
    source = browser.proxy.mapToSource(browser.proxy.index(0, 0))
    mime = browser.model.mimeData([source])
    _drop(window.bank.knobs[2], mime)
    knob = window.session.bus.snapshot().knobs[2]
    assert knob.features == ((alive_features(tiny_sae)[0], 1.0),)
    qtbot.waitUntil(lambda: window.bank.knobs[2].title.text() == "bright timbre", timeout=5000)
    browser.search.setText("")
    browser.min_auroc.setValue(0.9)  # only validated features
    assert len(browser.visible_features()) == 1
    window.close()


def test_a_steer_given_at_start_shows_on_a_bipolar_knob(qtbot, tmp_path, labelled_sae, tiny_sae):
    f1, _ = alive_features(tiny_sae)
    window = _window(qtbot, tmp_path, labelled_sae)
    window.steer_on_knob(f1, -1.5)
    knob = window.session.bus.snapshot().knobs[0]
    assert knob.features == ((f1, 1.0),) and (knob.lo, knob.hi) == (-3.0, 3.0)
    assert knob.alpha() == pytest.approx(-1.5) and window.session.bus.snapshot().alphas()[f1] == pytest.approx(-1.5)
    widget = window.bank.knobs[0]
    qtbot.waitUntil(lambda: "α -1.50" in widget.value.text(), timeout=5000)
    assert widget.title.text() == f"bright timbre #{f1}" and "0 at 50%" in widget.detail.text()
    widget.dial.mouseDoubleClickEvent(None)  # double-click: no push, the middle of a bipolar knob
    assert window.session.bus.snapshot().knobs[0].alpha() == pytest.approx(0.0, abs=1e-3)
    window.close()


def test_a_dropped_feature_the_sae_lacks_is_refused_and_changes_nothing(qtbot, tmp_path, tiny_sae_dir):
    window = _window(qtbot, tmp_path, tiny_sae_dir)
    before = window.session.bus.snapshot().knobs
    _drop(window.bank.knobs[0], feature_mime(10**6, "nonsense"))
    assert window.session.bus.snapshot().knobs == before
    assert "does not exist" in window.errors[-1]
    window.close()


def _preset(path, sae, knobs, **extra) -> str:
    data = {"format": "mgsteer-preset/1", "name": "t", "model": "tiny", "sae": str(sae), "knobs": knobs, **extra}
    path.write_text(json.dumps(data))
    return str(path)


def test_loading_a_preset_updates_every_knob(qtbot, tmp_path, tiny_sae_dir, tiny_sae):
    window = _window(qtbot, tmp_path, tiny_sae_dir)
    f1, f2 = alive_features(tiny_sae)
    knobs = [
        {"label": f"k{i}", "features": [[f1 if i % 2 else f2, 1.0]], "range": [0, 2], "curve": "exp", "value": i / 4}
        for i in range(4)
    ]
    window.prompt.setFocus()  # focused but untouched, as at start-up: the preset's prompt must still show
    assert window.open_preset(_preset(tmp_path / "p.json", tiny_sae_dir, knobs, prompt="new tune"))
    qtbot.waitUntil(lambda: [k.title.text() for k in window.bank.knobs] == ["k0", "k1", "k2", "k3"], timeout=5000)
    qtbot.waitUntil(lambda: window.prompt.text() == "new tune", timeout=5000)
    assert [k.dial.value() for k in window.bank.knobs] == [round(i / 4 * STEPS) for i in range(4)]
    assert all("exp" in k.detail.text() for k in window.bank.knobs)
    assert window.session.bus.snapshot().prompt == "new tune"
    assert window.settings.value("recent", [], type=list)[0] == str(tmp_path / "p.json")
    window.prompt.setText("half-typed")  # the musician's own text is never overwritten
    window.prompt.setModified(True)
    window.session.bus.set_prompt("from OSC")
    qtbot.wait(300)
    assert window.prompt.text() == "half-typed"
    window.close()


def test_a_bad_preset_changes_no_knob_and_says_why(qtbot, tmp_path, tiny_sae_dir, tiny_sae):
    window = _window(qtbot, tmp_path, tiny_sae_dir)
    f = alive_features(tiny_sae, 1)[0]
    window.session.bus.configure_knob(0, label="kept", features=[(f, 1.0)])
    window.session.bus.set_knob(0, 0.5)
    qtbot.waitUntil(lambda: window.bank.knobs[0].title.text() == "kept", timeout=5000)
    before = window.session.bus.snapshot().knobs
    bad = [{"label": "x", "features": [[f, 1.0]], "range": [0, 1], "curve": "wobbly", "value": 0.2}]
    assert not window.open_preset(_preset(tmp_path / "bad.json", tiny_sae_dir, bad))
    assert "curve" in window.errors[-1]
    assert window.session.bus.snapshot().knobs == before
    assert window.bank.knobs[0].title.text() == "kept" and window.bank.knobs[0].dial.value() == STEPS // 2
    window.close()


def test_midi_learn_binds_the_next_cc_through_the_midi_handler(qtbot, tmp_path, tiny_sae_dir):
    from midi.mapping import MidiController

    controllers = {}

    def attach(session):
        controllers["midi"] = MidiController(session.bus)
        return Controllers(midi=controllers["midi"])

    window = _window(qtbot, tmp_path, tiny_sae_dir, attach=attach)
    window.bank.knobs[3].learn.click()
    assert window.bank.knobs[3].learn.text() == "move a control…"
    controllers["midi"].handle(mido.Message("control_change", channel=0, control=21, value=127))
    assert window.session.bus.snapshot().knobs[3].value == pytest.approx(1.0)
    qtbot.waitUntil(lambda: window.bank.knobs[3].learn.text() == "CC 21 (ch 1)", timeout=5000)
    qtbot.waitUntil(lambda: window.bank.knobs[3].dial.value() == STEPS, timeout=5000)
    window.close()


def test_midi_learn_without_midi_says_how_to_turn_it_on(qtbot, tmp_path, tiny_sae_dir):
    window = _window(qtbot, tmp_path, tiny_sae_dir)
    window.bank.knobs[0].learn.click()
    assert "--midi" in window.errors[-1]
    window.close()


def test_an_osc_message_moves_the_dial_on_screen(qtbot, tmp_path, tiny_sae_dir):
    from pythonosc.udp_client import SimpleUDPClient

    from osc.server import OscServer

    servers = []

    def attach(session):
        server = OscServer(session.bus, "127.0.0.1", 0)
        server.start()
        servers.append(server)
        return Controllers(describe=lambda: f"OSC {server.address[1]}", close=server.stop)

    window = _window(qtbot, tmp_path, tiny_sae_dir, attach=attach)
    SimpleUDPClient("127.0.0.1", servers[0].address[1]).send_message("/mgsteer/knob/2", 0.75)
    qtbot.waitUntil(lambda: window.bank.knobs[2].dial.value() == round(0.75 * STEPS), timeout=5000)
    qtbot.waitUntil(lambda: window.status_fields["controllers"].text().startswith("OSC "), timeout=5000)
    window.close()
    assert not servers[0]._running.is_set()  # closing the window stops the controllers


def _example_clips(folder: Path, kind: str, count: int) -> list[str]:
    """`count` 2-second WAVs: bright noise, or a quiet low tone, each take a little different."""
    from engine.wavfile import write_wav

    folder.mkdir(parents=True, exist_ok=True)
    rng, t = np.random.default_rng(len(kind)), np.arange(64000) / 32000
    paths = []
    for i in range(count):
        tone = 0.1 * np.sin(2 * np.pi * (110 + 10 * i) * t)
        audio = 0.5 * rng.standard_normal(t.size) if kind == "bright" else tone
        write_wav(folder / f"{kind}{i}.wav", audio.astype(np.float32), 32000)
        paths.append(str(folder / f"{kind}{i}.wav"))
    return paths


def test_a_knob_made_from_examples_lands_on_a_free_knob_and_steers(qtbot, tmp_path, tiny_sae_dir, tiny_sae):
    window = _window(qtbot, tmp_path, tiny_sae_dir)
    session, d_sae = window.session, tiny_sae.cfg.d_sae
    busy, calm = ["techno groove with a driving kick and acid bassline"] * 3, ["sad minor key cello solo"] * 3
    window.new_knob_from_examples(
        _example_clips(tmp_path / "pos", "bright", 1) + busy, _example_clips(tmp_path / "neg", "dark", 1) + calm,
        "mean-diff", "noisy",
    )  # fmt: skip
    qtbot.waitUntil(lambda: window.bank.knobs[0].title.text() == "noisy" or bool(window.errors), timeout=LOAD_MS)
    assert not window.errors, window.errors
    knob = session.bus.snapshot().knobs[0]
    assert knob.features == ((d_sae, 1.0),) and session.sae.cfg.d_sae == d_sae + 1
    assert "from 4 + 4 clips" in window.statusBar().currentMessage()
    window.bank.knobs[0].dial.setValue(STEPS)  # turned up: the engine adds β·direction of the new feature
    qtbot.waitUntil(lambda: session.host.steerer._alphas.get(d_sae, 0.0) == 1.0, timeout=5000)
    direction = session.sae.sae.W_dec[d_sae]
    assert float(direction.norm()) == pytest.approx(1.0, rel=1e-4)
    saved = next((Path(os.environ["MGSTEER_CACHE"]) / "concepts").glob("noisy-*"))
    assert (saved / "concept.json").is_file()
    preset = json.loads(window.save_preset(str(tmp_path / "p.json")).read_text())
    assert preset["concepts"] == [str(saved.resolve())]  # the preset brings the knob back
    errors = len(window.errors)
    window.new_knob_from_examples(_example_clips(tmp_path / "one", "bright", 1), ["x", "y"], "probe", "too few")
    qtbot.waitUntil(lambda: len(window.errors) > errors, timeout=LOAD_MS)
    assert "at least 2 examples on each side" in window.errors[-1] and "\n" not in window.errors[-1]
    assert session.sae.cfg.d_sae == d_sae + 1  # nothing added


def test_a_saved_knob_from_examples_comes_back_on_a_knob_and_in_the_presets_it_saves(
    qtbot, tmp_path, tiny_sae_dir, tiny_sae
):
    import torch

    from sae.concept import build_concept, save_concept

    d, layer, d_sae = tiny_sae.cfg.d_in, tiny_sae.cfg.hook_layer, tiny_sae.cfg.d_sae
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(d, generator=gen)
    clips = [torch.randn(10, d, generator=gen) + sign * u for sign in (1, 1, -1, -1)]
    folder = save_concept(build_concept(clips[:2], clips[2:]), tmp_path / "busier", layer, "tiny")
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    spec = SessionSpec(model="tiny", sae=str(tiny_sae_dir), concepts=(str(folder),), no_audio=True, knobs=4)
    window = MainWindow(spec, None, settings)
    qtbot.addWidget(window)
    window.show()
    window.load(spec)
    qtbot.waitUntil(lambda: window.bank.knobs[0].title.text() == "busier" or bool(window.errors), timeout=LOAD_MS)
    assert not window.errors, window.errors
    assert window.session.bus.snapshot().knobs[0].features == ((d_sae, 1.0),)
    saved = window.save_preset(str(tmp_path / "with-knob.json"))
    assert json.loads(saved.read_text())["concepts"] == [str(folder.resolve())]
    window.close()


def test_the_examples_dialog_gathers_two_sides_a_name_and_a_method(qtbot):
    from gui.examples_dialog import ExamplesDialog

    dialog = ExamplesDialog()
    qtbot.addWidget(dialog)
    dialog.positive.add(["/a.wav", "/b.wav", "/a.wav"])
    dialog.negative.add(["/c.wav"])
    dialog.negative.prompt.setText("slow cello ")
    dialog.negative.prompt.returnPressed.emit()
    dialog.method.setCurrentText("probe")
    assert dialog.choice() == (["/a.wav", "/b.wav"], ["/c.wav", "slow cello"], "probe", "knob from examples")
    dialog.label.setText(" drums ")
    assert dialog.choice()[3] == "drums"


def test_examples_are_files_or_prompts_and_a_missing_file_is_one_line(tmp_path):
    from engine.errors import MgsteerError
    from gui.session import split_examples

    clip = _example_clips(tmp_path, "dark", 1)[0]
    assert split_examples([clip, "slow cello"]) == ([Path(clip)], ["slow cello"])
    with pytest.raises(MgsteerError, match=r"example 'gone\.wav' is not a file"):
        split_examples(["gone.wav"])
    with pytest.raises(MgsteerError, match="an example prompt"):
        split_examples(["   "])


def test_the_window_survives_a_model_that_fails_to_load(qtbot, tmp_path, tiny_sae_dir):
    window = _window(qtbot, tmp_path, model=str(tmp_path / "no-such-model"))
    assert window.session is None and "could not load" in window.errors[-1]
    window.bank.knobs[0].dial.setValue(10)  # no session: an error line, no crash
    assert "no model" in window.errors[-1]
    spec = SessionSpec(model="tiny", sae=str(tiny_sae_dir), no_audio=True, knobs=4, halves="cond")
    window.load(spec)  # and another model loads fine
    qtbot.waitUntil(lambda: window.session is not None, timeout=LOAD_MS)
    assert window.session.host.config.halves == "cond"  # its knobs steer the halves the spec names
    saved = json.loads(window.save_preset(str(tmp_path / "cond.json")).read_text())
    assert saved["halves"] == "cond"  # and a preset saved from it says so
    both = tmp_path / "both.json"
    both.write_text(json.dumps({**saved, "halves": "both"}))
    assert window.open_preset(str(both))  # a preset on the other halves reopens the session on them
    qtbot.waitUntil(lambda: window.session is not None and window.session.host.config.halves == "both", timeout=LOAD_MS)
    window.close()


def test_an_engine_error_shows_in_the_window(qtbot, tmp_path, tiny_sae_dir):
    window = _window(qtbot, tmp_path, tiny_sae_dir)
    window.session.host.error = RuntimeError("device lost")
    qtbot.waitUntil(lambda: any("device lost" in e for e in window.errors), timeout=5000)
    assert window.isVisible()
    window.close()


def test_whatever_a_slot_throws_is_shown_and_the_window_and_music_go_on(qtbot, tmp_path, labelled_sae, tiny_sae):
    """PyQt6 aborts the process on an exception that leaves a slot: one guard catches them all."""
    from PyQt6.QtCore import QTimer

    window = _window(qtbot, tmp_path, labelled_sae)
    host = window.session.host

    def broken_slot():
        raise ZeroDivisionError("a bug in a slot")

    QTimer.singleShot(0, broken_slot)
    qtbot.waitUntil(lambda: any("ZeroDivisionError: a bug in a slot" in e for e in window.errors), timeout=5000)
    # Files that used to abort the window: a preset keyed "²", one nested 100 000 deep.
    square = _preset(tmp_path / "square.json", labelled_sae, [], features={"²": 1.0})
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    assert not window.open_preset(square) and "plain decimal number" in window.errors[-1]
    assert not window.open_preset(str(tmp_path / "deep.json")) and "nests deeper" in window.errors[-1]
    # Audition of a damaged example clip.
    f1 = alive_features(tiny_sae)[0]
    catalog = json.loads((labelled_sae / CATALOG_FILE).read_text())
    catalog["features"][0]["examples"] = [{"audio": "examples/0/0.ogg"}]
    (labelled_sae / "examples" / "0").mkdir(parents=True)
    (labelled_sae / "examples" / "0" / "0.ogg").write_bytes(b"OggS\x00 truncated")
    (labelled_sae / CATALOG_FILE).write_text(json.dumps(catalog))
    window.session.catalog = catalog
    window.audition(f1)
    assert "cannot read audio file" in window.errors[-1]
    position = host.status().position_s
    qtbot.waitUntil(lambda: host.status().position_s > position + 0.3, timeout=30_000)
    assert window.isVisible() and host.alive and host.error is None
    window.bank.knobs[0].dial.setValue(10)  # still usable
    window.close()
    assert sys.excepthook is not window.guard  # the guard leaves with the window


def test_a_recording_that_fills_the_disk_is_said_in_the_window_and_the_music_goes_on(qtbot, tmp_path):
    import errno

    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    spec = SessionSpec(model="tiny", no_audio=True, knobs=4, record=str(tmp_path / "set.wav"))
    window = MainWindow(spec, None, settings)
    qtbot.addWidget(window)
    window.show()
    window.load(spec)
    qtbot.waitUntil(lambda: not window.loading, timeout=LOAD_MS)
    host = window.session.host

    def full(block):
        raise OSError(errno.ENOSPC, "No space left on device")

    host.recorder._file.write = full
    qtbot.waitUntil(lambda: any("the disk is full; the music goes on" in e for e in window.errors), timeout=30_000)
    position = host.status().position_s
    qtbot.waitUntil(lambda: host.status().position_s > position + 0.3, timeout=30_000)
    assert host.alive and host.error is None
    assert sum("the disk is full" in e for e in window.errors) == 1  # said once, not at every refresh
    window.close()


def test_a_melody_model_shows_what_it_follows_and_follow_now_writes_the_bus(qtbot, tmp_path):
    from test_melody import live_input, tone

    from engine.wavfile import write_wav

    write_wav(tmp_path / "a.wav", tone(440.0, 1.5), 32000)
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    spec = SessionSpec(model="tiny-melody", no_audio=True, knobs=4, melody=str(tmp_path / "a.wav"))
    window = MainWindow(spec, None, settings)
    qtbot.addWidget(window)
    window.show()
    window.load(spec)
    qtbot.waitUntil(lambda: not window.loading, timeout=LOAD_MS)
    panel = window.melody
    assert panel.isVisible() and "a.wav" in panel.title.text() and not panel.follow_button.isVisible()
    assert int(np.argmax(panel.chroma.shares)) == 9  # A
    live, stream = live_input()
    panel.set_source(live, "test input")
    stream.feed(tone(261.63, 1.0))
    live.refresh()
    panel.refresh()
    assert panel.follow_button.isVisible() and int(np.argmax(panel.chroma.shares)) == 0  # C
    assert "dBFS" in panel.level.text()
    panel.follow_button.click()
    assert window.session.bus.snapshot().follow_count == 1
    window.close()


@pytest.mark.parametrize("model", ["tiny", "tiny-stereo"])
def test_a_text_model_plays_and_shows_no_melody_panel(qtbot, tmp_path, model):
    window = _window(qtbot, tmp_path, model=model)
    assert not window.melody.isVisible()
    qtbot.waitUntil(lambda: window.session.host.status().position_s > 0.3, timeout=LOAD_MS)
    assert window.session.host.sink.channels == window.session.lm.audio_channels
    window.close()


def test_play_gui_plays_and_exits(capsys):
    assert main(["play", "--gui", "--model", "tiny", "--no-audio", "--seconds", "2"]) == 0


def test_gui_screenshot_writes_a_png_of_the_window(tmp_path, tiny_sae_dir):
    shot = tmp_path / "out.png"
    argv = ["gui", "--model", "tiny", "--sae", str(tiny_sae_dir), "--no-audio", "--seconds", "1",
            "--screenshot", str(shot)]  # fmt: skip
    assert main(argv) == 0
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_scripted_window_leaves_no_timer_running_when_it_returns(qtbot, monkeypatch):
    """A scripted run's timer kept firing into later event loops, on a closed window (a
    segmentation fault in a later test): nothing of the window may still run afterwards."""
    from PyQt6.QtCore import QTimer

    import gui.app

    made = []

    class Watched(MainWindow):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(gui.app, "MainWindow", Watched)
    assert gui.app.run_app(SessionSpec(model="tiny", no_audio=True), seconds=0.5) is None
    (window,) = made
    assert not window.isVisible() and window.session is None
    assert [t for t in window.findChildren(QTimer) if t.isActive()] == []
    qtbot.wait(300)  # later event loops: nothing of the closed window runs, nothing crashes


def test_gui_refuses_console_only_flags_and_a_bad_screenshot_path(capsys, tmp_path):
    assert main(["play", "--gui", "--model", "tiny", "--no-audio", "--meters", "1"]) == 2
    assert "--meters is not used with the window: it meters the knobs' features itself" in capsys.readouterr().err
    assert main(["gui", "--model", "tiny", "--no-audio", "--screenshot", str(tmp_path / "x.png")]) == 2
    assert "--screenshot needs --seconds" in capsys.readouterr().err
    assert main(["play", "--model", "tiny", "--no-audio", "--screenshot", str(tmp_path / "x.png")]) == 2
    assert "needs --gui" in capsys.readouterr().err


def test_the_window_plays_with_the_players_settings_and_records(tmp_path, monkeypatch):
    """`play --gui` takes every engine flag `play` takes: none is dropped without a word."""
    from gui import app as app_module

    seen = {}
    real = app_module.run_app

    def spy(spec, *args, **kwargs):
        seen["spec"] = spec
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(app_module, "run_app", spy)
    out = tmp_path / "rec.wav"
    argv = ["play", "--gui", "--model", "tiny", "--no-audio", "--seconds", "2", "--out", str(out), "--chunk", "4",
            "--smoothing-ms", "120", "--guidance", "2", "--top-k", "50", "--temperature", "0.9", "--seed", "7",
            "--latency", "low"]  # fmt: skip
    assert main(argv) == 0
    spec = seen["spec"]
    assert (spec.chunk, spec.smoothing_ms, spec.latency) == (4, 120.0, "low")
    assert (spec.sampling.guidance, spec.sampling.top_k, spec.sampling.temperature, spec.sampling.seed) == (
        2,
        50,
        0.9,
        7,
    )
    assert audio_info(out)[0] == pytest.approx(2.0, abs=0.01)


def test_without_pyqt_the_gui_command_says_what_to_install(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "gui.app", None)  # as if PyQt6 were missing
    assert main(["gui", "--model", "tiny", "--no-audio", "--seconds", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs PyQt6" in err[0] and "[gui]" in err[0]


@pytest.fixture()
def x_display():
    """A real X server (Xvfb, which `make system` installs): the xcb platform plugin, as on a desktop."""
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed (`make system` adds it as root)")
    server = subprocess.Popen(["Xvfb", "-displayfd", "1", "-screen", "0", "1280x900x24", "-nolisten", "tcp"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
    display = server.stdout.readline().decode().strip()
    yield f":{display}"
    server.terminate()
    server.wait(timeout=5)


def test_the_window_opens_on_a_real_x_display(x_display, tmp_path, tiny_sae_dir):
    """Qt's xcb plugin loads (its libraries are installed) and the window draws on the display."""
    shot = tmp_path / "x.png"
    argv = ["gui", "--model", "tiny", "--sae", str(tiny_sae_dir), "--no-audio", "--seconds", "1",
            "--screenshot", str(shot)]  # fmt: skip
    env = dict(os.environ, DISPLAY=x_display, QT_QPA_PLATFORM="xcb")
    code = f"from cli.main import main; raise SystemExit(main({argv!r}))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    image = QImage(str(shot))
    assert image.width() > 400 and image.height() > 300
    colours = {image.pixel(x, y) for x in range(0, image.width(), 37) for y in range(0, image.height(), 29)}
    assert len(colours) > 20  # drawn, not a blank rectangle


def test_the_spectrogram_draws_a_tone_in_its_band(qtbot):
    from gui.scope import BANDS, FFT, Spectrogram

    scope = Spectrogram(32000, columns=50)
    qtbot.addWidget(scope)
    t = np.arange(FFT * 20 + 100) / 32000
    scope.feed((0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32))
    assert len(scope._pending) == 100  # whole frames only; the rest waits for more
    pixels = np.frombuffer(scope.image.bits().asarray(scope.image.sizeInBytes()), dtype=np.uint8)
    newest = pixels.reshape(BANDS, scope.image.bytesPerLine())[:, 49]
    edges = np.geomspace(40, 16000, BANDS + 1)
    band = int(np.searchsorted(edges, 1000) - 1)
    assert BANDS - 1 - int(newest.argmax()) == band  # low frequencies at the bottom
    assert newest.max() > 200 and np.median(newest) < 100
