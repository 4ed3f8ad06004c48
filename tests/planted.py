"""Synthetic activations with a known dictionary: the ground truth for SAE training tests."""

from __future__ import annotations

from pathlib import Path

import torch

from sae.store import StoreMeta, StoreWriter
from sae.topk import SAEConfig, TopKSAE


def planted_dictionary(d: int = 64, features: int = 512, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    true = torch.randn(features, d, generator=gen)
    return true / true.norm(dim=1, keepdim=True)


def planted_rows(true: torch.Tensor, rows: int, active: int = 8, noise: float = 0.01, seed: int = 1) -> torch.Tensor:
    """Each row: `active` random true features with magnitudes in [0.5, 1.5], plus Gaussian noise."""
    gen = torch.Generator().manual_seed(seed)
    n, d = true.shape
    parts = []
    for start in range(0, rows, 8192):  # bounded memory: rand(rows, n) would be rows × n floats
        m = min(8192, rows - start)
        idx = torch.rand(m, n, generator=gen).topk(active, dim=1).indices
        mags = 0.5 + torch.rand(m, active, generator=gen)
        parts.append(torch.einsum("ra,rad->rd", mags, true[idx]) + noise * torch.randn(m, d, generator=gen))
    return torch.cat(parts)


def planted_store(folder: Path, true: torch.Tensor, rows: int, clip_rows: int = 500, shard_rows: int = 20_000) -> Path:
    x = planted_rows(true, rows)
    writer = StoreWriter(
        folder, StoreMeta("planted", (0,), true.shape[1], "float32", "synthetic"), shard_rows=shard_rows
    )
    for c, start in enumerate(range(0, rows, clip_rows)):
        writer.add_clip(f"clip{c}", {0: x[start : start + clip_rows]})
    writer.flush()
    return folder


def recovery(w_dec: torch.Tensor, true: torch.Tensor, threshold: float = 0.9) -> float:
    """Share of true features whose best-matching decoder row has cosine ≥ threshold."""
    rows = w_dec / w_dec.norm(dim=1, keepdim=True)
    return float(((true @ rows.T).max(dim=1).values >= threshold).float().mean())


def identity_topk(d: int) -> TopKSAE:
    """Codes = ReLU(x): feature j reads coordinate j and writes it back, so planted
    coordinates are the ground truth of the features."""
    sae = TopKSAE(SAEConfig(d_in=d, d_sae=d, k=d, hook_layer=0, model_name="planted"))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()
