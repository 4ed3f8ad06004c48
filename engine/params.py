"""The parameter bus: the one thing every controller (GUI, OSC, MIDI, presets) writes to.

Why this shape:
- Setters are cheap, thread-safe and coalescing: they overwrite the latest value under a
  short lock, so a flood of values for one knob costs nothing downstream — the generation
  thread only ever sees the newest.
- `snapshot()` returns an immutable `Snapshot`, rebuilt only after a change, so the
  generation thread can read all parameters once per step without holding any lock.
- Feedback (knob values, meters, status) goes to subscribers from a dispatcher thread at a
  bounded rate (≤ 30 Hz by default), never from the audio callback or the generation thread.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from engine import limits
from engine.automation import check_points
from engine.errors import MgsteerError

CURVES = ("linear", "exp", "log")


@dataclass(frozen=True)
class Knob:
    """A concept knob: a value in [0, 1] mapped through `curve` onto an α range, applied to
    one or more SAE features with weights."""

    label: str = ""
    features: tuple[tuple[int, float], ...] = ()
    lo: float = 0.0
    hi: float = 1.0
    curve: str = "linear"
    value: float = 0.0
    # (seconds, value) breakpoints the engine moves the knob along, looped or held at the end
    # (a preset's `automation`); while set, `value` is not used. Turning the knob clears it.
    automation: tuple[tuple[float, float], ...] = ()
    loop: bool = False

    def alpha(self) -> float:
        return self.alpha_at(self.value)

    def alpha_at(self, v):
        """α for value `v` (a float or a tensor of them). linear: straight; exp: v², fine
        control near the bottom; log: √v, fast start."""
        shaped = v * v if self.curve == "exp" else v**0.5 if self.curve == "log" else v
        return self.lo + (self.hi - self.lo) * shaped

    @property
    def bipolar(self) -> bool:
        """A range through 0: the knob pushes either way, with no push somewhere inside."""
        return self.lo < 0 < self.hi

    def value_for(self, alpha: float) -> float:
        """The knob value (0–1) whose α is `alpha`, or the nearer end when it is out of range."""
        if self.hi == self.lo:
            return 0.0
        shaped = min(1.0, max(0.0, (alpha - self.lo) / (self.hi - self.lo)))
        return math.sqrt(shaped) if self.curve == "exp" else shaped * shaped if self.curve == "log" else shaped


@dataclass(frozen=True)
class Snapshot:
    """Everything the generation thread needs for one step; never mutated."""

    version: int
    knobs: tuple[Knob, ...]
    features: Mapping[int, float]
    prompt: str
    playing: bool
    reset_count: int
    smoothing_ms: float
    changed_at: float  # time.perf_counter() of the change that made this version
    follow_count: int = 0  # "follow the melody now" presses (a melody model re-primes on the input)

    def alphas(self) -> dict[int, float]:
        """Per-feature steering strength: knob contributions plus direct strengths, each sum
        held within ±MAX_ALPHA (several knobs on one feature cannot add up past it). Direct
        strengths are within it already (`set_feature`): only the sums knobs touch are held,
        so thousands of direct features cost one dict copy, not a Python pass over each."""
        out: dict[int, float] = dict(self.features)
        touched = set()
        for knob in self.knobs:
            if knob.automation:  # the engine plays it as a lane (engine.automation)
                continue
            a = knob.alpha()
            for feature, weight in knob.features:
                out[feature] = out.get(feature, 0.0) + a * weight
                touched.add(feature)
        top = limits.MAX_ALPHA
        for feature in touched:
            out[feature] = min(top, max(-top, out[feature]))
        return out


@dataclass
class Feedback:
    """What subscribers receive, coalesced since their last call."""

    knobs: tuple[Knob, ...] | None = None
    meters: Mapping[int, float] | None = None
    status: Mapping[str, Any] | None = None
    prompt: str | None = None


Subscriber = Callable[[Feedback], None]


@dataclass
class _State:
    knobs: list[Knob]
    features: dict[int, float] = field(default_factory=dict)
    prompt: str = "simple melody"
    playing: bool = True
    reset_count: int = 0
    smoothing_ms: float = 50.0
    follow_count: int = 0


class ParameterBus:
    """Thread-safe parameters with immutable snapshots and rate-limited feedback."""

    def __init__(
        self,
        knob_count: int = 8,
        prompt: str = "simple melody",
        smoothing_ms: float = 50.0,
        feature_count: int | None = None,
        feedback_hz: float = 30.0,
    ) -> None:
        self.feature_count = feature_count
        self.feedback_hz = feedback_hz
        # The model's own prompt bound (tokens): set by the host that knows the tokenizer.
        self.prompt_check: Callable[[str], str] = limits.prompt_text
        self._lock = threading.Lock()
        knobs = [Knob() for _ in range(knob_count)]
        self._state = _State(knobs=knobs, prompt=limits.prompt_text(prompt), smoothing_ms=_smoothing(smoothing_ms))
        self._version = 0
        self._changed_at = time.perf_counter()
        self._snapshot: Snapshot | None = None
        self._batching = False
        self._batch_lock = threading.Lock()
        self._subscribers: list[Subscriber] = []
        self._pending = Feedback()
        self._wake = threading.Event()
        self._closed = False
        self._dispatcher: threading.Thread | None = None

    # ---- setters (any thread) -------------------------------------------------------------
    def _change(self, mutate: Callable[[_State], None], knobs_changed: bool = False) -> None:
        with self._lock:
            mutate(self._state)
            self._version += 1
            self._changed_at = time.perf_counter()
            if not self._batching:
                self._snapshot = None
            if knobs_changed:
                self._pending.knobs = tuple(self._state.knobs)
        self._wake.set()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Changes inside reach the generation thread as one snapshot (a preset: prompt,
        features and every knob at once), not as one half-applied state per setter."""
        with self._batch_lock:
            with self._lock:
                self._batching = True
            try:
                yield
            finally:
                with self._lock:
                    self._batching = False
                    self._snapshot = None

    def set_knob(self, index: int, value: float) -> float:
        """Set knob `index` to `value` (clamped to [0, 1]); returns the value applied."""
        self._check_knob(index)
        value = limits.clamped(value, f"knob {index} value", 0.0, 1.0)
        # A hand on an automated knob takes it over: the automation stops where it is.
        turned = {"value": value, "automation": ()}
        self._change(lambda s: s.knobs.__setitem__(index, replace(s.knobs[index], **turned)), knobs_changed=True)
        return value

    def automate_knob(self, index: int, points: list[tuple[float, float]], loop: bool = False) -> None:
        """Move knob `index` along (seconds, value) breakpoints from now, linear between,
        looped or held at the last; [] stops it (the knob keeps its set value)."""
        self._check_knob(index)
        curve = check_points(points, f"knob {index} automation") if points else ()
        for _, v in curve:
            limits.within(v, f"knob {index} automation value", 0.0, 1.0)
        auto = {"automation": curve, "loop": bool(loop) and bool(curve)}
        self._change(lambda s: s.knobs.__setitem__(index, replace(s.knobs[index], **auto)), knobs_changed=True)

    def configure_knob(
        self,
        index: int,
        *,
        label: str | None = None,
        features: list[tuple[int, float]] | None = None,
        lo: float | None = None,
        hi: float | None = None,
        curve: str | None = None,
    ) -> None:
        """Change a knob's label, features (id, weight), α range or curve; None leaves a field."""
        self._check_knob(index)
        changes: dict[str, Any] = {}
        if label is not None:
            changes["label"] = _label(label)
        if features is not None:
            top = limits.MAX_WEIGHT
            changes["features"] = tuple(
                (self._check_feature(f), limits.within(w, f"weight of feature {f}", -top, top)) for f, w in features
            )
        if lo is not None:
            changes["lo"] = limits.alpha(lo, f"knob {index} range low")
        if hi is not None:
            changes["hi"] = limits.alpha(hi, f"knob {index} range high")
        if curve is not None:
            if curve not in CURVES:
                raise MgsteerError(f"unknown knob curve '{curve}': use {', '.join(CURVES)}")
            changes["curve"] = curve
        self._change(lambda s: s.knobs.__setitem__(index, replace(s.knobs[index], **changes)), knobs_changed=True)

    def set_feature(self, feature: int, alpha: float) -> float:
        """Direct strength for one feature (0 removes it), clamped to ±MAX_ALPHA like a knob at
        its end; returns the strength applied."""
        self._check_feature(feature)
        top = limits.MAX_ALPHA
        alpha = limits.clamped(limits.finite(alpha, f"strength of feature {feature}"), "strength", -top, top)

        def mutate(s: _State) -> None:
            if alpha == 0.0:
                s.features.pop(feature, None)
            else:
                s.features[feature] = alpha

        self._change(mutate)
        return alpha

    def clear_features(self) -> None:
        self._change(lambda s: s.features.clear())

    def set_prompt(self, prompt: str) -> None:
        prompt = self.prompt_check(prompt)
        self._change(lambda s: setattr(s, "prompt", prompt))
        with self._lock:
            self._pending.prompt = prompt

    def set_smoothing(self, ms: float) -> None:
        ms = _smoothing(ms)
        self._change(lambda s: setattr(s, "smoothing_ms", ms))

    def play(self) -> None:
        self._change(lambda s: setattr(s, "playing", True))

    def stop(self) -> None:
        self._change(lambda s: setattr(s, "playing", False))

    def reset(self) -> None:
        """Start the music afresh (new token context), keeping knobs and prompt."""
        self._change(lambda s: setattr(s, "reset_count", s.reset_count + 1))

    def follow_melody(self) -> None:
        """Take the live melody input's last seconds as the condition now (a melody model
        re-primes on it at once, instead of at its next scheduled re-prime)."""
        self._change(lambda s: setattr(s, "follow_count", s.follow_count + 1))

    # ---- generation thread ----------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """The current parameters; the same object until something changes."""
        snap = self._snapshot
        if snap is not None:
            return snap
        with self._lock:
            s = self._state
            snap = Snapshot(
                version=self._version,
                knobs=tuple(s.knobs),
                features=MappingProxyType(dict(s.features)),
                prompt=s.prompt,
                playing=s.playing,
                reset_count=s.reset_count,
                smoothing_ms=s.smoothing_ms,
                changed_at=self._changed_at,
                follow_count=s.follow_count,
            )
            self._snapshot = snap
        return snap

    def publish_meters(self, meters: Mapping[int, float]) -> None:
        with self._lock:
            self._pending.meters = meters
        self._wake.set()

    def publish_status(self, status: Mapping[str, Any]) -> None:
        with self._lock:
            self._pending.status = status
        self._wake.set()

    # ---- feedback ---------------------------------------------------------------------------
    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call `callback(Feedback)` at most `feedback_hz` times a second; returns unsubscribe."""
        with self._lock:
            self._subscribers.append(callback)
            if self._dispatcher is None:
                self._dispatcher = threading.Thread(target=self._dispatch, name="mgsteer-feedback", daemon=True)
                self._dispatcher.start()

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def _dispatch(self) -> None:
        period = 1.0 / self.feedback_hz
        while not self._closed:
            self._wake.wait(timeout=0.5)
            self._wake.clear()
            with self._lock:
                pending, self._pending = self._pending, Feedback()
                subscribers = list(self._subscribers)
            if pending.knobs or pending.meters or pending.status or pending.prompt:
                for callback in subscribers:
                    try:
                        callback(pending)
                    except Exception as exc:  # a broken subscriber must not stop the others
                        print(f"mgsteer: feedback subscriber failed: {exc}")
            time.sleep(period)

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        if self._dispatcher is not None:
            self._dispatcher.join(timeout=2)

    # ---- validation -------------------------------------------------------------------------
    def _check_knob(self, index: int) -> None:
        if not isinstance(index, int) or not 0 <= index < len(self._state.knobs):
            raise MgsteerError(f"unknown knob {index}: knobs are 0..{len(self._state.knobs) - 1}")

    def _check_feature(self, feature: int) -> int:
        if (
            not isinstance(feature, int)
            or feature < 0
            or (self.feature_count is not None and feature >= self.feature_count)
        ):
            top = "" if self.feature_count is None else f": features are 0..{self.feature_count - 1}"
            raise MgsteerError(f"unknown feature id {feature}{top}")
        return feature


def _smoothing(ms: Any) -> float:
    return limits.within(ms, "smoothing (ms)", 0.0, limits.MAX_SMOOTHING_MS)


MAX_LABEL = 200


def _label(text: Any) -> str:
    text = str(text)
    if len(text) > MAX_LABEL:
        raise MgsteerError(f"a knob label is at most {MAX_LABEL} characters, got {len(text)}")
    return text
