"""SAE module and its SAELens-layout folder: exact round trip, validation, one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.errors import MgsteerError
from engine.steering import Steerer
from sae.bootstrap import measure
from sae.files import FeatureStats, check_sae_fits, load_sae, save_sae
from sae.topk import SAEConfig, TopKSAE

SAELENS_KEYS = {
    "architecture",
    "d_in",
    "d_sae",
    "k",
    "activation_fn_str",
    "activation_fn_kwargs",
    "apply_b_dec_to_input",
    "normalize_activations",
    "model_name",
    "hook_name",
    "hook_layer",
    "dtype",
    "device",
}


def _random_sae(d_in=16, d_sae=48, k=5, layer=1, seed=0) -> TopKSAE:
    torch.manual_seed(seed)
    sae = TopKSAE(SAEConfig(d_in=d_in, d_sae=d_sae, k=k, hook_layer=layer, model_name="tiny"))
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return sae


def test_round_trip_is_exact(tmp_path):
    sae = _random_sae()
    stats = measure(sae, torch.randn(500, 16))
    save_sae(sae, tmp_path, stats)
    loaded = load_sae(tmp_path)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(loaded.sae, name), getattr(sae, name))
    for name, tensor in stats.tensors().items():
        assert torch.equal(getattr(loaded.stats, name), tensor)
    assert loaded.cfg == sae.cfg


def test_folder_has_saelens_layout(tmp_path):
    save_sae(_random_sae(), tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert set(cfg) >= SAELENS_KEYS
    assert (cfg["architecture"], cfg["d_in"], cfg["d_sae"], cfg["k"]) == ("topk", 16, 48, 5)
    assert cfg["hook_name"] == "decoder.layers.1" and cfg["hook_layer"] == 1
    weights = load_file(str(tmp_path / "sae_weights.safetensors"))
    assert {n: tuple(t.shape) for n, t in weights.items()} == {
        "W_enc": (16, 48),
        "b_enc": (48,),
        "W_dec": (48, 16),
        "b_dec": (16,),
    }


def test_topk_has_at_most_k_nonzeros():
    sae = _random_sae(k=5)
    z = sae.encode(torch.randn(300, 16) * 3)
    nnz = (z != 0).sum(-1)
    assert int(nnz.max()) <= 5 and int(nnz.max()) == 5
    assert (z >= 0).all()
    # With a large negative encoder bias fewer than k pre-activations are positive.
    with torch.no_grad():
        sae.b_enc.fill_(-100.0)
    assert int((sae.encode(torch.randn(50, 16)) != 0).sum()) == 0


def test_feature_stats_from_codes():
    codes = torch.tensor([[0.0, 2.0, 0.0], [1.0, 4.0, 0.0], [0.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    stats = FeatureStats.from_codes(codes)
    torch.testing.assert_close(stats.firing_rate, torch.tensor([0.5, 0.5, 0.0]))
    torch.testing.assert_close(stats.mean_activation, torch.tensor([2.0, 3.0, 0.0]))
    torch.testing.assert_close(stats.max_activation, torch.tensor([3.0, 4.0, 0.0]))


def _one_line_error(fn, needle):
    with pytest.raises(MgsteerError) as err:
        fn()
    text = str(err.value)
    assert needle in text, text
    assert "\n" not in text


def test_missing_and_corrupt_files(tmp_path):
    save_sae(_random_sae(), tmp_path, measure(_random_sae(), torch.randn(10, 16)))
    weights = tmp_path / "sae_weights.safetensors"
    blob = weights.read_bytes()
    weights.write_bytes(blob[: len(blob) // 2])
    _one_line_error(lambda: load_sae(tmp_path), "corrupt or truncated")
    weights.write_bytes(b"\x00garbage" * 10)
    _one_line_error(lambda: load_sae(tmp_path), "corrupt or truncated")
    weights.unlink()
    _one_line_error(lambda: load_sae(tmp_path), "missing sae_weights.safetensors")
    stats = tmp_path / "feature_stats.safetensors"
    save_sae(_random_sae(), tmp_path)
    stats.write_bytes(b"nope")
    _one_line_error(lambda: load_sae(tmp_path), "feature_stats.safetensors is corrupt")


def test_bad_cfg_and_shapes(tmp_path):
    _one_line_error(lambda: load_sae(tmp_path / "absent"), "does not exist")
    _one_line_error(lambda: load_sae(tmp_path), "no cfg.json")
    save_sae(_random_sae(), tmp_path)
    cfg_path = tmp_path / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text("{not json")
    _one_line_error(lambda: load_sae(tmp_path), "not valid JSON")
    cfg_path.write_text(json.dumps({k: v for k, v in cfg.items() if k != "d_sae"}))
    _one_line_error(lambda: load_sae(tmp_path), "lacks key(s) d_sae")
    cfg_path.write_text(json.dumps({**cfg, "architecture": "jumprelu"}))
    _one_line_error(lambda: load_sae(tmp_path), "only topk")
    cfg_path.write_text(json.dumps({**cfg, "d_sae": 64}))
    _one_line_error(lambda: load_sae(tmp_path), "W_enc has shape (16, 48) but cfg.json implies (16, 64)")
    cfg_path.write_text(json.dumps(cfg))
    save_file(
        {"firing_rate": torch.zeros(3), "mean_activation": torch.zeros(48), "max_activation": torch.zeros(48)},
        str(tmp_path / "feature_stats.safetensors"),
    )
    _one_line_error(lambda: load_sae(tmp_path), "firing_rate has shape (3,)")


def test_nonfinite_weights_are_rejected(tmp_path):
    sae = _random_sae()
    with torch.no_grad():
        sae.W_dec[0, 0] = float("nan")
    save_sae(sae, tmp_path)
    _one_line_error(lambda: load_sae(tmp_path), "W_dec contains NaN or inf")


def test_sae_must_fit_the_model(tiny_lm, tmp_path):
    save_sae(_random_sae(d_in=32, layer=1), tmp_path / "narrow")
    narrow = load_sae(tmp_path / "narrow")
    _one_line_error(lambda: check_sae_fits(narrow, tiny_lm), "has d_in 32 but model 'tiny' has hidden size 64")
    _one_line_error(lambda: Steerer(tiny_lm, narrow, cfg_doubled=True), "d_in 32")
    save_sae(_random_sae(d_in=64, layer=9), tmp_path / "deep")
    deep = load_sae(tmp_path / "deep")
    _one_line_error(lambda: check_sae_fits(deep, tiny_lm), "reads layer 9 but model 'tiny' has decoder layers 0..3")


def test_steering_needs_stats(tiny_lm, tmp_path):
    from engine.steering import FeatureSteer, SteeringSpec

    save_sae(_random_sae(d_in=64, layer=1), tmp_path)
    with Steerer(tiny_lm, load_sae(tmp_path), cfg_doubled=True) as steerer:
        _one_line_error(lambda: steerer.set(SteeringSpec((FeatureSteer(0, 1.0),))), "no feature_stats.safetensors")
