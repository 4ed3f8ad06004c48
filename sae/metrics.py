"""How much of the model's ability survives when the SAE stands in for the residual stream.

CE recovered = (CE_zero − CE_sae) / (CE_zero − CE_clean), where CE is MusicGen's 4-codebook
next-token cross-entropy under teacher forcing, with the residual at the SAE's layer left
alone (clean), replaced by the SAE's reconstruction (sae) or by zeros (zero). 1.0: the SAE
loses nothing; 0.0: as bad as deleting the layer's output.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from engine.hooks import ResidualTap
from engine.model import LoadedModel
from engine.prompts import null_condition, teacher_forced_logits
from sae.harvest import delayed_inputs

Reconstruct = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def codebook_ce(lm: LoadedModel, clips: list[torch.Tensor], layer: int, replace: Reconstruct | None = None) -> float:
    """Mean next-token cross-entropy over all codebooks and non-padding targets of `clips`
    (codes `[K, frames]` each), optionally replacing the residual at `layer`."""
    total, count = 0.0, 0
    states, mask = null_condition(lm)
    with ResidualTap(lm, layer) as tap:
        if replace is not None:
            tap.edit = lambda hidden, cond: replace(hidden)
        for codes in clips:
            inputs = delayed_inputs(codes.to(lm.device), lm.pad_token_id, lm.audio_channels)  # [K, N + 1]
            logits = teacher_forced_logits(lm, inputs[:, :-1], (states, mask)).float()  # [K, N, V]
            targets = inputs[:, 1:]
            valid = targets != lm.pad_token_id
            ce = F.cross_entropy(logits[valid], targets[valid], reduction="sum")
            total += ce.item()
            count += int(valid.sum())
    return total / max(count, 1)


def ce_recovered(lm: LoadedModel, clips: list[torch.Tensor], layer: int, reconstruct: Reconstruct) -> dict:
    clean = codebook_ce(lm, clips, layer)
    spliced = codebook_ce(lm, clips, layer, reconstruct)
    zero = codebook_ce(lm, clips, layer, torch.zeros_like)
    recovered = (zero - spliced) / (zero - clean) if zero != clean else float("nan")
    return {"ce_clean": clean, "ce_sae": spliced, "ce_zero": zero, "ce_recovered": recovered}


def sae_reconstruct(sae) -> Reconstruct:
    """The SAE's reconstruction in the model's dtype (the SAE computes in float32)."""
    return lambda hidden: sae(hidden.float()).to(hidden.dtype)
