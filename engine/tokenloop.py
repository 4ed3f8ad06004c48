"""MusicGen's token loop, one decoder step at a time, written out instead of `generate()`.

Why our own loop: between any two steps the engine must be able to read a parameter
snapshot, swap the steering plan and hand complete frames to the audio path; `generate()`
runs to the end and returns only audio.

Delay pattern (K codebooks): codebook q at decoder position p holds frame p − q − 1; position
0 is the start token and positions p ≤ q of codebook q are padding. So after sampling
position p ≥ K, frame p − K is complete: N frames need N + K − 1 steps.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch

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


class TokenLoop:
    """Generates frames for a batch of prompts with a KV cache; `step()` is one decoder call."""

    def __init__(self, lm: LoadedModel, prompts: list[str], sampling: SamplingConfig | None = None) -> None:
        self.lm = lm
        self.sampling = sampling or SamplingConfig()
        self.batch = len(prompts)
        self.position = 0  # decoder position of the next input column
        self._cache = None
        self._generator = torch.Generator(device=lm.device).manual_seed(self.sampling.seed)
        self._enc, self._enc_mask = self._encode_text(prompts)
        start = torch.full((self.batch, lm.num_codebooks), lm.pad_token_id, dtype=torch.long, device=lm.device)
        self._next_input = start
        self._recent: deque[torch.Tensor] = deque(maxlen=lm.num_codebooks)

    @torch.no_grad()
    def _encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Text → cross-attention states, with the all-zero 'null' condition appended under CFG."""
        lm = self.lm
        tok = lm.tokenizer(prompts, return_tensors="pt", padding=True)
        ids, mask = tok["input_ids"].to(lm.device), tok["attention_mask"].to(lm.device)
        states = lm.model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        if getattr(lm.model, "enc_to_dec_proj", None) is not None:
            states = lm.model.enc_to_dec_proj(states)
        states = states * mask[..., None].to(states.dtype)
        if self.sampling.cfg:
            states = torch.cat([states, torch.zeros_like(states)], dim=0)
            mask = torch.cat([mask, torch.zeros_like(mask)], dim=0)
        return states, mask

    @torch.no_grad()
    def step(self) -> torch.Tensor | None:
        """Run one decoder step; return the frame `[batch, K]` it completed, if any."""
        lm, k = self.lm, self.lm.num_codebooks
        if self.position + 1 >= lm.max_positions:
            raise MgsteerError(f"reached the model's {lm.max_positions} positions; re-prime before continuing")
        column = self._next_input
        rows = torch.cat([column, column], dim=0) if self.sampling.cfg else column
        out = lm.model.decoder(
            input_ids=rows.reshape(-1, 1),
            encoder_hidden_states=self._enc,
            encoder_attention_mask=self._enc_mask,
            past_key_values=self._cache,
            use_cache=True,
        )
        self._cache = out.past_key_values
        logits = out.logits[:, -1, :].float().reshape(rows.shape[0], k, -1)
        sampled = self._sample(logits)
        self.position += 1
        # Delay pattern: codebook q is padding until position q + 1.
        pad = torch.arange(k, device=lm.device) >= self.position
        sampled[:, pad] = lm.pad_token_id
        self._next_input = sampled
        self._recent.append(sampled)
        if self.position < k:
            return None
        return torch.stack([self._recent[q][:, q] for q in range(k)], dim=1)

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


@torch.no_grad()
def decode_codes(lm: LoadedModel, codes: torch.Tensor) -> torch.Tensor:
    """EnCodec-decode codes `[batch, K, frames]` → audio `[batch, samples]` (mono)."""
    audio = lm.model.audio_encoder.decode(codes[None].to(lm.device), audio_scales=[None] * codes.shape[0])
    return audio.audio_values[:, 0].float()
