"""Which runtime steps the model: torch (None), or ONNX Runtime on an exported folder, or
auto: the fastest on this machine (`engine.runtime_choice`).

One place for the choice, because the command line's player and the window open the same
engine with the same flags.
"""

from __future__ import annotations

import os

from engine.errors import MgsteerError
from engine.model import LoadedModel
from sae.files import LoadedSAE

BACKENDS = ("auto", "torch", "onnx")


def default_backend() -> str:
    """auto, unless $MGSTEER_BACKEND names another: a machine (or a test suite) that should
    never export or time anything says so once."""
    return os.environ.get("MGSTEER_BACKEND") or "auto"


def open_backend(name: str, onnx_dir: str | None, precision: str, lm: LoadedModel, sae: LoadedSAE | None, say=print):
    """The ONNX backend `name` asks for, checked against model and SAE; None for torch. With
    auto, `say` hears what was chosen and why."""
    if name not in BACKENDS:
        raise MgsteerError(f"unknown backend '{name}': use {', '.join(BACKENDS)}")
    if name == "auto":
        if precision != "auto":
            raise MgsteerError(f"--precision {precision} picks an ONNX step graph: use it with --backend onnx")
        from engine.runtime_choice import choose_backend

        return choose_backend(lm, sae.cfg.hook_layer if sae is not None else None, onnx_dir, say)
    if name != "onnx":
        return None
    if not onnx_dir:
        raise MgsteerError(f"--backend onnx needs --onnx-dir DIR: make one with mgsteer export-onnx --model {lm.spec}")
    from engine.onnx_backend import OnnxBackend  # onnxruntime only where it is asked for

    return OnnxBackend(onnx_dir, lm, sae.cfg.hook_layer if sae is not None else None, precision)


def runtime_name(lm: LoadedModel, backend) -> str:
    """What steps the model, in the words a status header uses: "torch float32", "onnx int4"."""
    if backend is None:
        return f"torch {str(lm.dtype).removeprefix('torch.')}"
    return f"onnx {backend.precision}"
