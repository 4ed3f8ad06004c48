"""The notes labeler: basic-pitch's pretrained transcriber on ONNX Runtime, checked against
notes the synth codec rendered."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from engine.errors import MgsteerError
from engine.synth_codec import SynthCodec, note_tokens
from sae.labelers import build_labelers
from sae.labelers.base import WindowSet
from sae.labelers.notes import NotesLabeler, NoteTranscriber

MELODY = (60, 64, 67, 72, 57, 62, 65, 69)  # MIDI notes, 0.5 s each


def rendered(notes, frames_per_note: int = 25, timbre: int = 1) -> tuple[np.ndarray, int]:
    codec = SynthCodec(128)
    codes = np.zeros((4, frames_per_note * len(notes)), np.int64)
    codes[:2] = note_tokens(np.repeat(notes, frames_per_note), level=13)
    codes[2] = timbre
    return codec.decode(torch.from_numpy(codes)[None])[0].numpy(), codec.sample_rate


@pytest.fixture(scope="module")
def transcriber():
    return NoteTranscriber()


def test_the_transcriber_hears_the_synth_codecs_notes(transcriber):
    audio, sr = rendered(MELODY)
    notes = transcriber.notes(audio, sr)
    assert [n.midi for n in notes] == list(MELODY)
    for i, n in enumerate(notes):
        assert abs(n.start_s - 0.5 * i) < 0.04  # onsets within 40 ms
        assert abs((n.end_s - n.start_s) - 0.5) < 0.08
    summary = transcriber.summary(audio, sr)
    assert summary.pitch_span == max(MELODY) - min(MELODY)
    assert summary.polyphony == pytest.approx(1.0, abs=0.1)
    assert summary.onset_rate == pytest.approx(len(MELODY) / 4.0)


def test_the_notes_labeler_contrasts_high_fast_windows_with_random_ones():
    labeler = build_labelers(("notes",))[0]
    assert isinstance(labeler, NotesLabeler)
    rng = np.random.default_rng(0)
    top = [rendered(rng.integers(76, 84, 10), frames_per_note=10)[0] for _ in range(3)]
    rand = [rendered(rng.integers(48, 60, 4))[0] for _ in range(4)]
    names = [lab.label for lab in labeler.label(WindowSet(top, rand, 32000))]
    assert "high notes" in names and "many notes" in names
    high = labeler.score("high notes", top + rand, 32000)
    assert high[:3].min() > high[3:].max()
    assert labeler.score("piano", top, 32000) is None


def test_without_basic_pitch_the_labeler_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "basic_pitch" else real(name, *a))
    with pytest.raises(MgsteerError, match="pip install --no-deps basic-pitch"):
        NoteTranscriber()
