"""Residual taps and steering: exact edits, CFG halves, identity at α = 0, swaps between steps."""

from __future__ import annotations

import math
import threading

import pytest
import torch
from conftest import SAE_LAYER, alive_features

from engine.errors import MgsteerError
from engine.hooks import ResidualTap
from engine.render import render
from engine.steering import FeatureSteer, Steerer, SteeringSpec, build_plan, parse_steer
from engine.tokenloop import SamplingConfig, TokenLoop


def _steered_codes(lm, sae, spec, frames=40, seed=0):
    with Steerer(lm, sae, cfg_doubled=True) as steerer:
        steerer.set(spec)
        return TokenLoop(lm, ["simple melody"], SamplingConfig(seed=seed)).frames(frames)


def test_tap_sees_per_step_shapes_under_cfg(tiny_lm):
    with ResidualTap(tiny_lm, 1, cfg_doubled=True) as tap:
        seen = []
        tap.edit = lambda h, cond: seen.append((tuple(h.shape), cond)) or h
        tap.recording = True
        TokenLoop(tiny_lm, ["a", "b", "c"], SamplingConfig(seed=0)).frames(5)
        recorded = tap.take()
    steps = 5 + tiny_lm.num_codebooks - 1
    assert tap.calls == steps
    assert all(shape == (6, 1, tiny_lm.hidden_size) for shape, _ in seen)  # [2B, 1, hidden]
    assert seen[0][1] == slice(0, 3)
    assert recorded.shape == (3, steps, tiny_lm.hidden_size)  # conditional half only


def test_tap_during_teacher_forcing(tiny_lm):
    k, frames = tiny_lm.num_codebooks, 30
    codes = torch.randint(0, tiny_lm.codebook_size, (1 * k, frames))
    with ResidualTap(tiny_lm, 3) as tap, torch.no_grad():
        tap.recording = True
        tiny_lm.model.decoder(input_ids=codes, encoder_hidden_states=torch.zeros(1, 1, tiny_lm.hidden_size))
        assert tap.calls == 1
        assert tap.take().shape == (1, frames, tiny_lm.hidden_size)


def test_layer_out_of_range(tiny_lm):
    with pytest.raises(MgsteerError, match=r"layer 4 is out of range.*0\.\.3"):
        ResidualTap(tiny_lm, 4)
    with pytest.raises(MgsteerError, match="out of range"):
        ResidualTap(tiny_lm, -1)


def test_alpha_zero_is_bit_identical_to_no_hook(tiny_lm, tiny_sae):
    plain = TokenLoop(tiny_lm, ["simple melody"], SamplingConfig(seed=0)).frames(40)
    feats = alive_features(tiny_sae)
    zero = _steered_codes(tiny_lm, tiny_sae, SteeringSpec(tuple(FeatureSteer(f, 0.0) for f in feats)))
    assert torch.equal(plain, zero)
    steered = _steered_codes(tiny_lm, tiny_sae, SteeringSpec(tuple(FeatureSteer(f, 1.0) for f in feats)))
    assert (steered != plain).float().mean() > 0.02


def test_add_mode_adds_exactly_alpha_beta_wdec(tiny_lm, tiny_sae):
    f1, f2 = alive_features(tiny_sae)
    spec = SteeringSpec((FeatureSteer(f1, 0.8), FeatureSteer(f2, -0.5)))
    beta, w_dec = tiny_sae.stats.max_activation, tiny_sae.sae.W_dec
    expected = 0.8 * beta[f1] * w_dec[f1] - 0.5 * beta[f2] * w_dec[f2]
    # Taps before and after the steerer's hook see the residual before and after the edit.
    before = ResidualTap(tiny_lm, SAE_LAYER, cfg_doubled=True, record_rows="all")
    steerer = Steerer(tiny_lm, tiny_sae, cfg_doubled=True)
    after = ResidualTap(tiny_lm, SAE_LAYER, cfg_doubled=True, record_rows="all")
    try:
        before.recording = after.recording = True
        steerer.set(spec)
        TokenLoop(tiny_lm, ["simple melody"], SamplingConfig(seed=0)).frames(6)
        diff = after.take() - before.take()
    finally:
        for tap in (before, steerer, after):
            tap.close()
    assert diff.shape[0] == 2  # both CFG halves steered
    torch.testing.assert_close(diff, expected.expand_as(diff), atol=1e-5, rtol=0)


def test_cond_halves_leave_unconditional_rows_alone(tiny_sae):
    f = alive_features(tiny_sae, 1)[0]
    plan = build_plan(
        SteeringSpec((FeatureSteer(f, 1.0),), halves="cond"), tiny_sae, torch.device("cpu"), torch.float32
    )
    hidden = torch.randn(4, 3, tiny_sae.cfg.d_in)
    out = plan.apply(hidden, slice(0, 2))
    assert torch.equal(out[2:], hidden[2:])
    torch.testing.assert_close(out[:2] - hidden[:2], plan.vector.expand(2, 3, -1))


def test_clamp_sets_feature_and_keeps_reconstruction_error(tiny_sae, tiny_acts):
    sae = tiny_sae.sae
    f = alive_features(tiny_sae, 1)[0]
    beta = tiny_sae.stats.max_activation[f]
    plan = build_plan(SteeringSpec((FeatureSteer(f, 0.5),), mode="clamp"), tiny_sae, torch.device("cpu"), torch.float32)
    x = tiny_acts[:50]
    out = plan.apply(x, slice(None))
    z = sae.encode(x)
    z_edit = z.clone()
    z_edit[:, f] = 0.5 * beta
    expected = sae.decode(z_edit) + (x - sae.decode(z))
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(out, x)


@pytest.mark.parametrize(
    ("steers", "mode", "needle"),
    [
        ((FeatureSteer(100000, 1.0),), "add", "unknown feature id 100000"),
        ((FeatureSteer(-1, 1.0),), "add", "unknown feature id -1"),
        ((FeatureSteer(3, math.nan),), "add", "must be finite"),
        ((FeatureSteer(3, math.inf),), "add", "must be finite"),
        ((FeatureSteer(3, 1.0), FeatureSteer(3, 0.5)), "clamp", "listed twice"),
        ((FeatureSteer(3, 1.0),), "mix", "unknown steering mode"),
    ],
)
def test_bad_steering_is_one_line_error(tiny_sae, steers, mode, needle):
    with pytest.raises(MgsteerError) as err:
        build_plan(SteeringSpec(steers, mode=mode), tiny_sae, torch.device("cpu"), torch.float32)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_parse_steer():
    assert parse_steer("12=0.8") == FeatureSteer(12, 0.8)
    assert parse_steer("40=-0.5") == FeatureSteer(40, -0.5)
    for bad, needle in (("1=nan", "must be finite"), ("1=1e20", "between -50 and 50"), ("1=-51", "between -50")):
        with pytest.raises(MgsteerError, match=needle):
            parse_steer(bad)
    for bad in ("12", "x=1", "12=", "=3", "1.5=2"):
        with pytest.raises(MgsteerError, match="FEATURE=ALPHA"):
            parse_steer(bad)


def test_steer_without_sae_is_an_error(tiny_lm):
    with pytest.raises(MgsteerError, match="needs --sae"):
        render(tiny_lm, "x", 0.2, spec=SteeringSpec((FeatureSteer(1, 1.0),)))


def test_plan_swaps_between_steps_from_another_thread(tiny_lm, tiny_sae):
    """A controller thread swaps plans while generation runs; each step sees one whole plan."""
    f1, f2 = alive_features(tiny_sae)
    specs = [SteeringSpec((FeatureSteer(f, a),)) for f in (f1, f2) for a in (0.3, -0.6, 1.0)]
    vectors = [build_plan(s, tiny_sae, tiny_lm.device, tiny_lm.dtype).vector for s in specs]
    before = ResidualTap(tiny_lm, SAE_LAYER, cfg_doubled=True)
    steerer = Steerer(tiny_lm, tiny_sae, cfg_doubled=True)
    after = ResidualTap(tiny_lm, SAE_LAYER, cfg_doubled=True)
    stop = threading.Event()

    def controller():
        i = 0
        while not stop.is_set():
            steerer.set(specs[i % len(specs)])
            i += 1

    try:
        before.recording = after.recording = True
        steerer.set(specs[0])
        thread = threading.Thread(target=controller)
        thread.start()
        TokenLoop(tiny_lm, ["simple melody"], SamplingConfig(seed=0)).frames(60)
        stop.set()
        thread.join()
        diffs = (after.take() - before.take())[0]
    finally:
        for tap in (before, steerer, after):
            tap.close()
    for diff in diffs:
        assert min((diff - v).abs().max().item() for v in vectors) < 1e-5
