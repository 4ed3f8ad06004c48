"""Presets: round trip, field-level validation, bundled presets, `play --preset`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from engine.cli import main
from engine.errors import MgsteerError
from engine.params import ParameterBus
from engine.presets import apply_preset, capture_preset, load_preset, save_preset

BUNDLED = Path(__file__).resolve().parents[1] / "presets"


def test_round_trip_through_the_bus(tmp_path):
    preset = load_preset(BUNDLED / "tiny-demo.json")
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
    assert names == ["tiny-demo.json", "tiny-plain.json"]
    for path in BUNDLED.glob("*.json"):
        preset = load_preset(path, feature_count=256)
        assert preset.model == "tiny"
    assert load_preset(BUNDLED / "tiny-demo.json").sae.endswith("demo_out/sae")


GOOD = json.loads((BUNDLED / "tiny-demo.json").read_text())


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"format": "mgsteer-preset/9"}, ".format: must be 'mgsteer-preset/1'"),
        ({"prompt": 42}, ".prompt: must be a string"),
        ({"prompt": "  "}, ".prompt: must not be empty"),
        ({"smoothing_ms": -1}, ".smoothing_ms: must be ≥ 0.0"),
        ({"smoothing_ms": "fast"}, ".smoothing_ms: must be a finite number"),
        ({"knobs": {"a": 1}}, ".knobs: must be a list"),
        ({"knobs": [{"features": [[1]]}]}, ".knobs[0].features[0]: must be [feature, weight]"),
        ({"knobs": [{"features": [[-3, 1.0]]}]}, ".knobs[0].features[0]: feature id must be a non-negative integer"),
        ({"knobs": [{"features": [[999, 1.0]]}]}, ".knobs[0].features[0]: feature 999 is not in the SAE"),
        ({"knobs": [{"features": [[1, "x"]]}]}, ".knobs[0].features[0]: weight must be a finite number"),
        ({"knobs": [{"range": [0]}]}, ".knobs[0].range: must be [low, high]"),
        ({"knobs": [{"curve": "cubic"}]}, ".knobs[0].curve: must be one of linear, exp, log"),
        ({"knobs": [{"value": 1.5}]}, ".knobs[0].value: must be in [0, 1]"),
        ({"knobs": [{}] * 9}, ".knobs: has 9 knobs; the host has 8"),
        ({"features": {"x": 1.0}}, ".features.x: feature id must be"),
        ({"features": {"3": None}}, ".features.3: strength must be a finite number"),
        ({"midi": []}, ".midi: must be a JSON object"),
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


def test_play_with_a_bundled_preset(tiny_sae_dir, tmp_path, capsys):
    (tmp_path / "presets").mkdir()
    shutil.copy(BUNDLED / "tiny-demo.json", tmp_path / "presets")
    shutil.copytree(tiny_sae_dir, tmp_path / "demo_out" / "sae")
    assert main(["play", "--preset", str(tmp_path / "presets" / "tiny-demo.json"), "--no-audio", "--seconds", "2"]) == 0
    out = capsys.readouterr().out
    assert "preset 'tiny demo knobs'" in out and "playing 'simple melody' with tiny" in out and "underruns 0" in out
