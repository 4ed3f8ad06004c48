"""Ring buffer, resampler and sinks; real sound output where a JACK server can be started."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import wave

import numpy as np
import pytest
import soundfile as sf

from cli.main import main
from engine.audio import DeviceSink, NullSink, RingBuffer, Sink, StreamResampler, WavRecorder
from engine.errors import MgsteerError
from engine.levels import LIMIT_CEILING


def test_ring_wraps_and_counts_underruns():
    ring = RingBuffer(8)
    out = np.empty(5, dtype=np.float32)
    ring.read_into(out)  # before anything was written: silence, not an underrun
    assert ring.underruns == 0 and not out.any()
    assert ring.write(np.arange(1, 7, dtype=np.float32)) == 6
    ring.counting = True
    ring.read_into(out)
    np.testing.assert_array_equal(out, [1, 2, 3, 4, 5])
    assert ring.write(np.arange(7, 17, dtype=np.float32)) == 7  # only 7 free
    ring.read_into(out)
    np.testing.assert_array_equal(out, [6, 7, 8, 9, 10])
    big = np.empty(6, dtype=np.float32)
    ring.read_into(big)
    np.testing.assert_array_equal(big, [11, 12, 13, 0, 0, 0])
    assert ring.underruns == 1 and ring.queued == 0


def test_resampler_streams_like_one_block():
    sr_in, sr_out = 32000, 48000
    t = np.arange(sr_in) / sr_in
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    whole = StreamResampler(sr_in, sr_out).process(tone)
    r = StreamResampler(sr_in, sr_out)
    pieces = np.concatenate([r.process(tone[i : i + 1000]) for i in range(0, len(tone), 1000)])
    assert len(whole) == len(pieces) == sr_out
    np.testing.assert_allclose(pieces, whole, atol=1e-5)
    spectrum = np.abs(np.fft.rfft(pieces[4800:] * np.hanning(len(pieces) - 4800)))
    peak_hz = np.argmax(spectrum) * sr_out / (len(pieces) - 4800)
    assert abs(peak_hz - 440) < 2
    assert 0.45 < np.abs(pieces[4800:]).max() < 0.55


def test_null_sink_plays_in_real_time():
    sink = NullSink(32000, block=320)
    sink.write(np.zeros(32000, dtype=np.float32))
    sink.start()
    time.sleep(0.5)
    played = sink.ring.read
    sink.stop()
    assert 0.3 * 32000 < played < 0.7 * 32000
    assert sink.underruns == 0


def test_wav_recorder(tmp_path):
    rec = WavRecorder(tmp_path / "a" / "rec.wav", 32000)
    rec.write(np.full(1000, 0.25, dtype=np.float32))
    rec.write(np.full(500, 2.0, dtype=np.float32))  # limited, not wrapped
    rec.close()
    audio, sr = sf.read(str(tmp_path / "a" / "rec.wav"))
    assert sr == 32000 and len(audio) == 1500
    assert abs(audio[0] - 0.25) < 1e-3 and 0.95 < audio[-1] <= LIMIT_CEILING


def _jack_running() -> bool:
    return subprocess.run(["pgrep", "-x", "jackd"], capture_output=True).returncode == 0


def test_no_audio_device_is_one_clear_line(capsys):
    if _jack_running():
        pytest.fail("a JACK server is running; this test needs a machine without an audio device")
    # Without PortAudio the message differs (see the next test); either way it is one line.
    with pytest.raises(MgsteerError, match=r"no audio output device|audio output unavailable") as err:
        DeviceSink(32000)
    assert "--no-audio" in str(err.value) and "\n" not in str(err.value)
    assert main(["play", "--model", "tiny", "--seconds", "1"]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("mgsteer: error: ") and "--no-audio" in line and "\n" not in line


def test_missing_portaudio_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import fails as without PortAudio
    with pytest.raises(MgsteerError, match=r"audio output unavailable.*libportaudio2"):
        DeviceSink(32000)


def test_device_sink_plays_through_jack(jack_server):
    sink = DeviceSink(32000)
    assert sink.sample_rate == 48000
    sink.write(np.zeros(32000, dtype=np.float32))  # 1 s at 32 kHz → 1.5 s queued at 48 kHz
    assert abs(sink.ring.queued - 48000) < 200
    sink.start()
    time.sleep(0.6)
    played = sink.ring.read
    sink.stop()
    assert 0.3 * 48000 < played < 1.0 * 48000


def test_play_through_a_real_device(jack_server, tmp_path, capsys):
    out = tmp_path / "rec.wav"
    assert main(["play", "--model", "tiny", "--seconds", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "into 'system' at 48000 Hz" in printed and re.search(r"underruns \d+", printed)
    assert sf.info(str(out)).duration >= 2.0


def test_a_stereo_ring_and_resampler_carry_two_channels_apart():
    ring = RingBuffer(8, channels=2)
    block = np.stack([np.arange(1, 7), -np.arange(1, 7)], axis=1).astype(np.float32)
    assert ring.write(block) == 6
    out = np.empty((4, 2), dtype=np.float32)
    ring.read_into(out)
    np.testing.assert_array_equal(out, block[:4])
    sr_in, sr_out = 32000, 48000
    t = np.arange(sr_in // 4) / sr_in
    left, right = np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 1000 * t)
    r = StreamResampler(sr_in, sr_out, channels=2)
    both = np.concatenate([r.process(np.stack([left, right], 1)[i : i + 1000]) for i in range(0, len(t), 1000)])
    np.testing.assert_allclose(both[:, 0], StreamResampler(sr_in, sr_out).process(left), atol=1e-5)
    np.testing.assert_allclose(both[:, 1], StreamResampler(sr_in, sr_out).process(right), atol=1e-5)


class _Status:
    output_underflow = False


def test_a_stereo_stream_mixes_down_on_a_mono_device_and_plays_apart_on_a_stereo_one():
    for device_channels in (1, 2):
        sink = DeviceSink.__new__(DeviceSink)  # the callback alone, without PortAudio
        Sink.__init__(sink, 32000, 32000, channels=2)
        sink._channels, sink.device_underflows, sink.callback_frames = device_channels, 0, 0
        sink._mixdown = np.zeros((16384, 2), dtype=np.float32) if device_channels == 1 else None
        sink.ring.write(np.stack([np.full(64, 0.2), np.full(64, 0.6)], axis=1).astype(np.float32))
        outdata = np.empty((64, device_channels), dtype=np.float32)
        sink._callback(outdata, 64, None, _Status())
        expected = [[0.4]] * 64 if device_channels == 1 else [[0.2, 0.6]] * 64
        np.testing.assert_allclose(outdata, expected, atol=1e-6)


def test_a_mixdown_larger_than_its_buffer_plays_in_pieces_and_keeps_the_clock():
    sink = DeviceSink.__new__(DeviceSink)
    Sink.__init__(sink, 32000, 32000, channels=2)
    sink._channels, sink.device_underflows, sink.callback_frames = 1, 0, 0
    sink._mixdown = np.zeros((16, 2), dtype=np.float32)  # a buffer smaller than the block
    ramp = np.arange(40, dtype=np.float32) / 40
    sink.ring.write(np.stack([ramp, ramp], axis=1))
    outdata = np.empty((40, 1), dtype=np.float32)
    sink._callback(outdata, 40, None, _Status())
    np.testing.assert_allclose(outdata[:, 0], ramp, atol=1e-6)
    assert sink.ring.read == 40  # every frame played, none skipped


def test_a_stereo_recording_is_a_two_channel_wav(tmp_path):
    rec = WavRecorder(tmp_path / "st.wav", 32000, channels=2)
    rec.write(np.zeros((3200, 2), dtype=np.float32))
    rec.close()
    assert rec.written == 3200
    with wave.open(str(tmp_path / "st.wav")) as w:
        assert (w.getnchannels(), w.getnframes()) == (2, 3200)
