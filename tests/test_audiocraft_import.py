"""`mgsteer import-audiocraft`: an audiocraft export → a folder `--model` loads, the same model.

audiocraft cannot be installed beside this torch (it pins torch 2.1 and xformers). Two checks:
- a fixture made once by audiocraft's own transformer code (fixtures/audiocraft/make_fixture.py):
  its export and its logits, which the imported model must reproduce;
- exports of the tiny text, stereo and melody models laid out by `audiocraft_export` under
  audiocraft's names (`audiocraft/models/lm.py`: `emb`, `transformer.layers.i`, `out_norm`,
  `linears`; `audiocraft/modules/transformer.py`: `linear1/2`, `norm1/2`, `cross_attention`,
  `norm_cross`, a fused `in_proj_weight` per attention): the imported model must give the
  original's logits and tokens.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from cli.main import main
from engine.audiocraft_import import CODEC_FILE, LM_FILE, import_audiocraft
from engine.errors import MgsteerError
from engine.model import load_musicgen
from engine.prompts import encode_prompts, teacher_forced_logits
from engine.tokenloop import SamplingConfig, TokenLoop

HF_LAYER = {v: k for k, v in {
    "linear1": "fc1", "linear2": "fc2", "norm1": "self_attn_layer_norm", "norm2": "final_layer_norm",
    "norm_cross": "encoder_attn_layer_norm", "cross_attention": "encoder_attn", "self_attn": "self_attn",
}.items()}  # fmt: skip


def audiocraft_state(lm) -> dict[str, torch.Tensor]:
    """The LM's weights under audiocraft's names (q, k, v fused as audiocraft keeps them)."""
    state: dict[str, torch.Tensor] = {}
    for key, value in lm.model.decoder.state_dict().items():
        if m := re.fullmatch(r"model\.decoder\.embed_tokens\.(\d+)\.weight", key):
            state[f"emb.{m[1]}.weight"] = value
        elif m := re.fullmatch(r"lm_heads\.(\d+)\.weight", key):
            state[f"linears.{m[1]}.weight"] = value
        elif m := re.fullmatch(r"model\.decoder\.layer_norm\.(\w+)", key):
            state[f"out_norm.{m[1]}"] = value
        elif m := re.fullmatch(r"model\.decoder\.layers\.(\d+)\.(\w+)\.(q|k|v)_proj\.weight", key):
            if m[3] == "q":
                layer = lm.model.decoder.model.decoder.layers[int(m[1])]
                attn = getattr(layer, m[2])
                fused = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
                state[f"transformer.layers.{m[1]}.{HF_LAYER[m[2]]}.in_proj_weight"] = fused
        elif m := re.fullmatch(r"model\.decoder\.layers\.(\d+)\.(\w+)\.(.+)", key):
            state[f"transformer.layers.{m[1]}.{HF_LAYER[m[2]]}.{m[3]}"] = value
        else:
            raise AssertionError(f"unexpected transformers key {key}")
    for name, value in lm.model.enc_to_dec_proj.state_dict().items():
        state[f"condition_provider.conditioners.description.output_proj.{name}"] = value
    if lm.melody:
        for name, value in lm.model.audio_enc_to_dec_proj.state_dict().items():
            state[f"condition_provider.conditioners.self_wav.output_proj.{name}"] = value
        state["condition_provider.conditioners.self_wav.chroma.fbanks"] = torch.zeros(12, 8193)
    return state


def audiocraft_cfg(lm, t5: Path) -> dict:
    decoder = lm.model.config.decoder
    cfg = {
        "channels": lm.audio_channels,
        "transformer_lm": {
            "dim": decoder.hidden_size, "num_heads": decoder.num_attention_heads,
            "num_layers": decoder.num_hidden_layers, "hidden_scale": decoder.ffn_dim // decoder.hidden_size,
            "n_q": decoder.num_codebooks, "card": decoder.vocab_size, "norm_first": True, "bias_proj": False,
            "bias_ff": False, "bias_attn": False, "positional_embedding": "sin", "activation": "gelu",
            "cross_attention": not lm.melody, "dropout": 0.0,
        },
        "conditioners": {"description": {"model": "t5", "t5": {"name": str(t5), "finetune": False}}},
        "codebooks_pattern": {"modeling": "delay", "delay": {"delays": list(lm.delays)}},
        "fuser": {
            "cross": [] if lm.melody else ["description"],
            "prepend": ["self_wav", "description"] if lm.melody else [],
        },
    }  # fmt: skip
    if lm.melody:
        cfg["conditioners"]["self_wav"] = {"model": "chroma_stem"}
    return cfg


def audiocraft_export(lm, folder: Path, state: dict | None = None, codec: dict | None = None) -> Path:
    """What audiocraft's export writes, for `lm` (its text encoder and codec saved beside)."""
    folder.mkdir(parents=True, exist_ok=True)
    t5, encodec = folder.parent / "t5", folder.parent / "encodec"
    lm.model.text_encoder.save_pretrained(t5)
    lm.tokenizer.save_pretrained(t5)
    lm.model.audio_encoder.save_pretrained(encodec)
    package = {
        "best_state": state if state is not None else audiocraft_state(lm),
        "xp.cfg": yaml.safe_dump(audiocraft_cfg(lm, t5)),
        "version": "1.3.0",
        "exported": True,
    }
    torch.save(package, folder / LM_FILE)
    torch.save(codec if codec is not None else {"pretrained": str(encodec), "exported": True}, folder / CODEC_FILE)
    return folder


@pytest.mark.parametrize("model", ["tiny_lm", "stereo_lm", "melody_lm"])
def test_an_imported_export_is_the_same_model(model, request, tmp_path, a_melody):
    lm = request.getfixturevalue(model)
    src = audiocraft_export(lm, tmp_path / "export")
    out = import_audiocraft(src, tmp_path / "imported", progress=lambda _: None)
    again = load_musicgen(str(out), device="cpu", dtype="float32")
    assert again.family == lm.family and again.delays == lm.delays
    columns = torch.randint(0, lm.codebook_size, (2, lm.num_codebooks, 12), generator=torch.Generator().manual_seed(0))
    melody = a_melody if lm.melody else None
    logits = []
    for each in (lm, again):
        condition = encode_prompts(each, ["a calm piano piece"], null_half=True, melody=melody)
        with torch.no_grad():
            logits.append(teacher_forced_logits(each, columns.reshape(-1, 12), condition))
    torch.testing.assert_close(logits[1], logits[0], atol=1e-5, rtol=1e-5)
    prompt = ["a calm piano piece"]
    codes = [TokenLoop(each, prompt, SamplingConfig(seed=3), melody=melody).frames(12) for each in (lm, again)]
    assert torch.equal(codes[0], codes[1])


def test_the_command_writes_a_folder_model_loads(tiny_lm, tmp_path, capsys):
    src = audiocraft_export(tiny_lm, tmp_path / "export")
    assert main(["import-audiocraft", str(src), "--out", str(tmp_path / "imported")]) == 0
    out = capsys.readouterr().out
    assert "mono, text, 4 layers × 64, 4 codebooks" in out and f"--model {tmp_path / 'imported'}" in out
    render = ["render", "--model", str(tmp_path / "imported"), "--seconds", "0.2", "--out", str(tmp_path / "a.wav")]
    assert main(render) == 0


def _one_error(call) -> str:
    with pytest.raises(MgsteerError) as info:
        call()
    return str(info.value)


def test_every_key_and_shape_that_does_not_map_is_one_line_and_nothing_is_written(tiny_lm, tmp_path, capsys):
    state = audiocraft_state(tiny_lm)
    state["transformer.layers.0.layer_scale_1.scale"] = torch.ones(64)
    state["emb.0.weight"] = state["emb.0.weight"][:10]
    state["rogue.weight"] = torch.ones(3)
    del state["linears.3.weight"]
    src = audiocraft_export(tiny_lm, tmp_path / "export", state=state)
    assert main(["import-audiocraft", str(src), "--out", str(tmp_path / "imported")]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("does not map: ")]
    assert len(lines) == 4 and "4 weights or settings do not map" in err.splitlines()[-1], err
    assert any("layer_scale_1.scale (64,)" in line for line in lines)
    assert any("embed_tokens.0.weight: shape (10, 64)" in line for line in lines)
    assert any(line.endswith("rogue.weight (3,): no place for it in transformers' MusicGen") for line in lines)
    assert any("lm_heads.3.weight: missing" in line for line in lines)
    assert not (tmp_path / "imported").exists()


class Unsafe:
    """A pickled object: weights-only loading must refuse to build it."""


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda src: torch.save({"best_state": {}, "xp.cfg": "", "x": Unsafe()}, src / LM_FILE), "refused unread"),
        (lambda src: (src / CODEC_FILE).unlink(), "does not exist"),
        (lambda src: torch.save({"weights": {}}, src / LM_FILE), "not an audiocraft LM export"),
        (lambda src: torch.save({"best_state": {}, "xp.cfg": "a: ["}, src / LM_FILE), "not readable YAML"),
        (lambda src: torch.save({"exported": True}, src / CODEC_FILE), "names no pretrained codec"),
    ],
)
def test_a_bad_export_is_one_line(tiny_lm, tmp_path, break_it, message):
    src = audiocraft_export(tiny_lm, tmp_path / "export")
    break_it(src)
    text = _one_error(lambda: import_audiocraft(src, tmp_path / "imported", progress=lambda _: None))
    assert message in text and "\n" not in text


FIXTURE = Path(__file__).parent / "fixtures" / "audiocraft"


def test_the_imported_model_reproduces_audiocrafts_own_forward(tiny_lm, tmp_path):
    """The fixture was made once by audiocraft's own transformer code (fixtures/audiocraft/
    make_fixture.py): its export, and its logits for some codes and text states."""
    from safetensors.torch import load_file

    t5, encodec = tmp_path / "t5", tmp_path / "encodec"
    tiny_lm.model.text_encoder.save_pretrained(t5)  # width 32, what the fixture's projection takes
    tiny_lm.tokenizer.save_pretrained(t5)
    tiny_lm.model.audio_encoder.save_pretrained(encodec)
    out = import_audiocraft(FIXTURE / "export", tmp_path / "imported", str(t5), str(encodec), progress=lambda _: None)
    lm = load_musicgen(str(out), device="cpu", dtype="float32")
    expected = load_file(str(FIXTURE / "expected.safetensors"))
    sequence, mask = expected["sequence"], expected["mask"]
    with torch.no_grad():
        states = lm.model.enc_to_dec_proj(expected["text"]) * mask[..., None]
        # audiocraft attends to a padded prompt's zeroed positions (transformers would mask them)
        logits = lm.model.decoder(
            input_ids=sequence.reshape(-1, sequence.shape[-1]), encoder_hidden_states=states,
            encoder_attention_mask=torch.ones_like(mask),
        ).logits  # fmt: skip
    torch.testing.assert_close(logits.reshape(expected["logits"].shape), expected["logits"], atol=1e-4, rtol=1e-4)


def test_a_codec_trained_with_audiocraft_decodes_as_audiocraft_does(tiny_lm, tmp_path):
    """The fixture's codec was made by audiocraft's own SEANet and quantizer: the imported
    EnCodec turns the same codes into the same audio."""
    import shutil

    from safetensors.torch import load_file

    src, t5 = tmp_path / "export", tmp_path / "t5"
    src.mkdir()
    shutil.copy(FIXTURE / "export" / LM_FILE, src)
    shutil.copy(FIXTURE / "export-codec" / CODEC_FILE, src)
    tiny_lm.model.text_encoder.save_pretrained(t5)
    tiny_lm.tokenizer.save_pretrained(t5)
    out = import_audiocraft(src, tmp_path / "imported", str(t5), progress=lambda _: None)
    lm = load_musicgen(str(out), device="cpu", dtype="float32")
    expected = load_file(str(FIXTURE / "codec.safetensors"))
    with torch.no_grad():
        audio = lm.model.audio_encoder.decode(expected["codes"][None], audio_scales=[None]).audio_values
    assert audio.shape == expected["audio"].shape
    torch.testing.assert_close(audio, expected["audio"], atol=1e-4, rtol=1e-4)
