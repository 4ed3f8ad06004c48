"""Endless play on a model trained on short clips: the host re-primes inside the span the model
learned, so it never plays positions it never saw (a world trained on 4 s clips fell silent,
then into noise, when it was re-primed only at MusicGen's 30 s)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from engine.audio import NullSink
from engine.host import Host, HostConfig
from engine.levels import rms_dbfs
from engine.model import WORLD_FILE, load_musicgen
from engine.params import ParameterBus
from sae.world.train import WorldTrainConfig, WorldTrainer


@pytest.fixture(scope="module")
def short_world(tmp_path_factory):
    """A world trained for 300 steps on 1 s clips (about 15 s on two cores): it plays music."""
    folder = tmp_path_factory.mktemp("short-world") / "world"
    WorldTrainer(folder, WorldTrainConfig(steps=300, batch_size=8, seconds=1.0, warmup_steps=20)).run()
    return folder


def test_a_world_says_how_long_its_clips_were(short_world, tmp_path):
    assert json.loads((short_world / WORLD_FILE).read_text())["context_seconds"] == 1.0
    assert load_musicgen(str(short_world)).context_s == 1.0
    assert load_musicgen("tiny").context_s == 30.0  # MusicGen's
    # a world written before world.json said so: its training state does
    old = shutil.copytree(short_world, tmp_path / "old")
    marker = json.loads((short_world / WORLD_FILE).read_text())
    del marker["context_seconds"]
    (old / WORLD_FILE).write_text(json.dumps(marker))
    assert load_musicgen(str(old)).context_s == 1.0


def test_endless_play_stays_inside_the_trained_span_and_never_falls_silent(short_world):
    lm = load_musicgen(str(short_world))
    host = Host(lm, ParameterBus(prompt="melody"), NullSink(lm.sample_rate, buffer_seconds=60), None, HostConfig())
    trained = round(lm.context_s * lm.frame_rate)
    blocks: list[np.ndarray] = []
    host.monitor = blocks  # every block, not only the latest few
    longest = 0
    while host._generated < 8 * lm.sample_rate:  # eight times the trained span, as fast as it computes
        host._tick()
        longest = max(longest, host._loop.cache_len)
    assert host.status().reprimes >= 2
    assert longest <= trained  # never a position the model was not trained on
    audio, half = np.concatenate(blocks), lm.sample_rate // 2
    loudness = [rms_dbfs(audio[i : i + half]) for i in range(0, len(audio) - half + 1, half)]
    assert min(loudness) > -40, [round(x) for x in loudness]
