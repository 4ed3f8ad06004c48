"""A strict check of an OSC datagram's layout before python-osc parses it.

Why: python-osc is lenient. It reads a float tag with no bytes as 0.0, a bundle element whose
size runs past the datagram as whatever bytes remain, and drops an unrecognisable bundle
element with only a log line. A live server must neither apply a value nobody sent nor lose
a message without an answer, so a datagram whose layout is not exactly OSC 1.0/1.1 is
refused (and answered) as a whole.
"""

from __future__ import annotations

BUNDLE = b"#bundle\x00"
# The type tags whose bytes python-osc consumes as it reads them, and which stand for values
# this address space can take. Refused: `S`, `c` and `I`, which python-osc skips without
# reading their bytes (every later argument would be read from the wrong place), and `r`
# (colour) and `m` (MIDI message), which it returns as plain integers (a colour would set a
# knob).
FIXED = {"i": 4, "f": 4, "d": 8, "h": 8, "t": 8, "T": 0, "F": 0, "N": 0, "[": 0, "]": 0}
REFUSED = {"S": "symbol", "c": "char", "I": "impulse", "r": "RGBA colour", "m": "MIDI message"}
MAX_DEPTH = 8


class Malformed(ValueError):
    """The datagram is not laid out as OSC."""


def check_datagram(data: bytes, depth: int = 0) -> None:
    """Raise Malformed unless `data` is exactly one well-formed OSC message or bundle."""
    if depth > MAX_DEPTH:
        raise Malformed(f"bundles nested deeper than {MAX_DEPTH}")
    if data.startswith(BUNDLE):
        _check_bundle(data, depth)
    elif data.startswith(b"/"):
        _check_message(data)
    else:
        raise Malformed("neither a message (/…) nor a bundle (#bundle)")


def _check_bundle(data: bytes, depth: int) -> None:
    if len(data) < 16:
        raise Malformed("bundle shorter than its header")
    at = 16
    while at < len(data):
        if at + 4 > len(data):
            raise Malformed("bundle element size cut short")
        size = int.from_bytes(data[at : at + 4], "big")
        at += 4
        if size == 0 or size % 4 or at + size > len(data):
            raise Malformed(f"bundle element of {size} bytes does not fit the datagram")
        check_datagram(data[at : at + size], depth + 1)
        at += size


def _string_end(data: bytes, at: int, what: str) -> int:
    """Index after the NUL-terminated, 4-byte-padded string starting at `at`."""
    end = data.find(b"\x00", at)
    if end < 0:
        raise Malformed(f"{what} is not terminated")
    padded = (end + 4) & ~3
    if padded > len(data):
        raise Malformed(f"{what} padding runs past the datagram")
    return padded


def _check_message(data: bytes) -> None:
    at = _string_end(data, 0, "address")
    if len(data) % 4:
        raise Malformed("message length is not a multiple of 4")
    if at == len(data):
        return  # no type tags: an OSC 1.0 message without arguments
    if data[at : at + 1] != b",":
        raise Malformed("type tags must start with ','")
    tags_end = _string_end(data, at, "type tags")
    tags = data[at + 1 : data.index(b"\x00", at)]
    at = tags_end
    for tag in tags.decode("ascii", errors="replace"):
        if tag in FIXED:
            at += FIXED[tag]
        elif tag == "s":
            at = _string_end(data, at, "string argument")
        elif tag == "b":
            if at + 4 > len(data):
                raise Malformed("blob size cut short")
            size = int.from_bytes(data[at : at + 4], "big")
            at += 4 + ((size + 3) & ~3)
        elif tag in REFUSED:
            raise Malformed(f"type tag {tag!r} ({REFUSED[tag]}) is not taken here: send i, f, d, h, s, b, T, F or N")
        else:
            raise Malformed(f"unknown type tag {tag!r}")
        if at > len(data):
            raise Malformed(f"argument of type {tag!r} runs past the datagram")
    if at != len(data):
        raise Malformed(f"{len(data) - at} bytes after the last argument")
