"""Device and dtype selection shared by every command."""

from __future__ import annotations

import platform

import torch

from engine.errors import MgsteerError

# The vector instruction sets that decide which runtime and precision steps fastest.
SIMD_FLAGS = (
    "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
    "amx_tile", "amx_bf16", "amx_int8",
)  # fmt: skip

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def sync(device: torch.device) -> None:
    """Wait for `device`'s queued work: a clock read after a CUDA launch times the launch only."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def resolve_device(name: str = "auto") -> torch.device:
    """Map `auto|cpu|cuda[:n]|mps` to a torch device; `auto` prefers cuda, then mps, then cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise MgsteerError(f"unknown device '{name}': use auto, cpu, cuda or mps") from exc
    if device.type not in ("cpu", "cuda", "mps"):  # torch knows more (meta, xla, …): none runs a model here
        raise MgsteerError(f"unknown device '{name}': use auto, cpu, cuda or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MgsteerError(f"device '{name}' asked for but no CUDA GPU is visible; use --device cpu or auto")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise MgsteerError(f"device '{name}' asked for but MPS is not available; use --device cpu or auto")
    return device


def resolve_dtype(name: str = "auto", device: torch.device | None = None) -> torch.dtype:
    """`auto` is float32: EnCodec and the sampler are exact there, and it is what the tests pin."""
    if name == "auto":
        return torch.float32
    if name not in DTYPES:
        raise MgsteerError(f"unknown dtype '{name}': use auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without making the host wait. On CUDA a copy from pageable
    memory synchronises with the stream, so the generation thread would wait for every step
    already queued (a graph replay, a read-back's batch); from pinned memory the copy is
    queued like a kernel. The pinned block comes from torch's caching host allocator, which
    keeps it until the copy is done."""
    if device.type != "cuda" or tensor.device.type == "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def cpu_model_and_simd() -> tuple[str, list[str]]:
    """The first CPU's model name and which of `SIMD_FLAGS` it has (Linux); elsewhere the
    platform's name and no flags. Why it matters: float sums and speeds differ between CPU
    families by 2× and more, so a timing or a runtime choice holds for one CPU only."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = set(fields.get("flags", "").split())
    model = fields.get("model name") or platform.processor() or platform.machine()
    return model, [f for f in SIMD_FLAGS if f in flags]
