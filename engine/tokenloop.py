"""MusicGen's token loop, one decoder step at a time, written out instead of `generate()`.

Why our own loop: between any two steps the engine must be able to read a parameter
snapshot, swap the steering plan and hand complete frames to the audio path; `generate()`
runs to the end and returns only audio.

Delay pattern (K codebooks): codebook q at decoder position p holds frame p − q − 1; position
0 is the start token and positions p ≤ q of codebook q are padding. So after sampling
position p ≥ K, frame p − K is complete: N frames need N + K − 1 steps.

Endless play (re-priming): MusicGen was trained on ≤ 30 s and has a fixed positional table.
Before the context fills, a second KV cache is built from the last few seconds of tokens —
the same delayed columns, shifted so they start at position 0 behind a fresh start column —
a few positions per step (`reprime_step`), chasing the head; once it has caught up it
replaces the old cache. Generation never pauses for it, and a new prompt can be swapped in
the same way.

Memory: each self-attention cache is preallocated once (`max_context` positions) and the two
caches of a re-prime are reused in turn, so endless play allocates nothing per step and the
resident size stays flat (a cache that grows by concatenation fragments the heap).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, EncoderDecoderCache, StaticCache

from engine import limits
from engine.errors import MgsteerError
from engine.model import LoadedModel


@dataclass(frozen=True)
class SamplingConfig:
    """MusicGen's defaults: top-k 250, temperature 1, classifier-free guidance 3."""

    guidance: float = 3.0
    top_k: int = 250
    temperature: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.guidance >= 1.0 and self.temperature > 0 and self.top_k >= 0):
            raise MgsteerError(
                f"bad sampling settings (guidance {self.guidance} must be ≥ 1, temperature {self.temperature} > 0, "
                f"top-k {self.top_k} ≥ 0)"
            )

    @property
    def cfg(self) -> bool:
        return self.guidance > 1.0


@torch.no_grad()
def encode_prompts(lm: LoadedModel, prompts: list[str], null_half: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Text → the decoder's cross-attention states and mask; with `null_half`, the all-zero
    'null' condition of classifier-free guidance is appended as a second half."""
    for prompt in prompts:
        limits.prompt_text(prompt)  # the cheap bound first: never tokenize a huge text
    tok = lm.tokenizer(prompts, return_tensors="pt", padding=True)
    for count in tok["attention_mask"].sum(1).tolist():
        limits.token_count(count)
    ids, mask = tok["input_ids"].to(lm.device), tok["attention_mask"].to(lm.device)
    states = lm.model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    if getattr(lm.model, "enc_to_dec_proj", None) is not None:
        states = lm.model.enc_to_dec_proj(states)
    states = states * mask[..., None].to(states.dtype)
    if null_half:
        states = torch.cat([states, torch.zeros_like(states)], dim=0)
        mask = torch.cat([mask, torch.zeros_like(mask)], dim=0)
    return states, mask


def null_condition(lm: LoadedModel, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The unconditional input: one all-zero, fully masked conditioning position."""
    states = torch.zeros(batch, 1, lm.hidden_size, device=lm.device, dtype=lm.dtype)
    return states, torch.zeros(batch, 1, dtype=torch.long, device=lm.device)


@dataclass
class _Reprime:
    """A cache being rebuilt from delayed columns `offset + 1 …` (see module docstring)."""

    offset: int
    enc: torch.Tensor
    enc_mask: torch.Tensor
    cache: EncoderDecoderCache
    done: int = 0  # positions already in the new cache
    pieces: list[int] = field(default_factory=list)


class TokenLoop:
    """Generates frames for a batch of prompts with a KV cache; `step()` is one decoder call."""

    def __init__(
        self,
        lm: LoadedModel,
        prompts: list[str],
        sampling: SamplingConfig | None = None,
        max_context: int | None = None,
    ) -> None:
        self.lm = lm
        self.sampling = sampling or SamplingConfig()
        self.batch = len(prompts)
        self.max_context = min(max_context or lm.max_positions, lm.max_positions)
        self.position = 0  # steps taken = absolute decoder position of the next input column
        self.cache_len = 0  # positions held in the current KV cache
        self.reprimes = 0
        # Defence in depth: a forward whose logits are not finite (an extreme steering edit, a
        # float16 overflow) is run again inside `unsteered()`, which the steering owner sets.
        self.unsteered: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
        self.nonfinite_steps = 0  # forwards that had to be run again
        self._cache = self._fresh_cache()
        self._spare = None  # the previous cache, reused by the next re-prime
        self._reprime: _Reprime | None = None
        self._generator = torch.Generator(device=lm.device).manual_seed(self.sampling.seed)
        self._enc, self._enc_mask = self._encode_text(prompts)
        self._start = torch.full((self.batch, lm.num_codebooks), lm.pad_token_id, dtype=torch.long, device=lm.device)
        self._next_input = self._start
        self._recent: deque[torch.Tensor] = deque(maxlen=lm.num_codebooks)
        # Delayed columns, newest last; the last one is the next input (at `position`).
        self._history: deque[torch.Tensor] = deque([self._start], maxlen=lm.max_positions)

    def _encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return encode_prompts(self.lm, prompts, null_half=self.sampling.cfg)

    @torch.no_grad()
    def step(self) -> torch.Tensor | None:
        """Run one decoder step; return the frame `[batch, K]` it completed, if any."""
        lm, k = self.lm, self.lm.num_codebooks
        if self.cache_len >= self.max_context:
            raise MgsteerError(f"the context is full ({self.max_context} positions); re-prime before continuing")
        out = self._guarded_forward(self._next_input[..., None], self._enc, self._enc_mask, self._cache)
        self._cache = out.past_key_values
        self.cache_len += 1
        logits = out.logits[:, -1, :].float().reshape(-1, k, out.logits.shape[-1])
        sampled = self._sample(logits)
        self.position += 1
        # Delay pattern: codebook q is padding until position q + 1.
        pad = torch.arange(k, device=lm.device) >= self.position
        sampled[:, pad] = lm.pad_token_id
        self._next_input = sampled
        self._history.append(sampled)
        self._recent.append(sampled)
        if self.position < k:
            return None
        return torch.stack([self._recent[q][:, q] for q in range(k)], dim=1)

    def _forward(self, columns: torch.Tensor, enc: torch.Tensor, enc_mask: torch.Tensor, cache):
        """Decoder call on delayed columns `[batch, K, n]` (doubled for CFG)."""
        rows = torch.cat([columns, columns], dim=0) if self.sampling.cfg else columns
        return self.lm.model.decoder(
            input_ids=rows.reshape(-1, rows.shape[-1]),
            encoder_hidden_states=enc,
            encoder_attention_mask=enc_mask,
            past_key_values=cache,
            use_cache=True,
        )

    def _guarded_forward(self, columns: torch.Tensor, enc: torch.Tensor, enc_mask: torch.Tensor, cache):
        """`_forward`, run again unsteered if its logits are not finite (the cache is rewound
        first, so the retry overwrites the positions the bad call wrote). If even that is not
        finite, the logits are made finite so sampling goes on: the music must not stop."""
        out = self._forward(columns, enc, enc_mask, cache)
        if bool(torch.isfinite(out.logits).all()):
            return out
        self.nonfinite_steps += 1
        _rewind(cache, columns.shape[-1])
        with self.unsteered():
            out = self._forward(columns, enc, enc_mask, cache)
        if not bool(torch.isfinite(out.logits).all()):
            out.logits = torch.nan_to_num(out.logits.float(), nan=0.0, posinf=1e4, neginf=-1e4)
        return out

    def _fresh_cache(self, reuse: EncoderDecoderCache | None = None) -> EncoderDecoderCache:
        """A preallocated self-attention cache (reset if reused) and an empty cross-attention one."""
        config = self.lm.model.config.decoder
        if reuse is None:
            own = StaticCache(config=config, max_cache_len=self.max_context)
        else:
            own = reuse.self_attention_cache
            own.reset()
        return EncoderDecoderCache(own, DynamicCache(config=config))

    # ---- re-priming ---------------------------------------------------------------------------
    @property
    def repriming(self) -> bool:
        return self._reprime is not None

    def begin_reprime(self, keep_positions: int, prompts: list[str] | None = None) -> None:
        """Start rebuilding the context from the last `keep_positions` steps (and a new prompt)."""
        keep = max(1, min(keep_positions, self.position, len(self._history) - 1))
        enc, mask = self._encode_text(prompts) if prompts is not None else (self._enc, self._enc_mask)
        cache = self._fresh_cache(reuse=self._spare)
        self._spare = None
        self._reprime = _Reprime(offset=self.position - keep, enc=enc, enc_mask=mask, cache=cache)

    @torch.no_grad()
    def reprime_step(self, piece: int = 32) -> bool:
        """Prefill up to `piece` positions of the new context; True when it was swapped in.

        The head advances one position per step, so with `piece` p the new cache catches up
        after about keep / (p − 1) steps: p must be ≥ 2."""
        re = self._reprime
        if re is None:
            return False
        target = self.position - re.offset  # positions the new cache must hold to catch up
        if re.done < target:
            end = min(re.done + piece, target)
            columns = torch.stack([self._shifted_column(re, p) for p in range(re.done, end)], dim=-1)
            re.cache = self._guarded_forward(columns, re.enc, re.enc_mask, re.cache).past_key_values
            re.pieces.append(end - re.done)
            re.done = end
        if re.done < self.position - re.offset:
            return False
        self._spare, self._cache, self.cache_len = self._cache, re.cache, re.done
        self._enc, self._enc_mask = re.enc, re.enc_mask
        self._reprime = None
        self.reprimes += 1
        return True

    def _shifted_column(self, re: _Reprime, p: int) -> torch.Tensor:
        """Column p of the re-primed sequence: old column offset + p, with the start pattern."""
        if p == 0:
            return self._start
        first = self.position - len(self._history) + 1
        column = self._history[re.offset + p - first].clone()
        column[:, p:] = self.lm.pad_token_id  # codebooks q ≥ p are padding at a fresh start
        return column

    def _sample(self, logits: torch.Tensor) -> torch.Tensor:
        s = self.sampling
        if s.cfg:
            cond, uncond = logits.split(self.batch, dim=0)
            logits = uncond + (cond - uncond) * s.guidance
        logits = logits / s.temperature
        if 0 < s.top_k < logits.shape[-1]:
            kth = logits.topk(s.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = logits.softmax(dim=-1).reshape(-1, logits.shape[-1])
        return torch.multinomial(probs, 1, generator=self._generator).reshape(self.batch, -1)

    def frames(self, count: int, progress: bool = False) -> torch.Tensor:
        """Generate `count` complete frames; returns codes `[batch, K, count]`."""
        from tqdm import tqdm

        out: list[torch.Tensor] = []
        bar = tqdm(total=count, unit="frame", disable=not progress, leave=False)
        while len(out) < count:
            frame = self.step()
            if frame is not None:
                out.append(frame)
                bar.update(1)
        bar.close()
        return torch.stack(out, dim=-1)


def _rewind(cache: EncoderDecoderCache, positions: int) -> None:
    """Forget the last `positions` positions of the self-attention cache (the cross-attention
    cache depends only on the prompt and stays)."""
    for layer in cache.self_attention_cache.layers:
        if hasattr(layer, "cumulative_length"):  # static layers: the next write goes here
            layer.cumulative_length -= positions
        else:
            layer.crop(layer.get_seq_length() - positions)


@torch.no_grad()
def decode_codes(lm: LoadedModel, codes: torch.Tensor) -> torch.Tensor:
    """EnCodec-decode codes `[batch, K, frames]` → audio `[batch, samples]` (mono)."""
    audio = lm.model.audio_encoder.decode(codes[None].to(lm.device), audio_scales=[None] * codes.shape[0])
    return audio.audio_values[:, 0].float()
