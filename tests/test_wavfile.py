"""WAV in and out without soundfile (a bare GPU image has none), and with it for other formats."""

from __future__ import annotations

import wave

import numpy as np
import pytest
import soundfile as sf

from engine import wavfile
from engine.errors import MgsteerError
from engine.wavfile import WavWriter, audio_info, read_audio, write_wav


@pytest.fixture()
def no_soundfile(monkeypatch):
    monkeypatch.setattr(wavfile, "_soundfile", lambda: None)


def tone(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def test_a_recording_cut_short_is_a_valid_wav_up_to_its_last_block(tmp_path):
    """The header's sizes are rewritten after every block: a killed recording still opens."""
    path = tmp_path / "rec.wav"
    writer = WavWriter(path, 32000)
    for _ in range(3):
        writer.write(tone(0.1, 32000))
    with wave.open(str(path), "rb") as w:  # never closed: as after a kill
        assert w.getnframes() == 9600 and w.getframerate() == 32000
    writer.close()


def test_the_stdlib_reader_reads_what_soundfile_reads(tmp_path, no_soundfile):
    audio = np.stack([tone(1.0, 44100), -tone(1.0, 44100)], axis=1)
    for subtype, tolerance in (("PCM_16", 1e-4), ("PCM_24", 1e-6), ("PCM_U8", 1e-2), ("PCM_32", 1e-8)):
        path = tmp_path / f"{subtype}.wav"
        sf.write(str(path), audio, 44100, subtype=subtype)
        ours, rate = read_audio(path, start_s=0.25, seconds=0.5)
        theirs, _ = sf.read(str(path), start=11025, frames=22050, dtype="float32", always_2d=True)
        assert rate == 44100 and ours.shape == (22050, 2)
        np.testing.assert_allclose(ours, theirs, atol=tolerance)
    assert audio_info(tmp_path / "PCM_16.wav") == (1.0, 44100)


def test_write_wav_clips_and_round_trips(tmp_path, no_soundfile):
    path = tmp_path / "x.wav"
    write_wav(path, np.array([0.0, 0.5, 2.0, -3.0], dtype=np.float32), 16000)
    audio, rate = read_audio(path)
    assert rate == 16000
    np.testing.assert_allclose(audio[:, 0], [0.0, 0.5, 1.0, -1.0], atol=1e-4)


def test_other_formats_without_soundfile_are_one_line(tmp_path, no_soundfile):
    path = tmp_path / "a.flac"
    path.write_bytes(b"fLaC")
    with pytest.raises(MgsteerError, match=r"formats other than WAV need soundfile"):
        audio_info(path)
    with pytest.raises(MgsteerError, match=r"formats other than WAV need soundfile"):
        read_audio(path)


def test_a_damaged_wav_is_one_line(tmp_path, no_soundfile):
    path = tmp_path / "bad.wav"
    path.write_bytes(b"RIFF\x00\x00")
    with pytest.raises(MgsteerError, match=r"cannot read audio file .*bad.wav"):
        read_audio(path)
