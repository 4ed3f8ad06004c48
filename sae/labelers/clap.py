"""CLAP zero-shot labels over the bundled music vocabulary, and CLAP as a scorer.

A term is chosen for its *contrast*: mean cosine to the feature's top windows minus mean
cosine to random windows. Plain cosine to the top windows would crown whatever CLAP thinks
all music sounds like ("music", "song") for every feature.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.device import resolve_device
from engine.hub import fetch_pretrained, load_parts
from sae.labelers import DEFAULT_CLAP
from sae.labelers.base import Label, Labeler, WindowCache, WindowSet, extracted
from sae.vocabulary import VOCABULARY

HINT = "use --clap-model tiny (offline test model) or a local folder saved with save_pretrained"


def build_tiny_clap(seed: int = 0):
    """A seeded random CLAP of the real architecture (HTSAT + RoBERTa), small enough for tests."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    from engine.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    config = ClapConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 80,
            "pad_token_id": tokenizer.pad_token_id,
        },
        audio_config={
            "depths": [1, 1],
            "num_attention_heads": [2, 2],
            "patch_embeds_hidden_size": 16,
            "hidden_size": 32,
        },
        projection_dim=16,
    )
    return ClapModel(config).eval(), ClapFeatureExtractor(truncation="rand_trunc"), tokenizer


def load_clap(spec: str):
    """(model, feature extractor, tokenizer) from `tiny`, a hub id or a folder."""
    if spec == "tiny":
        return build_tiny_clap()

    def load(source: str, local_only: bool):
        from transformers import AutoFeatureExtractor, AutoTokenizer, ClapModel

        classes = (ClapModel, AutoFeatureExtractor, AutoTokenizer)
        model, extractor, tokenizer = load_parts(source, local_only, "CLAP model", "a CLAP checkpoint", *classes)
        return model.eval(), extractor, tokenizer

    return fetch_pretrained(spec, load, "CLAP model", HINT)


def _pooled(out) -> torch.Tensor:
    """transformers returns the projected embedding itself or inside an output object."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClapLabeler(Labeler):
    name = "clap"

    def __init__(
        self, spec: str = DEFAULT_CLAP, device: str = "auto", vocabulary: tuple[str, ...] = VOCABULARY, top: int = 3
    ) -> None:
        self.model, self.extractor, self.tokenizer = load_clap(spec)
        self.device = resolve_device(device)
        self.model.to(self.device).requires_grad_(False)
        self.vocabulary, self.top = vocabulary, top
        self._text: dict[str, torch.Tensor] = {}
        self._audio = WindowCache()

    def embed_audio(self, audio: list[np.ndarray], sample_rate: int) -> torch.Tensor:
        """Unit-norm audio embeddings `[n, dim]` (cached per window)."""
        return torch.stack(self._audio.get(audio, sample_rate, lambda clips: self._embed(clips, sample_rate)))

    @torch.no_grad()
    def _embed(self, audio: list[np.ndarray], sample_rate: int) -> torch.Tensor:
        out = [
            _pooled(self.model.get_audio_features(**inputs)).float().cpu()
            for inputs in extracted(self.extractor, audio, sample_rate, self.device)
        ]
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> torch.Tensor:
        """Unit-norm text embeddings `[n, dim]` (cached per text)."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._text]
        for i in range(0, len(missing), 64):
            chunk = missing[i : i + 64]
            tokens = self.tokenizer(chunk, padding=True, truncation=True, max_length=64, return_tensors="pt")
            tokens = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
            emb = torch.nn.functional.normalize(_pooled(self.model.get_text_features(**tokens)).float().cpu(), dim=-1)
            self._text.update(zip(chunk, emb, strict=True))
        return torch.stack([self._text[t] for t in texts])

    def label(self, windows: WindowSet) -> list[Label]:
        if not windows.top:
            return []
        terms = self.embed_text(list(self.vocabulary))
        top = (self.embed_audio(windows.top, windows.sample_rate) @ terms.T).mean(0)
        if windows.random:
            rand = (self.embed_audio(windows.random, windows.sample_rate) @ terms.T).mean(0)
        else:
            rand = torch.zeros_like(top)
        contrast = top - rand
        order = contrast.argsort(descending=True)[: self.top].tolist()
        return [
            Label(
                self.vocabulary[i],
                float(contrast[i]),
                {"cos_top": round(float(top[i]), 4), "cos_random": round(float(rand[i]), 4)},
            )
            for i in order
            if contrast[i] > 0
        ]

    def score(self, label: str, audio: list[np.ndarray], sample_rate: int) -> np.ndarray:
        return (self.embed_audio(audio, sample_rate) @ self.embed_text([label]).T)[:, 0].numpy()
