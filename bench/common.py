"""What every benchmark's JSON carries about the machine, and how every benchmark fails.

Why the machine in every JSON: float sums and speeds differ between CPU families (AVX2,
AVX-512, AMX) by 2× and more, so a figure means nothing without the CPU and GPU it came from.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Callable

import torch

from engine.errors import MgsteerError

SIMD_FLAGS = (
    "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
    "amx_tile", "amx_bf16", "amx_int8",
)  # fmt: skip


def _cpuinfo() -> tuple[str, set[str]]:
    """The first CPU's model name and flags (Linux); the platform's name elsewhere."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields.get("model name") or platform.processor() or platform.machine(), set(fields.get("flags", "").split())


def machine(device: torch.device | str | None = None) -> dict:
    """CPU model and SIMD flags, cores and threads, the GPU if any, library versions."""
    import transformers

    model, flags = _cpuinfo()
    out = {
        "cpu": model,
        "simd": [f for f in SIMD_FLAGS if f in flags],
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(device)
        out["cuda"] = torch.version.cuda
    return out


def one_line_errors(main: Callable[[], None]) -> None:
    """Run a benchmark's `main`; a bad input (no CUDA, an unknown model) is one line and exit 2."""
    try:
        main()
    except MgsteerError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        sys.exit(2)
