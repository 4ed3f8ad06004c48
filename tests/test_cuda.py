"""Every command on `--device cuda` with the tiny model. Marked `cuda`: collected always, skipped
without a GPU (`make gpu-check` runs them where there is one)."""

from __future__ import annotations

import gc
import sys
import warnings
from pathlib import Path

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
        assert loop.graphed and loop.graphs.captures == 2, loop.graphs.error


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("mode", ["add", "clamp"])
def test_render_steered_on_cuda(tiny_sae_dir, tiny_sae, tmp_path, dtype, mode, capsys):
    f = alive_features(tiny_sae, 1)[0]
    argv = ["render", "--model", "tiny", "--device", "cuda", "--dtype", dtype, "--sae", str(tiny_sae_dir),
            "--steer", f"{f}=0.8", "--mode", mode, "--seconds", "0.5", "--out", str(tmp_path / "x.wav")]  # fmt: skip
    assert main(argv) == 0
    assert audio_info(tmp_path / "x.wav") == (0.5, 32000)
    out = capsys.readouterr().out
    if mode == "add":  # the knobs' mode is captured: a fallback to eager is a failure here
        assert "note:" not in out, out
    else:  # clamp encodes inside the step: eager by design, and said so
        assert "clamp" in out and "note:" in out


@pytest.mark.parametrize("latency", ["default", "low"])
def test_play_with_knobs_and_meters_on_cuda(tiny_sae_dir, tiny_sae, tmp_path, latency, capsys):
    f = alive_features(tiny_sae, 2)
    argv = ["play", "--model", "tiny", "--device", "cuda", "--no-audio", "--seconds", "2", "--sae", str(tiny_sae_dir),
            "--steer", f"{f[0]}=0.5", "--meters", f"{f[0]},{f[1]}", "--out", str(tmp_path / "rec.wav"),
            "--latency", latency]  # fmt: skip
    assert main(argv) == 0
    assert "note:" not in capsys.readouterr().out  # no eager fallback
    assert audio_info(tmp_path / "rec.wav")[0] == pytest.approx(2.0, abs=0.01)


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


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_graph_replay_is_token_identical_to_the_eager_step(dtype):
    lm = load_musicgen("tiny", device="cuda", dtype=dtype)
    (graphed, a), (eager, b) = [
        (loop, loop.frames(40))
        for loop in (TokenLoop(lm, ["simple melody"], SamplingConfig(seed=9), graph=g) for g in (True, False))
    ]
    assert graphed.graphs.error is None and graphed.graphs.captures == 2  # both cache sets, before any audio
    assert eager.graphs is None
    assert torch.equal(a, b)


@pytest.mark.parametrize("model", ["tiny-stereo", "tiny-melody"])
def test_the_family_replays_token_identical_and_a_new_melody_keeps_the_graphs(model):
    """Stereo and melody on CUDA graphs: the same tokens as the eager step; a melody model's
    condition sits in the cache's first (rounded-up) positions, so a re-prime on a new melody
    refills them in place and the two captured graphs stay."""
    from engine.melody import chroma

    lm = load_musicgen(model, device="cuda")
    t = np.arange(32000) / 32000
    melody = chroma(np.sin(2 * np.pi * 440 * t).astype(np.float32), 32000) if lm.melody else None
    (graphed, a), (_, b) = [
        (loop, loop.frames(40))
        for loop in (
            TokenLoop(lm, ["simple melody"], SamplingConfig(seed=9), graph=g, melody=melody) for g in (True, False)
        )
    ]
    assert graphed.graphs.error is None and graphed.graphs.captures == 2
    assert torch.equal(a, b)
    if lm.melody:
        other = chroma(np.sin(2 * np.pi * 262 * t).astype(np.float32), 32000)
        graphed.begin_reprime(16, melody=other)
        while not graphed.reprime_step(8):
            graphed.step()
        assert graphed.frames(10).shape[-1] == 10 and graphed.graphs.captures == 2 and graphed.graphed


def test_graph_and_eager_meters_agree(tiny_sae_dir):
    lm = load_musicgen("tiny", device="cuda")
    sae = load_sae(tiny_sae_dir, lm.device)
    features = alive_features(sae, 4)
    values = []
    for graph in (True, False):
        with Steerer(lm, sae, cfg_doubled=True) as steerer:
            steerer.set_vector(steerer.vector_for({features[0]: 1.0}))
            steerer.watch(features)
            loop = TokenLoop(lm, ["x"], SamplingConfig(seed=4), graph=graph)
            steerer.attach(loop)
            loop.frames(12)
            values.append(steerer.meters.clone())
    torch.testing.assert_close(values[0], values[1])


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
    assert graphed.graphs.captures == 2
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


def test_a_non_finite_step_under_graphs_is_run_again_unsteered(tiny_sae_dir):
    """The retry's bookkeeping must live on the GPU beside the flags it reads."""
    lm = load_musicgen("tiny", device="cuda")
    sae = load_sae(tiny_sae_dir, lm.device)
    with Steerer(lm, sae, cfg_doubled=True) as steerer:
        steerer.set_vector(torch.full((lm.hidden_size,), float("inf"), device="cuda"))
        loop = TokenLoop(lm, ["x"], SamplingConfig(seed=3), readback=5)
        steerer.attach(loop)
        codes = loop.frames(16)
        assert loop.graphed and loop.graphs.error is None
    assert codes.shape == (1, lm.num_codebooks, 16)
    assert loop.nonfinite_steps >= 16 and int(codes.max()) < lm.codebook_size


def test_both_cache_sets_are_captured_at_the_first_step():
    """A capture synchronises the device: it happens before the first audio, never mid-set."""
    lm = load_musicgen("tiny", device="cuda")
    loop = TokenLoop(lm, ["simple melody"], SamplingConfig(seed=0), max_context=120)
    loop.step()
    assert loop.graphs.captures == 2
    loop.frames(80)
    loop.begin_reprime(40)
    while loop.repriming:
        loop.step()
        loop.reprime_step(8)
    loop.frames(10)
    assert loop.reprimes == 1 and loop.graphs.captures == 2


def test_a_capture_at_the_last_position_stays_inside_the_cache():
    """A graph dropped late (its cache replaced) is captured again where the loop stands:
    the warm-up must not write past the cache."""
    lm = load_musicgen("tiny", device="cuda")
    loop = TokenLoop(lm, ["x"], SamplingConfig(seed=0), max_context=12)
    for _ in range(11):
        loop.step()
    loop.graphs.forget(0)
    loop.step()  # position 11 of 12: captured here
    torch.cuda.synchronize()
    assert loop.graphs.captures == 3 and loop.graphs.error is None


def test_a_failed_capture_names_its_cause_and_puts_everything_back():
    lm = load_musicgen("tiny", device="cuda")
    plain = TokenLoop(lm, ["x"], SamplingConfig(seed=6), graph=False).frames(20)
    loop = TokenLoop(lm, ["x"], SamplingConfig(seed=6))
    forward = loop.decoder.forward

    def syncs_while_captured(*args, **kwargs):
        logits = forward(*args, **kwargs)
        if torch.cuda.is_current_stream_capturing():
            logits.sum().item()  # a host sync: illegal inside a capture
        return logits

    loop.decoder.forward = syncs_while_captured
    codes = loop.frames(20)
    assert loop.graphs.error is not None and "previous error" not in loop.graphs.error
    assert torch.cuda.current_stream() == torch.cuda.default_stream()
    assert torch.equal(codes, plain)  # state and sampler put back: the eager run is the plain one


def test_a_hook_on_a_graphed_loop_runs_every_step():
    from engine.hooks import recording

    lm = load_musicgen("tiny", device="cuda")
    loop = TokenLoop(lm, ["x"], SamplingConfig(seed=0))
    loop.frames(5)
    with recording(lm, [1]) as taps:
        assert loop.eager_reason is not None and not loop.graphed
        before = taps[1].calls
        for _ in range(6):
            loop.step()
        assert taps[1].calls - before == 6 and taps[1].take().shape[1] == 6
    assert loop.graphed


def test_an_sae_on_the_cpu_is_placed_beside_the_model(tiny_sae_dir):
    lm = load_musicgen("tiny", device="cuda")
    sae = load_sae(tiny_sae_dir)  # on the CPU
    features = alive_features(sae, 2)
    with Steerer(lm, sae, cfg_doubled=True) as steerer:
        steerer.watch(features)
        loop = TokenLoop(lm, ["x"], SamplingConfig(seed=0))
        steerer.attach(loop)
        loop.frames(5)
        assert steerer.meters.device.type == "cuda" and len(steerer.read_meters() or features) == 2


def test_a_dropped_graphed_loop_frees_its_memory_without_the_collector():
    lm = load_musicgen("tiny", device="cuda")
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", lambda: None)

    def used() -> int:
        torch.cuda.synchronize()
        clear()
        return torch.cuda.memory_allocated()

    TokenLoop(lm, ["x"], SamplingConfig(seed=0)).frames(5)  # first-use allocations, then dropped
    gc.collect()
    before = used()
    gc.disable()
    try:
        loop = TokenLoop(lm, ["x"], SamplingConfig(seed=0))
        loop.frames(5)
        assert used() > before
        del loop
        assert used() == before
    finally:
        gc.enable()


def test_knob_changes_and_reprime_pieces_do_not_wait_for_the_gpu(tiny_sae_dir):
    """A pageable host-to-device copy waits for every queued step; the generation thread must
    only wait at a read-back, once per read-back."""
    lm = load_musicgen("tiny", device="cuda")
    sae = load_sae(tiny_sae_dir, lm.device)
    f = alive_features(sae, 2)
    with Steerer(lm, sae, cfg_doubled=True) as steerer:
        loop = TokenLoop(lm, ["x"], SamplingConfig(seed=0), max_context=200, readback=8)
        steerer.attach(loop)
        loop.frames(40)
        torch.cuda.set_sync_debug_mode("error")
        try:
            steerer.set_vector(steerer.vector_for({f[0]: 1.0, f[1]: -0.5}))
            loop.begin_reprime(32)
            assert not loop.reprime_step(8)  # a piece, not yet the swap (which checks once)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                for _ in range(16):
                    loop.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) == 2, [str(w.message) for w in syncs]  # two read-backs of 8 steps


def test_gpu_busy_counts_each_kernel_once():
    """Eager and replayed steps run the same kernels: their measured GPU time must agree."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from stream import gpu_busy_ms

    lm = load_musicgen("tiny", device="cuda")
    eager, graphed = gpu_busy_ms(lm, 20, False, None), gpu_busy_ms(lm, 20, True, None)
    assert 0.6 < eager / graphed < 1.6, (eager, graphed)


def test_feature_statistics_after_gpu_training_run_on_the_gpu(tmp_path, monkeypatch):
    from sae import train as train_module
    from sae.store import ActivationStore

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from planted import planted_dictionary, planted_store

    seen = []
    real = train_module.feature_stats
    monkeypatch.setattr(train_module, "feature_stats", lambda sae, *a, **k: seen.append(sae.W_enc.device.type)
                        or real(sae, *a, **k))  # fmt: skip
    store = ActivationStore(planted_store(tmp_path / "acts", planted_dictionary(32, 64), 4096, shard_rows=2048))
    cfg = train_module.TrainConfig(k=4, expansion=2, steps=5, batch_size=256, ce_clips=0, device="cuda")
    train_module.Trainer(store, tmp_path / "sae", cfg).run()
    assert seen == ["cuda"]


def test_a_live_host_reprimes_and_swaps_prompts_under_graphs_with_flat_memory(tiny_sae_dir):
    import time

    from engine.audio import NullSink
    from engine.host import Host, HostConfig
    from engine.params import ParameterBus

    lm = load_musicgen("tiny", device="cuda")
    sae = load_sae(tiny_sae_dir, lm.device)
    f = alive_features(sae, 1)[0]
    bus = ParameterBus(knob_count=1, feature_count=sae.cfg.d_sae)
    bus.configure_knob(0, features=[(f, 1.0)])
    config = HostConfig(reprime_at_s=3.0, reprime_keep_s=1.0, meters=[f])
    host = Host(lm, bus, NullSink(lm.sample_rate), sae, config)
    samples: dict[str, list[int]] = {"early": [], "late": []}
    host.start()
    try:
        for second in range(12):
            time.sleep(1.0)
            bus.set_knob(0, (second % 4) / 4)
            if second == 5:
                bus.set_prompt("another prompt")
            if second >= 2:
                samples["early" if second < 6 else "late"].append(torch.cuda.memory_allocated())
        status, graph_error, captures = host.status(), host.graph_error, host._loop.graphs.captures
    finally:
        host.stop()
    assert host.error is None and graph_error is None
    assert status.reprimes >= 2 and captures == 2
    assert max(samples["late"]) <= max(samples["early"]) + 2**20, samples


def test_a_random_size_model_is_drawn_on_the_gpu():
    """Drawn where it runs (seconds), not on the CPU and copied (minutes for random-large):
    the process never holds musicgen-small's 2.4 GB of float32 weights in host memory."""
    import subprocess

    code = (
        "import resource, torch; from engine.model import load_musicgen; "
        "lm = load_musicgen('random-small', device='cuda', dtype='bfloat16'); "
        "assert all(p.device.type == 'cuda' for p in lm.model.parameters()); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    peak_gb = int(done.stdout.split()[-1]) / 2**20
    assert peak_gb < 2.0, peak_gb
