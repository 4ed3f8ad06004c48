"""MIDI: the CC handler (learn, 14-bit, pick-up, relative) and real ports over JACK."""

from __future__ import annotations

import os
import re

import mido
import pytest
from conftest import wait_for

from cli.main import main
from engine.errors import MgsteerError
from engine.params import ParameterBus
from midi.mapping import Binding, MidiController, parse_bindings
from midi.ports import MidiInput, midi_backend


def cc(control, value, channel=0):
    return mido.Message("control_change", control=control, value=value, channel=channel)


def controller(*bindings):
    bus = ParameterBus(knob_count=4)
    return bus, MidiController(bus, list(bindings))


def knob(bus, i):
    return bus.snapshot().knobs[i].value


def test_jump_mode_and_ignored_messages():
    bus, ctl = controller(Binding(cc=1, knob=0))
    assert ctl.handle(cc(1, 127)) == 1.0 and knob(bus, 0) == 1.0
    ctl.handle(cc(1, 64))
    assert knob(bus, 0) == pytest.approx(64 / 127)
    ctl.handle(cc(2, 10))
    ctl.handle(mido.Message("note_on", note=60))
    assert ctl.ignored == 2 and knob(bus, 0) == pytest.approx(64 / 127)


def test_learn_binds_the_next_control():
    bus, ctl = controller()
    ctl.learn(2, mode="jump")
    assert ctl.learning
    ctl.handle(cc(21, 100, channel=3))
    assert not ctl.learning and ctl.binding_for(2) == Binding(cc=21, knob=2, channel=3)
    assert knob(bus, 2) == pytest.approx(100 / 127)
    ctl.handle(cc(21, 10, channel=0))  # another channel: not this binding
    assert knob(bus, 2) == pytest.approx(100 / 127)
    ctl.handle(cc(21, 0, channel=3))
    assert knob(bus, 2) == 0.0
    with pytest.raises(MgsteerError, match="knob"):
        ctl.learn(9)


def test_fourteen_bit_pairs():
    bus, ctl = controller(Binding(cc=7, knob=1, bits=14))
    ctl.handle(cc(7, 64))  # MSB: coarse value at once
    assert knob(bus, 1) == pytest.approx((64 << 7) / 16383)
    ctl.handle(cc(39, 127))  # LSB (cc 7 + 32): fine value
    assert knob(bus, 1) == pytest.approx(((64 << 7) | 127) / 16383)
    ctl.handle(cc(7, 127))
    ctl.handle(cc(39, 127))
    assert knob(bus, 1) == 1.0
    _, learner = controller()
    learner.learn(3, bits=14)
    learner.handle(cc(40, 5))  # learning from the LSB still binds the pair's MSB number
    assert learner.binding_for(3).cc == 8


def test_pickup_waits_for_the_control_to_reach_the_knob():
    bus, ctl = controller(Binding(cc=1, knob=0, mode="pickup"))
    bus.set_knob(0, 0.8)  # moved elsewhere (OSC, preset)
    for value in (13, 38, 89):  # 0.10 .. 0.70: below the knob, no effect
        assert ctl.handle(cc(1, value)) is None
    assert knob(bus, 0) == 0.8
    assert ctl.handle(cc(1, 110)) == pytest.approx(110 / 127)  # crossed 0.8: picked up
    ctl.handle(cc(1, 20))
    assert knob(bus, 0) == pytest.approx(20 / 127)  # now it follows
    bus.set_knob(0, 0.5)  # moved elsewhere again: must be caught again
    assert ctl.handle(cc(1, 0)) is None and knob(bus, 0) == 0.5
    assert ctl.handle(cc(1, 64)) == pytest.approx(64 / 127)


def test_relative_encoders():
    bus, ctl = controller(Binding(cc=10, knob=2, mode="relative", step=0.01))
    bus.set_knob(2, 0.5)
    ctl.handle(cc(10, 1))
    assert knob(bus, 2) == pytest.approx(0.51)
    ctl.handle(cc(10, 5))
    assert knob(bus, 2) == pytest.approx(0.56)
    ctl.handle(cc(10, 127))  # −1
    ctl.handle(cc(10, 126))  # −2
    assert knob(bus, 2) == pytest.approx(0.53)
    for _ in range(100):
        ctl.handle(cc(10, 60))
    assert knob(bus, 2) == 1.0  # clamped by the bus


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ("x", "midi.map: must be a list"),
        ([{"cc": 200, "knob": 0}], "midi.map[0].cc: must be 0..127"),
        ([{"cc": 40, "knob": 0, "bits": 14}], "needs cc 0..31"),
        ([{"cc": 1, "knob": 9}], "midi.map[0].knob: must be 0..3"),
        ([{"cc": 1, "knob": 0, "mode": "wobble"}], "midi.map[0].mode"),
        ([{"cc": 1, "knob": 0, "channel": 16}], "midi.map[0].channel"),
        ([{"cc": 1}], "needs cc and knob"),
        ([{"cc": 1, "knob": 0, "velocity": 3}], "unknown field(s) velocity"),
    ],
)
def test_bad_bindings_name_the_field(raw, needle):
    with pytest.raises(MgsteerError) as err:
        parse_bindings(raw, knob_count=4)
    assert needle in str(err.value)


def test_bundled_preset_midi_map_parses():
    from pathlib import Path

    from engine.presets import load_preset

    preset = load_preset(Path(__file__).resolve().parents[1] / "presets" / "world-demo.json")
    bindings = parse_bindings(preset.midi["map"], knob_count=8)
    assert [b.mode for b in bindings] == ["jump", "pickup"]


def test_without_a_midi_backend_one_line_and_the_engine_runs(capsys):
    if os.path.exists("/dev/snd/seq"):
        pytest.fail("this machine has an ALSA sequencer; the no-backend path needs one without")
    with pytest.raises(MgsteerError, match="no MIDI backend") as err:
        midi_backend("alsa")
    assert "\n" not in str(err.value)
    assert main(["play", "--model", "tiny", "--no-audio", "--seconds", "2", "--midi", "--midi-api", "alsa"]) == 0
    out = capsys.readouterr()
    assert "no MIDI backend" in out.out and re.search(r"underruns \d+", out.out)


def test_virtual_port_over_jack(jack_server):
    bus, ctl = controller(Binding(cc=1, knob=0))
    port = MidiInput(ctl, api="jack")
    port.start()
    try:
        backend = midi_backend("jack")
        name = next(n for n in backend.get_output_names() if "mgsteer" in n)
        with backend.open_output(name) as out:
            out.send(cc(1, 127))
            assert wait_for(lambda: knob(bus, 0) == 1.0)
    finally:
        port.stop()


def test_a_named_port_that_disappears_is_reopened(jack_server):
    _, ctl = controller(Binding(cc=1, knob=0))
    backend = midi_backend("jack")
    device = backend.open_output("ctl", virtual=True)  # plays the hardware controller
    name = next(n for n in backend.get_input_names() if n.endswith("ctl"))
    port = MidiInput(ctl, port=name, api="jack", retry_s=0.2)
    port.start()
    try:
        assert port.state == "open"
        device.close()  # unplugged
        assert wait_for(lambda: port.state == "waiting")
        device = backend.open_output("ctl", virtual=True)  # plugged back in
        assert wait_for(lambda: port.state == "open") and port.opened == 2
    finally:
        port.stop()
        device.close()


def test_the_follow_note_presses_follow_now_and_other_notes_do_not():
    bus = ParameterBus(knob_count=4)
    ctl = MidiController(bus, [Binding(cc=1, knob=0)], follow_note=60)
    ctl.handle(mido.Message("note_on", note=61, velocity=100))
    ctl.handle(mido.Message("note_on", note=60, velocity=0))  # a note-off written as note-on
    assert bus.snapshot().follow_count == 0
    ctl.handle(mido.Message("note_on", note=60, velocity=90, channel=5))
    assert bus.snapshot().follow_count == 1
    assert ctl.handle(cc(1, 127)) == 1.0  # the knobs still answer


def test_a_preset_follow_note_is_checked():
    from engine.presets import parse_preset

    raw = {"format": "mgsteer-preset/1", "name": "x", "model": "tiny", "midi": {"follow_note": 128}}
    with pytest.raises(MgsteerError, match=r"midi\.follow_note: must be between 0 and 127"):
        parse_preset(raw)
    raw["midi"]["follow_note"] = 60
    assert parse_preset(raw).midi["follow_note"] == 60
