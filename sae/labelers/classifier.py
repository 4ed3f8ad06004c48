"""Audio-classifier labels (an AudioSet AST by default), and the classifier as a scorer.

Like the paper's taggers, but a class is chosen for how much more likely it is on the
feature's top windows than on random windows, not for how often it wins on the top ones
(that share is kept as evidence, for comparison).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from engine.device import resolve_device
from engine.hub import fetch_pretrained, load_parts
from sae.labelers import DEFAULT_CLASSIFIER
from sae.labelers.base import Label, Labeler, WindowCache, WindowSet, extracted

HINT = "use --classifier-model tiny (offline test model) or a local folder saved with save_pretrained"
TINY_CLASSES = (
    "Music", "Piano", "Guitar", "Drum", "Bass guitar", "Violin, fiddle", "Singing", "Synthesizer",
    "Electronic music", "Rock music", "Jazz", "Classical music",
)  # fmt: skip


def build_tiny_classifier(seed: int = 0):
    """A seeded random Audio Spectrogram Transformer with a few AudioSet class names."""
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    torch.manual_seed(seed)
    config = ASTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_length=1024,
        id2label=dict(enumerate(TINY_CLASSES)),
        label2id={name: i for i, name in enumerate(TINY_CLASSES)},
        problem_type="multi_label_classification",
    )
    return ASTForAudioClassification(config).eval(), ASTFeatureExtractor()


def load_classifier(spec: str):
    """(model, feature extractor) from `tiny`, a hub id or a folder."""
    with warnings.catch_warnings():  # AST's own extractor settings (128 mels, 400-point FFT) always warn
        warnings.filterwarnings("ignore", message="At least one mel filter has all zero values")
        return _load_classifier(spec)


def _load_classifier(spec: str):
    if spec == "tiny":
        return build_tiny_classifier()

    def load(source: str, local_only: bool):
        from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

        kind = "an audio-classification checkpoint"
        classes = (AutoModelForAudioClassification, AutoFeatureExtractor)
        model, extractor = load_parts(source, local_only, "audio classifier", kind, *classes)
        return model.eval(), extractor

    return fetch_pretrained(spec, load, "audio classifier", HINT)


class ClassifierLabeler(Labeler):
    name = "classifier"

    def __init__(self, spec: str = DEFAULT_CLASSIFIER, device: str = "auto", top: int = 3) -> None:
        self.model, self.extractor = load_classifier(spec)
        self.device = resolve_device(device)
        self.model.to(self.device).requires_grad_(False)
        self.classes = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]
        self._index = {name.lower(): i for i, name in enumerate(self.classes)}
        # AudioSet is multi-label: independent sigmoids; a single-label head: softmax
        self.multi_label = self.model.config.problem_type != "single_label_classification"
        self.top = top
        self._cache = WindowCache()

    def probabilities(self, audio: list[np.ndarray], sample_rate: int) -> torch.Tensor:
        """Class probabilities `[n, classes]` (cached per window)."""
        return torch.stack(self._cache.get(audio, sample_rate, lambda clips: self._classify(clips, sample_rate)))

    @torch.no_grad()
    def _classify(self, audio: list[np.ndarray], sample_rate: int) -> torch.Tensor:
        logits = torch.cat([
            self.model(**inputs).logits.float().cpu()
            for inputs in extracted(self.extractor, audio, sample_rate, self.device)
        ])  # fmt: skip
        return logits.sigmoid() if self.multi_label else logits.softmax(-1)

    def label(self, windows: WindowSet) -> list[Label]:
        if not windows.top:
            return []
        top = self.probabilities(windows.top, windows.sample_rate)
        rand = self.probabilities(windows.random, windows.sample_rate) if windows.random else torch.zeros_like(top)
        contrast = top.mean(0) - rand.mean(0)
        wins = torch.bincount(top.argmax(1), minlength=len(self.classes)).float() / len(top)
        order = contrast.argsort(descending=True)[: self.top].tolist()
        return [
            Label(
                self.classes[i],
                float(contrast[i]),
                {
                    "p_top": round(float(top[:, i].mean()), 4),
                    "p_random": round(float(rand[:, i].mean()), 4),
                    "top1_share": round(float(wins[i]), 3),
                },
            )
            for i in order
            if contrast[i] > 0
        ]

    def score(self, label: str, audio: list[np.ndarray], sample_rate: int) -> np.ndarray | None:
        index = self._index.get(label.strip().lower())
        if index is None:
            return None
        return self.probabilities(audio, sample_rate)[:, index].numpy()
