"""Files a user hands us, bounded before they are read (JSON above all).

Why: presets, catalogs, SAE configs and checkpoints' states come from other people, the
network and damaged disks. Python's `json` reads whatever it is given: a preset that is
`/dev/zero` never ends, a FIFO hangs, 100 000 nested lists raise `RecursionError` (which no
caller expects, and which aborts the Qt window), a 5 000-digit integer raises a `ValueError`
about digit limits. Every JSON a user can hand us goes through here: regular files only, a
size bound named by the caller, integers of at most `MAX_INT_DIGITS` digits, nesting at most
`MAX_DEPTH` deep. Anything past those is one `MgsteerError` line.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

from engine.errors import MgsteerError

MAX_DEPTH = 64  # a preset nests 4 deep, a catalog 6
MAX_INT_DIGITS = 30  # well past any index, seed or count we read (2**63 has 19 digits)
PRESET_BYTES = 1 << 20  # 1 MiB: a 16-knob preset with long labels is a few KB
CONFIG_BYTES = 1 << 20  # cfg.json, world.json, train_state.json, manifests, index files
CATALOG_BYTES = 512 << 20  # features.json of a 131 072-feature SAE with examples and labels
TEXT_BYTES = 16 << 20  # a prompts list or a captions CSV


class _Unbounded(ValueError):
    """An integer past MAX_INT_DIGITS (raised inside the parser)."""


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Unbounded(f"an integer of {len(text.lstrip('-'))} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def regular_file(path: str | Path, what: str) -> Path:
    """`path` if it is an existing regular file (not a FIFO, device, folder or socket), or
    one line saying why not; a name too long or a link loop is said too."""
    path = expand(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise MgsteerError(f"cannot read {what} '{_short(path)}': {os_reason(exc)}") from exc
    if stat.S_ISDIR(mode):
        raise MgsteerError(f"{what} '{_short(path)}' is a folder, not a file")
    if not stat.S_ISREG(mode):
        raise MgsteerError(f"{what} '{_short(path)}' is not a regular file (a pipe or device); refused")
    return path


def read_bytes(path: str | Path, what: str, max_bytes: int) -> bytes:
    """A regular file's bytes, refused when larger than `max_bytes`."""
    path = regular_file(path, what)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise MgsteerError(f"{what} '{_short(path)}' is {size:,} bytes; the limit is {max_bytes:,}")
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise MgsteerError(f"cannot read {what} '{_short(path)}': {os_reason(exc)}") from exc
    if len(data) > max_bytes:  # grew while read
        raise MgsteerError(f"{what} '{_short(path)}' is over {max_bytes:,} bytes; refused")
    return data


def parse_json(data: bytes | str, what: str) -> Any:
    """JSON text to Python, within the integer and depth bounds, or one line."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        value = json.loads(text, parse_int=_bounded_int)
    except UnicodeDecodeError as exc:
        raise MgsteerError(f"{what} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except RecursionError:
        raise MgsteerError(f"{what} nests deeper than {MAX_DEPTH} levels; refused") from None
    except _Unbounded as exc:
        raise MgsteerError(f"{what} holds {exc}; refused") from None
    except json.JSONDecodeError as exc:
        raise MgsteerError(f"{what} is not valid JSON ({exc})") from exc
    except ValueError as exc:  # e.g. a float literal the parser cannot convert
        raise MgsteerError(f"{what} is not valid JSON ({exc})"[:300]) from exc
    if _depth(value) > MAX_DEPTH:
        raise MgsteerError(f"{what} nests deeper than {MAX_DEPTH} levels; refused")
    return value


def read_json(path: str | Path, what: str, max_bytes: int = CONFIG_BYTES) -> Any:
    """A JSON file, bounded (size, integers, depth; regular files only), or one line."""
    return parse_json(read_bytes(path, what, max_bytes), f"{what} '{_short(Path(path))}'")


def read_json_object(path: str | Path, what: str, max_bytes: int = CONFIG_BYTES) -> dict:
    """`read_json` that must hold a JSON object."""
    value = read_json(path, what, max_bytes)
    if not isinstance(value, dict):
        raise MgsteerError(f"{what} '{_short(Path(path))}' must hold a JSON object, not {type(value).__name__}")
    return value


def _depth(value: Any) -> int:
    """Nesting depth of lists and objects, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            return depth
        stack.extend((child, depth + 1) for child in children)
    return deepest


def os_reason(exc: OSError) -> str:
    """An OSError in a few words (its strerror), with what to do for the usual ones."""
    hint = {
        errno.ENOSPC: "the disk is full",
        errno.ENAMETOOLONG: "the name is too long",
        errno.ELOOP: "a symbolic link loop",
        errno.EROFS: "read-only file system",
    }.get(exc.errno or 0)
    return hint or exc.strerror or str(exc)


def expand(path: str | Path) -> Path:
    """`~` and `~user` expanded; an unknown user is one line (pathlib raises RuntimeError)."""
    text = os.path.expanduser(str(path))
    if text.startswith("~"):
        raise MgsteerError(f"'{_short(Path(text))}': no such user's home folder")
    return Path(text)


def _short(path: Path) -> str:
    """A path for a message: very long names are cut in the middle."""
    text = str(path)
    return text if len(text) <= 120 else f"{text[:60]}…{text[-50:]}"
