"""The ONNX Runtime backend against the torch engine on the tiny model and its SAE."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from conftest import SAE_LAYER, alive_features

from cli.main import main
from engine.codec import decode_codes
from engine.errors import MgsteerError
from engine.melody import chroma
from engine.onnx_backend import CACHE_STEP, OnnxBackend, physical_cores
from engine.onnx_export import FILES, MANIFEST, export_onnx, load_manifest
from engine.render import render
from engine.steering import Steerer, SteeringSpec, parse_steer
from engine.tokenloop import SamplingConfig, TokenLoop

CONTEXT = 300  # past one step of the ONNX cache's growth (CACHE_STEP)


STEPS = 160


@pytest.fixture(scope="module")
def exported(tiny_lm, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    export_onnx(tiny_lm, folder, layer=SAE_LAYER, max_context=CONTEXT, int8=True, int4=True, progress=lambda _: None)
    return folder


def _logits_of(loop: TokenLoop, record: list) -> None:
    """Record every step's logits (the loop's decoder call, wrapped)."""
    forward = loop.decoder.forward

    def wrapped(columns, cache, positions):
        out = forward(columns, cache, positions)
        if columns.shape[-1] == 1:
            record.append(out.float().clone())
        return out

    loop.decoder.forward = wrapped


def test_fp32_graphs_match_torch_step_by_step_with_steering_switched_mid_run(tiny_lm, tiny_sae, exported):
    """160 steps (the ONNX caches grow past their first CACHE_STEP positions on the way);
    steering on from step 20, off from 40: logits within 1e-4 at every step, the same tokens
    for the same seed, and the same meters."""
    f1, f2 = alive_features(tiny_sae)
    backend = OnnxBackend(exported, tiny_lm, SAE_LAYER, "fp32")
    runs = {}
    for name, kw in (("torch", {}), ("onnx", {"backend": backend})):
        with Steerer(tiny_lm, tiny_sae, cfg_doubled=True) as steerer:
            steerer.watch([f1, f2])
            loop = TokenLoop(tiny_lm, ["simple melody"], SamplingConfig(seed=4), max_context=CONTEXT, **kw)
            steerer.attach(loop)
            logits, meters, frames = [], [], []
            _logits_of(loop, logits)
            for step in range(STEPS):
                if step == 20:
                    steerer.set_vector(steerer.vector_for({f1: 2.0, f2: -1.0}))
                if step == 40:
                    steerer.set(None)
                frames.append(loop.step())
                meters.append(steerer.meters[0].clone())
            runs[name] = (torch.stack(logits), torch.cat(frames, dim=-1), torch.stack(meters))
    (lt, ft, mt), (lo, fo, mo) = runs["torch"], runs["onnx"]
    assert lt.shape == lo.shape == (STEPS, 2, tiny_lm.num_codebooks, 1, tiny_lm.codebook_size)
    assert (lt - lo).abs().max() < 1e-4
    assert torch.equal(ft, fo) and ft.shape[-1] == STEPS - tiny_lm.num_codebooks + 1
    torch.testing.assert_close(mo, mt, atol=1e-4, rtol=1e-4)
    assert not torch.equal(lt[19], lt[20])  # the switch did change something


def test_codec_graph_and_reprime_match_torch(tiny_lm, exported):
    backend = OnnxBackend(exported, tiny_lm, None, "fp32")
    codes = []
    for kw in ({}, {"backend": backend}):
        loop = TokenLoop(tiny_lm, ["simple melody"], SamplingConfig(seed=6), max_context=CONTEXT, **kw)
        out = [loop.frames(140)]
        loop.begin_reprime(30, ["another prompt"])
        while loop.repriming:
            out.append(loop.step())
            loop.reprime_step(8)
        out.append(loop.frames(20))
        codes.append(torch.cat(out, dim=-1))
    assert torch.equal(codes[0], codes[1])
    torch.testing.assert_close(backend.decode_codes(codes[0]), decode_codes(tiny_lm, codes[0]), atol=1e-4, rtol=0)


def test_a_stereo_model_exports_and_plays_the_same_tokens_and_both_channels(stereo_lm, tmp_path):
    """8 codebooks through the step graph; the codec graph takes one channel's 4 and runs once
    per side, as the torch codec does."""
    export_onnx(stereo_lm, tmp_path, layer=1, max_context=64, progress=lambda _: None)
    backend = OnnxBackend(tmp_path, stereo_lm, None, "fp32")
    codes = [
        TokenLoop(stereo_lm, ["simple melody"], SamplingConfig(seed=2), max_context=64, **kw).frames(40)
        for kw in ({}, {"backend": backend})
    ]
    assert torch.equal(codes[0], codes[1])
    audio = backend.decode_codes(codes[0])
    assert audio.shape == (1, 2, 40 * stereo_lm.sample_rate // stereo_lm.frame_rate)
    torch.testing.assert_close(audio, decode_codes(stereo_lm, codes[0]), atol=1e-4, rtol=0)


def test_the_cache_grows_in_steps_keeps_what_it_holds_and_rebinds(tiny_lm, exported):
    backend = OnnxBackend(exported, tiny_lm, None, "fp32")
    decoder = backend.decoder(tiny_lm, rows=2, max_context=CONTEXT, cfg=True)
    cache = decoder.cache_for(None, 0)
    decoder.set_prompt(cache, decoder.encode(["x"]))
    assert cache.capacity == CACHE_STEP
    cache.self_k[..., 5] = 1.0
    cache.self_v[:, :, :, 5] = 2.0
    cache.reserve(CACHE_STEP + 1, CONTEXT)
    assert cache.capacity == 2 * CACHE_STEP
    assert (cache.self_k[..., 5] == 1.0).all() and (cache.self_v[:, :, :, 5] == 2.0).all()
    assert (cache.self_k[..., CACHE_STEP:] == 0).all()
    bound = cache.values["self_k_0"].numpy()
    assert bound.shape[-1] == 2 * CACHE_STEP and (bound[..., 5] == 1.0).all()  # the runtime sees the new arrays
    cache.reserve(CONTEXT * 2, CONTEXT)
    assert cache.capacity == CONTEXT  # never past the limit
    assert decoder.cache_for(cache, 0) is not cache  # a re-primed context starts small again


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_quantized_graphs_run_and_stay_close(tiny_lm, exported, precision):
    backend = OnnxBackend(exported, tiny_lm, None, precision)
    assert backend.precision == precision
    plain = TokenLoop(tiny_lm, ["x"], SamplingConfig(seed=1), max_context=CONTEXT).frames(40)
    quant = TokenLoop(tiny_lm, ["x"], SamplingConfig(seed=1), max_context=CONTEXT, backend=backend).frames(40)
    assert quant.shape == plain.shape
    assert (quant != plain).float().mean() < 0.5  # close, not equal: the KL is reported by the bench


def test_a_non_finite_edit_is_retried_unsteered_on_onnx_too(tiny_lm, tiny_sae, exported):
    backend = OnnxBackend(exported, tiny_lm, SAE_LAYER, "fp32")
    plain = TokenLoop(tiny_lm, ["x"], SamplingConfig(seed=3), max_context=CONTEXT, backend=backend).frames(12)
    with Steerer(tiny_lm, tiny_sae, cfg_doubled=True) as steerer:
        steerer.set_vector(torch.full((tiny_lm.hidden_size,), float("inf")))
        loop = TokenLoop(tiny_lm, ["x"], SamplingConfig(seed=3), max_context=CONTEXT, backend=backend)
        steerer.attach(loop)
        assert torch.equal(loop.frames(12), plain)
        assert loop.nonfinite_steps == 12 + tiny_lm.num_codebooks - 1


def _one_line(fn, match: str) -> None:
    with pytest.raises(MgsteerError, match=match) as info:
        fn()
    assert "\n" not in str(info.value)


def test_bad_folders_give_one_line(tiny_lm, exported, tmp_path):
    _one_line(lambda: load_manifest(tmp_path), "no manifest.json")
    _one_line(lambda: OnnxBackend(exported, tiny_lm, SAE_LAYER + 1), f"steers layer {SAE_LAYER}")
    wrong = tmp_path / "wrong"
    shutil.copytree(exported, wrong)
    manifest = json.loads((wrong / MANIFEST).read_text())
    (wrong / MANIFEST).write_text(json.dumps({**manifest, "model": "random-small"}))
    _one_line(lambda: OnnxBackend(wrong, tiny_lm, None), "exported from model 'random-small'")
    (wrong / MANIFEST).write_text("{not json")
    _one_line(lambda: load_manifest(wrong), "damaged")
    missing = tmp_path / "missing"
    shutil.copytree(exported, missing)
    (missing / FILES["codec"]).unlink()
    _one_line(lambda: OnnxBackend(missing, tiny_lm, None), "lacks codec.onnx")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(exported, corrupt)
    (corrupt / FILES["step"]).write_bytes(b"not a graph at all")
    _one_line(lambda: OnnxBackend(corrupt, tiny_lm, None, "fp32"), "not a usable ONNX graph")
    _one_line(lambda: OnnxBackend(exported, tiny_lm, None).decoder(tiny_lm, 2, CONTEXT * 2, True), "--max-context")
    only_fp32 = tmp_path / "only_fp32"
    shutil.copytree(exported, only_fp32)
    manifest = json.loads((only_fp32 / MANIFEST).read_text())
    (only_fp32 / MANIFEST).write_text(json.dumps({**manifest, "int8": False, "int4": False}))
    _one_line(lambda: OnnxBackend(only_fp32, tiny_lm, None, "int4"), "no int4 step graph: export it again with --int4")
    assert OnnxBackend(only_fp32, tiny_lm, None).precision == "fp32"  # auto: the smallest there is
    assert OnnxBackend(exported, tiny_lm, None).precision == "int4"


def test_cli_export_render_and_play_on_onnx(tiny_sae_dir, tiny_sae, tmp_path, capsys):
    out = tmp_path / "graphs"
    assert main(["export-onnx", "--model", "tiny", "--sae", str(tiny_sae_dir), "--out", str(out), "--int4"]) == 0
    assert "step.int4.onnx" in capsys.readouterr().out
    f = alive_features(tiny_sae, 1)[0]
    assert main(["render", "--model", "tiny", "--backend", "onnx", "--onnx-dir", str(out), "--sae", str(tiny_sae_dir),
                 "--steer", f"{f}=0.5", "--seconds", "1", "--out", str(tmp_path / "x.wav"),
                 "--precision", "int4"]) == 0  # fmt: skip
    assert main(["render", "--model", "tiny", "--backend", "onnx", "--onnx-dir", str(out), "--precision", "int8",
                 "--seconds", "1", "--out", str(tmp_path / "y.wav")]) == 2  # fmt: skip
    assert "no int8 step graph" in capsys.readouterr().err
    assert main(["play", "--model", "tiny", "--backend", "onnx", "--onnx-dir", str(out), "--no-audio",
                 "--seconds", "2", "--sae", str(tiny_sae_dir), "--meters", str(f)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "on cpu, onnx int4 into" in out  # the header names the runtime and its precision
    lines = [line for line in out.splitlines() if "underruns" in line]
    assert lines and all(re.search(r"underruns \d+", line) for line in lines)


def test_cli_refusals(tmp_path, capsys, tiny_sae_dir):
    assert main(["render", "--model", "tiny", "--backend", "onnx", "--out", str(tmp_path / "x.wav")]) == 2
    assert "--onnx-dir" in capsys.readouterr().err
    assert main(["render", "--model", "tiny", "--backend", "onnx", "--onnx-dir", str(tmp_path), "--sae",
                 str(tiny_sae_dir), "--mode", "clamp", "--out", str(tmp_path / "x.wav")]) == 2  # fmt: skip
    assert "torch backend only" in capsys.readouterr().err
    (tmp_path / "stuff.txt").write_text("x")
    assert main(["export-onnx", "--model", "tiny", "--out", str(tmp_path)]) == 2
    assert "holds other files" in capsys.readouterr().err


def test_physical_cores_is_a_sane_count():
    import os

    assert 1 <= physical_cores() <= (os.cpu_count() or 1)


def test_a_manifest_must_match_the_model_it_runs_with(tiny_lm, exported, tmp_path):
    changed = tmp_path / "changed"
    shutil.copytree(exported, changed)
    manifest = json.loads((changed / MANIFEST).read_text())
    (changed / MANIFEST).write_text(json.dumps({**manifest, "hidden": manifest["hidden"] * 2, "vocab": 7}))
    _one_line(lambda: OnnxBackend(changed, tiny_lm, None), r"another model shape \(hidden")
    (changed / MANIFEST).write_text(json.dumps({**manifest, "weights": "0" * 32}))
    _one_line(lambda: OnnxBackend(changed, tiny_lm, None), "from other weights")
    retrained = tiny_lm.model.decoder.model.decoder.layers[0].fc1.weight
    saved = retrained.detach().clone()
    try:
        with torch.no_grad():
            retrained.add_(0.01)  # the model retrained since the export
        _one_line(lambda: OnnxBackend(exported, tiny_lm, None), "retrained since")
    finally:
        with torch.no_grad():
            retrained.copy_(saved)
    OnnxBackend(exported, tiny_lm, None)  # back to the exported weights: accepted


def test_an_export_killed_midway_leaves_the_previous_one(tiny_lm, tmp_path, monkeypatch):
    from engine import onnx_export

    folder = tmp_path / "onnx"
    export_onnx(tiny_lm, folder, layer=1, max_context=CONTEXT, progress=lambda _: None)
    real = onnx_export.manifest_for

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # after every graph, before the manifest

    monkeypatch.setattr(onnx_export, "manifest_for", killed)
    with pytest.raises(KeyboardInterrupt):
        export_onnx(tiny_lm, folder, layer=2, max_context=CONTEXT, progress=lambda _: None)
    monkeypatch.setattr(onnx_export, "manifest_for", real)
    assert load_manifest(folder, tiny_lm).layer == 1
    backend = OnnxBackend(folder, tiny_lm, 1, "fp32")
    loop = TokenLoop(tiny_lm, ["x"], SamplingConfig(seed=3), max_context=CONTEXT, backend=backend)
    torch_loop = TokenLoop(tiny_lm, ["x"], SamplingConfig(seed=3), max_context=CONTEXT)
    assert torch.equal(loop.frames(6), torch_loop.frames(6))  # the step graph is layer 1's, as said


def test_a_world_model_exports_and_plays_through_its_own_codec(tmp_path):
    from engine.model import load_musicgen
    from sae.world.train import WorldTrainConfig, WorldTrainer

    folder = tmp_path / "world"
    WorldTrainer(folder, WorldTrainConfig(steps=1, batch_size=2, seconds=1.0)).run()
    lm = load_musicgen(str(folder), "cpu", "float32")
    assert main(["export-onnx", "--model", str(folder), "--out", str(tmp_path / "onnx"), "--max-context", "64"]) == 0
    assert not (tmp_path / "onnx" / FILES["codec"]).exists()
    backend = OnnxBackend(tmp_path / "onnx", lm, None, "fp32")
    codes = TokenLoop(lm, ["fast A minor melody"], SamplingConfig(seed=1), max_context=64).frames(25)
    assert torch.equal(backend.decode_codes(codes), decode_codes(lm, codes))


def test_int4_quantizes_every_matmul_or_keeps_the_heads_in_float32(exported, tmp_path):
    import onnx

    from engine.onnx_export import STEP_FILES, quantize_step_int4

    def ops(path):
        return {node.name: node.op_type for node in onnx.load(str(path)).graph.node}

    quantized = ops(exported / STEP_FILES["int4"])
    assert "MatMulNBits" in quantized.values() and not any(name.startswith("/lm_heads") and op == "MatMul"
                                                           for name, op in quantized.items())  # fmt: skip
    quantize_step_int4(exported / FILES["step"], tmp_path / "heads.onnx", heads=False)
    kept = ops(tmp_path / "heads.onnx")
    heads = [op for name, op in kept.items() if name.startswith("/lm_heads")]
    assert heads and set(heads) == {"MatMul"} and "MatMulNBits" in kept.values()


def test_a_steering_curve_plays_the_same_on_onnx(tiny_lm, tiny_sae, exported):
    """The ONNX step takes the automation's row of each step as its steering input."""
    f = alive_features(tiny_sae)[0]
    spec = SteeringSpec((parse_steer(f"{f}=0:0,0.5:3,1:0", curves=True),))
    backend = OnnxBackend(exported, tiny_lm, SAE_LAYER, "fp32")
    onnx = render(tiny_lm, "simple melody", 1.0, SamplingConfig(seed=2), tiny_sae, spec, backend=backend)
    torch_run = render(tiny_lm, "simple melody", 1.0, SamplingConfig(seed=2), tiny_sae, spec)
    plain = render(tiny_lm, "simple melody", 1.0, SamplingConfig(seed=2), tiny_sae, SteeringSpec(), backend=backend)
    assert torch.equal(onnx.codes, torch_run.codes) and not torch.equal(onnx.codes, plain.codes)


def test_a_melody_model_exports_and_plays_the_same_tokens_through_a_new_melody(melody_lm, a_melody, tmp_path):
    """No prompt graph: the host prefills the condition (chroma, then text) into the cache's first
    positions and the step graph counts from there; a re-prime on another melody refills them."""
    export_onnx(melody_lm, tmp_path, layer=1, max_context=CONTEXT, progress=lambda _: None)
    assert not (tmp_path / "prompt.onnx").exists()
    backend = OnnxBackend(tmp_path, melody_lm, None, "fp32")
    t = np.arange(32000) / 32000
    other = chroma(np.sin(2 * np.pi * 392 * t).astype(np.float32), 32000)
    codes = []
    for kw in ({}, {"backend": backend}):
        loop = TokenLoop(
            melody_lm, ["simple melody"], SamplingConfig(seed=5), max_context=CONTEXT, melody=a_melody, **kw
        )
        out = [loop.frames(60)]
        loop.begin_reprime(20, melody=other)
        while loop.repriming:
            out.append(loop.step())
            loop.reprime_step(8)
        out.append(loop.frames(20))
        codes.append(torch.cat(out, dim=-1))
    assert torch.equal(codes[0], codes[1])
