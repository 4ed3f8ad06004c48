"""WAV in and out without soundfile (a bare GPU image has none), and with it for other formats."""

from __future__ import annotations

import wave

import numpy as np
import pytest
import soundfile as sf

from engine import wavfile
from engine.errors import MgsteerError
from engine.levels import LIMIT_CEILING, match_loudness, rms_dbfs, soft_limit
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


def test_write_wav_limits_and_round_trips(tmp_path, no_soundfile):
    """Below the limiter's knee a sample passes unchanged; beyond it, it bends toward the
    ceiling and never reaches full scale (no flat-topped clip)."""
    path = tmp_path / "x.wav"
    write_wav(path, np.array([0.0, 0.5, -0.89, 0.95, 2.0, -3.0, 1e9], dtype=np.float32), 16000)
    audio, rate = read_audio(path)
    assert rate == 16000
    np.testing.assert_allclose(audio[:3, 0], [0.0, 0.5, -0.89], atol=1e-4)
    assert 0.9 < audio[3, 0] < 0.95 and audio[4, 0] > audio[3, 0] and -LIMIT_CEILING <= audio[5, 0] < -0.9
    assert np.abs(audio).max() <= LIMIT_CEILING < 1.0


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


def test_the_limiter_is_smooth_and_monotonic():
    x = np.linspace(-1.05, 1.05, 21001, dtype=np.float32)
    y = soft_limit(x)
    assert np.all(np.diff(y) > 0) and np.abs(y).max() < LIMIT_CEILING
    assert np.all(np.diff(soft_limit(np.linspace(-9, 9, 9001, dtype=np.float32))) >= 0)
    assert np.abs(soft_limit(np.float32([1e9, -1e30]))).max() <= LIMIT_CEILING
    near = np.float64([0.9 - 1e-4, 0.9, 0.9 + 1e-4])
    below, above = np.diff(soft_limit(near).astype(np.float64)) / 1e-4
    assert abs(below - 1) < 0.01 and abs(above - 1) < 0.01  # no corner at the knee: no click
    quiet = np.float32([0.1, -0.5, 0.89])
    assert soft_limit(quiet) is not None and np.array_equal(soft_limit(quiet), quiet)


def test_loudness_matching_turns_the_louder_clip_down():
    t = np.arange(32000) / 32000
    quiet, loud = 0.1 * np.sin(2 * np.pi * 220 * t), 0.4 * np.sin(2 * np.pi * 330 * t)
    (a, b), before = match_loudness([quiet, loud])
    assert before[1] - before[0] == pytest.approx(20 * np.log10(4), abs=0.01)
    assert rms_dbfs(a) == pytest.approx(before[0]) and rms_dbfs(b) == pytest.approx(before[0], abs=0.01)
