"""The ONNX Runtime backend: the token loop's decoder and the codec on exported graphs.

Why: most musicians have no CUDA GPU, and on a CPU ONNX Runtime's int8 MatMuls read a
quarter of the weight bytes that a float32 step reads. The loop, the sampler, the steering
semantics (a vector added at one layer, a per-row switch), the meters (from the residual
the step graph returns), re-priming and chunked decoding are the engine's own; only the
arithmetic of a decoder call and of a codec window runs here.

Low latency settings: intra-op threads = physical cores, sequential execution, memory
patterns on; the self-attention caches are numpy arrays wrapped once as ONNX Runtime values
(no copy), and each call writes only the new positions' keys and values into them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.errors import MgsteerError
from engine.model import LoadedModel
from engine.onnx_export import FILES, PRECISIONS, STEP_FILES, Manifest, cache_inputs, load_manifest
from engine.prompts import encode_prompts, tokenize_prompts
from engine.static_decoder import DecoderMath


def physical_cores() -> int:
    """Distinct (package, core) pairs this process may run on; logical CPUs if unknown."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores, cpu, package = set(), None, "0"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "processor":
                    cpu = int(value)
                elif key == "physical id":
                    package = value
                elif key == "core id" and cpu in allowed:
                    cores.add((package, value))
    except OSError:
        pass
    return max(1, len(cores) or len(allowed))


def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_mem_pattern = True
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime raises its own classes for damaged files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MgsteerError(f"'{path}' is not a usable ONNX graph ({first[:160]}); export it again") from exc


def step_precision(asked: str, manifest: Manifest, folder: Path) -> str:
    """The step graph to run: `asked`, or with "auto" the smallest weights exported (the step
    reads every weight once per token, so fewer bytes is a faster step on a CPU)."""
    if asked == "auto":
        return manifest.precisions[-1]
    if asked not in PRECISIONS:
        raise MgsteerError(f"unknown precision '{asked}': use auto, {', '.join(PRECISIONS)}")
    if asked not in manifest.precisions:
        raise MgsteerError(f"'{folder}' holds no {asked} step graph: export it again with --{asked}")
    return asked


# The self-attention caches grow in steps of this many positions (2.56 s at 50 Hz).
CACHE_STEP = 128


@dataclass
class OnnxCache:
    """One context's attention state as numpy arrays (and their zero-copy runtime values).

    The self-attention arrays hold as many positions as the context has reached, rounded up
    to `CACHE_STEP`, not `max_context`: the step graph reads every position it is given, so a
    cache sized for 30 s would cost a 30 s read at every step of the first second."""

    self_k: np.ndarray  # [L, R, H, D, T]: transposed (see `engine.onnx_graphs.split_attention`)
    self_v: np.ndarray  # [L, R, H, T, D]
    cross: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None  # k, v, mask, any
    values: dict | None = None  # input name → OrtValue over the arrays above
    prefix: int = 0  # a melody model's condition: the first positions, token position p at prefix + p

    @property
    def cross_len(self) -> int:
        return 0 if self.cross is None else self.cross[0].shape[3]

    @property
    def capacity(self) -> int:
        return self.self_v.shape[3]

    def reserve(self, positions: int, limit: int) -> None:
        """Room for `positions` positions (at most `limit`), keeping what is held. A copy, once
        per `CACHE_STEP` positions: ~0.1 ms a step, spread."""
        if positions <= self.capacity:
            return
        grow = min(limit, -(-positions // CACHE_STEP) * CACHE_STEP) - self.capacity
        self.self_k = np.pad(self.self_k, [(0, 0)] * 4 + [(0, grow)])  # keys: the context is the last axis
        self.self_v = np.pad(self.self_v, [(0, 0)] * 3 + [(0, grow), (0, 0)])
        if self.values is not None:
            self.values |= self.cache_values()

    def cache_values(self) -> dict:
        """Runtime values over each layer's slice of the cache arrays (views: no copy)."""
        layers = self.self_k.shape[0]
        arrays = [*self.self_k, *self.self_v]
        return {name: _ort_value(a) for name, a in zip(cache_inputs(layers), arrays, strict=True)}


def _ort_value(array: np.ndarray):
    import onnxruntime as ort

    return ort.OrtValue.ortvalue_from_numpy(array)


class OnnxBackend:
    """Sessions for one exported folder; `decoder` makes the token loop's decoder."""

    def __init__(self, folder: str | Path, lm: LoadedModel, layer: int | None, precision: str = "auto") -> None:
        self.folder = Path(folder)
        self.manifest: Manifest = load_manifest(self.folder, lm, layer)
        self.lm = lm
        if lm.device.type != "cpu":
            raise MgsteerError("the ONNX backend runs on the CPU: use --device cpu (or --backend torch on a GPU)")
        self.precision = step_precision(precision, self.manifest, self.folder)
        self.threads = physical_cores()
        cross = self.manifest.condition == "cross"  # a melody model's condition is prefilled by the host
        self.prompt = _session(self.folder / FILES["prompt"], self.threads) if cross else None
        self.step = _session(self.folder / STEP_FILES[self.precision], self.threads)
        # A model with its own codec (a planted world's) decodes with it, as on torch.
        self.codec = _session(self.folder / FILES["codec"], self.threads) if self.manifest.codec == "encodec" else None
        self.steerer = None  # engine.steering.Steerer, set by `attach`

    def attach(self, steerer) -> None:
        """Steer (and meter) with this steerer's vector, switches and watch list."""
        if steerer is not None and steerer.loaded.cfg.hook_layer != self.manifest.layer:
            raise MgsteerError(
                f"'{self.folder}' steers layer {self.manifest.layer}, the SAE is at layer "
                f"{steerer.loaded.cfg.hook_layer}: export again with --sae"
            )
        self.steerer = steerer

    def decoder(self, lm: LoadedModel, rows: int, max_context: int, cfg: bool) -> OnnxDecoder:
        if max_context > self.manifest.max_context:
            raise MgsteerError(
                f"'{self.folder}' was exported for {self.manifest.max_context} context positions, "
                f"this needs {max_context}: export again with --max-context {max_context}"
            )
        return OnnxDecoder(self, lm, rows, max_context, cfg)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes `[1, K, frames]` → audio `[1, samples]` (stereo: `[1, 2, samples]`, each channel
        its own run of the codec graph), like `engine.codec.decode_codes`."""
        if self.codec is None:
            return self.lm.codec.decode(codes.cpu())
        codes = codes.cpu().numpy().astype(np.int64)
        if self.lm.audio_channels == 2:
            sides = [self.codec.run(["audio"], {"codes": codes[:, side::2]})[0] for side in (0, 1)]
            return torch.from_numpy(np.stack(sides))[None]
        return torch.from_numpy(self.codec.run(["audio"], {"codes": codes})[0])[None]


class OnnxDecoder:
    """The token loop's decoder interface (see `StaticDecoder`) on the step graph."""

    def __init__(self, backend: OnnxBackend, lm: LoadedModel, rows: int, max_context: int, cfg: bool) -> None:
        self.backend, self.lm, self.rows, self.cfg = backend, lm, rows, cfg
        m = backend.manifest
        self.max_context = max_context
        self.shape = (m.layers, rows, m.heads, min(CACHE_STEP, max_context), m.head_dim)
        self._steer_off = np.zeros(m.hidden, dtype=np.float32)
        self.prefixed = lm.melody
        self._math = DecoderMath(lm) if lm.melody else None

    def encode(self, prompts: list[str], melody=None):
        """Cross keys, values, mask and rows-with-keys from the prompt graph; for a melody model,
        its condition's keys and values `[L, R, H, C, D]` (`DecoderMath.condition_kv`)."""
        if self.prefixed:
            states, _ = encode_prompts(self.lm, prompts, null_half=self.cfg, melody=melody)
            keys, values = self._math.condition_kv(states)
            return torch.stack(keys).numpy(), torch.stack(values).numpy()
        ids, mask = tokenize_prompts(self.lm, prompts)
        feed = {"input_ids": ids.numpy().astype(np.int64), "attention_mask": mask.numpy().astype(np.int64)}
        k, v, mask, anyk = self.backend.prompt.run(None, feed)
        if not self.cfg:  # the graph always appends the null half
            half = len(prompts)
            k, v, mask, anyk = k[:, :half], v[:, :half], mask[:half], anyk[:half]
        return tuple(np.ascontiguousarray(a) for a in (k, v, mask, anyk))

    @staticmethod
    def condition_length(condition) -> int:
        return condition[0].shape[3]

    def cache_for(self, reuse: OnnxCache | None, prompt_len: int) -> OnnxCache:
        """A cache at its smallest: a re-primed context starts short, and reading the old
        context's length at every step would cost what the small start saves. A melody
        model's holds its condition's `prompt_len` positions first."""
        prefix = prompt_len if self.prefixed else 0
        layers, rows, heads, context, dim = self.shape
        context = -(-(prefix + context) // CACHE_STEP) * CACHE_STEP if prefix else context
        if reuse is not None and reuse.capacity == context and reuse.prefix == prefix:
            self.clear(reuse, 0, None)
            return reuse
        keys = np.zeros((layers, rows, heads, dim, context), dtype=np.float32)
        return OnnxCache(keys, np.zeros((layers, rows, heads, context, dim), dtype=np.float32), prefix=prefix)

    @staticmethod
    def clear(cache: OnnxCache, start: int, stop: int | None) -> None:
        """Zero token positions start…stop (start 0: the condition's too)."""
        first = cache.prefix + start if start else 0
        last = None if stop is None else cache.prefix + stop
        cache.self_k[..., first:last] = 0
        cache.self_v[:, :, :, first:last] = 0

    def set_prompt(self, cache: OnnxCache, condition) -> None:
        if self.prefixed:  # the condition's keys and values are the cache's first positions
            keys, values = condition
            cache.self_k[..., : cache.prefix] = keys.swapaxes(3, 4)
            cache.self_v[:, :, :, : cache.prefix] = values
            cache.values = cache.cache_values()
            return
        cache.cross = condition
        arrays = dict(zip(("cross_k", "cross_v", "cross_mask", "cross_any"), condition, strict=True))
        cache.values = {name: _ort_value(a) for name, a in arrays.items()} | cache.cache_values()

    def forward(self, columns: torch.Tensor, cache: OnnxCache, positions: torch.Tensor) -> torch.Tensor:
        """Logits `[R, K, n, V]`; the new positions' keys and values go into `cache`."""
        steer, rows = self._steering()
        positions = positions.cpu().numpy().astype(np.int64) + cache.prefix
        cache.reserve(int(positions.max()) + 1, cache.prefix + self.max_context)
        session = self.backend.step
        binding = session.io_binding()
        for name, value in cache.values.items():
            binding.bind_ortvalue_input(name, value)
        binding.bind_cpu_input("columns", np.ascontiguousarray(columns.cpu().numpy().astype(np.int64)))
        binding.bind_cpu_input("positions", positions)
        binding.bind_cpu_input("steer", steer)
        binding.bind_cpu_input("steer_rows", rows)
        for name in ("logits", "new_k", "new_v", "residual"):
            binding.bind_output(name)
        session.run_with_iobinding(binding)
        logits, new_k, new_v, residual = binding.copy_outputs_to_cpu()
        cache.self_k[..., positions] = new_k.swapaxes(3, 4)
        cache.self_v[:, :, :, positions] = new_v
        steerer = self.backend.steerer
        if steerer is not None and steerer.metering:
            steerer.meter(torch.from_numpy(residual), steerer.tap.cond_rows(self.rows))
        return torch.from_numpy(logits)

    def _steering(self) -> tuple[np.ndarray, np.ndarray]:
        """The steering input and the per-row switch (all zero: unsteered)."""
        steerer = self.backend.steerer
        if steerer is None:
            return self._steer_off, np.zeros((self.rows, 1, 1), dtype=np.float32)
        if not steerer.graph_safe:
            raise MgsteerError("clamp-mode steering runs on the torch backend only: use --backend torch")
        return steerer.vector_now().float().numpy(), steerer.row_switch(self.rows).numpy()
