"""MusicGen's decoder as fixed-shape tensor operations on preallocated buffers.

Why not call transformers' decoder each step: its forward builds masks, asks the cache for
its length (a Python int) and re-derives positions on every call, so a step is ~770 small
kernel launches plus Python between them, and the GPU idles ~90 % of a 50 Hz frame. Here the
same weights (the HF modules' own parameters) run on buffers whose addresses never change:
the self-attention caches hold `max_context` positions, the cross-attention keys and values
are projected once per prompt, and the write position is a device tensor. A step with these
properties can be captured once as a CUDA graph and replayed (`engine.step_graph`).

The residual at each layer's output is passed through that layer's forward hooks exactly as
`nn.Module.__call__` would, so `ResidualTap` (steering edits, meters, recording) sees the
same tensors whether the HF forward or this one runs.

The computation mirrors `MusicgenDecoder.forward` with an SDPA attention over a static
cache: the tokens it samples are identical to the HF forward's for the same seed (tested).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.model import LoadedModel
from engine.prompts import encode_prompts


@dataclass
class CacheSet:
    """One context's attention state. Two exist so a re-prime can build one while the other
    plays; each is captured as its own graph because the buffers' addresses differ."""

    self_k: torch.Tensor  # [layers, rows, heads, max_context, head_dim]
    self_v: torch.Tensor
    cross_k: torch.Tensor  # [layers, rows, heads, cross_len, head_dim]
    cross_v: torch.Tensor
    cross_mask: torch.Tensor  # [rows, 1, 1, cross_len] bool: True where a prompt token is
    cross_any: torch.Tensor  # [rows, 1, 1] bool: False for a row with no prompt token (CFG's null half)

    @property
    def cross_len(self) -> int:
        return self.cross_k.shape[3]


class StaticDecoder:
    """The decoder of `lm` on `rows` rows (CFG doubles the batch) with `max_context` positions.

    The token loop talks to it (and to the ONNX Runtime decoder, which has the same methods)
    through: `encode` prompts into a condition, `cache_for` a condition's length, `set_prompt`,
    `forward`, and `clear` positions of a cache."""

    def __init__(self, lm: LoadedModel, rows: int, max_context: int, cfg: bool = True) -> None:
        self.lm = lm
        self.cfg = cfg
        self.math = DecoderMath(lm)
        self.rows = rows
        self.max_context = max_context
        self._key_index = torch.arange(max_context, device=lm.device)

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The condition of `prompts`: encoder states and mask (with CFG's null half)."""
        return encode_prompts(self.lm, prompts, null_half=self.cfg)

    @staticmethod
    def condition_length(condition: tuple[torch.Tensor, torch.Tensor]) -> int:
        return condition[0].shape[1]

    def cache_for(self, reuse: CacheSet | None, prompt_len: int) -> CacheSet:
        """A cache set whose cross-attention buffers hold `prompt_len` tokens. On a GPU their
        length is rounded up (to 64) so most prompt swaps keep a captured graph; on the CPU
        it is exact, which keeps the arithmetic identical to transformers' forward."""
        if reuse is not None and reuse.cross_len >= prompt_len:
            self.clear(reuse, 0, None)
            return reuse
        length = -(-prompt_len // 64) * 64 if self.lm.device.type == "cuda" else prompt_len
        return self.new_cache(length)

    @staticmethod
    def clear(cache: CacheSet, start: int, stop: int | None) -> None:
        """Zero self-attention positions start…stop: stale keys are masked, but a stale NaN
        would still poison 0·v."""
        cache.self_k[:, :, :, start:stop].zero_()
        cache.self_v[:, :, :, start:stop].zero_()

    def new_cache(self, cross_len: int) -> CacheSet:
        math, layers = self.math, len(self.math.inner.layers)
        device, dtype = self.lm.device, self.lm.dtype
        shape = (layers, self.rows, math.heads, self.max_context, math.head_dim)
        cross = (layers, self.rows, math.heads, cross_len, math.head_dim)
        return CacheSet(
            self_k=torch.zeros(shape, device=device, dtype=dtype),
            self_v=torch.zeros(shape, device=device, dtype=dtype),
            cross_k=torch.zeros(cross, device=device, dtype=dtype),
            cross_v=torch.zeros(cross, device=device, dtype=dtype),
            cross_mask=torch.zeros(self.rows, 1, 1, cross_len, dtype=torch.bool, device=device),
            cross_any=torch.zeros(self.rows, 1, 1, dtype=torch.bool, device=device),
        )

    @torch.no_grad()
    def set_prompt(self, cache: CacheSet, condition: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Project encoder states `[rows, S, hidden]` into the cache's cross-attention buffers
        (S ≤ their length; the rest is masked out). In place: a captured graph stays valid."""
        enc, enc_mask = condition
        length = enc.shape[1]
        cache.cross_k.zero_()
        cache.cross_v.zero_()
        for i, layer in enumerate(self.math.inner.layers):
            attn = layer.encoder_attn
            cache.cross_k[i, :, :, :length] = self.math.split(attn.k_proj(enc))
            cache.cross_v[i, :, :, :length] = self.math.split(attn.v_proj(enc))
        mask = torch.zeros(self.rows, cache.cross_len, dtype=torch.bool, device=enc.device)
        mask[:, :length] = enc_mask.bool()
        cache.cross_mask.copy_(mask[:, None, None, :])
        cache.cross_any.copy_(mask.any(dim=1)[:, None, None])

    def forward(self, columns: torch.Tensor, cache: CacheSet, positions: torch.Tensor) -> torch.Tensor:
        """Logits `[rows, K, n, vocab]` for delayed columns `[rows, K, n]` at cache positions
        `positions` (a device tensor `[n]`); their keys and values are written into `cache`.
        Each layer's output goes through its forward hooks (steering, meters, recording)."""
        math = self.math
        hidden = math.embed(columns, positions)
        # Attend over the positions reached, not the whole cache: on the CPU a read of the end
        # position is free, and 30 s of masked keys cost as much as the rest of a short step.
        # A GPU keeps the full static shape (a captured graph must not depend on the position).
        reach = self.max_context if positions.is_cuda else int(positions[-1]) + 1
        causal = (self._key_index[None, :reach] <= positions[:, None])[None, None]  # [1, 1, n, reach]
        for i, layer in enumerate(math.inner.layers):

            def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, i: int = i) -> torch.Tensor:
                keys = cache.self_k[i].index_copy_(2, positions, key)[:, :, :reach]
                values = cache.self_v[i].index_copy_(2, positions, value)[:, :, :reach]
                return F.scaled_dot_product_attention(query, keys, values, attn_mask=causal, scale=math.scale)

            cross = (cache.cross_k[i], cache.cross_v[i], cache.cross_mask, cache.cross_any)
            hidden = _run_forward_hooks(layer, math.layer(layer, hidden, attend, cross))
        return math.logits(hidden)


# (query, new keys, new values) `[rows, heads, n, head_dim]` → the self-attention output
SelfAttention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class DecoderMath:
    """`MusicgenDecoder`'s arithmetic over a static cache, on the HF modules' own weights:
    shared by the eager or captured step (`StaticDecoder`) and the exported ONNX step graph.

    `prescale` folds attention's 1/√d into the query projection's weights (the exporter folds
    the product into a constant): ONNX Runtime would otherwise fuse the scale into the score
    product as a slower kernel, which at 1500 positions costs a millisecond a step."""

    def __init__(self, lm: LoadedModel, prescale: bool = False) -> None:
        decoder = lm.model.decoder
        self.inner = decoder.model.decoder
        self.lm_heads = decoder.lm_heads
        config = lm.model.config.decoder
        self.heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.heads
        self.prescale = prescale
        self.scale = 1.0 if prescale else self.head_dim**-0.5  # what attention applies to the scores

    def query(self, projection: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        if not self.prescale:
            return projection(x)
        scale = self.head_dim**-0.5
        bias = None if projection.bias is None else projection.bias * scale
        return F.linear(x, projection.weight * scale, bias)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """`[rows, n, hidden]` → `[rows, heads, n, head_dim]`."""
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def embed(self, columns: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Delayed columns `[rows, K, n]` at `positions` `[n]` → the first residual."""
        inner = self.inner
        hidden = sum(inner.embed_tokens[q](columns[:, q]) for q in range(columns.shape[1]))
        return hidden + inner.embed_positions.weights.index_select(0, positions).to(hidden.dtype)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The last residual → logits `[rows, K, n, vocab]`."""
        hidden = self.inner.layer_norm(hidden)
        return torch.stack([head(hidden) for head in self.lm_heads], dim=1)

    def layer(self, layer, hidden: torch.Tensor, attend: SelfAttention, cross: tuple) -> torch.Tensor:
        """One decoder layer. `attend(query, key, value)` stores the new positions' keys and
        values where its cache keeps them and attends over the context (the step writes into
        its cache and attends over it; the exported graph leaves the cache to the host);
        `cross` is the cross-attention keys, values, key mask and rows-with-any-key."""
        rows, n, width = hidden.shape
        attn = layer.self_attn
        x = layer.self_attn_layer_norm(hidden)
        query = self.split(self.query(attn.q_proj, x))
        out = attend(query, self.split(attn.k_proj(x)), self.split(attn.v_proj(x)))
        hidden = hidden + attn.out_proj(out.transpose(1, 2).reshape(rows, n, width))

        cross_k, cross_v, cross_mask, cross_any = cross
        x = layer.encoder_attn_layer_norm(hidden)
        query = self.split(self.query(layer.encoder_attn.q_proj, x))
        out = F.scaled_dot_product_attention(query, cross_k, cross_v, attn_mask=cross_mask, scale=self.scale)
        # A row with no prompt token at all (CFG's null condition) attends to nothing: zero,
        # whatever a fused kernel makes of a fully masked row.
        out = torch.where(cross_any[..., None], out, torch.zeros((), dtype=out.dtype, device=out.device))
        hidden = hidden + layer.encoder_attn.out_proj(out.transpose(1, 2).reshape(rows, n, width))

        x = layer.final_layer_norm(hidden)
        return hidden + layer.fc2(layer.activation_fn(layer.fc1(x)))


def _run_forward_hooks(module: torch.nn.Module, output: torch.Tensor) -> torch.Tensor:
    """What `nn.Module.__call__` does with a module's forward hooks: each may replace the output."""
    for hook in tuple(module._forward_hooks.values()):
        result = hook(module, (output,), output)
        if result is not None:
            output = result[0] if isinstance(result, tuple) else result
    return output
