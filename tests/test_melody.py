"""musicgen-melody: the chroma, a melody file, a live input (through a fake input stream) and
the host taking the input's melody at its re-primes and on "follow now"."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.audio import NullSink
from engine.errors import MgsteerError
from engine.host import Host, HostConfig
from engine.melody import chroma, read_melody
from engine.melody_input import LiveMelody, open_melody
from engine.params import ParameterBus
from engine.prompts import encode_prompts
from engine.wavfile import write_wav

RATE = 32000


def tone(freq: float, seconds: float, rate: int = RATE) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


@pytest.mark.parametrize(("freq", "pitch_class"), [(440.0, 9), (261.63, 0), (392.0, 7), (311.13, 3)])
def test_the_chroma_of_a_tone_is_its_pitch_class(freq, pitch_class):
    c = chroma(tone(freq, 2.0), RATE)
    assert c.shape == (2 * RATE // 4096 + 1, 12)
    assert torch.equal(c.sum(dim=1), torch.ones(len(c)))  # one-hot, as transformers' extractor makes it
    assert c.argmax(dim=1).mode().values.item() == pitch_class


def test_the_chroma_follows_a_line_and_any_rate(a_melody):
    classes = a_melody.argmax(dim=1).tolist()
    firsts = [classes.index(pc) for pc in (0, 4, 7)]  # C, E, G in the order played
    assert firsts == sorted(firsts)
    at_44k = chroma(tone(440.0, 2.0, 44100), 44100)
    assert at_44k.argmax(dim=1).mode().values.item() == 9  # resampled to the extractor's 32 kHz


def test_a_melody_file_reads_stereo_at_any_rate(tmp_path):
    left = tone(392.0, 1.5, 44100)
    write_wav(tmp_path / "g.wav", np.stack([left, left], axis=1), 44100)
    assert read_melody(tmp_path / "g.wav").argmax(dim=1).mode().values.item() == 7


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: chroma(np.zeros(0, dtype=np.float32), RATE), "empty or not finite"),
        (lambda: chroma(np.full(100, np.nan, dtype=np.float32), RATE), "empty or not finite"),
        (lambda: read_melody("/nonexistent/tune.wav"), "does not exist"),
    ],
)
def test_a_bad_melody_is_one_line(call, message):
    with pytest.raises(MgsteerError, match=message):
        call()


class FakeInput:
    """sounddevice.InputStream's shape: the test feeds blocks to the callback itself."""

    def __init__(self, device, samplerate, channels, dtype, callback) -> None:
        self.callback, self.channels, self.started = callback, channels, False

    def feed(self, audio: np.ndarray, block: int = 512) -> None:
        for start in range(0, len(audio), block):
            piece = audio[start : start + block]
            frames = np.repeat(piece[:, None], self.channels, axis=1)
            self.callback(frames, len(piece), None, None)

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.started = False

    def close(self) -> None:
        pass


def live_input(seconds: float = 2.0, channels: int = 2) -> tuple[LiveMelody, FakeInput]:
    made: list[FakeInput] = []

    def factory(**kwargs):
        made.append(FakeInput(**kwargs))
        return made[-1]

    return LiveMelody(seconds=seconds, stream_factory=factory, sample_rate=RATE, channels=channels), made[0]


def test_a_live_input_keeps_its_last_seconds_and_their_chroma():
    live, stream = live_input(seconds=2.0)
    live.refresh()
    assert live.current() is None  # nothing heard yet: the null melody
    stream.feed(tone(261.63, 3.0))  # more than the window: the ring wraps
    stream.feed(tone(440.0, 1.5))
    window = live.window()
    assert len(window) == 2 * RATE and live.level == pytest.approx(0.5 / np.sqrt(2), rel=0.05)
    np.testing.assert_allclose(window[-RATE:], tone(440.0, 1.5)[-RATE:], atol=1e-6)  # oldest first
    live.refresh()
    classes = live.current().argmax(dim=1)
    assert classes[-3:].tolist() == [9, 9, 9] and 0 in classes.tolist()  # the last 1.5 s A, before it C
    stream.feed(np.zeros(2 * RATE, dtype=np.float32))
    live.refresh()
    assert live.current() is None  # silence again: no melody


def _melody_host(lm, live, **config):
    bus = ParameterBus(prompt="simple melody")
    return Host(lm, bus, NullSink(lm.sample_rate), None, HostConfig(melody=live, **config)), bus


def test_the_host_takes_a_changed_input_at_its_next_reprime(melody_lm):
    live, stream = live_input()
    host, _ = _melody_host(melody_lm, live, reprime_at_s=1.6, reprime_keep_s=0.4)
    host._tick()
    null, _ = encode_prompts(melody_lm, ["simple melody"], null_half=True)
    torch.testing.assert_close(host._loop._condition[0], null)  # silence: the null melody
    stream.feed(tone(440.0, 1.0))
    live.refresh()
    heard = live.current()
    for _ in range(10):  # the input changed; the condition waits for the re-prime
        host._tick()
    torch.testing.assert_close(host._loop._condition[0], null)
    while host._loop.reprimes == 0:
        host._tick()
    expected, _ = encode_prompts(melody_lm, ["simple melody"], null_half=True, melody=heard)
    torch.testing.assert_close(host._loop._condition[0], expected)


def test_follow_now_reprimes_on_the_input_at_once(melody_lm):
    live, stream = live_input()
    host, bus = _melody_host(melody_lm, live)
    for _ in range(30):
        host._tick()
    stream.feed(tone(392.0, 1.0))
    live.refresh()
    bus.follow_melody()
    for _ in range(20):
        host._tick()
    assert host._loop.reprimes == 1  # long before the scheduled one (at 30 s)
    expected, _ = encode_prompts(melody_lm, ["simple melody"], null_half=True, melody=live.current())
    torch.testing.assert_close(host._loop._condition[0], expected)


def test_host_start_and_stop_run_the_input():
    live, stream = live_input()
    live.start()
    assert stream.started and live._worker.is_alive()
    live.stop()
    assert not stream.started and not live._worker.is_alive()


@pytest.mark.parametrize(
    ("model", "kwargs", "message"),
    [
        ("tiny_lm", {"path": "x.wav"}, "not a melody model"),
        ("melody_lm", {"path": "x.wav", "input_device": ""}, "not both"),
        ("melody_lm", {"path": "/nonexistent/x.wav"}, "does not exist"),
    ],
)
def test_melody_flags_are_checked_in_one_line(model, kwargs, message, request):
    with pytest.raises(MgsteerError, match=message):
        open_melody(request.getfixturevalue(model), **kwargs)


def test_a_melody_on_a_text_model_is_refused_by_the_host(tiny_lm, a_melody):
    from engine.melody_input import FileMelody

    with pytest.raises(MgsteerError, match="not a melody model"):
        Host(tiny_lm, ParameterBus(), NullSink(tiny_lm.sample_rate), None, HostConfig(melody=FileMelody(a_melody)))


def test_no_input_device_is_one_line(monkeypatch):
    import engine.melody_input as melody_input

    class NoDevices:
        class PortAudioError(Exception):
            pass

        @staticmethod
        def query_devices(device, kind):
            raise NoDevices.PortAudioError("Error querying device -1")

    monkeypatch.setattr(melody_input, "import_sounddevice", lambda: NoDevices)
    with pytest.raises(MgsteerError, match="no audio input device for --melody-input") as info:
        LiveMelody()
    assert "\n" not in str(info.value) and "--melody FILE" in str(info.value)

    def no_portaudio():
        raise MgsteerError("audio output unavailable (no PortAudio); install PortAudio; or use --no-audio")

    monkeypatch.setattr(melody_input, "import_sounddevice", no_portaudio)
    with pytest.raises(MgsteerError, match="no audio input for --melody-input: audio output unavailable"):
        LiveMelody()
