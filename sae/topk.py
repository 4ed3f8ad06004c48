"""TopK sparse autoencoder, as in the paper: z = TopK(ReLU(W_enc(x − b_dec) + b_enc)), x̂ = W_dec z + b_dec."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class SAEConfig:
    """What an SAE is and where it reads from; serialised into SAELens' cfg.json."""

    d_in: int
    d_sae: int
    k: int
    hook_layer: int
    model_name: str = "unknown"
    architecture: str = "topk"

    def __post_init__(self) -> None:
        if not (self.d_in > 0 and self.d_sae > 0 and 0 < self.k <= self.d_sae):
            raise ValueError(f"invalid SAE shape: d_in={self.d_in} d_sae={self.d_sae} k={self.k}")

    @property
    def hook_name(self) -> str:
        return f"decoder.layers.{self.hook_layer}"

    def to_dict(self) -> dict:
        return asdict(self)


class TopKSAE(nn.Module):
    """Weights use SAELens names and shapes: W_enc [d_in, d_sae], W_dec [d_sae, d_in]."""

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.W_enc = nn.Parameter(torch.empty(cfg.d_in, cfg.d_sae))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.W_dec = nn.Parameter(torch.empty(cfg.d_sae, cfg.d_in))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        nn.init.kaiming_uniform_(self.W_dec)
        with torch.no_grad():
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True)
            self.W_enc.copy_(self.W_dec.T)

    @property
    def k(self) -> int:
        return self.cfg.k

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Dense codes with at most k non-zeros per row (fewer if fewer pre-activations are > 0)."""
        pre = self.pre_activations(x)
        values, indices = pre.topk(self.cfg.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, indices, values)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))
