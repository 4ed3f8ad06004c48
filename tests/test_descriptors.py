"""Music descriptors on synthetic audio with known pitch, key, chord, tempo and texture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.synth_codec import SynthCodec, midi_hz, note_tokens
from sae.descriptors import describe, note_name, register_of
from sae.labelers.base import WindowSet
from sae.labelers.descriptors import DescriptorLabeler
from sae.world.grammar import LEVEL, TIMBRES

SR = 32000


def tones(notes: list[int], seconds: float = 3.0, harmonics: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    out = sum(0.3 / h * np.sin(2 * np.pi * midi_hz(m) * h * t) for m in notes for h in range(1, harmonics + 1))
    return out.astype(np.float32)


def clicks(bpm: float, seconds: float = 4.0) -> np.ndarray:
    out = np.zeros(int(seconds * SR), np.float32)
    for beat in np.arange(0, seconds, 60 / bpm):
        i = int(beat * SR)
        out[i : i + 64] = np.hanning(64)[: len(out) - i]
    return out


def noise_bursts(seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * SR), np.float32)
    n = int(0.03 * SR)
    for start in np.arange(0, seconds - 0.05, 0.25):
        i = int(start * SR)
        out[i : i + n] = 0.5 * rng.standard_normal(n) * np.hanning(n)
    return out


def test_sine_440_is_a4_in_the_middle_register():
    d = describe(0.5 * np.sin(2 * np.pi * 440 * np.arange(3 * SR) / SR), SR)
    assert d.note == "A4" and d.register == "mid"
    assert abs(d.f0_hz - 440) < 2 and d.voiced > 0.9
    assert abs(d.centroid_hz - 440) < 20
    assert d.percussive < 0.1


@pytest.mark.parametrize("harmonics", [1, 4])
def test_c_major_triad_is_c_major(harmonics):
    d = describe(tones([60, 64, 67], harmonics=harmonics), SR)
    assert d.key == "C major"
    assert d.chord == "C major" and d.chord_strength > 0.8


@pytest.mark.parametrize(("notes", "chord"), [([57, 60, 64], "A minor"), ([62, 65, 69], "D minor")])
def test_minor_triads_are_minor(notes, chord):
    d = describe(tones(notes), SR)
    assert d.chord == chord
    assert d.key.endswith("minor")


@pytest.mark.parametrize("bpm", [90, 120, 150])
def test_clicks_give_their_tempo(bpm):
    d = describe(clicks(bpm), SR)
    assert abs(d.tempo_bpm - bpm) < 3
    assert d.onset_rate == pytest.approx(bpm / 60, rel=0.25)


def test_noise_bursts_are_percussive_and_steady_tones_are_not():
    bursts = describe(noise_bursts(), SR)
    assert bursts.percussive > 0.8 and bursts.onset_rate > 2
    assert bursts.note == ""  # no pitch in noise
    steady = describe(tones([60, 64, 67]), SR)
    assert steady.percussive < 0.1 and steady.tempo_bpm == 0 and steady.onset_rate == 0


@pytest.mark.parametrize(("note", "name"), [(48, "C3"), (62, "D4"), (74, "D5")])
def test_a_melody_over_busy_kicks_is_heard_at_the_melody_not_the_kick(note, name):
    """The synth codec's kick is a loud near-sine at 45–60 Hz; before the f0 high-pass, YIN's
    median said 58–65 Hz for each of these notes (one in each of the world's registers) under a
    kick on every note."""
    codec, frames = SynthCodec(), 150
    codes = torch.zeros(1, 4, frames, dtype=torch.long)
    codes[0, :2] = torch.from_numpy(note_tokens(np.full(frames, note), LEVEL))
    codes[0, 2] = TIMBRES["bright"]
    codes[0, 3, ::10] = 1  # a kick every 10 frames: the world's fast busy drums
    d = describe(codec.decode(codes)[0].numpy(), codec.sample_rate)
    assert d.note == name
    assert d.f0_hz == pytest.approx(midi_hz(note), rel=0.01)


@pytest.mark.parametrize("harmonics", [1, 8])
def test_a_bass_note_below_the_f0_high_pass_is_still_heard(harmonics):
    """Filtering below 100 Hz leaves a tone's period: a sine alone keeps its shape, and a rich
    tone keeps its harmonics' common period."""
    d = describe(tones([33], harmonics=harmonics), SR)  # A1, 55 Hz
    assert d.note == "A1" and d.register == "low" and d.voiced > 0.9


def test_register_and_note_names():
    assert note_name(261.63) == "C4" and note_name(27.5) == "A0"
    assert register_of(100) == "low" and register_of(300) == "mid" and register_of(1000) == "high"


def test_labeler_names_what_top_windows_share_and_random_ones_lack():
    rng = np.random.default_rng(1)
    top = [tones([57, 60, 64], seconds=2.0) * (0.8 + 0.1 * i) for i in range(5)]
    rand = [noise_bursts(2.0, seed=i) for i in range(4)] + [0.1 * rng.standard_normal(2 * SR).astype(np.float32)]
    labels = {lab.label: lab for lab in DescriptorLabeler().label(WindowSet(top, rand, SR))}
    assert "A minor chord" in labels and "A minor key" in labels
    assert "harmonic" in labels and "dark" in labels
    assert labels["A minor chord"].evidence == {"share_top": 1.0, "share_random": 0.0}
    clicks_top = [clicks(120, 3.0) for _ in range(4)]
    tempo = [lab for lab in DescriptorLabeler().label(WindowSet(clicks_top, rand, SR)) if "BPM" in lab.label]
    assert [lab.label for lab in tempo] == ["~120 BPM"]


def test_descriptor_scorer_judges_its_own_labels_only():
    labeler = DescriptorLabeler()
    windows = [tones([60, 64, 67]), noise_bursts()]
    assert labeler.score("C major chord", windows, SR).tolist() == [1.0, 0.0]
    bright = labeler.score("bright", windows, SR)
    assert bright[1] > bright[0]
    assert labeler.score("~120 BPM", [clicks(120), clicks(90)], SR)[0] > -0.05
    assert labeler.score("A4", windows, SR) is not None
    assert labeler.score("piano", windows, SR) is None
