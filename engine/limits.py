"""The bounds of every number and text that can reach the model, in one place.

Why one module: the same value arrives from the command line, OSC, MIDI, presets and (later)
the GUI. Each entry checks it against the bound named here, so a value refused on one road
is refused on all, with the same words. Two policies:
- *clamp* where a musician would expect it: a live control past its end sits at its end
  (a feature strength of 1e30 is the strongest strength), and the caller is told;
- *refuse* everywhere else (command lines, files): one line naming the value and its bound.
"""

from __future__ import annotations

import math
import re
from typing import Any

from engine.errors import MgsteerError

# Steering strength α is in units of the feature's largest observed activation β; far past a
# few dozen β the residual stream is noise, and around 1e18 it overflows float32.
MAX_ALPHA = 50.0
MAX_WEIGHT = 10.0  # a knob's per-feature weight
MAX_SMOOTHING_MS = 10_000.0
MAX_SEED = 2**63 - 1
MAX_PROMPT_TOKENS = 256  # T5 reads 512; MusicGen's captions are far shorter
MAX_PROMPT_CHARS = 4 * MAX_PROMPT_TOKENS * 8  # a cheap bound before tokenizing (≥ 8 characters a token)
MAX_GUIDANCE = 100.0
MAX_TEMPERATURE = 100.0
MAX_TOP_K = 65_536
MAX_PORT = 65_535
MAX_KNOBS = 16  # the most knobs a bank (and a preset) holds
LATENCY_PROFILES = ("default", "low")  # engine.host.HostConfig.for_latency


def _float(value: Any, what: str) -> float:
    """`value` as a float (booleans are not numbers here), or one line saying why not."""
    if isinstance(value, bool):
        raise MgsteerError(f"{what} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise MgsteerError(f"{what} must be a number, got {value!r}"[:200]) from exc


def finite(value: Any, what: str) -> float:
    """`value` as a finite float, or one line saying why not."""
    number = _float(value, what)
    if not math.isfinite(number):
        raise MgsteerError(f"{what} must be finite, got {number}")
    return number


def within(value: Any, what: str, low: float, high: float) -> float:
    """Refuse: a finite number in [low, high]."""
    number = finite(value, what)
    if not low <= number <= high:
        raise MgsteerError(f"{what} must be between {low:g} and {high:g}, got {number:g}")
    return number


def clamped(value: Any, what: str, low: float, high: float) -> float:
    """Clamp: a finite number pulled into [low, high] (NaN and non-numbers are still refused;
    ±inf clamps like any other far value)."""
    number = _float(value, what)
    if math.isnan(number):
        raise MgsteerError(f"{what} must be a number, got nan")
    return min(high, max(low, number))


def alpha(value: Any, what: str = "steering strength") -> float:
    """Refuse a strength outside ±MAX_ALPHA (command lines, presets)."""
    return within(value, what, -MAX_ALPHA, MAX_ALPHA)


def integer(value: Any, what: str, low: int, high: int) -> int:
    """Refuse: an integer in [low, high] (a float with an integer value counts)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise MgsteerError(f"{what} must be an integer, got {value!r}"[:200])
    if not low <= value <= high:
        raise MgsteerError(f"{what} must be between {low} and {high}, got {value}")
    return value


_DECIMAL = re.compile(r"[0-9]{1,18}")


def decimal(text: str, what: str) -> int:
    """An index written as text: plain ASCII digits only, at most 18 of them ("٣", "²" and
    "3.0" are refused, as are signs and spaces; "007" is refused too, so that one number has
    one spelling and two names never alias one knob)."""
    if not _DECIMAL.fullmatch(text) or (len(text) > 1 and text[0] == "0"):
        raise MgsteerError(f"{what} must be a plain decimal number, got {text!r}"[:200])
    return int(text)


def port(value: Any, what: str = "port") -> int:
    """A UDP/TCP port; 0 asks the system for a free one."""
    return integer(value, what, 0, MAX_PORT)


def prompt_text(text: Any, what: str = "prompt") -> str:
    """A non-empty prompt within the cheap character bound (the token bound needs a tokenizer:
    `prompt_tokens`)."""
    if not isinstance(text, str):
        raise MgsteerError(f"{what} must be text, got {type(text).__name__}")
    text = text.strip()
    if not text:
        raise MgsteerError(f"{what} must not be empty")
    if len(text) > MAX_PROMPT_CHARS:
        raise MgsteerError(f"{what} is {len(text)} characters long; the limit is {MAX_PROMPT_TOKENS} tokens")
    return text


def prompt_tokens(tokenizer, text: str, what: str = "prompt") -> str:
    """Refuse a prompt longer than MAX_PROMPT_TOKENS tokens of the model's own tokenizer: the
    text encoder's memory grows with the square of its length."""
    text = prompt_text(text, what)
    token_count(len(tokenizer(text)["input_ids"]), what)
    return text


def token_count(count: int, what: str = "prompt") -> None:
    """Refuse a prompt of more than MAX_PROMPT_TOKENS tokens (counted by the caller's tokenizer)."""
    if count > MAX_PROMPT_TOKENS:
        raise MgsteerError(f"{what} is {count} tokens long; the limit is {MAX_PROMPT_TOKENS}")
