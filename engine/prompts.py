"""Text prompts → the decoder's conditioning (cross-attention states), and the null condition.

Its own module because three places condition the decoder: the token loop's decoders, the
teacher-forced harvest and the metrics' codebook cross-entropy.
"""

from __future__ import annotations

import torch

from engine import limits
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
def encode_prompts(lm: LoadedModel, prompts: list[str], null_half: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Text → the decoder's cross-attention states and mask; with `null_half`, the all-zero
    'null' condition of classifier-free guidance is appended as a second half."""
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
    """The unconditional input: one all-zero, fully masked conditioning position."""
    states = torch.zeros(batch, 1, lm.hidden_size, device=lm.device, dtype=lm.dtype)
    return states, torch.zeros(batch, 1, dtype=torch.long, device=lm.device)
