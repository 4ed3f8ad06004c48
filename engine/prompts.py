"""Text prompts (and a melody) → the decoder's conditioning, and the null condition.

Its own module because three places condition the decoder: the token loop's decoders, the
teacher-forced harvest and the metrics' codebook cross-entropy.

Two kinds of condition, one shape `(states [rows, S, hidden], mask [rows, S])`: MusicGen
cross-attends to the text's states (padding masked); musicgen-melody prepends the melody's
chroma and the text's states to its input (`engine.melody`), and attends to all of them as
transformers' generate does, so its mask is all ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from engine import limits
from engine.errors import MgsteerError
from engine.model import LoadedModel


def tokenize_prompts(lm: LoadedModel, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask `[B, S]` (padded), within the prompt bounds."""
    for prompt in prompts:
        limits.prompt_text(prompt)  # the cheap bound first: never tokenize a huge text
    tok = lm.tokenizer(prompts, return_tensors="pt", padding=True)
    for count in tok["attention_mask"].sum(1).tolist():
        limits.token_count(count)
    return tok["input_ids"], tok["attention_mask"]


@torch.no_grad()
def encode_prompts(
    lm: LoadedModel, prompts: list[str], null_half: bool = False, melody: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Text → the decoder's condition states and mask; with `null_half`, the all-zero 'null'
    condition of classifier-free guidance is appended as a second half. A melody model's
    condition starts with `melody`'s chroma `[frames, 12]` (the null melody where None, and
    in the null half)."""
    states, mask = _text_states(lm, prompts, null_half)
    if not lm.melody:
        if melody is not None:
            raise MgsteerError(f"model '{lm.spec}' is not a melody model: --melody needs musicgen-melody")
        return states, mask
    from engine.melody import melody_states, null_chroma

    batch = len(prompts)
    chroma = None if melody is None else melody[None].expand(batch, -1, -1)
    audio = melody_states(lm, chroma, batch)
    if null_half:
        audio = torch.cat([audio, melody_states(lm, null_chroma(batch), batch)], dim=0)
    states = torch.cat([audio, states], dim=1)
    return states, torch.ones(states.shape[:2], dtype=torch.long, device=states.device)


def _text_states(lm: LoadedModel, prompts: list[str], null_half: bool) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = (t.to(lm.device) for t in tokenize_prompts(lm, prompts))
    states = lm.model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    if getattr(lm.model, "enc_to_dec_proj", None) is not None:
        states = lm.model.enc_to_dec_proj(states)
    states = states * mask[..., None].to(states.dtype)
    if null_half:
        states = torch.cat([states, torch.zeros_like(states)], dim=0)
        mask = torch.cat([mask, torch.zeros_like(mask)], dim=0)
    return states, mask


def null_condition(lm: LoadedModel, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The unconditional input: one all-zero, fully masked conditioning position (a melody
    model: the null melody before it, as in the null half of classifier-free guidance)."""
    states = torch.zeros(batch, 1, lm.hidden_size, device=lm.device, dtype=lm.dtype)
    mask = torch.zeros(batch, 1, dtype=torch.long, device=lm.device)
    if not lm.melody:
        return states, mask
    from engine.melody import melody_states, null_chroma

    states = torch.cat([melody_states(lm, null_chroma(batch), batch), states], dim=1)
    return states, torch.ones(states.shape[:2], dtype=torch.long, device=lm.device)


@contextmanager
def condition_prefix(lm: LoadedModel, length: int) -> Iterator[None]:
    """Inside, the residual taps leave the first `length` positions of a full-sequence pass
    alone: a melody model's HF forward runs its prepended condition through the same layers,
    and the engine neither steers nor records the condition (engine.static_decoder)."""
    lm.prefix_positions = length
    try:
        yield
    finally:
        lm.prefix_positions = 0


def teacher_forced_logits(
    lm: LoadedModel, input_ids: torch.Tensor, condition: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """transformers' decoder on whole delayed sequences `[B·K, T]` under `condition`: logits
    `[B·K, T, vocab]` of the token positions only (a melody model's condition positions are
    dropped, and the taps skip them)."""
    states, mask = condition
    prefix = states.shape[1] if lm.melody else 0
    with condition_prefix(lm, prefix):
        logits = lm.model.decoder(input_ids=input_ids, encoder_hidden_states=states, encoder_attention_mask=mask).logits
    return logits[:, prefix:]
