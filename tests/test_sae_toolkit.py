"""SAE toolkit: harvest into a store, train (planted ground truth, resume, torchrun), measure."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from planted import planted_dictionary, planted_store, recovery

from cli.main import main
from engine.errors import MgsteerError
from engine.render import render
from engine.steering import FeatureSteer, SteeringSpec
from engine.tokenloop import SamplingConfig
from sae import harvest as harvest_module
from sae.files import load_sae
from sae.harvest import Clip, audio_clips, harvest_to_store, parse_shard, prompt_clips
from sae.metrics import ce_recovered
from sae.store import ActivationStore
from sae.train import TrainConfig, Trainer, filter_report


# ---- harvest ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory):
    """Synthetic music: tones, a chord and noise bursts, at 32 and 44.1 kHz, mono and stereo."""
    root = tmp_path_factory.mktemp("audio")
    for i, hz in enumerate([220.0, 330.0, 440.0]):
        t = np.arange(int(32000 * 3.0)) / 32000
        sf.write(str(root / f"tone{i}.wav"), 0.3 * np.sin(2 * np.pi * hz * t), 32000)
    t = np.arange(int(44100 * 2.5)) / 44100
    chord = sum(np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0)) * 0.1
    sf.write(str(root / "chord.flac"), np.stack([chord, chord], axis=1), 44100)
    return root


def _frames(lm, seconds):
    return round(seconds * lm.frame_rate)


def test_harvest_rows_are_frames_times_clips_times_layers(tiny_lm, audio_dir, tmp_path):
    clips = audio_clips(audio_dir, clip_seconds=10.0)
    assert len(clips) == 4
    harvest_to_store(tiny_lm, clips, [1, 3], tmp_path / "acts", "audio", shard_rows=200)
    store = ActivationStore(tmp_path / "acts")
    expected = 3 * _frames(tiny_lm, 3.0) + _frames(tiny_lm, 2.5)
    assert store.rows() == expected and len(store.clips) == 4
    for layer in (1, 3):
        acts = store.load_layer(layer)
        assert acts.shape == (expected, tiny_lm.hidden_size) and torch.isfinite(acts).all()
    assert sum(c.shape[1] for c in store.iter_codes()) == expected
    assert len(list((tmp_path / "acts").glob("L1-*.safetensors"))) == len(store.shards) > 1


def test_teacher_forced_rows_match_a_direct_forward(tiny_lm, audio_dir, tmp_path):
    """Row r of a clip is the layer's output at decoder position r + 1 of its token sequence."""
    clip = audio_clips(audio_dir, 10.0)[1]
    harvest_to_store(tiny_lm, [clip], [2], tmp_path / "acts", "audio")
    store = ActivationStore(tmp_path / "acts")
    codes = next(store.iter_codes())
    direct = harvest_module.teacher_forced_activations(tiny_lm, [codes], [2])[0][2]
    torch.testing.assert_close(store.load_layer(2), direct, atol=2e-3, rtol=2e-3)  # float16 store


def test_interrupted_harvest_resumes_exactly(tiny_lm, audio_dir, tmp_path, monkeypatch):
    clips = audio_clips(audio_dir, clip_seconds=1.0)  # 11 one-second clips
    harvest_to_store(tiny_lm, clips, [1], tmp_path / "whole", "audio", shard_rows=120)
    real = harvest_module.teacher_forced_activations
    calls = {"n": 0}

    def dies_after_three(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt  # as if killed mid-harvest
        return real(*args, **kwargs)

    monkeypatch.setattr(harvest_module, "teacher_forced_activations", dies_after_three)
    with pytest.raises(KeyboardInterrupt):  # batches of 2 clips: killed after 6 of 11
        harvest_to_store(tiny_lm, clips, [1], tmp_path / "resumed", "audio", shard_rows=120, batch_clips=2)
    partial = ActivationStore(tmp_path / "resumed")
    assert 0 < len(partial.clips) < len(clips)
    monkeypatch.setattr(harvest_module, "teacher_forced_activations", real)
    harvest_to_store(tiny_lm, clips, [1], tmp_path / "resumed", "audio", shard_rows=120)
    whole, resumed = ActivationStore(tmp_path / "whole"), ActivationStore(tmp_path / "resumed")
    assert sorted(resumed.clips) == sorted(whole.clips) and len(set(resumed.clips)) == len(clips)
    assert resumed.rows() == whole.rows()
    torch.testing.assert_close(resumed.load_layer(1), whole.load_layer(1))


@pytest.mark.parametrize("captions", [False, True])
def test_batched_harvest_rows_equal_one_clip_harvests(tiny_lm, audio_dir, tmp_path, captions):
    """Clips of different lengths (3 s, 2.5 s, 1 s, …) in one padded pass give the rows a pass
    on each clip alone gives."""
    texts = {"tone0.wav": "low tone", "chord.flac": "a chord", "tone2.wav": "high"} if captions else None
    clips = audio_clips(audio_dir, clip_seconds=2.0, captions=texts)
    one = harvest_to_store(tiny_lm, clips, [1, 3], tmp_path / "one", "audio", batch_clips=1)
    batched = harvest_to_store(tiny_lm, clips, [1, 3], tmp_path / "batched", "audio", batch_clips=8)
    assert one.frames == batched.frames > 0
    a, b = ActivationStore(tmp_path / "one"), ActivationStore(tmp_path / "batched")
    assert a.clips == b.clips and a.rows() == b.rows()
    for layer in (1, 3):
        torch.testing.assert_close(a.load_layer(layer), b.load_layer(layer), atol=2e-3, rtol=2e-3)  # float16 store


def test_shards_split_the_clips(tiny_lm, audio_dir, tmp_path):
    clips = audio_clips(audio_dir, clip_seconds=1.0)
    for worker in range(3):
        harvest_to_store(tiny_lm, clips, [1], tmp_path / "acts", "audio", worker=worker, workers=3)
    store = ActivationStore(tmp_path / "acts")
    assert sorted(store.clips) == sorted(c.id for c in clips)
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "x", "1/0"):
        with pytest.raises(MgsteerError, match="--shard"):
            parse_shard(bad)


def test_generation_harvest(tiny_lm, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("simple melody\n# a comment\ntechno groove\n")
    clips = prompt_clips(prompts, seconds=0.6)
    harvest_to_store(tiny_lm, clips, [2], tmp_path / "acts", "generation", sampling=SamplingConfig(seed=0))
    store = ActivationStore(tmp_path / "acts")
    assert store.rows() == 2 * _frames(tiny_lm, 0.6) and store.meta.source == "generation"
    with pytest.raises(MgsteerError, match="cannot take"):
        harvest_to_store(tiny_lm, clips, [1], tmp_path / "acts", "generation")


def test_generation_harvest_plays_a_batch_at_once_and_resumes_exactly(tiny_lm, tmp_path, monkeypatch):
    """Prompts play `batch_clips` at a time; a harvest killed with a batch half written redoes
    that batch as it was and keeps only its missing clips, so it ends as an unbroken one."""
    texts = ["soft piano", "fast drums", "low bass", "bright lead", "slow strings"]
    clips = [Clip(f"prompt{i}", seconds=0.4, text=t) for i, t in enumerate(texts)]
    rows = _frames(tiny_lm, 0.4)
    harvest = dict(source="generation", sampling=SamplingConfig(seed=3), batch_clips=2, shard_rows=3 * rows)
    real = harvest_module.harvest_generation
    played: list[int] = []

    def dies_on_the_third_batch(lm, prompts, *args, **kwargs):
        played.append(len(prompts))
        if len(played) > 2:
            raise KeyboardInterrupt  # four clips played, three written (a shard holds three)
        return real(lm, prompts, *args, **kwargs)

    monkeypatch.setattr(harvest_module, "harvest_generation", dies_on_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        harvest_to_store(tiny_lm, clips, [1], tmp_path / "resumed", **harvest)
    assert played == [2, 2, 1] and ActivationStore(tmp_path / "resumed").clips == ["prompt0", "prompt1", "prompt2"]
    monkeypatch.setattr(harvest_module, "harvest_generation", real)
    harvest_to_store(tiny_lm, clips, [1], tmp_path / "resumed", **harvest)
    harvest_to_store(tiny_lm, clips, [1], tmp_path / "whole", **harvest)
    whole, resumed = ActivationStore(tmp_path / "whole"), ActivationStore(tmp_path / "resumed")
    assert resumed.clips == whole.clips == [c.id for c in clips] and resumed.rows() == whole.rows() == 5 * rows
    for a, b in zip(whole.iter_codes(), resumed.iter_codes(), strict=True):
        assert torch.equal(a, b)
    torch.testing.assert_close(resumed.load_layer(1), whole.load_layer(1))
    assert len({tuple(c.flatten().tolist()) for c in whole.iter_codes()}) == 5  # each clip its own music


def test_harvest_errors(tiny_lm, tmp_path):
    with pytest.raises(MgsteerError, match="does not exist"):
        audio_clips(tmp_path / "none", 10.0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MgsteerError, match="no audio files"):
        audio_clips(tmp_path / "empty", 10.0)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.wav").write_bytes(b"not audio")
    with pytest.raises(MgsteerError, match="cannot read audio file"):
        audio_clips(tmp_path / "bad", 10.0)
    with pytest.raises(MgsteerError, match="not an activation store"):
        ActivationStore(tmp_path)


# ---- training ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    true = planted_dictionary(d=64, features=512)
    return true, planted_store(tmp_path_factory.mktemp("planted") / "acts", true, rows=100_000)


PLANTED = TrainConfig(
    k=8, expansion=16, steps=1500, batch_size=1024, lr=4e-3, warmup_steps=50, dead_steps=50, log_every=100
)


def test_planted_dictionary_is_recovered(planted, tmp_path):
    true, acts = planted
    last = Trainer(ActivationStore(acts), tmp_path / "sae", PLANTED).run()
    sae = load_sae(tmp_path / "sae")
    assert recovery(sae.sae.W_dec, true, 0.9) >= 0.9
    assert last["fvu"] < 0.3 and last["l0"] == 8.0 and last["dead_frac"] < 0.25
    lines = [json.loads(line) for line in (tmp_path / "sae" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["fvu"] > lines[-2]["fvu"]  # it learned
    assert {"fvu", "l0", "dead_frac", "lr", "aux"} <= set(lines[0])


def test_batchtopk_trains_too(planted, tmp_path):
    _, acts = planted
    cfg = TrainConfig(**{**PLANTED.__dict__, "architecture": "batchtopk", "steps": 600})
    last = Trainer(ActivationStore(acts), tmp_path / "sae", cfg).run()
    assert last["fvu"] < 0.5 and abs(last["l0"] - 8.0) < 2.0
    assert json.loads((tmp_path / "sae" / "cfg.json").read_text())["training_architecture"] == "batchtopk"


def test_resume_ends_where_an_uninterrupted_run_ends(planted, tmp_path):
    _, acts = planted
    cfg = TrainConfig(k=8, expansion=4, steps=120, batch_size=512, lr=2e-3, checkpoint_every=50, group_shards=2)
    store = ActivationStore(acts)
    Trainer(store, tmp_path / "whole", cfg).run()
    Trainer(store, tmp_path / "cut", cfg).run(stop_after=70)  # stopped after the step-50 checkpoint
    assert not (tmp_path / "cut" / "sae_weights.safetensors").exists()
    Trainer(store, tmp_path / "cut", cfg).run(resume=True)
    whole, cut = load_sae(tmp_path / "whole").sae, load_sae(tmp_path / "cut").sae
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(getattr(cut, name), getattr(whole, name), atol=1e-5, rtol=1e-5)


def test_resume_without_checkpoint_is_an_error(planted, tmp_path):
    _, acts = planted
    with pytest.raises(MgsteerError, match="nothing to resume"):
        Trainer(ActivationStore(acts), tmp_path / "new", TrainConfig(k=8, steps=10, batch_size=64)).run(resume=True)


def test_torchrun_two_processes_match_one(planted, tmp_path):
    true, acts = planted
    args = ["--acts", str(acts), "--k", "8", "--expansion", "16", "--steps", "600", "--batch-size", "1024",
            "--lr", "4e-3", "--dead-steps", "50", "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, "-m", "cli.main", "train", *args, "--out", str(tmp_path / "one")],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr
    multi = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "cli.main", "train", *args, "--out", str(tmp_path / "two")],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert multi.returncode == 0, multi.stderr[-3000:]
    fvu = {}
    for name in ("one", "two"):
        lines = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        fvu[name] = next(x["fvu"] for x in reversed(lines) if "fvu" in x)
    one, two = load_sae(tmp_path / "one").sae, load_sae(tmp_path / "two").sae
    assert abs(fvu["one"] - fvu["two"]) < 0.02
    assert abs(recovery(one.W_dec, true) - recovery(two.W_dec, true)) < 0.05
    assert "trained 1024 features" in multi.stdout and multi.stdout.count("trained") == 1  # rank 0 reports


def test_training_config_errors(planted, tmp_path):
    _, acts = planted
    store = ActivationStore(acts)
    with pytest.raises(MgsteerError, match="fewer than one batch"):
        Trainer(store, tmp_path / "x", TrainConfig(batch_size=10**7))
    with pytest.raises(MgsteerError, match="unknown architecture"):
        Trainer(store, tmp_path / "x", TrainConfig(architecture="relu"))
    with pytest.raises(MgsteerError, match="has layers"):
        Trainer(store, tmp_path / "x", TrainConfig(layer=5))


# ---- statistics, CE, the engine ---------------------------------------------------------------------
def test_ce_recovered_ends(tiny_lm, audio_dir, tmp_path):
    harvest_to_store(tiny_lm, audio_clips(audio_dir, 10.0)[:2], [1], tmp_path / "acts", "audio")
    clips = list(ActivationStore(tmp_path / "acts").iter_codes())
    perfect = ce_recovered(tiny_lm, clips, 1, lambda h: h)
    ablated = ce_recovered(tiny_lm, clips, 1, torch.zeros_like)
    assert perfect["ce_recovered"] == pytest.approx(1.0)
    assert ablated["ce_recovered"] == pytest.approx(0.0)
    assert perfect["ce_clean"] != perfect["ce_zero"]


def test_filter_report_and_sensitivity():
    from sae.files import FeatureStats

    rate = torch.tensor([0.0, 0.005, 0.01, 0.1, 0.25, 0.3, 0.9])
    stats = FeatureStats(rate, rate, rate, firing_rate_clip=rate)
    report = filter_report(stats)
    assert report["kept"] == [2, 3, 4] and report["dead"] == 1 and report["total"] == 7
    row = next(r for r in report["sensitivity"] if r["lo"] == 0.001 and r["hi"] == 0.5)
    assert row["kept"] == 5


def test_cli_harvest_train_render_end_to_end(audio_dir, tmp_path, capsys):
    acts, sae_dir = tmp_path / "ACTS", tmp_path / "SAE"
    assert main(["harvest", "--model", "tiny", "--audio", str(audio_dir), "--layers", "1", "--out", str(acts)]) == 0
    train = ["train", "--acts", str(acts), "--out", str(sae_dir), "--k", "8", "--expansion", "4", "--steps", "200",
             "--batch-size", "256"]  # fmt: skip
    assert main(train) == 0
    out = capsys.readouterr().out
    assert "harvested 4/4 clips" in out and "codebook CE recovered" in out
    cfg = json.loads((sae_dir / "cfg.json").read_text())
    assert (cfg["d_in"], cfg["d_sae"], cfg["k"], cfg["hook_layer"]) == (64, 256, 8, 1)
    assert {"W_enc", "W_dec", "b_enc", "b_dec"} <= set(
        __import__("safetensors.torch", fromlist=["load_file"]).load_file(str(sae_dir / "sae_weights.safetensors"))
    )
    sae = load_sae(sae_dir)
    stats = sae.require_stats()
    assert stats.firing_rate_clip is not None and (stats.firing_rate > 0).sum() > 0
    assert json.loads((sae_dir / "filter.json").read_text())["total"] == 256
    # The freshly trained SAE steers the engine.
    from engine.model import load_musicgen

    lm = load_musicgen("tiny")
    feature = int(stats.max_activation.argmax())
    plain = render(lm, "simple melody", 1.0, SamplingConfig(seed=0))
    steered = render(lm, "simple melody", 1.0, SamplingConfig(seed=0), sae, SteeringSpec((FeatureSteer(feature, 1.0),)))
    assert (plain.codes != steered.codes).any()
