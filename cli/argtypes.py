"""Command-line value types: every numeric flag is parsed through a bound of `engine.limits`.

Why at parse time: a bad value is refused before any model loads, in argparse's own words
("argument --seconds: …"), and `OneLineParser` turns argparse's usage-plus-error into the one
`mgsteer: error: …` line every other bad input gets.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

from engine import limits
from engine.errors import MgsteerError


class DefaultsFormatter(argparse.HelpFormatter):
    """Each flag's default, once: not for a required flag, a default of nothing (None, False,
    an empty list), nor where the help already says what happens when it is not given."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text, default = action.help or "", action.default
        nothing = default is None or default is False or default == [] or default is argparse.SUPPRESS
        if action.required or nothing or "default" in text or "not given" in text:
            return text
        return f"{text} (default: %(default)s)"


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit status 2, and whose help shows
    each flag's default."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"mgsteer: error: {' '.join(message.split())} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _typed(parse: Callable[[str], object]) -> Callable[[str], object]:
    def convert(text: str):
        try:
            return parse(text)
        except MgsteerError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def number(low: float, high: float, *, above: bool = False) -> Callable[[str], float]:
    """A finite float in [low, high] (or (low, high] with `above`)."""

    def parse(text: str) -> float:
        value = limits.finite(_float(text), "value")
        if above and value <= low:
            raise MgsteerError(f"value must be {'positive' if low == 0 else f'greater than {low:g}'}, got {value:g}")
        return limits.within(value, "value", low, high)

    return _typed(parse)


def whole(low: int, high: int) -> Callable[[str], int]:
    """An integer in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise MgsteerError(f"must be an integer, got {text!r}") from None
        return limits.integer(value, "value", low, high)

    return _typed(parse)


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise MgsteerError(f"must be a number, got {text!r}") from None


PORT = whole(0, limits.MAX_PORT)
SEED = whole(0, limits.MAX_SEED)
ALPHA = number(-limits.MAX_ALPHA, limits.MAX_ALPHA)
SMOOTHING_MS = number(0.0, limits.MAX_SMOOTHING_MS)
SECONDS = number(0.0, 24 * 3600.0, above=True)  # the model's own limit is checked once it is loaded
CLIP_SECONDS = number(0.1, 3600.0)  # harvest clips: a tenth of a second (5 frames) at least
COUNT = whole(1, 10**9)
