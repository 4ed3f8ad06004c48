"""MIDI CC → knob mapping: learn, 14-bit pairs, pick-up and jump, relative encoders.

`MidiController.handle(message)` is the one entry point: a port's input thread calls it
for every message, and so do the tests. It only writes to the parameter bus.

Modes:
- jump: the knob follows the control at once.
- pickup (soft takeover): after the knob moved elsewhere (OSC, a preset, the GUI), the control
  has no effect until it passes the knob's value, so nothing jumps audibly.
- relative: an endless encoder sends increments: 1..63 up, 65..127 down (offset 64,
  "two's complement" style), scaled by `step`.
A 14-bit binding pairs CC n (most significant 7 bits) with CC n + 32 (least significant).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.errors import MgsteerError
from engine.params import ParameterBus

MODES = ("jump", "pickup", "relative")


@dataclass(frozen=True)
class Binding:
    cc: int
    knob: int
    mode: str = "jump"
    channel: int | None = None  # 0..15, None: any channel
    bits: int = 7  # 7, or 14 for an MSB/LSB pair (cc, cc + 32)
    step: float = 1 / 128  # relative mode: knob change per encoder tick

    def validate(self, where: str, knob_count: int) -> Binding:
        if not (isinstance(self.cc, int) and 0 <= self.cc <= 127):
            raise MgsteerError(f"{where}.cc: must be 0..127, got {self.cc!r}")
        if self.bits == 14 and self.cc > 31:
            raise MgsteerError(f"{where}.cc: a 14-bit pair needs cc 0..31 (its LSB is cc + 32), got {self.cc}")
        if self.bits not in (7, 14):
            raise MgsteerError(f"{where}.bits: must be 7 or 14, got {self.bits!r}")
        if not (isinstance(self.knob, int) and 0 <= self.knob < knob_count):
            raise MgsteerError(f"{where}.knob: must be 0..{knob_count - 1}, got {self.knob!r}")
        if self.mode not in MODES:
            raise MgsteerError(f"{where}.mode: must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.channel is not None and not (isinstance(self.channel, int) and 0 <= self.channel <= 15):
            raise MgsteerError(f"{where}.channel: must be 0..15 or null, got {self.channel!r}")
        if not (isinstance(self.step, (int, float)) and 0 < self.step <= 1):
            raise MgsteerError(f"{where}.step: must be in (0, 1], got {self.step!r}")
        return self


def parse_bindings(raw: Any, knob_count: int, where: str = "midi.map") -> list[Binding]:
    """Bindings from a preset's `midi.map` list of objects."""
    if not isinstance(raw, list):
        raise MgsteerError(f"{where}: must be a list")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise MgsteerError(f"{where}[{i}]: must be a JSON object")
        unknown = set(item) - set(Binding.__dataclass_fields__)
        if unknown:
            raise MgsteerError(f"{where}[{i}]: unknown field(s) {', '.join(sorted(unknown))}")
        if "cc" not in item or "knob" not in item:
            raise MgsteerError(f"{where}[{i}]: needs cc and knob")
        out.append(Binding(**item).validate(f"{where}[{i}]", knob_count))
    return out


class MidiController:
    """Turns control-change messages into knob values on the bus."""

    def __init__(
        self, bus: ParameterBus, bindings: list[Binding] | None = None, follow_note: int | None = None
    ) -> None:
        self.bus = bus
        self.follow_note = follow_note  # a note-on of it (any channel): follow the melody input now
        self.knob_count = len(bus.snapshot().knobs)
        self.bindings: list[Binding] = [b.validate("binding", self.knob_count) for b in bindings or []]
        self._armed: tuple[int, str, int] | None = None  # (knob, mode, bits) waiting for a control
        self._msb: dict[tuple[int, int], int] = {}
        self._picked: set[int] = set()  # knobs whose control has caught up (pick-up mode)
        self._last_sent: dict[int, float] = {}
        self.ignored = 0

    def learn(self, knob: int, mode: str = "jump", bits: int = 7) -> None:
        """Arm `knob`: the next control-change message binds its CC (and channel) to it."""
        Binding(cc=0, knob=knob, mode=mode, bits=bits).validate("learn", self.knob_count)
        self._armed = (knob, mode, bits)

    @property
    def learning(self) -> bool:
        return self._armed is not None

    def handle(self, message) -> float | None:
        """Apply one mido message; returns the knob value set, if any."""
        kind = getattr(message, "type", None)
        if kind == "note_on" and message.note == self.follow_note and message.velocity > 0:
            self.bus.follow_melody()
            return None
        if kind != "control_change":
            self.ignored += 1
            return None
        channel, cc, value = message.channel, message.control, message.value
        if self._armed is not None:
            knob, mode, bits = self._armed
            base = cc - 32 if bits == 14 and cc >= 32 else cc
            binding = Binding(cc=base, knob=knob, mode=mode, channel=channel, bits=bits)
            self.bindings = [b for b in self.bindings if b.knob != knob] + [binding.validate("learn", self.knob_count)]
            self._armed = None
            self._picked.discard(knob)
        for binding in self.bindings:
            if binding.channel is not None and binding.channel != channel:
                continue
            if cc == binding.cc or (binding.bits == 14 and cc == binding.cc + 32):
                return self._apply(binding, cc, value)
        self.ignored += 1
        return None

    def _apply(self, binding: Binding, cc: int, value: int) -> float | None:
        current = self.bus.snapshot().knobs[binding.knob].value
        if binding.mode == "relative":
            delta = value if value < 64 else value - 128
            return self.bus.set_knob(binding.knob, current + delta * binding.step)
        if binding.bits == 14:
            key = (binding.channel or 0, binding.cc)
            if cc == binding.cc:  # MSB: coarse value now, LSB to follow
                self._msb[key] = value
                target = (value << 7) / 16383
            else:
                target = ((self._msb.get(key, 0) << 7) | value) / 16383
        else:
            target = value / 127
        if binding.mode == "pickup" and not self._caught_up(binding.knob, current, target):
            return None
        self._last_sent[binding.knob] = target
        return self.bus.set_knob(binding.knob, target)

    def _caught_up(self, knob: int, current: float, target: float) -> bool:
        """Soft takeover: follow once the control reaches (or crosses) the knob's value."""
        if knob in self._picked and abs(self._last_sent.get(knob, current) - current) < 1e-9:
            return True
        previous = self._last_sent.get(knob)
        self._last_sent[knob] = target
        crossed = previous is not None and min(previous, target) <= current <= max(previous, target)
        if abs(target - current) <= 1 / 127 or crossed:
            self._picked.add(knob)
            return True
        self._picked.discard(knob)
        return False

    def binding_for(self, knob: int) -> Binding | None:
        return next((b for b in self.bindings if b.knob == knob), None)
