"""Loading MusicGen: tiny, local folders through the hub code path, clear failures."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch
from transformers.utils import logging as hf_logging

from engine.device import resolve_device, resolve_dtype
from engine.errors import MgsteerError
from engine.model import load_musicgen
from engine.tokenloop import SamplingConfig, TokenLoop


def test_tiny_has_musicgen_structure(tiny_lm):
    assert type(tiny_lm.model).__name__ == "MusicgenForConditionalGeneration"
    assert tiny_lm.num_codebooks == 4
    assert tiny_lm.sample_rate == 32000
    assert tiny_lm.frame_rate == 50
    assert tiny_lm.num_layers == 4
    assert tiny_lm.hidden_size == 64
    assert tiny_lm.model.text_encoder.config.model_type == "t5"
    assert tiny_lm.model.audio_encoder.config.model_type == "encodec"
    ids = tiny_lm.tokenizer(["simple melody"])["input_ids"][0]
    assert tiny_lm.tokenizer.unk_token_id not in ids


def test_tiny_is_deterministic_per_seed():
    a, b, c = (load_musicgen("tiny", seed=s).model.state_dict() for s in (0, 0, 1))
    name = "decoder.model.decoder.layers.0.fc1.weight"
    assert torch.equal(a[name], b[name])
    assert not torch.equal(a[name], c[name])


def test_saved_folder_loads_through_pretrained_path(tiny_lm, tmp_path):
    tiny_lm.model.save_pretrained(tmp_path)
    tiny_lm.tokenizer.save_pretrained(tmp_path)
    lm = load_musicgen(str(tmp_path), device="cpu")
    assert lm.spec == str(tmp_path)
    for name, tensor in tiny_lm.model.state_dict().items():
        assert torch.equal(tensor, lm.model.state_dict()[name]), name
    sampling = SamplingConfig(seed=3)
    ours = TokenLoop(tiny_lm, ["simple melody"], sampling).frames(12)
    theirs = TokenLoop(lm, ["simple melody"], sampling).frames(12)
    assert torch.equal(ours, theirs)


def test_loading_a_folder_prints_no_pad_token_warning(tiny_lm, tmp_path):
    """MusicGen's pad token lies outside the vocabulary by design; transformers' warning about
    it (once per process, hence the cache cleared) must not reach the user."""
    tiny_lm.model.save_pretrained(tmp_path)
    tiny_lm.tokenizer.save_pretrained(tmp_path)
    shown: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: shown.append(record.getMessage())
    hf_logger = hf_logging.get_logger("transformers")
    hf_logger.addHandler(handler)
    logging.Logger.warning_once.cache_clear()
    try:
        load_musicgen(str(tmp_path), device="cpu")
    finally:
        hf_logger.removeHandler(handler)
    assert not [line for line in shown if "pad_token_id" in line]


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("./no/such/folder", "does not exist"),
        ("not-a-hub-id", "neither a folder nor a hub id"),
        ("a/b/c", "does not exist"),
    ],
)
def test_bad_specs_are_one_line_errors(spec, needle):
    with pytest.raises(MgsteerError) as err:
        load_musicgen(spec)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(MgsteerError, match=r"no config\.json"):
        load_musicgen(str(tmp_path))


def test_unreachable_hub_is_one_clear_line(tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9"}
    env.pop("HF_HUB_OFFLINE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "info", "--model", "facebook/musicgen-small"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("mgsteer: error: model 'facebook/musicgen-small'")
    assert "unreachable" in lines[0] and "--model tiny" in lines[0] and "local folder" in lines[0]


def test_device_and_dtype_resolution():
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in {"cpu", "mps"}
        with pytest.raises(MgsteerError, match="no CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(MgsteerError, match="unknown device"):
        resolve_device("tpu9")
    assert resolve_dtype("auto") == torch.float32
    assert resolve_dtype("bfloat16") == torch.bfloat16
    with pytest.raises(MgsteerError, match="unknown dtype"):
        resolve_dtype("float8")


def test_tiny_codec_audio_depends_on_codes(tiny_lm):
    from engine.codec import decode_codes

    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, tiny_lm.codebook_size, (1, tiny_lm.num_codebooks, 25), generator=gen)
    other = codes.clone()
    other[:, :, 10:] = (other[:, :, 10:] + 1) % tiny_lm.codebook_size
    a, b = decode_codes(tiny_lm, codes), decode_codes(tiny_lm, other)
    hop = tiny_lm.sample_rate // tiny_lm.frame_rate
    assert a.shape == (1, 25 * hop)
    assert (a - b).abs().max() > 0.05 * a.abs().max()
    # Audio well before the changed frames barely moves: the decoder is local in time.
    assert (a - b)[:, : 5 * hop].abs().max() < (a - b)[:, 10 * hop :].abs().max()


def test_the_random_presets_have_musicgens_sizes():
    """Built on the meta device: sizes without allocating billions of weights."""
    from transformers import MusicgenForConditionalGeneration

    from engine.tiny import PRESETS, build_config

    decoder_m = {}
    for name in ("random-small", "random-medium", "random-large"):
        spec = PRESETS[name]
        with torch.device("meta"):
            model = MusicgenForConditionalGeneration(build_config(spec, spec.text_vocab))
        decoder_m[name] = sum(p.numel() for p in model.decoder.parameters()) / 1e6
        assert model.config.text_encoder.d_model == 768 and model.config.decoder.vocab_size == 2048
    assert round(decoder_m["random-small"], 1) == 419.6
    assert 1700 < decoder_m["random-medium"] < 1900 and 3100 < decoder_m["random-large"] < 3400


def test_an_old_transformers_is_one_line(monkeypatch):
    import transformers

    monkeypatch.setattr(transformers, "__version__", "5.16.1")
    with pytest.raises(MgsteerError, match=r"transformers 5.16.1 is too old: this needs ≥ 5.17"):
        load_musicgen("tiny")


def test_out_of_memory_at_load_names_the_size(monkeypatch):
    from transformers import MusicgenForConditionalGeneration

    def no_room(self, *args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(MusicgenForConditionalGeneration, "to", no_room)
    with pytest.raises(MgsteerError, match=r"out of GPU memory loading tiny \(0.00 B parameters, .* GiB in float32\)"):
        load_musicgen("tiny")


def test_loading_a_saved_model_draws_no_progress_bar(world_demo_dir, capfd):
    load_musicgen(str(world_demo_dir / "world"))
    assert "Loading weights" not in capfd.readouterr().err
