"""Fetch a pretrained checkpoint by hub id or local folder, failing in one clear line.

Why shared: MusicGen, CLAP and the audio classifier all load the same way — a local folder
as is, a hub id from the cache first, and only then the network, after a 10 s probe so an
unreachable hub costs one line instead of half a minute of retries.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from safetensors import SafetensorError
from transformers.utils import logging as hf_logging

from engine.errors import MgsteerError

T = TypeVar("T")

# MusicGen's pad and bos tokens (= the codebook size) lie outside the decoder's vocabulary by
# design, as in musicgen-small; transformers warns about that on every load, which would only
# alarm users. Only that warning is dropped: a load's other warnings still reach them.
_TOKEN_ID_WARNING = "must be `None` or an integer within the vocabulary"
for _name in ("transformers.configuration_utils", "transformers.models.musicgen.configuration_musicgen"):
    hf_logging.get_logger(_name).addFilter(lambda record: _TOKEN_ID_WARNING not in record.getMessage())


class NotCached(Exception):
    """Raised by a loader called with local_only=True when the hub id is not in the cache."""


def fetch_pretrained(spec: str, load: Callable[[str, bool], T], what: str, hint: str) -> T:
    """`load(source, local_only)` on a folder, or on a hub id cache-first then online.

    `what` names the checkpoint kind in errors ("model", "CLAP model"); `hint` says what to use
    instead. `load` raises NotCached (local_only) or MgsteerError (anything else); `load_parts`
    does both for plain `from_pretrained` calls."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise MgsteerError(f"{what} folder '{spec}' has no config.json; it is not a saved checkpoint")
        return load(str(path), True)
    if looks_like_path(spec):
        raise MgsteerError(f"{what} folder '{spec}' does not exist; {hint}")
    if spec.count("/") != 1:
        raise MgsteerError(f"{what} '{spec}' is neither a folder nor a hub id like owner/name; {hint}")
    try:
        return load(spec, True)
    except NotCached:
        parent = path.parent
        if parent.is_dir():  # "demo_out/wrld": a folder misspelt beside real ones, not a hub id
            near = ", ".join(sorted(p.name for p in parent.iterdir() if p.is_dir())[:8]) or "no folders"
            raise MgsteerError(f"{what} folder '{spec}' does not exist ('{parent}' holds: {near}); {hint}") from None
        probe_hub(spec, what, hint)
        return load(spec, False)


def load_parts(source: str, local_only: bool, what: str, kind: str, *classes, **model_kwargs) -> list:
    """`from_pretrained` of each class (model first; `model_kwargs` go to it) on one checkpoint,
    as the `load` of `fetch_pretrained`: NotCached when a cache-only load misses, otherwise one
    line — "cannot load" for I/O, "is not <kind>" for a checkpoint of another model type."""
    try:
        with bars_off():  # a loading bar on every start, in every log, says nothing a user needs
            return [
                cls.from_pretrained(source, local_files_only=local_only, **(model_kwargs if i == 0 else {}))
                for i, cls in enumerate(classes)
            ]
    except OSError as exc:
        if local_only and not Path(source).is_dir():
            raise NotCached(source) from exc
        raise MgsteerError(f"cannot load {what} '{source}': {first_line(exc)}") from exc
    except SafetensorError as exc:  # a weights file cut short or overwritten
        raise MgsteerError(f"cannot load {what} '{source}': its weights are damaged ({first_line(exc)})") from exc
    except ValueError as exc:  # a config of another model type
        raise MgsteerError(f"'{source}' is not {kind}: {first_line(exc)}") from exc


def probe_hub(spec: str, what: str, hint: str) -> None:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        HfApi().model_info(spec, timeout=10)
    except RepositoryNotFoundError as exc:
        raise MgsteerError(f"{what} '{spec}' is not on the hub; {hint}") from exc
    except Exception as exc:  # offline mode, DNS, refused, timeout, proxy: all mean "cannot fetch"
        raise MgsteerError(
            f"{what} '{spec}' is not in the local cache and the hub is unreachable ({first_line(exc)}); {hint}"
        ) from exc


@contextmanager
def quiet_transformers(bars: bool = True) -> Iterator[None]:
    """Only transformers' errors (and, with `bars=False`, none of its progress bars) inside.

    Why: building a model from code has no checkpoint to warn about, and a save's bar would
    break up a training run's own."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with contextlib.nullcontext() if bars else bars_off():
            yield
    finally:
        hf_logging.set_verbosity(verbosity)


@contextmanager
def bars_off() -> Iterator[None]:
    """None of transformers' own progress bars inside (the hub's download bars are its own)."""
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or os.sep in spec.strip("/").replace("/", "", 1)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]
