"""Labelers: descriptors (no weights), notes (basic-pitch's transcriber), the planted world's exact
scorer, CLAP zero-shot, an audio classifier, a multimodal LLM."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.errors import MgsteerError
from sae.labelers.base import Label, Labeler, LabelerError, WindowSet
from sae.labelers.llm import LLMConfig

NAMES = ("descriptors", "notes", "world", "clap", "classifier", "llm")
# defined here, not in their modules, so the CLI's help reads them without importing torch
DEFAULT_CLAP = "laion/larger_clap_music"
DEFAULT_CLASSIFIER = "MIT/ast-finetuned-audioset-10-10-0.4593"

__all__ = ["NAMES", "Label", "Labeler", "LabelerError", "LabelerSettings", "WindowSet", "build_labelers", "parse_names"]


@dataclass(frozen=True)
class LabelerSettings:
    clap_model: str = DEFAULT_CLAP
    classifier_model: str = DEFAULT_CLASSIFIER
    llm: LLMConfig = field(default_factory=LLMConfig)
    device: str = "auto"


def parse_names(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in NAMES]
    if unknown or not names:
        raise MgsteerError(f"unknown labeler(s) {', '.join(unknown) or '(none)'}: choose from {', '.join(NAMES)}")
    return names


def build_labelers(names: tuple[str, ...], settings: LabelerSettings | None = None) -> list[Labeler]:
    """Instantiate the named labelers (models load here, once)."""
    s = settings or LabelerSettings()
    out: list[Labeler] = []
    for name in names:
        if name == "descriptors":
            from sae.labelers.descriptors import DescriptorLabeler

            out.append(DescriptorLabeler())
        elif name == "notes":
            from sae.labelers.notes import NotesLabeler

            out.append(NotesLabeler())
        elif name == "world":
            from sae.labelers.world import WorldLabeler

            out.append(WorldLabeler())
        elif name == "clap":
            from sae.labelers.clap import ClapLabeler

            out.append(ClapLabeler(s.clap_model, s.device))
        elif name == "classifier":
            from sae.labelers.classifier import ClassifierLabeler

            out.append(ClassifierLabeler(s.classifier_model, s.device))
        elif name == "llm":
            from sae.labelers.llm import LLMLabeler

            out.append(LLMLabeler(s.llm))
    return out
