"""A data-initialised, untrained TopK SAE: the starting point of training and of the demo.

Why: b_dec at the data mean and decoder rows along real (centred) activations, with
W_enc = W_decᵀ, is the standard initialisation; before any training it already yields
features that fire on real inputs, which is all the offline demo needs.
"""

from __future__ import annotations

import torch

from sae.files import FeatureStats, StatsAccumulator
from sae.topk import SAEConfig, TopKSAE


def init_from_activations(acts: torch.Tensor, cfg: SAEConfig, seed: int = 0) -> TopKSAE:
    """Build an SAE for `cfg` from activations `[rows, d_in]`."""
    acts = acts.reshape(-1, cfg.d_in).float()
    gen = torch.Generator().manual_seed(seed)
    mean = acts.mean(0)
    picks = torch.randint(0, acts.shape[0], (cfg.d_sae,), generator=gen)
    rows = acts[picks] - mean + 0.01 * acts.std() * torch.randn(cfg.d_sae, cfg.d_in, generator=gen)
    rows = rows / rows.norm(dim=1, keepdim=True).clamp(min=1e-8)
    sae = TopKSAE(cfg)
    with torch.no_grad():
        sae.W_dec.copy_(rows)
        sae.W_enc.copy_(rows.T)
        sae.b_dec.copy_(mean)
        sae.b_enc.zero_()
    return sae.eval()


@torch.no_grad()
def measure(sae: TopKSAE, acts: torch.Tensor, batch: int = 4096) -> FeatureStats:
    """Feature statistics of `sae` over activations `[rows, d_in]`."""
    acts = acts.reshape(-1, sae.cfg.d_in).float()
    acc = StatsAccumulator(sae.cfg.d_sae, sae.W_enc.device)
    for i in range(0, acts.shape[0], batch):
        acc.add(sae.encode(acts[i : i + batch]))
    return acc.result()
