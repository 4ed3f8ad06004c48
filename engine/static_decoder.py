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

musicgen-melody has no cross-attention: its condition (chroma, then text) is prepended to the
input. Here it is run through the layers once per prompt (`set_prompt`) into the first
`prefix` positions of the self-attention cache; token position p then sits at cache index
`prefix + p` and takes the positional embedding of `condition length + p`, as in the HF
forward of condition and tokens together. The condition passes no forward hooks, so it is
neither steered nor recorded: it is the model's reading of the prompt and melody, like the
text encoder's states that text-only MusicGen cross-attends to and no knob touches; a knob
that edited it would be heard only from the next re-prime, seconds late.
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
    # A melody model's condition: cache positions kept for it (0: cross-attention), and its
    # length (a device tensor, so a captured graph reads a new prompt's).
    prefix: int = 0
    prefix_len: torch.Tensor | None = None

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
        # Cache indices; a melody model's condition positions come first (`CacheSet.prefix`).
        self._key_index = torch.arange(max_context + _prefix_reach(lm), device=lm.device)

    def encode(self, prompts: list[str], melody: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The condition of `prompts` (and a melody model's `melody` chroma): states and mask,
        with CFG's null half."""
        return encode_prompts(self.lm, prompts, null_half=self.cfg, melody=melody)

    @staticmethod
    def condition_length(condition: tuple[torch.Tensor, torch.Tensor]) -> int:
        return condition[0].shape[1]

    def cache_for(self, reuse: CacheSet | None, prompt_len: int) -> CacheSet:
        """A cache set whose cross-attention buffers (a melody model: condition positions)
        hold `prompt_len` tokens. On a GPU their length is rounded up (to 64) so most prompt
        swaps keep a captured graph; on the CPU it is exact, which keeps the arithmetic
        identical to transformers' forward."""
        held = None if reuse is None else (reuse.prefix if self.lm.melody else reuse.cross_len)
        exact = self.lm.device.type != "cuda"
        if held is not None and (held == prompt_len if exact and self.lm.melody else held >= prompt_len):
            self.clear(reuse, 0, None)
            return reuse
        length = prompt_len if exact else -(-prompt_len // 64) * 64
        return self.new_cache(length)

    @staticmethod
    def clear(cache: CacheSet, start: int, stop: int | None) -> None:
        """Zero self-attention token positions start…stop (start 0: the condition's too): stale
        keys are masked, but a stale NaN would still poison 0·v."""
        first = cache.prefix + start if start else 0
        last = None if stop is None else cache.prefix + stop
        cache.self_k[:, :, :, first:last].zero_()
        cache.self_v[:, :, :, first:last].zero_()

    def new_cache(self, cross_len: int) -> CacheSet:
        math, layers = self.math, len(self.math.inner.layers)
        device, dtype = self.lm.device, self.lm.dtype
        prefix = cross_len if self.lm.melody else 0
        cross_len -= prefix
        shape = (layers, self.rows, math.heads, prefix + self.max_context, math.head_dim)
        cross = (layers, self.rows, math.heads, cross_len, math.head_dim)
        if prefix:
            math.cover_positions(prefix + self.max_context)
        return CacheSet(
            self_k=torch.zeros(shape, device=device, dtype=dtype),
            self_v=torch.zeros(shape, device=device, dtype=dtype),
            cross_k=torch.zeros(cross, device=device, dtype=dtype),
            cross_v=torch.zeros(cross, device=device, dtype=dtype),
            cross_mask=torch.zeros(self.rows, 1, 1, cross_len, dtype=torch.bool, device=device),
            cross_any=torch.zeros(self.rows, 1, 1, dtype=torch.bool, device=device),
            prefix=prefix,
            prefix_len=torch.zeros(1, dtype=torch.long, device=device),
        )

    @torch.no_grad()
    def set_prompt(self, cache: CacheSet, condition: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Project encoder states `[rows, S, hidden]` into the cache's cross-attention buffers
        (S ≤ their length; the rest is masked out). In place: a captured graph stays valid."""
        enc, enc_mask = condition
        length = enc.shape[1]
        if self.lm.melody:
            self._prefill_condition(cache, enc)
            return
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

    def _prefill_condition(self, cache: CacheSet, states: torch.Tensor) -> None:
        """A melody model's condition `[rows, C, hidden]` into cache positions 0…C−1; the
        positions up to `prefix` stay masked."""
        length = states.shape[1]
        self.clear(cache, 0, None)
        cache.prefix_len.fill_(length)
        keys, values = self.math.condition_kv(states)
        for i, (key, value) in enumerate(zip(keys, values, strict=True)):
            cache.self_k[i, :, :, :length] = key
            cache.self_v[i, :, :, :length] = value

    def forward(self, columns: torch.Tensor, cache: CacheSet, positions: torch.Tensor) -> torch.Tensor:
        """Logits `[rows, K, n, vocab]` for delayed columns `[rows, K, n]` at cache positions
        `positions` (a device tensor `[n]`); their keys and values are written into `cache`.
        Each layer's output goes through its forward hooks (steering, meters, recording)."""
        math = self.math
        # Attend over the positions reached, not the whole cache: on the CPU a read of the end
        # position is free, and 30 s of masked keys cost as much as the rest of a short step.
        # A GPU keeps the full static shape (a captured graph must not depend on the position).
        reach = cache.prefix + (self.max_context if positions.is_cuda else int(positions[-1]) + 1)
        slots = positions + cache.prefix if cache.prefix else positions
        keys_at = self._key_index[None, :reach]
        causal = keys_at <= slots[:, None]
        if cache.prefix:  # the condition's positions, then the tokens' from `prefix` on
            hidden = math.embed(columns, positions + cache.prefix_len)
            causal = (keys_at < cache.prefix_len) | ((keys_at >= cache.prefix) & causal)
        else:
            hidden = math.embed(columns, positions)
        causal = causal[None, None]  # [1, 1, n, reach]
        for i, layer in enumerate(math.inner.layers):

            def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, i: int = i) -> torch.Tensor:
                keys = cache.self_k[i].index_copy_(2, slots, key)[:, :, :reach]
                values = cache.self_v[i].index_copy_(2, slots, value)[:, :, :reach]
                return F.scaled_dot_product_attention(query, keys, values, attn_mask=causal, scale=math.scale)

            cross = None if self.lm.melody else (cache.cross_k[i], cache.cross_v[i], cache.cross_mask, cache.cross_any)
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

    def cover_positions(self, count: int) -> None:
        """Grow the sinusoidal table to `count` positions, as transformers' forward does when a
        melody model's condition pushes the tokens past it."""
        table = self.inner.embed_positions
        if table.weights.shape[0] < count:
            table.make_weights(count, table.embedding_dim)

    @torch.no_grad()
    def condition_kv(self, states: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """A melody model's condition `[rows, C, hidden]` through every layer (causal, no hooks:
        neither steered nor recorded) → each layer's keys and values `[rows, heads, C, head_dim]`,
        what the tokens after it attend to (the torch step and the ONNX backend alike)."""
        length, dtype = states.shape[1], self.inner.layer_norm.weight.dtype
        hidden = states.to(dtype) + self.inner.embed_positions.weights[:length].to(device=states.device, dtype=dtype)
        keys: list[torch.Tensor] = []
        values: list[torch.Tensor] = []

        def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
            keys.append(key)
            values.append(value)
            return F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=self.scale)

        for layer in self.inner.layers:
            hidden = self.layer(layer, hidden, attend, None)
        return keys, values

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
        `cross` is the cross-attention keys, values, key mask and rows-with-any-key (None: a
        melody model's layer, which has none)."""
        rows, n, width = hidden.shape
        attn = layer.self_attn
        x = layer.self_attn_layer_norm(hidden)
        query = self.split(self.query(attn.q_proj, x))
        out = attend(query, self.split(attn.k_proj(x)), self.split(attn.v_proj(x)))
        hidden = hidden + attn.out_proj(out.transpose(1, 2).reshape(rows, n, width))
        if cross is not None:
            hidden = self._cross_attend(layer, hidden, cross)
        x = layer.final_layer_norm(hidden)
        return hidden + layer.fc2(layer.activation_fn(layer.fc1(x)))

    def _cross_attend(self, layer, hidden: torch.Tensor, cross: tuple) -> torch.Tensor:
        rows, n, width = hidden.shape
        cross_k, cross_v, cross_mask, cross_any = cross
        x = layer.encoder_attn_layer_norm(hidden)
        query = self.split(self.query(layer.encoder_attn.q_proj, x))
        out = F.scaled_dot_product_attention(query, cross_k, cross_v, attn_mask=cross_mask, scale=self.scale)
        # A row with no prompt token at all (CFG's null condition) attends to nothing: zero,
        # whatever a fused kernel makes of a fully masked row.
        out = torch.where(cross_any[..., None], out, torch.zeros((), dtype=out.dtype, device=out.device))
        return hidden + layer.encoder_attn.out_proj(out.transpose(1, 2).reshape(rows, n, width))


def _prefix_reach(lm: LoadedModel) -> int:
    """The most cache positions a melody model's condition can take (0 for cross-attention)."""
    if not lm.melody:
        return 0
    from engine.limits import MAX_PROMPT_TOKENS

    return -(-(int(lm.model.config.chroma_length) + MAX_PROMPT_TOKENS) // 64) * 64


def _run_forward_hooks(module: torch.nn.Module, output: torch.Tensor) -> torch.Tensor:
    """What `nn.Module.__call__` does with a module's forward hooks: each may replace the output."""
    for hook in tuple(module._forward_hooks.values()):
        result = hook(module, (output,), output)
        if result is not None:
            output = result[0] if isinstance(result, tuple) else result
    return output
