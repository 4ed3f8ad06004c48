"""Output paths checked before any long work starts.

Why: a render, a harvest or an evaluation can run for minutes to hours; finding out at the
end that `--out` names a folder, an unknown format or an unwritable place loses all of it.
Each command checks its outputs first, before loading a model.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
from pathlib import Path

from engine.errors import MgsteerError
from engine.inputs import expand, os_reason

NAME_MAX = 255  # bytes in one file or folder name on Linux, macOS and Windows file systems


def output_file(path: str | Path, suffixes: tuple[str, ...], what: str = "--out") -> Path:
    """A file we may create or replace: not a folder, one of `suffixes`, in a writable folder."""
    path = _usable(path, what)
    if path.is_dir():
        raise MgsteerError(f"{what} '{path}' is a folder; give a file name ending in {' or '.join(suffixes)}")
    if path.suffix.lower() not in suffixes:
        kind = f"'{path.suffix}'" if path.suffix else "no extension"
        raise MgsteerError(f"{what} '{path}' has {kind}; this writes {' or '.join(suffixes)} files")
    _writable_parent(path, what)
    if path.exists() and not os.access(path, os.W_OK):
        raise MgsteerError(f"{what} '{path}' exists and is not writable")
    return path


def output_dir(path: str | Path, what: str = "--out") -> Path:
    """A folder we may create or write into: not an existing file, in a writable place."""
    path = _usable(path, what)
    if path.exists() and not path.is_dir():
        raise MgsteerError(f"{what} '{path}' is an existing file; give a folder")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise MgsteerError(f"{what} folder '{path}' is not writable")
        return path
    _writable_parent(path, what)
    return path


def _usable(path: str | Path, what: str) -> Path:
    """`path` expanded (`~user` too), with names the file system takes, and no link loop on
    the way: checked now rather than when the first byte is written, after the work."""
    path = expand(path)
    for part in path.parts:
        size = len(os.fsencode(part))
        if size > NAME_MAX:
            raise MgsteerError(f"{what}: a name in '{str(path)[:80]}…' is {size} bytes long; at most {NAME_MAX}")
    try:
        os.stat(path)
    except FileNotFoundError:
        pass
    except OSError as exc:  # a link loop, a component that is a file, no permission to look
        raise MgsteerError(f"{what} '{path}': {os_reason(exc)}") from exc
    return path


def _writable_parent(path: Path, what: str) -> None:
    """The nearest existing ancestor must be a writable folder (the rest is created)."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise MgsteerError(f"{what} '{path}': '{parent}' is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MgsteerError(f"{what} '{path}': cannot write in '{parent}'")


def clear_own(folder: Path, own: tuple[str, ...], marks: tuple[str, ...], what: str) -> list[str]:
    """Clear `folder` for a fresh run of `what`: remove the entries whose names match the
    `own` patterns (what that command writes), keep everything else and return its names.

    Why not `rmtree`: `--overwrite` on the wrong folder (a home folder, a folder of songs, one
    holding the activation store the run is about to read) must not delete what the command
    did not write. A folder with none of `marks` was not written by `what` at all: refused."""
    entries = list(folder.iterdir())
    if not any((folder / mark).exists() for mark in marks):
        raise MgsteerError(f"'{folder}' holds no {what}, and --overwrite clears only that; use an empty or new --out")
    kept = []
    for entry in entries:
        if not any(fnmatch.fnmatchcase(entry.name, pattern) for pattern in own):
            kept.append(entry.name + ("/" if entry.is_dir() else ""))
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    return sorted(kept)
