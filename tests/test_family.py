"""The MusicGen family: the stereo (tiny-stereo) and melody (tiny-melody) architectures through
every command that takes `--model`, and the stereo delay pattern through harvest."""

from __future__ import annotations

import wave

import numpy as np
import pytest
import torch

from cli.main import main
from sae.harvest import delayed_inputs, delayed_sequence


def test_a_stereo_delayed_sequence_delays_each_pair_alike():
    codes = torch.arange(1, 13).reshape(4, 3)  # 4 codebooks (2 per channel), 3 frames
    seq = delayed_sequence(codes, pad=0, channels=2)
    assert seq.tolist() == [[0, 1, 2, 3, 0], [0, 4, 5, 6, 0], [0, 0, 7, 8, 9], [0, 0, 10, 11, 12]]
    assert delayed_inputs(codes, pad=0, channels=2).tolist() == [row[:4] for row in seq.tolist()]


def test_info_names_each_family(capsys):
    assert main(["info", "--model", "tiny-stereo"]) == 0
    out = capsys.readouterr().out
    assert "family     stereo, text" in out and "8 codebooks" in out and "stereo (codebooks 0, 2, 4, … left)" in out
    assert main(["info", "--model", "tiny"]) == 0
    assert "family     mono, text\n" in capsys.readouterr().out
    assert main(["info", "--model", "tiny-melody"]) == 0
    out = capsys.readouterr().out
    assert "family     mono, text + melody" in out and "condition  prepended: 235 chroma frames" in out


@pytest.mark.parametrize(
    ("command", "check"),
    [
        (["render", "--seconds", "0.5", "--backend", "torch", "--out", "{tmp}/st.wav"], "wrote"),
        (["harvest", "--prompts", "{tmp}/prompts.txt", "--seconds", "0.5", "--layers", "1", "--out", "{tmp}/acts"],
         None),
        (["play", "--no-audio", "--seconds", "1", "--backend", "torch", "--out", "{tmp}/play.wav"], None),
        (["export-onnx", "--out", "{tmp}/onnx"], None),
        (["play", "--no-audio", "--seconds", "1", "--backend", "onnx", "--onnx-dir", "{tmp}/onnx",
          "--out", "{tmp}/play.wav"], None),
    ],
)  # fmt: skip
def test_every_command_takes_the_stereo_model_or_says_in_one_line_why_not(command, check, tmp_path, capsys):
    (tmp_path / "prompts.txt").write_text("simple melody\n")
    if "--onnx-dir" in command:  # streamed on ONNX Runtime: the graphs first
        assert main(["export-onnx", "--model", "tiny-stereo", "--out", str(tmp_path / "onnx")]) == 0
    args = [a.format(tmp=tmp_path) for a in command] + ["--model", "tiny-stereo"]
    code = main(args)
    out, err = capsys.readouterr()
    if check is None or command[0] == "render":
        assert code == 0, err
    else:
        assert code == 2 and check in err and err.count("\n") == 1, err
    if command[0] == "render":
        with wave.open(str(tmp_path / "st.wav")) as w:
            assert (w.getnchannels(), w.getnframes()) == (2, 16000)
        assert "stereo, 16-bit" in out
    if command[0] == "play":  # streamed, seams and all, in two channels
        with wave.open(str(tmp_path / "play.wav")) as w:
            assert (w.getnchannels(), w.getnframes()) == (2, 32000)


@pytest.mark.parametrize(
    ("command", "check"),
    [
        (["render", "--seconds", "0.5", "--backend", "torch", "--melody", "{tmp}/tune.wav", "--out", "{tmp}/m.wav"],
         "following"),
        (["render", "--seconds", "0.5", "--backend", "torch", "--out", "{tmp}/m.wav"], "wrote"),
        (["harvest", "--prompts", "{tmp}/prompts.txt", "--seconds", "0.5", "--layers", "1", "--out", "{tmp}/acts"],
         None),
        (["harvest", "--audio", "{tmp}/clips", "--layers", "1", "--out", "{tmp}/acts"], None),
        (["play", "--no-audio", "--seconds", "1", "--backend", "torch", "--melody", "{tmp}/tune.wav",
          "--out", "{tmp}/play.wav"], None),
        (["export-onnx", "--out", "{tmp}/onnx"], None),
        (["play", "--no-audio", "--seconds", "1", "--backend", "onnx", "--onnx-dir", "{tmp}/onnx", "--melody",
          "{tmp}/tune.wav", "--out", "{tmp}/play.wav"], None),
        (["render", "--seconds", "0.5", "--melody", "{tmp}/none.wav"], "does not exist"),
    ],
)  # fmt: skip
def test_every_command_takes_the_melody_model_or_says_in_one_line_why_not(command, check, tmp_path, capsys):
    from engine.wavfile import write_wav

    (tmp_path / "prompts.txt").write_text("simple melody\n")
    t = np.arange(32000) / 32000
    write_wav(tmp_path / "tune.wav", (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 32000)
    (tmp_path / "clips").mkdir()
    write_wav(tmp_path / "clips" / "a.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 32000)
    if "--onnx-dir" in command:  # streamed on ONNX Runtime: the graphs first
        assert main(["export-onnx", "--model", "tiny-melody", "--out", str(tmp_path / "onnx")]) == 0
    args = [a.format(tmp=tmp_path) for a in command] + ["--model", "tiny-melody"]
    code = main(args)
    out, err = capsys.readouterr()
    if check is None or check in ("wrote", "following"):
        assert code == 0, err
        assert check is None or check in out
    else:
        assert code == 2 and check in err and err.count("\n") == 1, err
    if command[0] == "play":
        with wave.open(str(tmp_path / "play.wav")) as w:
            assert (w.getnchannels(), w.getnframes()) == (1, 32000)
        assert "melody: " in out
    if command[0] == "harvest":
        from sae.store import ActivationStore

        store = ActivationStore(tmp_path / "acts")
        acts = store.load_layer(1)
        assert store.rows() == len(acts) > 0 and acts.shape[1] == 64 and torch.isfinite(acts).all()


@pytest.mark.parametrize("model", ["tiny-stereo", "tiny-melody"])
def test_the_sae_tool_chain_takes_each_family(model, tmp_path, capsys):
    """harvest → train → label → eval-steer → info, and a knob from examples that steers a render."""
    from engine.wavfile import write_wav

    clips, acts, sae, knob = tmp_path / "clips", tmp_path / "acts", tmp_path / "sae", tmp_path / "knob"
    clips.mkdir()
    t = np.arange(32000) / 32000
    for i, hz in enumerate((220.0, 330.0, 440.0)):
        write_wav(clips / f"tone{i}.wav", (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32), 32000)
    m = ["--model", model]
    assert main(["harvest", *m, "--audio", str(clips), "--clip-seconds", "1", "--layers", "2", "--out", str(acts)]) == 0
    assert main(["train", "--acts", str(acts), "--layer", "2", "--out", str(sae), "--k", "4", "--expansion", "2",
                 "--steps", "30", "--batch-size", "64"]) == 0  # fmt: skip
    assert main(["label", "--sae", str(sae), "--acts", str(acts), "--features", "all", "--labelers", "descriptors",
                 "--limit", "2", "--top-n", "2", "--negatives", "2", "--window-s", "0.5"]) == 0  # fmt: skip
    assert main(["eval-steer", *m, "--sae", str(sae), "--features", "0", "--concept", "0=bright",
                 "--scorer", "descriptors", "--seconds", "0.3", "--seeds", "1", "--no-prompt-baseline",
                 "--out", str(tmp_path / "ev")]) == 0  # fmt: skip
    assert main(["info", *m, "--sae", str(sae)]) == 0
    assert "fits       yes" in capsys.readouterr().out
    concept = ["concept", *m, "--out", str(knob), "--seconds", "0.5", "--takes", "2", "--layer", "2"]
    assert main([*concept, "--positive", "techno groove", "--positive", "fast drums",
                 "--negative", "sad cello", "--negative", "calm"]) == 0  # fmt: skip
    render = ["render", *m, "--seconds", "0.5", "--backend", "torch"]
    assert main([*render, "--out", str(tmp_path / "plain.wav")]) == 0
    assert main([*render, "--out", str(tmp_path / "steered.wav"), "--sae", str(knob), "--steer", "0=2"]) == 0
    assert (tmp_path / "plain.wav").read_bytes() != (tmp_path / "steered.wav").read_bytes()


def test_a_stereo_window_decoded_from_tokens_is_the_mono_mix(stereo_lm, tmp_path):
    from engine.codec import decode_codes
    from sae.examples import Window
    from sae.harvest import harvest_to_store, prompt_clips
    from sae.store import ActivationStore
    from sae.window_audio import WindowAudio

    (tmp_path / "prompts.txt").write_text("simple melody\n")
    harvest_to_store(stereo_lm, prompt_clips(tmp_path / "prompts.txt", 1.0), [1], tmp_path / "acts", "prompts")
    store = ActivationStore(tmp_path / "acts")
    decoded = WindowAudio(store, stereo_lm)(Window(clip=0, start=10, stop=35, peak=20, activation=1.0))
    hop = stereo_lm.sample_rate // stereo_lm.frame_rate
    both = decode_codes(stereo_lm, store.clip_codes(0)[None])[0].numpy()  # [2, samples]
    assert decoded.shape == (25 * hop,)
    np.testing.assert_allclose(decoded, both.mean(axis=0)[10 * hop : 35 * hop], atol=1e-3)
