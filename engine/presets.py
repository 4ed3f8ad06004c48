"""Presets: a whole playing setup in one versioned JSON file.

A preset names the model, the SAE, the prompt and the knobs (label, features with weights,
α range, curve, value), plus MIDI and OSC settings. Loading validates every field and says
which one is wrong and why, in one line; a preset is applied by writing to the parameter bus
like any other controller.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine import limits
from engine.automation import check_points
from engine.errors import MgsteerError
from engine.inputs import PRESET_BYTES, read_json
from engine.params import CURVES, MAX_LABEL, ParameterBus
from engine.steering import HALVES

FORMAT = "mgsteer-preset/1"


@dataclass(frozen=True)
class KnobPreset:
    label: str = ""
    features: tuple[tuple[int, float], ...] = ()
    range: tuple[float, float] = (0.0, 1.0)
    curve: str = "linear"
    value: float = 0.0


@dataclass(frozen=True)
class KnobAutomation:
    """Knob `knob` moves along (seconds, value) breakpoints from when the preset is applied."""

    knob: int
    points: tuple[tuple[float, float], ...]
    loop: bool = False


@dataclass(frozen=True)
class Preset:
    name: str = "untitled"
    model: str = "tiny"  # a name, a hub id or a folder; "./" and "../" paths are relative to the preset file
    sae: str | None = None  # folder; relative paths are relative to the preset file
    prompt: str = "simple melody"
    smoothing_ms: float = 50.0
    knobs: tuple[KnobPreset, ...] = ()
    features: dict[int, float] = field(default_factory=dict)
    midi: dict[str, Any] = field(default_factory=dict)
    osc: dict[str, Any] = field(default_factory=dict)
    latency: str = "default"  # engine.host latency profile: default or low
    halves: str = "both"  # the CFG halves the knobs steer: both, or cond (engine.host.HostConfig.halves)
    automation: tuple[KnobAutomation, ...] = ()
    # knobs from examples (concept folders) added to the SAE as its next features, in this order:
    # the knobs' feature ids past the SAE's own are theirs
    concepts: tuple[str, ...] = ()

    def to_json(self) -> dict:
        data = asdict(self)
        data["knobs"] = [
            {**asdict(k), "features": [list(f) for f in k.features], "range": list(k.range)} for k in self.knobs
        ]
        data["features"] = {str(f): a for f, a in self.features.items()}
        data["automation"] = [
            {"knob": a.knob, "points": [list(p) for p in a.points], "loop": a.loop} for a in self.automation
        ]
        return {"format": FORMAT, **data}


PRESET_FIELDS = (
    "format", "name", "model", "sae", "prompt", "smoothing_ms", "knobs", "features", "midi", "osc", "latency",
    "halves", "automation", "concepts",
)  # fmt: skip
KNOB_FIELDS = ("label", "features", "range", "curve", "value")
OSC_FIELDS = ("host", "port")
MIDI_FIELDS = ("port", "map", "follow_note")
AUTOMATION_FIELDS = ("knob", "crossfade", "points", "loop")


class _Fields:
    """Reads fields of one JSON object, raising errors that name the field. An unknown field
    is an error too (a misspelt "promt" would otherwise be dropped without a word)."""

    def __init__(self, where: str, raw: Any, known: tuple[str, ...]) -> None:
        if not isinstance(raw, dict):
            raise MgsteerError(f"{where}: must be a JSON object")
        self.where, self.raw = where, raw
        for key in raw:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(known)})"
                raise MgsteerError(f"{where}: unknown field '{key}'{hint}")

    def fail(self, key: str, why: str) -> MgsteerError:
        return MgsteerError(f"{self.where}.{key}: {why}")

    def text(self, key: str, default: str | None, optional: bool = False, longest: int = 1000) -> str | None:
        value = self.raw.get(key, default)
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, got {value!r}"[:200])
        if len(value) > longest:
            raise self.fail(key, f"longer than {longest} characters")
        return value

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self.raw.get(key, default)
        if not _finite(value):
            raise self.fail(key, f"must be a finite number, got {value!r}"[:200])
        return self.checked(key, limits.within, value, low, high)

    def checked(self, key: str, check, *args):
        """`check(value, what, *args)` with the field's name in its error."""
        try:
            return check(args[0], "value", *args[1:])
        except MgsteerError as exc:
            raise self.fail(key, str(exc).removeprefix("value ")) from None

    def mapping(self, key: str) -> dict:
        value = self.raw.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(key, "must be a JSON object")
        return value


def _feature_id(where: str, value: Any, feature_count: int | None) -> int:
    if isinstance(value, str):
        value = limits.decimal(value, f"{where}: feature id")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MgsteerError(f"{where}: feature id must be a non-negative integer, got {value!r}")
    if feature_count is not None and value >= feature_count:
        raise MgsteerError(f"{where}: feature {value} is not in the SAE (features 0..{feature_count - 1})")
    return value


def _knob(where: str, raw: Any, feature_count: int | None) -> KnobPreset:
    f = _Fields(where, raw, KNOB_FIELDS)
    features = raw.get("features", [])
    if not isinstance(features, list):
        raise f.fail("features", "must be a list of [feature, weight] pairs")
    pairs = []
    for i, pair in enumerate(features):
        at = f"{where}.features[{i}]"
        if not (isinstance(pair, list) and len(pair) == 2):
            raise MgsteerError(f"{at}: must be [feature, weight]")
        weight = pair[1]
        if not _finite(weight) or abs(weight) > limits.MAX_WEIGHT:
            raise MgsteerError(f"{at}: weight must be a finite number within ±{limits.MAX_WEIGHT:g}, got {weight!r}")
        pairs.append((_feature_id(at, pair[0], feature_count), float(weight)))
    rng = raw.get("range", [0.0, 1.0])
    if not (isinstance(rng, list) and len(rng) == 2 and all(_finite(x) and abs(x) <= limits.MAX_ALPHA for x in rng)):
        raise f.fail("range", f"must be [low, high], numbers within ±{limits.MAX_ALPHA:g}, got {rng!r}"[:200])
    curve = f.text("curve", "linear")
    if curve not in CURVES:
        raise f.fail("curve", f"must be one of {', '.join(CURVES)}, got {curve!r}")
    value = f.number("value", 0.0, 0.0, 1.0)
    label = f.text("label", "", longest=MAX_LABEL)
    return KnobPreset(label, tuple(pairs), (float(rng[0]), float(rng[1])), curve, value)


def _automation(where: str, raw: Any, knob_count: int) -> list[KnobAutomation]:
    """One `automation` entry: `{"knob": i, "points": [[s, value], …], "loop": bool}`, or a
    crossfade `{"crossfade": [i, j], "points": [[s, mix], …]}` (mix 0: knob i full, knob j
    off; 1: the other way round), which moves knob i along 1 − mix and knob j along mix."""
    f = _Fields(where, raw, AUTOMATION_FIELDS)
    if ("knob" in raw) == ("crossfade" in raw):
        raise MgsteerError(f"{where}: give either 'knob' (one knob) or 'crossfade' (two knobs)")
    knobs = [raw["knob"]] if "knob" in raw else raw["crossfade"]
    if not (isinstance(knobs, list) and len(knobs) == (1 if "knob" in raw else 2)):
        raise f.fail("crossfade", "must be [knob, knob]")
    for k in knobs:
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < knob_count:
            key = "knob" if "knob" in raw else "crossfade"
            raise f.fail(key, f"knob {k!r} is not one of the preset's knobs (0..{knob_count - 1})"[:200])
    if len(set(knobs)) != len(knobs):
        raise f.fail("crossfade", "must name two different knobs")
    points = raw.get("points")
    if not isinstance(points, list) or not all(isinstance(p, list) and len(p) == 2 for p in points):
        raise f.fail("points", "must be a list of [seconds, value] pairs")
    curve = check_points(points, f"{where}.points")
    if not all(_finite(p[1]) and 0.0 <= p[1] <= 1.0 for p in points):
        raise f.fail("points", "values must be numbers between 0 and 1 (knob positions)")
    loop = raw.get("loop", False)
    if not isinstance(loop, bool):
        raise f.fail("loop", f"must be true or false, got {loop!r}"[:200])
    if len(knobs) == 1:
        return [KnobAutomation(knobs[0], curve, loop)]
    faded = tuple((t, 1.0 - v) for t, v in curve)
    return [KnobAutomation(knobs[0], faded, loop), KnobAutomation(knobs[1], curve, loop)]


def _finite(x: Any) -> bool:
    try:
        return not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x)
    except OverflowError:  # an integer too large for a float
        return False


def _osc_settings(where: str, raw: Any) -> dict[str, Any]:
    f = _Fields(where, raw, OSC_FIELDS)
    out: dict[str, Any] = {}
    if "host" in raw:
        out["host"] = f.text("host", None)
    if "port" in raw:
        out["port"] = f.checked("port", limits.port, raw["port"])
    return out


def _midi_settings(where: str, raw: Any) -> dict[str, Any]:
    f = _Fields(where, raw, MIDI_FIELDS)
    out: dict[str, Any] = {}
    if "port" in raw:
        out["port"] = f.text("port", None, longest=200)
    if "map" in raw:
        if not isinstance(raw["map"], list):
            raise f.fail("map", "must be a list of bindings")
        out["map"] = raw["map"]  # each binding is checked by midi.mapping.parse_bindings
    if "follow_note" in raw:  # a note-on of it: a melody model follows its live input now
        out["follow_note"] = f.checked("follow_note", limits.integer, raw["follow_note"], 0, 127)
    return out


def parse_preset(
    raw: Any, where: str = "preset", feature_count: int | None = None, knob_count: int = limits.MAX_KNOBS
) -> Preset:
    f = _Fields(where, raw, PRESET_FIELDS)
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
        if not _finite(alpha) or abs(alpha) > limits.MAX_ALPHA:
            raise MgsteerError(f"{at}: strength must be a finite number within ±{limits.MAX_ALPHA:g}, got {alpha!r}")
        features[_feature_id(at, key, feature_count)] = float(alpha)
    entries = raw.get("automation", [])
    if not isinstance(entries, list):
        raise f.fail("automation", "must be a list")
    automation = [a for i, e in enumerate(entries) for a in _automation(f"{where}.automation[{i}]", e, len(knobs))]
    doubled = [a.knob for a in automation if [b.knob for b in automation].count(a.knob) > 1]
    if doubled:
        raise f.fail("automation", f"knob {doubled[0]} is automated twice")
    prompt = f.checked("prompt", limits.prompt_text, f.text("prompt", "simple melody"))
    concepts = raw.get("concepts", [])
    if not isinstance(concepts, list) or not all(isinstance(c, str) and c for c in concepts):
        raise f.fail("concepts", "must be a list of concept folders")
    latency = f.text("latency", "default")
    if latency not in limits.LATENCY_PROFILES:
        raise f.fail("latency", f"must be one of {', '.join(limits.LATENCY_PROFILES)}, got {latency!r}")
    halves = f.text("halves", "both")
    if halves not in HALVES:
        raise f.fail("halves", f"must be one of {', '.join(HALVES)}, got {halves!r}")
    return Preset(
        name=f.text("name", "untitled"),
        model=f.text("model", "tiny"),
        sae=f.text("sae", None, optional=True),
        prompt=prompt,
        smoothing_ms=f.number("smoothing_ms", 50.0, 0.0, limits.MAX_SMOOTHING_MS),
        knobs=knobs,
        features=features,
        midi=_midi_settings(f"{where}.midi", f.mapping("midi")),
        osc=_osc_settings(f"{where}.osc", f.mapping("osc")),
        latency=latency,
        halves=halves,
        automation=tuple(automation),
        concepts=tuple(concepts),
    )


def load_preset(path: str | Path, feature_count: int | None = None, knob_count: int = limits.MAX_KNOBS) -> Preset:
    path = Path(path)
    raw = read_json(path, "preset", PRESET_BYTES)
    preset = parse_preset(raw, f"preset '{path.name}'", feature_count, knob_count)
    if preset.sae is not None and not Path(preset.sae).is_absolute():
        preset = Preset(**{**preset.__dict__, "sae": str((path.parent / preset.sae).resolve())})
    concepts = tuple(str((path.parent / c).resolve()) for c in preset.concepts)
    preset = Preset(**{**preset.__dict__, "concepts": concepts})
    if preset.model.startswith(("./", "../")):  # a model folder beside the preset (a hub id has no dots)
        preset = Preset(**{**preset.__dict__, "model": str((path.parent / preset.model).resolve())})
    return preset


def save_preset(preset: Preset, path: str | Path) -> Path:
    """Write atomically (a crash never leaves half a preset behind)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(preset.to_json(), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def user_presets_dir() -> Path:
    """Where remote control may read and write presets unless told otherwise."""
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "mgsteer" / "presets"


PRESET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}")


class PresetFolder:
    """The one folder a remote controller may load presets from and save them to.

    Why: an OSC server may listen on the network, and a path in a message must not become a
    way to read or overwrite the user's files. So remote requests name a preset, never a
    path: letters, digits, space, `_ . -`, at most 64, with or without `.json`; nothing that
    resolves outside the folder (a symbolic link included); and a save replaces only a file
    that is itself a preset."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).expanduser()

    def path(self, name: str) -> Path:
        stem = name[:-5] if name.lower().endswith(".json") else name
        if not PRESET_NAME.fullmatch(stem) or ".." in stem:
            raise MgsteerError(
                f"bad preset name {name!r}: use a name (letters, digits, space, _ . -; at most 64), not a path"[:300]
            )
        path = self.folder / f"{stem}.json"
        if path.resolve().parent != self.folder.resolve():
            raise MgsteerError(f"preset '{stem}' points outside the presets folder; refused")
        return path

    def load(self, name: str, feature_count: int | None = None, knob_count: int = limits.MAX_KNOBS) -> Preset:
        path = self.path(name)
        if not path.is_file():
            raise MgsteerError(f"no preset '{path.stem}' in the presets folder")
        return load_preset(path, feature_count, knob_count)

    def save(self, preset: Preset, name: str) -> Path:
        path = self.path(name)
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise MgsteerError(f"'{path.name}' in the presets folder is not a plain file; not overwritten")
        if path.exists() and not _is_preset_file(path):
            raise MgsteerError(f"'{path.name}' in the presets folder is not a preset; not overwritten")
        return save_preset(preset, path)


def _is_preset_file(path: Path) -> bool:
    try:
        raw = read_json(path, "preset", PRESET_BYTES)
    except MgsteerError:
        return False
    return isinstance(raw, dict) and raw.get("format") == FORMAT


def apply_preset(preset: Preset, bus: ParameterBus) -> None:
    """Write the preset's playing state to the bus (model and SAE are chosen at start-up), as
    one change."""
    with bus.batch():
        _apply(preset, bus)


def _apply(preset: Preset, bus: ParameterBus) -> None:
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
    for entry in preset.automation:
        bus.automate_knob(entry.knob, list(entry.points), entry.loop)


def capture_preset(bus: ParameterBus, name: str, model: str, sae: str | None, **extra) -> Preset:
    """The bus's current state as a preset (for saving from OSC or the GUI)."""
    snap = bus.snapshot()
    knobs = tuple(KnobPreset(k.label, k.features, (k.lo, k.hi), k.curve, k.value) for k in snap.knobs)
    automation = tuple(KnobAutomation(i, k.automation, k.loop) for i, k in enumerate(snap.knobs) if k.automation)
    return Preset(
        name, model, sae, snap.prompt, snap.smoothing_ms, knobs, dict(snap.features), automation=automation, **extra
    )
