"""CUDA graphs of the decoder step: capture its kernels once, replay them each step.

Why: an eager MusicGen step is hundreds of small kernels, and on a fast GPU launching them
takes longer than running them (musicgen-small: ~20 ms wall for ~2 ms of GPU work). A
replayed graph launches them all at once. It reads and writes the same addresses every time,
which is why the step keeps all its state in persistent buffers updated in place (the token
loop's device state, the steering vector and switch, the meters) and why each cache set
gets its own graph.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from engine.static_decoder import CacheSet


class StepGraphs:
    """One captured step per cache set. A capture that fails leaves the step eager (with the
    reason in `error`): slower, never stopped."""

    def __init__(self, step: Callable[[CacheSet], None], state: list[torch.Tensor], generator: torch.Generator) -> None:
        self._step = step
        self._state = state  # what a warm-up run changes and must put back
        self._generator = generator
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._pool = None  # one memory pool for all graphs: they never run at once
        self.error: str | None = None
        self.captures = 0

    @property
    def usable(self) -> bool:
        return self.error is None

    def replay(self, key: int, cache: CacheSet) -> bool:
        """Run the step of cache set `key` as a graph; False if it cannot be captured."""
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._capture(cache)
            if graph is None:
                return False
            self._graphs[key] = graph
        graph.replay()
        return True

    def forget(self, key: int) -> None:
        """Drop a graph whose cache set's buffers were replaced."""
        self._graphs.pop(key, None)

    def _capture(self, cache: CacheSet) -> torch.cuda.CUDAGraph | None:
        saved = [t.clone() for t in self._state]
        rng = self._generator.get_state()
        try:
            # Warm up on a side stream (as torch's graph docs require), then undo its effects.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._step(cache)
            torch.cuda.current_stream().wait_stream(side)
            for tensor, value in zip(self._state, saved, strict=True):
                tensor.copy_(value)
            self._generator.set_state(rng)
            graph = torch.cuda.CUDAGraph()
            graph.register_generator_state(self._generator)
            with torch.cuda.graph(graph, pool=self._pool):
                self._step(cache)
        except (RuntimeError, AttributeError, TypeError) as exc:
            for tensor, value in zip(self._state, saved, strict=True):
                tensor.copy_(value)
            self.error = f"CUDA graph capture failed, the step runs eagerly: {str(exc).splitlines()[0]}"
            return None
        self._pool = graph.pool()
        self.captures += 1
        return graph
