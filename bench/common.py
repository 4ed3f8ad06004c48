"""What every benchmark's JSON carries about the machine, and how every benchmark fails.

Why the machine in every JSON: float sums and speeds differ between CPU families (AVX2,
AVX-512, AMX) by 2× and more, so a figure means nothing without the CPU and GPU it came from.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch

from engine.device import cpu_model_and_simd
from engine.errors import MgsteerError


def machine(device: torch.device | str | None = None) -> dict:
    """CPU model and SIMD flags, cores and threads, the GPU if any, library versions."""
    import transformers

    model, simd = cpu_model_and_simd()
    out = {
        "cpu": model,
        "simd": simd,
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


def timed_ms(run: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median ms of `run` after `warmup` calls (first-call costs: allocation, kernel choice)."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)
