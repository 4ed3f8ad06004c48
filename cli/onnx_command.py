"""`mgsteer export-onnx`: the ONNX Runtime backend's graphs for a model (and an SAE's layer)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cli import argtypes as types
from cli.common import DEFAULT_MODEL
from engine.errors import MgsteerError
from engine.outputs import output_dir


def add_export_command(sub) -> None:
    e = sub.add_parser("export-onnx", help="export ONNX graphs for the CPU backend (--backend onnx)")
    e.add_argument("--model", default=DEFAULT_MODEL, help="tiny, random-small, a hub id or a local folder")
    e.add_argument("--out", required=True, help="folder for the graphs and manifest.json")
    where = e.add_mutually_exclusive_group()
    where.add_argument("--sae", help="SAE folder: steer (and meter) at its layer")
    where.add_argument("--layer", type=types.whole(0, 1000), help="steering layer without an SAE (not given: middle)")
    e.add_argument("--int8", action="store_true", help="also write the step graph with int8 MatMuls (faster on CPU)")
    e.add_argument(
        "--int4", action="store_true", help="also write the step graph with 4-bit MatMul weights (fastest on CPU)"
    )
    e.add_argument(
        "--max-context",
        type=types.whole(8, 65_536),
        help="self-attention positions (not given: what play needs for this model)",
    )
    e.set_defaults(func=cmd_export_onnx)


def cmd_export_onnx(args: argparse.Namespace) -> None:
    from engine.host import HostConfig
    from engine.model import load_musicgen
    from engine.onnx_export import MANIFEST, export_onnx
    from sae.files import load_sae

    out = output_dir(args.out)
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise MgsteerError(f"--out '{out}' holds other files; give an empty folder or an earlier export to replace")
    try:
        import onnx  # noqa: F401 (the exporter writes with it)
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise MgsteerError(f"export-onnx needs onnxruntime ({exc}): pip install 'musicgen-steer[onnx]'") from exc
    lm = load_musicgen(args.model, "cpu", "float32")
    sae = load_sae(args.sae) if args.sae else None
    layer = sae.cfg.hook_layer if sae is not None else args.layer if args.layer is not None else lm.num_layers // 2
    context = args.max_context or min(lm.max_positions, HostConfig().context_positions(lm))
    started = time.perf_counter()
    manifest = export_onnx(lm, out, lm.check_layer(layer), context, int8=args.int8, sae=args.sae, int4=args.int4)
    took = time.perf_counter() - started
    files = ", ".join(sorted(p.name for p in Path(out).glob("*.onnx")))
    print(
        f"exported {manifest.model} (steering layer {manifest.layer}, {manifest.max_context} positions) "
        f"in {took:.0f} s to {out}: {files}, {MANIFEST}"
    )
    print(f"play it: mgsteer play --model {args.model} --backend onnx --onnx-dir {out} --no-audio")
