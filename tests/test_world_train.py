"""The world model: trained on the grammar, resumable, and loadable like any model."""

from __future__ import annotations

import json
import re

import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from cli.demo import world_model
from cli.main import main
from engine.errors import MgsteerError
from engine.model import load_musicgen
from engine.synth_codec import TOKEN_LAYOUT, SynthCodec
from sae.harvest import delayed_inputs, delayed_sequence
from sae.world.grammar import GRAMMAR
from sae.world.train import WorldTrainConfig, WorldTrainer, prompted_accuracy

SMALL = {"batch_size": 4, "seconds": 1.0, "checkpoint_every": 2, "warmup_steps": 2}


def test_delayed_places_codebook_q_q_plus_one_positions_late():
    codes = torch.arange(1, 7).reshape(1, 2, 3)  # K = 2, N = 3
    assert delayed_sequence(codes, pad=0).tolist() == [[[0, 1, 2, 3, 0], [0, 0, 4, 5, 6]]]
    assert delayed_inputs(codes[0], pad=0).tolist() == [[0, 1, 2, 3], [0, 0, 4, 5]]


def test_a_trained_world_loads_with_its_synth_codec_and_renders(tmp_path, capsys):
    out = tmp_path / "world"
    WorldTrainer(out, WorldTrainConfig(steps=4, **SMALL)).run()
    lm = load_musicgen(str(out), "cpu")
    assert isinstance(lm.own_codec, SynthCodec) and lm.codebook_size == 128
    wav = tmp_path / "w.wav"
    assert main(["render", "--model", str(out), "--prompt", "fast A minor melody, bright", "--seconds", "1",
                 "--out", str(wav)]) == 0  # fmt: skip
    assert sf.info(str(wav)).frames == 32000
    accuracy = prompted_accuracy(lm, generations=4, seconds=1.0)
    assert set(accuracy) >= {"key", "register", "tempo", "timbre", "density"}


def test_a_world_on_an_older_token_layout_is_refused_in_one_line_and_the_demo_retrains_it(tmp_path):
    """A world trained when codebook 0 was a MIDI note would decode to wrong pitches: loading
    says so, and the demo's cached world is trained again rather than reused."""
    out = tmp_path / "world"
    cfg = WorldTrainConfig(steps=2, **SMALL)
    WorldTrainer(out, cfg).run()
    for name in ("world.json", "train_state.json"):  # what a world of the older layout has on disk
        data = json.loads((out / name).read_text())
        data.pop("tokens", None), data.get("config", {}).pop("tokens", None)
        (out / name).write_text(json.dumps(data))
    with pytest.raises(MgsteerError, match="older synth codec's tokens: train it again") as err:
        load_musicgen(str(out), "cpu")
    assert "\n" not in str(err.value)
    lm = world_model(out, cfg)
    assert isinstance(lm.own_codec, SynthCodec)
    assert json.loads((out / "world.json").read_text())["tokens"] == TOKEN_LAYOUT


def test_a_world_of_an_older_grammar_is_trained_again_by_the_demo_and_not_resumed(tmp_path):
    """It decodes fine, but it learned other music than the scorer now knows: the demo trains
    its cached world again, and resuming it is refused."""
    out = tmp_path / "world"
    cfg = WorldTrainConfig(steps=2, **SMALL)
    WorldTrainer(out, cfg).run()
    state = json.loads((out / "train_state.json").read_text())
    state["config"]["grammar"] = GRAMMAR - 1
    (out / "train_state.json").write_text(json.dumps(state))
    with pytest.raises(MgsteerError, match="trained with other settings"):
        WorldTrainer(out, WorldTrainConfig(steps=4, **SMALL)).run(resume=True)
    world_model(out, cfg)
    assert json.loads((out / "train_state.json").read_text())["config"]["grammar"] == GRAMMAR
    assert json.loads((out / "world.json").read_text())["grammar"] == GRAMMAR


def test_resuming_gives_the_weights_of_an_uninterrupted_run(tmp_path, monkeypatch):
    import sae.world.train as train

    whole, split = tmp_path / "whole", tmp_path / "split"
    WorldTrainer(whole, WorldTrainConfig(steps=6, **SMALL)).run()
    real = train.batch_for

    def interrupted(step, *args):
        if step == 5:  # after the checkpoint of step 4
            raise KeyboardInterrupt
        return real(step, *args)

    monkeypatch.setattr(train, "batch_for", interrupted)
    with pytest.raises(KeyboardInterrupt):
        WorldTrainer(split, WorldTrainConfig(steps=6, **SMALL)).run()
    monkeypatch.setattr(train, "batch_for", real)
    assert json.loads((split / "train_state.json").read_text())["step"] == 4
    WorldTrainer(split, WorldTrainConfig(steps=6, **SMALL)).run(resume=True)
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(split / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5)
    assert json.loads((split / "train_state.json").read_text())["step"] == 6


def test_the_first_short_steps_train_on_short_clips(tmp_path, monkeypatch, capsys):
    import sae.world.train as train

    real, frames = train.batch_for, []

    def recorded(step, cfg, length):
        frames.append(length)
        return real(step, cfg, length)

    monkeypatch.setattr(train, "batch_for", recorded)
    cfg = WorldTrainConfig(steps=4, short_steps=3, short_seconds=0.4, **SMALL)
    WorldTrainer(tmp_path / "world", cfg).run()
    assert frames == [20, 20, 20, 50]
    assert main(["world", "train", "--out", str(tmp_path / "other"), "--steps", "4", "--short-steps", "5"]) == 2
    assert "--short-steps 5 is more than --steps 4" in capsys.readouterr().err


def test_folders_are_not_clobbered_and_settings_not_mixed(tmp_path):
    out = tmp_path / "world"
    WorldTrainer(out, WorldTrainConfig(steps=2, **SMALL)).run()
    with pytest.raises(MgsteerError, match="not empty"):
        WorldTrainer(out, WorldTrainConfig(steps=2, **SMALL)).run()
    with pytest.raises(MgsteerError, match=r"other settings \(batch_size 4, not 8\)"):
        WorldTrainer(out, WorldTrainConfig(steps=4, **{**SMALL, "batch_size": 8})).run(resume=True)
    with pytest.raises(MgsteerError, match="nothing to resume"):
        WorldTrainer(tmp_path / "empty", WorldTrainConfig(steps=2, **SMALL)).run(resume=True)


def test_world_cli_trains_and_scores(tmp_path, capsys):
    out = tmp_path / "world"
    assert main(["world", "train", "--out", str(out), "--steps", "2", "--batch-size", "2", "--seconds", "1",
                 "--generations", "2"]) == 0  # fmt: skip
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("prompted accuracy"))
    assert "over 2 clips of 1 s" in line and re.search(r"key \d\.\d\d · register .* drums \d\.\d\d$", line)
    # by default the first 65 % of the steps are short: here 1 of 2
    assert json.loads((out / "train_state.json").read_text())["config"]["short_steps"] == 1
    assert main(["world", "eval", "--model", str(out), "--generations", "2", "--seconds", "1", "--json"]) == 0
    accuracy = json.loads(capsys.readouterr().out)["prompted_accuracy"]
    assert {"key", "tempo", "drums", "generations"} <= set(accuracy) and "density" not in accuracy
