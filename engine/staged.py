"""Several files replaced together, so that a kill at any instant leaves one consistent set.

Why: a model folder (weights, config, tokenizer, world marker, optimizer, training state), an
SAE folder (config, weights, statistics) and an ONNX export (graphs and manifest) are each
read as one thing. Writing them in place, a kill between two files leaves new weights beside
an old state: a resume that silently mixes two steps, or a folder nothing can load.

So the files are written into `FOLDER/.staged/`, then a `COMMIT` list is written there (the
pointer, last), then each file is moved into place with an atomic rename, then the list is
removed. `settle(FOLDER)` — called by every reader before it reads — finishes a commit that a
kill interrupted (the list is there: every file is complete) or drops a half-written stage
(no list: the folder still holds the previous set). A folder is thus always the old set or
the new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

STAGE = ".staged"
COMMIT = "COMMIT"


@contextlib.contextmanager
def staged(folder: str | Path) -> Iterator[Path]:
    """Yield a stage folder to write the new files into; on a clean exit they replace their
    namesakes in `folder` together. An exception leaves `folder` as it was."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    settle(folder)
    stage = folder / STAGE
    stage.mkdir()
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    names = sorted(p.name for p in stage.iterdir())
    for name in names:
        _fsync(stage / name)
    _write_synced(stage / COMMIT, json.dumps(names))
    settle(folder)


def settle(folder: str | Path) -> None:
    """Finish or drop a stage a kill left behind (see the module docstring)."""
    stage = Path(folder) / STAGE
    if not stage.is_dir():
        return
    commit = stage / COMMIT
    try:
        names = json.loads(commit.read_text()) if commit.is_file() else None
    except (OSError, ValueError):
        names = None  # a list cut short: its files are all complete, but trust none of it
    if names is None:
        shutil.rmtree(stage, ignore_errors=True)
        return
    for name in names:
        source = stage / Path(name).name
        if source.exists():
            target = Path(folder) / source.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(source, target)
    commit.unlink()
    shutil.rmtree(stage, ignore_errors=True)


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync(path: Path) -> None:
    if path.is_file():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
