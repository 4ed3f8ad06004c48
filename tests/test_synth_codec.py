"""The synth codec: tokens that mean pitch classes, octaves, levels, timbres and drum hits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.codec import decode_codes
from engine.errors import MgsteerError
from engine.model import load_musicgen
from engine.synth_codec import LEVEL_STEPS, SynthCodec, level_db, midi_hz, note_tokens, token_notes

V = 128
LOUDEST = LEVEL_STEPS - 1


def _f0(audio: np.ndarray, sr: int) -> float:
    """Frequency of the strongest spectral peak, refined by parabolic interpolation."""
    window = np.hanning(len(audio))
    spectrum = np.abs(np.fft.rfft(audio * window, n=8 * len(audio)))
    i = int(spectrum[1:].argmax()) + 1
    a, b, c = np.log(spectrum[i - 1 : i + 2] + 1e-12)
    return (i + 0.5 * (a - c) / (a - 2 * b + c)) * sr / (8 * len(audio))


def _codes(notes, level, timbre=0, drum=0, frames=50):
    """Codes of MIDI `notes` (one, or one per frame; 0: rest) at level step `level`."""
    codes = torch.zeros(1, 4, frames, dtype=torch.long)
    codes[0, :2] = torch.from_numpy(note_tokens(np.broadcast_to(np.asarray(notes), (frames,)), level))
    codes[0, 2], codes[0, 3] = timbre, drum
    return codes


def _spectrum(x: np.ndarray) -> np.ndarray:
    return np.abs(np.fft.rfft(x))


@pytest.mark.parametrize("note", [45, 57, 69, 76, 88])
def test_a_held_note_sounds_at_its_pitch(note):
    codec = SynthCodec(V)
    audio = codec.decode(_codes(note, LOUDEST))[0].numpy()
    steady = audio[codec.hop * 10 : codec.hop * 40]
    assert _f0(steady, codec.sample_rate) == pytest.approx(midi_hz(note), rel=0.01)


def test_pitch_class_and_octave_are_separate_tokens():
    """C in every octave is one pitch-class token; the octave token alone moves it by 12."""
    tokens = note_tokens(np.array([48, 60, 72, 61, 0]), 5)
    assert tokens[0].tolist() == [1, 1, 1, 2, 0]
    assert len(set(tokens[1, :3].tolist())) == 3 and tokens[1, 4] == 0
    assert token_notes(*tokens).tolist() == [48, 60, 72, 61, 0]


@pytest.mark.parametrize("level", [3, 9, LOUDEST])
def test_level_steps_set_the_level_in_db(level):
    codec = SynthCodec(V)
    codes = _codes(69, level)
    audio = codec.decode(codes)[0].numpy()[codec.hop * 10 : codec.hop * 40]
    rms_db = 20 * np.log10(np.sqrt(np.mean(audio**2)))
    expected = (level / LOUDEST - 1) * 48
    assert level_db(int(codes[0, 1, 0])) == pytest.approx(expected)
    assert rms_db == pytest.approx(expected - 20 * np.log10(np.sqrt(2)), abs=0.5)  # a sine's RMS


def test_a_melody_changes_pitch_frame_by_frame_and_rests_are_silent():
    codec = SynthCodec(V)
    pitch = torch.tensor([60] * 25 + [0] * 25 + [67] * 25)
    audio = codec.decode(_codes(pitch.numpy(), LOUDEST, frames=75))[0].numpy()
    hop, sr = codec.hop, codec.sample_rate
    assert _f0(audio[hop * 5 : hop * 20], sr) == pytest.approx(midi_hz(60), rel=0.01)
    assert np.abs(audio[hop * 30 : hop * 45]).max() < 1e-6
    assert _f0(audio[hop * 55 : hop * 70], sr) == pytest.approx(midi_hz(67), rel=0.01)


def test_timbre_and_drums_are_audible_and_decoding_is_deterministic():
    codec = SynthCodec(V)
    sine = codec.decode(_codes(57, LOUDEST, timbre=0))[0].numpy()[3200:12800]
    saw = codec.decode(_codes(57, LOUDEST, timbre=3 + 4 * 5))[0].numpy()[3200:12800]
    high = slice(int(2000 * len(sine) / codec.sample_rate), None)  # above 2 kHz
    assert _spectrum(saw)[high].sum() > 20 * _spectrum(sine)[high].sum()  # a bright saw has upper harmonics
    drums = torch.zeros(1, 4, 50, dtype=torch.long)
    drums[0, 3, ::10] = 1  # a kick every 200 ms, no tone
    kicks = codec.decode(drums)[0].numpy()
    assert np.abs(kicks).max() > 0.3 and torch.equal(codec.decode(drums), codec.decode(drums))


def test_encoding_is_refused_in_one_line():
    with pytest.raises(MgsteerError, match="no encoder"):
        SynthCodec(V).encode(torch.zeros(1, 32000))


def test_the_engine_decodes_through_a_models_own_codec():
    """The codec seam: a model carrying the synth codec renders synth audio, at its rates."""
    lm = load_musicgen("tiny")
    lm.own_codec = SynthCodec(lm.codebook_size)
    codes = _codes(69, LOUDEST)
    torch.testing.assert_close(decode_codes(lm, codes), SynthCodec(lm.codebook_size).decode(codes))
    assert lm.sample_rate == 32000 and lm.frame_rate == 50
