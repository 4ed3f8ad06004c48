"""Residual-stream taps: read and edit the output of one MusicGen decoder layer.

Why a forward hook on the layer module: it works unchanged for cached one-token-per-step
generation (`[rows, 1, hidden]` per call) and for full-sequence teacher forcing
(`[rows, T, hidden]`), and for transformers 4.x (layers return a tuple) and 5.x (a tensor).

Under classifier-free guidance the batch is `[conditional; unconditional]`; a tap built with
`cfg_doubled=True` knows that the first half of the rows is the conditional one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

import torch

from engine.model import LoadedModel

Rows = Literal["all", "cond"]
# edit(hidden, cond_rows) -> new hidden; cond_rows selects the conditional half (or all rows).
Edit = Callable[[torch.Tensor, slice], torch.Tensor]


class ResidualTap:
    """A hook at the output of decoder layer `layer` that can edit and record the residual.

    The edit runs first, so what is recorded is what the rest of the model sees.
    """

    def __init__(self, lm: LoadedModel, layer: int, *, cfg_doubled: bool = False, record_rows: Rows = "cond"):
        self.layer = lm.check_layer(layer)
        self._lm = lm
        self.hidden_size = lm.hidden_size
        self.cfg_doubled = cfg_doubled
        self.record_rows: Rows = record_rows
        self.edit: Edit | None = None
        self.recording = False
        self.calls = 0
        self._records: list[torch.Tensor] = []
        self._handle = lm.decoder_layers[layer].register_forward_hook(self._hook)

    @property
    def graph_safe(self) -> bool:
        """Whether a captured step may replay this tap (`engine.tokenloop`): a replay runs only
        device kernels, so the tap must record nothing on the host and its edit, if any, must
        belong to an owner that says it is `graph_safe` (the `Steerer` in add mode)."""
        if self.recording:
            return False
        return self.edit is None or bool(getattr(getattr(self.edit, "__self__", None), "graph_safe", False))

    def cond_rows(self, rows: int) -> slice:
        return slice(0, rows // 2) if self.cfg_doubled else slice(None)

    def _hook(self, module, args, output):
        is_tuple = isinstance(output, tuple)
        hidden = output[0] if is_tuple else output
        self.calls += 1
        # A melody model's prepended condition, in a full-sequence HF pass: left alone.
        skip = self._lm.prefix_positions
        condition, hidden = (hidden[:, :skip], hidden[:, skip:]) if skip else (None, hidden)
        edit = self.edit  # read once: a controller may swap it between steps
        if edit is not None:
            hidden = edit(hidden, self.cond_rows(hidden.shape[0]))
        if self.recording:
            rows = self.cond_rows(hidden.shape[0]) if self.record_rows == "cond" else slice(None)
            self._records.append(hidden[rows].detach().clone())
        if edit is None:
            return None
        if condition is not None:
            hidden = torch.cat([condition, hidden], dim=1)
        return (hidden, *output[1:]) if is_tuple else hidden

    def take(self) -> torch.Tensor:
        """Recorded activations `[rows, positions, hidden]` in call order; clears the record."""
        if not self._records:
            return torch.empty(0, 0, self.hidden_size)
        out = torch.cat(self._records, dim=1)
        self._records = []
        return out

    def close(self) -> None:
        self._handle.remove()

    def __enter__(self) -> ResidualTap:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextmanager
def recording(lm: LoadedModel, layers: list[int], **options) -> Iterator[dict[int, ResidualTap]]:
    """Recording taps on several layers for the duration of a `with` block."""
    taps: dict[int, ResidualTap] = {}
    try:
        for layer in layers:
            taps[layer] = ResidualTap(lm, layer, **options)
            taps[layer].recording = True
        yield taps
    finally:
        for tap in taps.values():
            tap.close()
