"""Presets: round trip, field-level validation, bundled presets, `play --preset`."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from cli.main import main
from engine.errors import MgsteerError
from engine.params import ParameterBus
from engine.presets import apply_preset, capture_preset, load_preset, save_preset

BUNDLED = Path(__file__).resolve().parents[1] / "presets"


def test_round_trip_through_the_bus(tmp_path):
    preset = load_preset(BUNDLED / "world-demo.json")
    bus = ParameterBus(knob_count=8, feature_count=256)
    apply_preset(preset, bus)
    snap = bus.snapshot()
    assert snap.prompt == preset.prompt and snap.smoothing_ms == preset.smoothing_ms
    assert snap.knobs[1].label == "features 1+2" and snap.knobs[1].features == ((1, 1.0), (2, 0.5))
    assert snap.knobs[1].value == 0.5 and (snap.knobs[1].lo, snap.knobs[1].hi) == (-1.0, 1.0)
    again = capture_preset(bus, preset.name, preset.model, preset.sae, midi=preset.midi, osc=preset.osc)
    path = save_preset(again, tmp_path / "again.json")
    reloaded = load_preset(path)
    assert reloaded.knobs[: len(preset.knobs)] == preset.knobs
    assert reloaded.prompt == preset.prompt and reloaded.midi == preset.midi and reloaded.sae == preset.sae


def test_bundled_presets_load():
    names = sorted(p.name for p in BUNDLED.glob("*.json"))
    assert names == ["tiny-plain.json", "world-automation.json", "world-demo.json"]
    for path in BUNDLED.glob("*.json"):
        load_preset(path, feature_count=256)
    assert load_preset(BUNDLED / "tiny-plain.json").model == "tiny"
    demo = load_preset(BUNDLED / "world-demo.json")
    assert demo.sae.endswith("demo_out/sae") and demo.model.endswith("demo_out/world")  # beside the preset


def test_automation_and_crossfades_reach_the_knobs_and_come_back(tmp_path):
    preset = load_preset(BUNDLED / "world-automation.json")
    bus = ParameterBus(knob_count=8, feature_count=256)
    apply_preset(preset, bus)
    knobs = bus.snapshot().knobs
    assert knobs[0].automation == ((0.0, 0.0), (4.0, 1.0), (8.0, 0.0)) and knobs[0].loop
    assert knobs[1].automation == ((0.0, 1.0), (16.0, 0.0), (32.0, 1.0))  # the crossfade's first side: 1 − mix
    assert knobs[2].automation == ((0.0, 0.0), (16.0, 1.0), (32.0, 0.0))
    assert set(bus.snapshot().alphas()) == set()  # automated knobs are lanes, not static strengths
    again = load_preset(save_preset(capture_preset(bus, "again", preset.model, preset.sae), tmp_path / "a.json"))
    assert {a.knob: a.points for a in again.automation} == {0: knobs[0].automation, 1: knobs[1].automation,
                                                            2: knobs[2].automation}  # fmt: skip
    bus.set_knob(1, 0.25)  # a hand on the knob takes it over
    assert bus.snapshot().knobs[1].automation == () and bus.snapshot().alphas()[1] == pytest.approx(0.25)


GOOD = json.loads((BUNDLED / "world-demo.json").read_text())


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"format": "mgsteer-preset/9"}, ".format: must be 'mgsteer-preset/1'"),
        ({"prompt": 42}, ".prompt: must be a string"),
        ({"prompt": "  "}, ".prompt: must not be empty"),
        ({"smoothing_ms": -1}, ".smoothing_ms: must be between 0 and 10000"),
        ({"smoothing_ms": float("nan")}, ".smoothing_ms: must be a finite number"),
        ({"promt": "piano"}, "unknown field 'promt' (did you mean 'prompt'?)"),
        ({"knobs": [{"lable": "x"}]}, ".knobs[0]: unknown field 'lable' (did you mean 'label'?)"),
        ({"osc": {"port": 70000}}, ".osc.port: must be between 0 and 65535"),
        ({"osc": {"prot": 9000}}, ".osc: unknown field 'prot' (did you mean 'port'?)"),
        ({"midi": {"map": {}}}, ".midi.map: must be a list"),
        ({"features": {"3": 1e30}}, ".features.3: strength must be a finite number within ±50"),
        ({"features": {"3": 10**400}}, "holds an integer of 401 digits (at most 30); refused"),
        ({"knobs": [{"range": [0, 1e9]}]}, ".knobs[0].range: must be [low, high], numbers within ±50"),
        ({"knobs": [{"features": [[1, 1e9]]}]}, ".knobs[0].features[0]: weight must be a finite number within ±10"),
        ({"smoothing_ms": "fast"}, ".smoothing_ms: must be a finite number"),
        ({"knobs": {"a": 1}}, ".knobs: must be a list"),
        ({"knobs": [{"features": [[1]]}]}, ".knobs[0].features[0]: must be [feature, weight]"),
        ({"knobs": [{"features": [[-3, 1.0]]}]}, ".knobs[0].features[0]: feature id must be a non-negative integer"),
        ({"knobs": [{"features": [[999, 1.0]]}]}, ".knobs[0].features[0]: feature 999 is not in the SAE"),
        ({"knobs": [{"features": [[1, "x"]]}]}, ".knobs[0].features[0]: weight must be a finite number"),
        ({"knobs": [{"range": [0]}]}, ".knobs[0].range: must be [low, high]"),
        ({"knobs": [{"curve": "cubic"}]}, ".knobs[0].curve: must be one of linear, exp, log"),
        ({"knobs": [{"value": 1.5}]}, ".knobs[0].value: must be between 0 and 1"),
        ({"knobs": [{}] * 17}, ".knobs: has 17 knobs; the host has 16"),
        ({"features": {"x": 1.0}}, ".features.x: feature id must be"),
        ({"features": {"3": None}}, ".features.3: strength must be a finite number"),
        ({"midi": []}, ".midi: must be a JSON object"),
        ({"latency": "fast"}, ".latency: must be one of default, low, got 'fast'"),
        ({"halves": "uncond"}, ".halves: must be one of both, cond, got 'uncond'"),
        ({"automation": {}}, ".automation: must be a list"),
        ({"automation": [{"knob": 7, "points": [[0, 1]]}]}, ".automation[0].knob: knob 7 is not one of the preset's"),
        ({"automation": [{"knob": 0, "crossfade": [1, 2], "points": [[0, 1]]}]}, "either 'knob' (one knob) or"),
        ({"automation": [{"crossfade": [1, 1], "points": [[0, 1]]}]}, ".crossfade: must name two different knobs"),
        ({"automation": [{"knob": 0, "points": [[0, 1.5]]}]}, ".points: values must be numbers between 0 and 1"),
        ({"automation": [{"knob": 0, "points": [[2, 0], [1, 1]]}]}, "times must be seconds ≥ 0, each later than"),
        ({"automation": [{"knob": 0, "points": [[0, "x"]]}]}, ".points: must be [seconds, value] pairs"),
        ({"automation": [{"knob": 0, "points": [[0, 1]], "loop": "yes"}]}, ".loop: must be true or false"),
        ({"automation": [{"knob": 0, "points": [[0, 1], [700, 0]]}]}, "at most 600 s"),
        (
            {"automation": [{"knob": 1, "points": [[0, 1]]}, {"crossfade": [2, 1], "points": [[0, 1]]}]},
            "knob 1 is automated twice",
        ),
    ],
)
def test_broken_presets_name_the_field(tmp_path, change, needle):
    path = tmp_path / "broken.json"
    path.write_text(json.dumps({**GOOD, **change}))
    with pytest.raises(MgsteerError) as err:
        load_preset(path, feature_count=256)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_unreadable_presets(tmp_path):
    with pytest.raises(MgsteerError, match="cannot read preset"):
        load_preset(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(MgsteerError, match="not valid JSON"):
        load_preset(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(MgsteerError, match="must be a JSON object"):
        load_preset(tmp_path / "list.json")


def test_play_with_a_bundled_preset(world_demo_dir, tmp_path, capsys):
    (tmp_path / "presets").mkdir()
    shutil.copy(BUNDLED / "world-demo.json", tmp_path / "presets")
    shutil.copytree(world_demo_dir, tmp_path / "demo_out")
    preset = str(tmp_path / "presets" / "world-demo.json")
    assert main(["play", "--preset", preset, "--no-audio", "--seconds", "2"]) == 0
    out = capsys.readouterr().out
    assert "preset 'world demo knobs'" in out and "playing 'melody' with " in out and re.search(r"underruns \d+", out)


def test_a_presets_folder_takes_names_never_paths(tmp_path):
    from engine.presets import PresetFolder

    folder = PresetFolder(tmp_path / "presets")
    bus = ParameterBus(knob_count=8, feature_count=256)
    bus.configure_knob(0, label="air", features=[(5, 1.0)])
    preset = capture_preset(bus, "mine", "tiny", None)
    saved = folder.save(preset, "my set.json")
    assert saved == tmp_path / "presets" / "my set.json"
    assert folder.load("my set").knobs[0].label == "air"
    outside = tmp_path / "victim.txt"
    outside.write_text("keep me")
    for name in ["../victim", "../victim.txt", str(outside), "/etc/passwd", "a/b", "..", ".hidden", "", "x" * 65]:
        with pytest.raises(MgsteerError, match="bad preset name"):
            folder.save(preset, name)
        with pytest.raises(MgsteerError, match="bad preset name"):
            folder.load(name)
    assert outside.read_text() == "keep me"


def test_a_presets_folder_overwrites_only_presets(tmp_path):
    from engine.presets import PresetFolder

    root = tmp_path / "presets"
    root.mkdir()
    (root / "notes.json").write_text('{"my": "notes"}')
    (root / "dir.json").mkdir()
    victim = tmp_path / "victim.json"
    victim.write_text('{"format": "mgsteer-preset/1"}')
    (root / "link.json").symlink_to(victim)
    folder = PresetFolder(root)
    preset = capture_preset(ParameterBus(knob_count=8), "x", "tiny", None)
    with pytest.raises(MgsteerError, match="is not a preset; not overwritten"):
        folder.save(preset, "notes")
    with pytest.raises(MgsteerError, match="not a plain file"):
        folder.save(preset, "dir")
    with pytest.raises(MgsteerError, match="outside the presets folder"):
        folder.save(preset, "link")
    with pytest.raises(MgsteerError, match="no preset 'absent'"):
        folder.load("absent")
    assert (root / "notes.json").read_text() == '{"my": "notes"}'
    assert victim.read_text() == '{"format": "mgsteer-preset/1"}'
    folder.save(preset, "fine")
    folder.save(preset, "fine")  # a preset may be replaced by a preset
    assert sorted(p.name for p in root.iterdir()) == ["dir.json", "fine.json", "link.json", "notes.json"]


def test_a_preset_chooses_the_latency_profile_and_halves_unless_the_command_line_does(tmp_path):
    from argparse import Namespace

    from cli.live import controller_settings

    path = tmp_path / "low.json"
    path.write_text(json.dumps({"format": "mgsteer-preset/1", "latency": "low", "halves": "cond"}))
    preset = load_preset(path)
    assert preset.latency == "low" and save_preset(preset, tmp_path / "again.json").read_text().count('"low"') == 1
    assert load_preset(tmp_path / "again.json").halves == "cond"
    given = {"osc_host": None, "osc_port": None}
    args = Namespace(latency=None, halves=None, **given)
    controller_settings(args, preset)
    assert (args.latency, args.halves) == ("low", "cond")
    args = Namespace(latency="default", halves="both", **given)
    controller_settings(args, preset)
    assert (args.latency, args.halves) == ("default", "both")
    args = Namespace(latency=None, halves=None, **given)
    controller_settings(args, None)
    assert (args.latency, args.halves) == ("default", "both")


def test_play_takes_a_preset_of_sixteen_knobs(tmp_path, capsys):
    knobs = [{"label": f"k{i}", "value": i / 16} for i in range(16)]
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"format": "mgsteer-preset/1", "model": "tiny", "knobs": knobs}))
    assert len(load_preset(path).knobs) == 16
    assert main(["play", "--preset", str(path), "--no-audio", "--seconds", "1"]) == 0
    assert "preset 'untitled'" in capsys.readouterr().out
