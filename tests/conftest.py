"""Shared fixtures: one tiny model per test session and a small SAE built from its activations."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time

import numpy as np
import pytest
import torch

from engine.model import LoadedModel, load_musicgen
from sae.bootstrap import init_from_activations, measure
from sae.files import LoadedSAE, load_sae, save_sae
from sae.harvest import harvest_generation
from sae.topk import SAEConfig

SAE_LAYER = 2
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # the GUI tests draw without a display
os.environ["MGSTEER_CACHE"] = tempfile.mkdtemp(prefix="mgsteer-cache-")  # --backend auto's exports stay out of ~
# auto times the machine: on a busy one it could pick another runtime from one run to the next.
# Tests choose theirs; tests/test_runtime_choice.py tests auto with its timings set.
os.environ["MGSTEER_BACKEND"] = "torch"


def pytest_collection_modifyitems(config, items):
    """`cuda` tests are always collected; without a GPU they skip and say why."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run `make gpu-check` on a machine with one)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_lm() -> LoadedModel:
    return load_musicgen("tiny", device="cpu")


@pytest.fixture(scope="session")
def stereo_lm() -> LoadedModel:
    """The stereo checkpoints' architecture at tiny's sizes: 8 codebooks, left/right interleaved."""
    return load_musicgen("tiny-stereo", device="cpu")


@pytest.fixture(scope="session")
def melody_lm() -> LoadedModel:
    """musicgen-melody's architecture at tiny's sizes: text and chroma prepended, no cross-attention."""
    return load_musicgen("tiny-melody", device="cpu")


@pytest.fixture(scope="session")
def a_melody() -> torch.Tensor:
    """The chroma of a rising C-major arpeggio (C4 E4 G4 C5, 0.5 s each)."""
    from engine.melody import chroma

    rate = 32000
    notes = [261.63, 329.63, 392.0, 523.25]
    t = np.arange(rate // 2) / rate
    return chroma(np.concatenate([np.sin(2 * np.pi * f * t) for f in notes]).astype(np.float32), rate)


@pytest.fixture(scope="session")
def tiny_acts(tiny_lm) -> torch.Tensor:
    acts, _ = harvest_generation(tiny_lm, ["simple melody", "techno groove", "sad cello"], [SAE_LAYER], frames=40)
    return acts[SAE_LAYER].reshape(-1, tiny_lm.hidden_size)


@pytest.fixture(scope="session")
def tiny_sae_dir(tiny_lm, tiny_acts, tmp_path_factory):
    cfg = SAEConfig(d_in=tiny_lm.hidden_size, d_sae=128, k=8, hook_layer=SAE_LAYER, model_name="tiny")
    sae = init_from_activations(tiny_acts, cfg, seed=0)
    return save_sae(sae, tmp_path_factory.mktemp("sae"), measure(sae, tiny_acts))


@pytest.fixture(scope="session")
def world_demo_dir(tmp_path_factory):
    """What `make demo` leaves for the bundled world preset, in miniature: a world model
    trained for one step in `world/` and an SAE on its layer 2 in `sae/`."""
    from sae.world.train import WorldTrainConfig, WorldTrainer

    folder = tmp_path_factory.mktemp("demo_out")
    WorldTrainer(folder / "world", WorldTrainConfig(steps=1, batch_size=2, seconds=0.5, warmup_steps=1)).run()
    lm = load_musicgen(str(folder / "world"), "cpu")
    acts, _ = harvest_generation(lm, ["melody", "fast melody, bright"], [SAE_LAYER], frames=40)
    acts = acts[SAE_LAYER].reshape(-1, lm.hidden_size)
    cfg = SAEConfig(d_in=lm.hidden_size, d_sae=256, k=8, hook_layer=SAE_LAYER, model_name=str(folder / "world"))
    sae = init_from_activations(acts, cfg, seed=0)
    save_sae(sae, folder / "sae", measure(sae, acts))
    return folder


@pytest.fixture()
def tiny_sae(tiny_sae_dir) -> LoadedSAE:
    return load_sae(tiny_sae_dir)


def alive_features(sae: LoadedSAE, count: int = 2) -> list[int]:
    """Features with the largest β, i.e. ones that do fire on the tiny model."""
    return [int(i) for i in sae.require_stats().max_activation.argsort(descending=True)[:count]]


@pytest.fixture()
def jack_server():
    """A JACK server with a dummy driver: a real audio device path without a sound card."""
    if shutil.which("jackd") is None:
        pytest.skip("jackd is not installed (`make system` adds it as root)")
    proc = subprocess.Popen(
        ["jackd", "--no-realtime", "-d", "dummy", "-r", "48000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(1.5)
    yield proc
    import sounddevice

    sounddevice._terminate()  # PortAudio aborts the process if its JACK server vanishes under it
    proc.terminate()
    proc.wait(timeout=5)
    sounddevice._initialize()


def wait_for(predicate, timeout: float = 3.0) -> bool:
    """Poll until `predicate()` holds (for threads and sockets under test)."""
    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()
