"""The `mgsteer` command line: render, info, demo and the one-line error contract."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import alive_features

from cli import demo
from cli.demo import DemoConfig, run_demo
from cli.main import main
from engine.levels import LIMIT_CEILING, rms_dbfs
from engine.params import Knob
from engine.presets import load_preset
from engine.synth_codec import SynthCodec, token_notes
from sae.world.grammar import Attributes, ExactScorer, sample_clip
from sae.world.pipeline import SteerSelection, WorldSAEConfig
from sae.world.train import WorldTrainConfig


def test_render_writes_steered_wav(tiny_sae_dir, tiny_sae, tmp_path, capsys):
    f1, f2 = alive_features(tiny_sae)
    out = tmp_path / "sub" / "out.wav"
    argv = [
        "render",
        "--model",
        "tiny",
        "--sae",
        str(tiny_sae_dir),
        "--prompt",
        "simple melody",
        "--steer",
        f"{f1}=0.8",
        "--steer",
        f"{f2}=-0.5",
        "--seconds",
        "1",
        "--seed",
        "0",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    info = sf.info(str(out))
    assert info.samplerate == 32000 and info.channels == 1 and info.frames == 32000
    assert str(out) in printed and f"feature {f1} α=0.8" in printed and "add at layer 2" in printed
    plain = tmp_path / "plain.wav"
    assert main(["render", "--model", "tiny", "--seconds", "1", "--seed", "0", "--out", str(plain)]) == 0
    assert (sf.read(str(plain))[0] != sf.read(str(out))[0]).any()


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("mgsteer: error: ")
    return err[0]


def test_cli_errors_are_one_line(tiny_sae_dir, tmp_path, capsys):
    base = ["render", "--model", "tiny", "--seconds", "0.2", "--out", str(tmp_path / "x.wav")]
    assert main([*base, "--steer", "3=1"]) == 2
    assert "--steer needs --sae" in _error_line(capsys)
    assert main([*base, "--sae", str(tiny_sae_dir), "--steer", "99999=1"]) == 2
    assert "unknown feature id 99999" in _error_line(capsys)
    assert main([*base, "--sae", str(tiny_sae_dir), "--steer", "3=inf"]) == 2
    assert "must be finite" in _error_line(capsys)
    assert main([*base, "--sae", str(tmp_path / "nope")]) == 2
    assert "does not exist" in _error_line(capsys)
    assert main([*base[:-4], "--seconds", "-1"]) == 2
    assert "positive" in _error_line(capsys)
    assert main([*base[:-4], "--seconds", "999"]) == 2
    assert "longer than one pass" in _error_line(capsys)
    assert not (tmp_path / "x.wav").exists()


def test_info_reports_model_and_sae(tiny_sae_dir, capsys):
    assert main(["info", "--model", "tiny", "--sae", str(tiny_sae_dir)]) == 0
    out = capsys.readouterr().out
    assert "decoder    4 layers, hidden 64, 4 codebooks × 128" in out
    assert "d_in 64, d_sae 128, k 8" in out and "fits       yes" in out
    assert "labels     none yet (mgsteer label" in out


QUICK_DEMO = DemoConfig(
    world=WorldTrainConfig(steps=4, batch_size=4, seconds=1.0, checkpoint_every=4, warmup_steps=2),
    sae=WorldSAEConfig(clips=8, seconds=2.0, steps=50, batch_size=128),
    seconds=1.0,
    alphas=(16.0,),  # a world trained 4 steps is near noise: a weak push changes no token of it
    selection=SteerSelection(prompts=1, seeds=(100,), seconds=1.0, alphas=(16.0,), candidates=1, aligned=1),
    clip_seeds=1,
)


def test_demo_renders_plain_and_steered(tmp_path, capsys):
    result = run_demo(tmp_path, QUICK_DEMO)
    printed = capsys.readouterr().out
    assert "training the world model" in printed and "P(" in printed
    assert result["changed"] > 0
    for key in ("plain", "steered"):
        assert sf.info(str(result[key])).frames == 32000
        assert str(result[key].resolve()) in printed
    assert (result["sae"] / "cfg.json").is_file()
    catalog = json.loads((result["sae"] / "features.json").read_text())
    assert set(result["features"]) <= {f["id"] for f in catalog["features"]}
    assert str(result["browser"].resolve()) in printed and "__DATA__" not in result["browser"].read_text()
    assert result["target"]["alpha"] in QUICK_DEMO.alphas and "grammar log-likelihood per token" in printed
    assert result["target"]["attribute"] not in result["also_changed"] and "other attributes: " in printed
    assert re.search(r"reads its (mean|peak) over 2 s windows at detection AUROC \d\.\d\d on held-out", printed)
    assert "selection: " in printed  # what was tried on the selection pairs, attribute by attribute
    # the A/B pair at one loudness (the louder turned down), reported before matching, nothing at full scale
    written = [sf.read(str(result[key]))[0] for key in ("plain", "steered")]
    before = result["loudness_dbfs_before_matching"]
    assert f"plain {before['plain']:.1f} dBFS, steered {before['steered']:.1f} dBFS" in printed
    assert abs(rms_dbfs(written[0]) - rms_dbfs(written[1])) < 0.2
    assert max(np.abs(w).max() for w in written) <= LIMIT_CEILING
    # the window opens on what it found: the steered feature first, at the α the demo used
    preset = load_preset(result["preset"])
    first, target = preset.knobs[0], result["target"]
    assert first.features == ((target["feature"], 1.0),) and first.range[0] < 0 < first.range[1]
    knob = Knob(lo=first.range[0], hi=first.range[1], value=first.value)
    assert knob.alpha() == pytest.approx(target["alpha"]) and preset.model == str(tmp_path / "world")
    assert f"mgsteer gui --preset {result['preset']}" in printed


def test_the_demo_steers_at_the_weakest_strength_that_moves_the_music_and_keeps_the_grammar(monkeypatch):
    """α 1 leaves the clip low, α 4 writes noise that the scorer happens to call high; α 2
    makes a grammatical high-register clip, and is the one the demo plays."""
    rng = np.random.default_rng(0)
    low, high = (Attributes("C major", r, "fast", "dark", "sparse") for r in ("low", "high"))
    clips = {1.0: sample_clip(rng, low, 50), 2.0: sample_clip(rng, high, 50), 4.0: rng.integers(0, 128, (4, 50))}
    clips[4.0][:2] = sample_clip(rng, high, 50)[:2]  # the notes say high, everything else is noise

    def fake_render(lm, prompt, seconds, sampling, sae, spec):
        return SimpleNamespace(codes=torch.from_numpy(clips[spec.steers[0].alpha]))

    monkeypatch.setattr(demo, "render", fake_render)
    lm, scorer = SimpleNamespace(codebook_size=128), ExactScorer()
    _, alpha, met = demo._steer(lm, None, scorer, "melody", (1.0, 2.0, 4.0), 1.0, 0, ("register", "high", 3))
    assert alpha == 2.0 and met
    del clips[2.0]
    _, alpha, met = demo._steer(lm, None, scorer, "melody", (1.0, 4.0), 1.0, 0, ("register", "high", 3))
    assert alpha == 1.0 and not met  # nothing reaches it grammatically: the grammatical clip, not the noise


def _world_clips(registers: tuple[str, ...]) -> list[SimpleNamespace]:
    """Fast melodies over busy drums, one per register, rendered by the synth codec."""
    rng, codec, clips = np.random.default_rng(0), SynthCodec(128), []
    for register in registers:
        codes = sample_clip(rng, Attributes("F major", register, "fast", "bright", "busy"), 250)
        audio = codec.decode(torch.from_numpy(codes)[None])[0].numpy()
        clips.append(SimpleNamespace(audio=audio, sample_rate=codec.sample_rate, codes=codes))
    return clips


def test_the_demo_names_the_other_attributes_a_steer_changed():
    rng, scorer = np.random.default_rng(0), ExactScorer()
    heard = [
        scorer.predict(sample_clip(rng, Attributes("F major", register, "fast", timbre, "busy"), 200))
        for register, timbre in (("high", "bright"), ("low", "dark"), ("low", "bright"))
    ]
    assert demo.also_changed(heard[0], heard[1], "register") == {"timbre": ("bright", "dark")}
    assert demo.also_changed(heard[0], heard[2], "register") == {}
    assert demo.also_changed(heard[0], heard[1], "timbre") == {"register": ("high", "low")}


def test_the_demo_hears_each_register_in_the_octave_it_was_played_over_busy_drums():
    """The descriptors' median note: before their f0 high-pass, the kick drum's 50–60 Hz made it."""
    clips = _world_clips(("low", "mid", "high"))
    notes, unit = demo.listen("register", clips)
    assert unit == "median note"
    octaves = [int(np.median(token_notes(c.codes[0], c.codes[1]))) // 12 - 1 for c in clips]
    assert [int(n[-1]) for n in notes] == octaves == [3, 4, 5]


def test_the_demo_falls_back_to_the_next_attribute_when_a_choice_does_not_move_its_clip(monkeypatch):
    """Register is detected best and its selection choice moved its pairs, but not the demo's
    clip; timbre's does: the demo plays timbre. With neither, it says so and keeps the closest."""
    rng = np.random.default_rng(1)
    plain = Attributes("C major", "low", "fast", "dark", "sparse")
    clip = {None: plain, 3: plain, 5: Attributes("C major", "low", "fast", "bright", "sparse")}
    detection = {"window_s": 2.0, "values": {
        "register=high": {"feature": 3, "pool": "mean", "auroc_held_out": 0.99},
        "timbre=bright": {"feature": 5, "pool": "mean", "auroc_held_out": 0.95},
    }}  # fmt: skip
    choices = {"register": ("high", 3), "timbre": ("bright", 5)}

    def fake_choose(lm, loaded, detection, attribute, sel):
        value, feature = choices[attribute]
        return {"chosen": {"value": value, "feature": feature, "alpha": 1.0, "moved_share": 1.0, "source": "detector"}}

    def fake_render(lm, prompt, seconds, sampling, sae=None, spec=None):
        feature = spec.steers[0].feature if spec else None
        return SimpleNamespace(codes=torch.from_numpy(sample_clip(rng, clip[feature], 100)))

    monkeypatch.setattr(demo, "choose_steering", fake_choose)
    monkeypatch.setattr(demo, "render", fake_render)
    lm, scorer = SimpleNamespace(codebook_size=128), ExactScorer()
    cfg = DemoConfig(alphas=(1.0, 2.0), clip_seeds=1)
    pick = demo.choose_demo_steer(lm, None, scorer, detection, "melody", cfg)
    assert (pick["attribute"], pick["value"], pick["feature"], pick["met"]) == ("timbre", "bright", 5, True)
    clip[5] = plain  # now nothing moves
    pick = demo.choose_demo_steer(lm, None, scorer, detection, "melody", cfg)
    assert not pick["met"] and "register: feature 3 did not move" in pick["why"] and "timbre" in pick["why"]


def test_a_missing_sae_or_a_misspelt_model_folder_is_said_before_any_hub_lookup(tmp_path, capsys, monkeypatch):
    from engine import hub

    monkeypatch.setattr(hub, "probe_hub", lambda *a: pytest.fail("the hub must not be asked"))
    assert main(["render", "--model", "facebook/musicgen-small", "--sae", str(tmp_path / "nope")]) == 2
    assert f"SAE folder '{tmp_path / 'nope'}' does not exist" in capsys.readouterr().err
    (tmp_path / "out" / "world").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert main(["info", "--model", "out/wrld"]) == 2
    err = capsys.readouterr().err
    assert "model folder 'out/wrld' does not exist ('out' holds: world)" in err and "demo_out/world" in err


def test_help_shows_each_default_once_and_none_on_required_flags(capsys):
    for command in ("render", "play", "harvest", "train", "label", "gui", "export-onnx", "eval-steer", "demo"):
        assert main([command, "--help"]) == 0
        text = capsys.readouterr().out
        assert "(default: None)" not in text and "(default: False)" not in text, command
        options = re.split(r"\n  (?=-)", text)
        assert not [o for o in options if o.count("default") > 1 and "(default:" in o], command
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out.split("options:")[1]
    assert "(default: 32)" in re.search(r"--k K.*?\n  -", text, re.S)[0]
    assert "default" not in re.search(r"--acts ACTS.*?\n  -", text, re.S)[0]


def test_play_steers_the_cfg_halves_it_is_told(tiny_sae_dir, tiny_sae, tmp_path):
    feature = alive_features(tiny_sae)[0]
    base = ["play", "--model", "tiny", "--sae", str(tiny_sae_dir), "--no-audio", "--seconds", "0.5",
            "--backend", "torch", "--steer", f"{feature}=3"]  # fmt: skip
    played = {}
    for name, halves in (("both", "both"), ("again", "both"), ("cond", "cond")):
        out = tmp_path / f"{name}.wav"
        assert main([*base, "--halves", halves, "--out", str(out)]) in (0, None)
        played[name] = sf.read(str(out))[0]
    assert np.array_equal(played["both"], played["again"])  # the same flags play the same music
    assert not np.array_equal(played["both"], played["cond"])
