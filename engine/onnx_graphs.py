"""The three graphs the ONNX Runtime backend runs, as torch modules written for export.

Why these cuts: (a) the prompt graph runs once per prompt (text encoder, projection, and
every layer's cross-attention keys and values); (b) the step graph runs every step and
takes the self-attention caches as inputs and returns only the keys and values of the new
positions, so the host keeps the caches in place (numpy arrays bound to ONNX Runtime without
copies) and never round-trips them; (c) the codec graph decodes one fixed-size chunk window.

The step graph mirrors `StaticDecoder` (same weights, same arithmetic) with two extra
inputs: a steering vector added to the residual at one layer and a per-row switch (1: steer
this row, 0: leave it, which also serves CFG's conditional-only mode and the unsteered
retry), and it returns that layer's residual for the meters.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.model import LoadedModel
from engine.static_decoder import DecoderMath


class PromptGraph(nn.Module):
    """input_ids, attention_mask `[B, S]` → cross keys/values `[L, 2B, H, S, D]` for the CFG
    rows [prompts; null condition], the key mask `[2B, 1, 1, S]` and rows-with-any-key."""

    def __init__(self, lm: LoadedModel) -> None:
        super().__init__()
        self.encoder = lm.model.text_encoder
        self.proj = getattr(lm.model, "enc_to_dec_proj", None)
        self.math = DecoderMath(lm)
        self.layers = self.math.inner.layers

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.proj is not None:
            states = self.proj(states)
        states = states * attention_mask[..., None].to(states.dtype)
        states = torch.cat([states, torch.zeros_like(states)], dim=0)
        mask = torch.cat([attention_mask, torch.zeros_like(attention_mask)], dim=0).bool()
        keys = [self.math.split(layer.encoder_attn.k_proj(states)) for layer in self.layers]
        values = [self.math.split(layer.encoder_attn.v_proj(states)) for layer in self.layers]
        return torch.stack(keys), torch.stack(values), mask[:, None, None, :], mask.any(dim=1)[:, None, None]


class StepGraph(nn.Module):
    """Delayed columns `[R, K, n]` at cache positions `[n]` → logits `[R, K, n, V]`, the new
    positions' keys and values `[L, R, H, n, D]`, and the residual `[R, n, hidden]` at the
    steering layer (after the edit).

    Each layer's cache is an input of its own: the host binds views of one array, and a
    graph that took the whole `[L, …]` array would split it, a copy of the cache each step."""

    def __init__(self, lm: LoadedModel, steer_layer: int) -> None:
        super().__init__()
        self.math = DecoderMath(lm, prescale=True)
        self.inner, self.lm_heads = self.math.inner, self.math.lm_heads  # registered: exported weights
        self.steer_layer = steer_layer

    def forward(
        self,
        columns: torch.Tensor,  # [R, K, n] int64
        positions: torch.Tensor,  # [n] int64
        cross_k: torch.Tensor,  # [L, R, H, S, D]
        cross_v: torch.Tensor,
        cross_mask: torch.Tensor,  # [R, 1, 1, S] bool
        cross_any: torch.Tensor,  # [R, 1, 1] bool
        steer: torch.Tensor,  # [hidden]
        steer_rows: torch.Tensor,  # [R, 1, 1]: 1 = add `steer` to this row (0·inf would be NaN: a select)
        *cache: torch.Tensor,  # each layer's keys `[R, H, D, T]` (transposed), then its values `[R, H, T, D]`
    ):
        cross = (cross_k, cross_v, cross_mask, cross_any)
        return self.run(columns, positions, cross, steer, steer_rows, cache)

    def run(self, columns, positions, cross: tuple | None, steer, steer_rows, cache):
        """The step; `cross` None: a melody model's layers, whose condition is in the cache."""
        math = self.math
        hidden = math.embed(columns, positions)
        # The cache holds positions before this call's first: later ones are stale or zero.
        layers = len(math.inner.layers)
        self_k, self_v = cache[:layers], cache[layers:]
        key_index = torch.arange(self_v[0].shape[2], device=columns.device)
        old_bias = torch.where(key_index < positions[:1], 0.0, float("-inf"))
        n = positions.shape[0]
        new_bias = torch.where(torch.ones(n, n, dtype=torch.bool).tril(), 0.0, float("-inf"))
        new_k, new_v, residual = [], [], hidden
        for i, layer in enumerate(math.inner.layers):

            def attend(query, key, value, i=i):
                new_k.append(key)
                new_v.append(value)
                return split_attention(query, (self_k[i], self_v[i], old_bias), (key, value, new_bias))

            crossed = None if cross is None else (cross[0][i], cross[1][i], cross[2], cross[3])
            hidden = math.layer(layer, hidden, attend, crossed)
            if i == self.steer_layer:
                hidden = torch.where(steer_rows > 0.5, hidden + steer.to(hidden.dtype), hidden)
                residual = hidden
        return math.logits(hidden), torch.stack(new_k), torch.stack(new_v), residual


class PrefixStepGraph(StepGraph):
    """The step of a melody model: no cross-attention inputs. Its condition's keys and values
    fill the cache's first positions (the host computes them once per prompt and melody,
    `DecoderMath.condition_kv`) and `positions` count from there."""

    def forward(self, columns, positions, steer, steer_rows, *cache):
        return self.run(columns, positions, None, steer, steer_rows, cache)


def split_attention(query: torch.Tensor, old: tuple, new: tuple) -> torch.Tensor:
    """Attention of a prescaled query (`DecoderMath(prescale=True)`) over the cached keys and
    the new ones as one softmax, without joining them.

    Why: a graph that wrote the new keys into the cache (or concatenated them) would copy the
    whole cache every layer of every step, and at 1500 positions that copy costs more than
    the weights; here the cache is only read, once for the scores and once for the values.
    `old` is (keys transposed `[…, D, T]`, values, additive mask `[T]`): a cache stored that
    way is a plain matrix product's right side, where `[…, T, D]` keys would be transposed and
    packed at every call; `new` is (keys, values, mask `[n, n]`) as the layer made them."""
    old_kt, old_v, old_bias = old
    new_k, new_v, new_bias = new
    scores = torch.cat([query @ old_kt + old_bias, query @ new_k.transpose(-1, -2) + new_bias], dim=-1)
    weights = scores.softmax(dim=-1)
    context = old_v.shape[-2]
    return weights[..., :context] @ old_v + weights[..., context:] @ new_v


class CodecGraph(nn.Module):
    """EnCodec-decode one channel's codes `[1, K, frames]` → mono audio `[samples]` (a stereo
    model's two channels are decoded by two runs, as `engine.codec.EncodecCodec` does)."""

    def __init__(self, lm: LoadedModel) -> None:
        super().__init__()
        self.codec = lm.model.audio_encoder

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.codec.decode(codes[None], audio_scales=[None]).audio_values[0, 0].float()
