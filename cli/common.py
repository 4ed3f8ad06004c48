"""What every `mgsteer` subcommand shares: model and sampling flags, id lists, progress bars.

Why a module of its own: the command modules (`cli.main`, `cli.sae_commands`) both use these,
and neither imports the other for them.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable

from cli import argtypes as types
from engine import limits
from engine.errors import MgsteerError

DEFAULT_MODEL = "facebook/musicgen-small"


def model_args(p: argparse.ArgumentParser, default: str | None = DEFAULT_MODEL, default_text: str = "") -> None:
    given = f"; not given: {default_text}" if default_text else ""
    help_text = f"tiny, random-small, a hub id or a local folder{given}"
    p.add_argument("--model", default=default, help=help_text)
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, mps")
    p.add_argument("--dtype", default="auto", help="auto (float32), float32, float16, bfloat16")


def sae_args(p: argparse.ArgumentParser, help_text: str) -> None:
    p.add_argument("--sae", help=help_text)
    p.add_argument(
        "--concept", action="append", default=[], metavar="DIR",
        help="a knob from examples (mgsteer concept, or one the window made), added to the SAE as its next "
        "feature; repeatable; without --sae the first is feature 0",
    )  # fmt: skip


def steer_mode_args(p: argparse.ArgumentParser) -> None:
    from engine.steering import HALVES, MODES

    p.add_argument("--mode", default="add", choices=MODES, help="add a direction or clamp an activation")
    p.add_argument("--halves", default="both", choices=HALVES, help="CFG halves to steer")


def require_features(steers, sae: str | None, concepts) -> None:
    """`--steer` names features: one line when neither an SAE nor a concept gives any."""
    if steers and not (sae or concepts):
        raise MgsteerError("--steer needs --sae DIR (or --concept DIR): the features are that SAE's")


def load_steering_sae(args: argparse.Namespace, device):
    """The SAE of `--sae` grown by every `--concept`, each new feature id said in one line."""
    from sae.concept import with_concepts
    from sae.files import load_sae

    sae, added = with_concepts(load_sae(args.sae, device) if args.sae else None, args.concept, device)
    for feature, name in added:
        print(f"concept '{name}': feature {feature}")
    return sae


def graph_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--graph",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="on CUDA, replay the decoder step as a captured CUDA graph (elsewhere the step is always eager)",
    )


def backend_args(p: argparse.ArgumentParser) -> None:
    from engine.backends import BACKENDS, default_backend
    from engine.onnx_export import PRECISIONS

    p.add_argument(
        "--backend",
        default=default_backend(),
        choices=BACKENDS,
        help="auto (or $MGSTEER_BACKEND): on a CPU the fastest measured here, once (torch on a GPU); "
        "onnx: ONNX Runtime (docs/ONNX.md)",
    )
    p.add_argument("--onnx-dir", help="a folder from mgsteer export-onnx (with auto: instead of its own export)")
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", *PRECISIONS),
        help="with --backend onnx: the step graph's weights (auto: the smallest exported)",
    )


def open_backend(args: argparse.Namespace, lm, sae):
    """The ONNX backend the flags ask for, or None for torch; checked against model and SAE."""
    from engine.backends import open_backend as backend

    return backend(args.backend, args.onnx_dir, args.precision, lm, sae)


def sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=types.SEED, default=0, help="sampling seed: the same seed gives the same music")
    p.add_argument(
        "--guidance", type=types.number(1.0, limits.MAX_GUIDANCE), default=3.0, help="classifier-free guidance; 1 = off"
    )
    p.add_argument("--top-k", type=types.whole(0, limits.MAX_TOP_K), default=250, help="sample among the k likeliest")
    p.add_argument(
        "--temperature", type=types.number(0.0, limits.MAX_TEMPERATURE, above=True), default=1.0, help="sampling heat"
    )


def sampling_config(args: argparse.Namespace):
    """The SamplingConfig of the options `sampling_args` added."""
    from engine.tokenloop import SamplingConfig

    return SamplingConfig(guidance=args.guidance, top_k=args.top_k, temperature=args.temperature, seed=args.seed)


def progress_bars() -> bool:
    """Progress bars only on a terminal: logs and pipes stay one line per event."""
    return sys.stderr.isatty()


def feature_list(text: str, what: str = "feature", example: str = "12,40") -> list[int]:
    """Comma-separated non-negative ids, at least one, none twice."""
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise MgsteerError(f"bad {what} list '{text}': use comma-separated ids, e.g. {example}") from exc
    if not ids or any(i < 0 for i in ids):
        raise MgsteerError(f"bad {what} list '{text}': use comma-separated non-negative ids, e.g. {example}")
    if len(set(ids)) != len(ids):
        raise MgsteerError(f"bad {what} list '{text}': an id is listed twice")
    return ids


def layer_list(text: str) -> list[int]:
    """`--layers`: like a feature list (the model's own range is checked once it is loaded)."""
    return feature_list(text, "--layers", "2,6,12")


def parse_filter(text: str) -> tuple[float, float]:
    """`--filter lo,hi`: shares of clips, 0 ≤ lo ≤ hi ≤ 1."""
    parts = text.split(",")
    if len(parts) != 2:
        raise MgsteerError(f"bad --filter '{text}': use lo,hi, e.g. 0.01,0.25")
    lo, hi = (limits.within(part.strip() or "x", f"--filter '{text}'", 0.0, 1.0) for part in parts)
    if lo > hi:
        raise MgsteerError(f"bad --filter '{text}': lo must not exceed hi")
    return lo, hi


def stop_on_signals() -> Callable[[], None]:
    """SIGTERM and SIGHUP (a closed terminal, a service stop, `kill`) end a live session the
    way Ctrl-C does: the recording is finished and closed, the devices released. Returns
    what puts the previous handlers back."""

    def stop(signum, frame) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {}
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            previous[name] = signal.signal(getattr(signal, name), stop)

    def restore() -> None:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)

    return restore
