"""Presets: a whole playing setup in one versioned JSON file.

A preset names the model, the SAE, the prompt and the knobs (label, features with weights,
α range, curve, value), plus MIDI and OSC settings. Loading validates every field and says
which one is wrong and why, in one line; a preset is applied by writing to the parameter bus
like any other controller.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import MgsteerError
from engine.params import CURVES, ParameterBus

FORMAT = "mgsteer-preset/1"


@dataclass(frozen=True)
class KnobPreset:
    label: str = ""
    features: tuple[tuple[int, float], ...] = ()
    range: tuple[float, float] = (0.0, 1.0)
    curve: str = "linear"
    value: float = 0.0


@dataclass(frozen=True)
class Preset:
    name: str = "untitled"
    model: str = "tiny"
    sae: str | None = None  # folder; relative paths are relative to the preset file
    prompt: str = "simple melody"
    smoothing_ms: float = 50.0
    knobs: tuple[KnobPreset, ...] = ()
    features: dict[int, float] = field(default_factory=dict)
    midi: dict[str, Any] = field(default_factory=dict)
    osc: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        data = asdict(self)
        data["knobs"] = [
            {**asdict(k), "features": [list(f) for f in k.features], "range": list(k.range)} for k in self.knobs
        ]
        data["features"] = {str(f): a for f, a in self.features.items()}
        return {"format": FORMAT, **data}


class _Fields:
    """Reads fields of one JSON object, raising errors that name the field."""

    def __init__(self, where: str, raw: Any) -> None:
        if not isinstance(raw, dict):
            raise MgsteerError(f"{where}: must be a JSON object")
        self.where, self.raw = where, raw

    def fail(self, key: str, why: str) -> MgsteerError:
        return MgsteerError(f"{self.where}.{key}: {why}")

    def text(self, key: str, default: str | None, optional: bool = False) -> str | None:
        value = self.raw.get(key, default)
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, got {value!r}")
        if len(value) > 1000:
            raise self.fail(key, "longer than 1000 characters")
        return value

    def number(self, key: str, default: float, low: float | None = None) -> float:
        value = self.raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(key, f"must be a finite number, got {value!r}")
        if low is not None and value < low:
            raise self.fail(key, f"must be ≥ {low}, got {value}")
        return float(value)

    def mapping(self, key: str) -> dict:
        value = self.raw.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(key, "must be a JSON object")
        return value


def _feature_id(where: str, value: Any, feature_count: int | None) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MgsteerError(f"{where}: feature id must be a non-negative integer, got {value!r}")
    if feature_count is not None and value >= feature_count:
        raise MgsteerError(f"{where}: feature {value} is not in the SAE (features 0..{feature_count - 1})")
    return value


def _knob(where: str, raw: Any, feature_count: int | None) -> KnobPreset:
    f = _Fields(where, raw)
    features = raw.get("features", [])
    if not isinstance(features, list):
        raise f.fail("features", "must be a list of [feature, weight] pairs")
    pairs = []
    for i, pair in enumerate(features):
        at = f"{where}.features[{i}]"
        if not (isinstance(pair, list) and len(pair) == 2):
            raise MgsteerError(f"{at}: must be [feature, weight]")
        weight = pair[1]
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise MgsteerError(f"{at}: weight must be a finite number, got {weight!r}")
        pairs.append((_feature_id(at, pair[0], feature_count), float(weight)))
    rng = raw.get("range", [0.0, 1.0])
    if not (isinstance(rng, list) and len(rng) == 2 and all(_finite(x) for x in rng)):
        raise f.fail("range", f"must be [low, high] finite numbers, got {rng!r}")
    curve = f.text("curve", "linear")
    if curve not in CURVES:
        raise f.fail("curve", f"must be one of {', '.join(CURVES)}, got {curve!r}")
    value = f.number("value", 0.0)
    if not 0.0 <= value <= 1.0:
        raise f.fail("value", f"must be in [0, 1], got {value}")
    return KnobPreset(f.text("label", ""), tuple(pairs), (float(rng[0]), float(rng[1])), curve, value)


def _finite(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x)


def parse_preset(raw: Any, where: str = "preset", feature_count: int | None = None, knob_count: int = 8) -> Preset:
    f = _Fields(where, raw)
    if raw.get("format") != FORMAT:
        raise f.fail("format", f"must be {FORMAT!r}, got {raw.get('format')!r}")
    knobs_raw = raw.get("knobs", [])
    if not isinstance(knobs_raw, list):
        raise f.fail("knobs", "must be a list")
    if len(knobs_raw) > knob_count:
        raise f.fail("knobs", f"has {len(knobs_raw)} knobs; the host has {knob_count}")
    knobs = tuple(_knob(f"{where}.knobs[{i}]", k, feature_count) for i, k in enumerate(knobs_raw))
    features = {}
    for key, alpha in f.mapping("features").items():
        at = f"{where}.features.{key}"
        if not _finite(alpha):
            raise MgsteerError(f"{at}: strength must be a finite number, got {alpha!r}")
        features[_feature_id(at, key, feature_count)] = float(alpha)
    prompt = f.text("prompt", "simple melody")
    if not prompt.strip():
        raise f.fail("prompt", "must not be empty")
    return Preset(
        name=f.text("name", "untitled"),
        model=f.text("model", "tiny"),
        sae=f.text("sae", None, optional=True),
        prompt=prompt,
        smoothing_ms=f.number("smoothing_ms", 50.0, low=0.0),
        knobs=knobs,
        features=features,
        midi=f.mapping("midi"),
        osc=f.mapping("osc"),
    )


def load_preset(path: str | Path, feature_count: int | None = None, knob_count: int = 8) -> Preset:
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise MgsteerError(f"cannot read preset '{path}': {exc.strerror or exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MgsteerError(f"preset '{path}' is not valid JSON ({exc})") from exc
    preset = parse_preset(raw, f"preset '{path.name}'", feature_count, knob_count)
    if preset.sae is not None and not Path(preset.sae).is_absolute():
        preset = Preset(**{**preset.__dict__, "sae": str((path.parent / preset.sae).resolve())})
    return preset


def save_preset(preset: Preset, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(preset.to_json(), indent=2) + "\n")
    return path


def apply_preset(preset: Preset, bus: ParameterBus) -> None:
    """Write the preset's playing state to the bus (model and SAE are chosen at start-up)."""
    bus.set_prompt(preset.prompt)
    bus.set_smoothing(preset.smoothing_ms)
    bus.clear_features()
    for feature, alpha in preset.features.items():
        bus.set_feature(feature, alpha)
    for index in range(len(bus.snapshot().knobs)):
        knob = preset.knobs[index] if index < len(preset.knobs) else KnobPreset()
        bus.configure_knob(
            index, label=knob.label, features=list(knob.features), lo=knob.range[0], hi=knob.range[1], curve=knob.curve
        )
        bus.set_knob(index, knob.value)


def capture_preset(bus: ParameterBus, name: str, model: str, sae: str | None, **extra) -> Preset:
    """The bus's current state as a preset (for saving from OSC or the GUI)."""
    snap = bus.snapshot()
    knobs = tuple(KnobPreset(k.label, k.features, (k.lo, k.hi), k.curve, k.value) for k in snap.knobs)
    return Preset(name, model, sae, snap.prompt, snap.smoothing_ms, knobs, dict(snap.features), **extra)
