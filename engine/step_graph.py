"""CUDA graphs of the decoder step: capture its kernels once, replay them each step.

Why: an eager MusicGen step is hundreds of small kernels, and on a fast GPU launching them
takes longer than running them (musicgen-small: ~20 ms wall for ~2 ms of GPU work). A
replayed graph launches them all at once. It reads and writes the same addresses every time,
which is why the step keeps all its state in persistent buffers updated in place (the token
loop's device state, the steering vector and switch, the meters) and why each cache set
gets its own graph.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch

from engine.static_decoder import CacheSet


class StepGraphs:
    """One captured step per cache set. A capture that fails leaves the step eager (with the
    root cause in `error`): slower, never stopped.

    The step is held by a weak reference: the token loop owns its graphs, and a loop that
    is dropped must free its caches and graph pool at once, not when the cyclic collector
    happens to run."""

    def __init__(self, step: Callable[[CacheSet], None], state: list[torch.Tensor], generator: torch.Generator) -> None:
        self._step = weakref.WeakMethod(step) if hasattr(step, "__self__") else lambda: step
        self._state = state  # what a warm-up run changes and must put back
        self._generator = generator
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._pool = None  # one memory pool for all graphs: they never run at once
        self.error: str | None = None
        self.captures = 0

    @property
    def usable(self) -> bool:
        return self.error is None

    def prepare(self, key: int, cache: CacheSet) -> bool:
        """Capture the step of cache set `key` now, if not yet captured; False if it cannot be."""
        if key not in self._graphs:
            graph = self._capture(cache)
            if graph is None:
                return False
            self._graphs[key] = graph
        return True

    def replay(self, key: int, cache: CacheSet) -> bool:
        """Run the step of cache set `key` as a graph (capturing it first if need be)."""
        if not self.prepare(key, cache):
            return False
        self._graphs[key].replay()
        return True

    def forget(self, key: int) -> None:
        """Drop a graph whose cache set's buffers were replaced."""
        self._graphs.pop(key, None)

    def _capture(self, cache: CacheSet) -> torch.cuda.CUDAGraph | None:
        """Warm up once, put the state back, capture. One warm-up step at the current position
        (which the next real step overwrites): a second would write one position further,
        past the cache at its last position."""
        step = self._step()
        saved = [t.clone() for t in self._state]
        rng = self._generator.get_state()
        stream = torch.cuda.current_stream()
        root: BaseException | None = None  # what failed inside the capture, before capture_end's own error
        try:
            # Warm up on a side stream (as torch's graph docs require), then undo its effects.
            side = torch.cuda.Stream()
            side.wait_stream(stream)
            with torch.cuda.stream(side):
                step(cache)
            stream.wait_stream(side)
            self._restore(saved, rng)
            graph = torch.cuda.CUDAGraph()
            graph.register_generator_state(self._generator)
            with torch.cuda.graph(graph, pool=self._pool):
                try:
                    step(cache)
                except BaseException as exc:
                    root = exc
                    raise
        except (RuntimeError, AttributeError, TypeError, ValueError, IndexError) as exc:
            # A failed capture_end leaves the capture stream current: put the caller's back.
            torch.cuda.set_stream(stream)
            self._restore(saved, rng)
            cause = root or exc
            reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
            self.error = f"CUDA graph capture failed, the step runs eagerly: {reason}"
            return None
        self._pool = graph.pool()
        self.captures += 1
        return graph

    def _restore(self, saved: list[torch.Tensor], rng: torch.Tensor) -> None:
        for tensor, value in zip(self._state, saved, strict=True):
            tensor.copy_(value)
        self._generator.set_state(rng)
