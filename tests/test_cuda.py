"""Every command on `--device cuda` with the tiny model. Marked `cuda`: collected always, skipped
without a GPU (`make gpu-check` runs them where there is one)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import alive_features

from cli.main import main
from engine.model import load_musicgen
from engine.steering import Steerer
from engine.tokenloop import SamplingConfig, TokenLoop
from engine.wavfile import audio_info, write_wav
from sae.files import load_sae

pytestmark = pytest.mark.cuda


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuda-audio")
    t = np.arange(32000 * 2) / 32000
    for i, hz in enumerate((220.0, 330.0, 440.0)):
        write_wav(root / f"tone{i}.wav", 0.3 * np.sin(2 * np.pi * hz * t), 32000)
    return root


def test_steering_plans_and_meters_live_on_the_gpu(tiny_sae_dir):
    lm = load_musicgen("tiny", device="cuda")
    sae = load_sae(tiny_sae_dir, lm.device)
    features = alive_features(sae, 2)
    with Steerer(lm, sae, cfg_doubled=True) as steerer:
        vector = steerer.vector_for({features[0]: 1.0, features[1]: -0.5})
        assert vector.device.type == "cuda"
        steerer.set_vector(vector)
        steerer.watch(features)
        loop = TokenLoop(lm, ["x"], SamplingConfig(seed=0))
        steerer.attach(loop)
        codes = loop.frames(10)
        assert codes.shape == (1, lm.num_codebooks, 10) and steerer.meters.device.type == "cuda"
        assert loop.graphed and loop.graphs.captures == 1, loop.graphs.error


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("mode", ["add", "clamp"])
def test_render_steered_on_cuda(tiny_sae_dir, tiny_sae, tmp_path, dtype, mode):
    f = alive_features(tiny_sae, 1)[0]
    argv = ["render", "--model", "tiny", "--device", "cuda", "--dtype", dtype, "--sae", str(tiny_sae_dir),
            "--steer", f"{f}=0.8", "--mode", mode, "--seconds", "0.5", "--out", str(tmp_path / "x.wav")]  # fmt: skip
    assert main(argv) == 0
    assert audio_info(tmp_path / "x.wav") == (0.5, 32000)


def test_play_with_knobs_and_meters_on_cuda(tiny_sae_dir, tiny_sae, tmp_path):
    f = alive_features(tiny_sae, 2)
    argv = ["play", "--model", "tiny", "--device", "cuda", "--no-audio", "--seconds", "2", "--sae", str(tiny_sae_dir),
            "--steer", f"{f[0]}=0.5", "--meters", f"{f[0]},{f[1]}", "--out", str(tmp_path / "rec.wav")]  # fmt: skip
    assert main(argv) == 0


def test_harvest_train_label_eval_on_cuda(audio, tmp_path, capsys):
    acts, sae = tmp_path / "acts", tmp_path / "sae"
    assert main(["harvest", "--model", "tiny", "--device", "cuda", "--audio", str(audio), "--clip-seconds", "1",
                 "--layers", "1,2", "--out", str(acts)]) == 0  # fmt: skip
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("simple melody\n")
    assert main(["harvest", "--model", "tiny", "--device", "cuda", "--prompts", str(prompts), "--seconds", "1",
                 "--layers", "2", "--out", str(tmp_path / "gen")]) == 0  # fmt: skip
    assert main(["train", "--acts", str(acts), "--layer", "2", "--out", str(sae), "--k", "4", "--expansion", "2",
                 "--steps", "30", "--batch-size", "64", "--device", "cuda"]) == 0  # fmt: skip
    assert main(["label", "--sae", str(sae), "--acts", str(acts), "--device", "cuda", "--features", "all",
                 "--limit", "2", "--top-n", "2", "--negatives", "2", "--window-s", "0.5"]) == 0  # fmt: skip
    assert main(["eval-steer", "--model", "tiny", "--device", "cuda", "--sae", str(sae), "--features", "0",
                 "--concept", "0=x", "--scorer", "classifier", "--classifier-model", "tiny", "--seconds", "0.3",
                 "--seeds", "1", "--no-prompt-baseline", "--out", str(tmp_path / "ev")]) == 0  # fmt: skip
    assert main(["info", "--model", "tiny", "--device", "cuda", "--sae", str(sae)]) == 0
    assert "fits       yes" in capsys.readouterr().out


def test_sparse_training_matches_dense_on_cuda():
    from sae.sparse import sparse_decode, topk_encode

    torch.manual_seed(0)
    x = torch.randn(512, 64, device="cuda")
    w_enc = torch.randn(64, 1024, device="cuda", requires_grad=True)
    w_dec = torch.randn(1024, 64, device="cuda", requires_grad=True)
    b_enc = torch.zeros(1024, device="cuda", requires_grad=True)
    values, indices, _, _ = topk_encode(x, w_enc, b_enc, 16)
    sparse_decode(indices, values, w_dec).pow(2).sum().backward()
    grads = [w.grad.clone() for w in (w_enc, w_dec, b_enc)]
    for w in (w_enc, w_dec, b_enc):
        w.grad = None
    pre = torch.relu(x @ w_enc + b_enc)
    top, idx = pre.topk(16, dim=-1)
    (torch.zeros_like(pre).scatter(-1, idx, top) @ w_dec).pow(2).sum().backward()
    for sparse, dense in zip(grads, (w_enc.grad, w_dec.grad, b_enc.grad), strict=True):
        torch.testing.assert_close(sparse, dense, atol=1e-3, rtol=1e-3)


def test_graph_replay_is_token_identical_to_the_eager_step():
    lm = load_musicgen("tiny", device="cuda")
    (graphed, a), (eager, b) = [
        (loop, loop.frames(40))
        for loop in (TokenLoop(lm, ["simple melody"], SamplingConfig(seed=9), graph=g) for g in (True, False))
    ]
    assert graphed.graphs.error is None and graphed.graphs.captures == 1
    assert eager.graphs is None
    assert torch.equal(a, b)


def test_knob_changes_reach_a_captured_graph(tiny_sae_dir):
    """The steering vector and its switch are device buffers: changing them between replays
    changes the music exactly as in the eager step, without a new capture."""
    lm = load_musicgen("tiny", device="cuda")
    sae = load_sae(tiny_sae_dir, lm.device)
    f = alive_features(sae, 1)[0]
    runs = []
    for graph in (True, False):
        with Steerer(lm, sae, cfg_doubled=True) as steerer:
            loop = TokenLoop(lm, ["x"], SamplingConfig(seed=2), graph=graph)
            steerer.attach(loop)
            parts = [loop.frames(10)]
            steerer.set_vector(steerer.vector_for({f: 3.0}))
            parts.append(loop.frames(10))
            steerer.set_vector(steerer.vector_for({f: 3.0}), halves="cond")
            parts.append(loop.frames(10))
            with steerer.unsteered():
                parts.append(loop.frames(10))
            runs.append((torch.cat(parts, dim=-1), loop))
    (a, graphed), (b, _) = runs
    assert graphed.graphs.captures == 1
    assert torch.equal(a, b)


def test_reprime_under_graphs_keeps_memory_flat():
    lm = load_musicgen("tiny", device="cuda")
    loop = TokenLoop(lm, ["simple melody"], SamplingConfig(seed=0), max_context=120)
    loop.frames(100)
    peaks = []
    for i in range(4):
        loop.begin_reprime(40, ["another prompt"] if i % 2 else None)
        while loop.repriming:
            loop.step()
            loop.reprime_step(8)
        loop.frames(20)
        torch.cuda.synchronize()
        peaks.append(torch.cuda.memory_allocated())
    assert loop.reprimes == 4 and loop.graphs.captures == 2  # one graph per cache set
    assert peaks[-1] == peaks[1], peaks
