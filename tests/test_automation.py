"""Steering that moves over time: `--steer F=T:ALPHA,…` curves and a preset's knob automation,
looked up on the device per step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SAE_LAYER, alive_features

from cli.main import main
from engine.automation import Lane, Lanes
from engine.errors import MgsteerError
from engine.hooks import ResidualTap
from engine.render import render
from engine.steering import FeatureSteer, Steerer, SteeringSpec, curve_lanes, parse_steer
from engine.tokenloop import SamplingConfig, TokenLoop


def test_a_curve_parses_and_bad_ones_are_one_line():
    steer = parse_steer("12=0:0,4:2,8:0", curves=True)
    assert steer == FeatureSteer(12, 0.0, ((0.0, 0.0), (4.0, 2.0), (8.0, 0.0)))
    assert parse_steer("3=0.5", curves=True).curve == ()
    with pytest.raises(MgsteerError, match=r"a curve .* steers render only"):
        parse_steer("12=0:0,4:2")
    with pytest.raises(MgsteerError, match="each later than the last"):
        parse_steer("12=4:2,1:0", curves=True)
    with pytest.raises(MgsteerError, match="bad --steer '12=0:x'"):
        parse_steer("12=0:x", curves=True)
    with pytest.raises(MgsteerError, match="α"):
        parse_steer("12=0:0,1:1e9", curves=True)


def _expected(loaded, steers, steps, frame_rate):
    """Σ α_f(s) β_f W_dec[f] for every step, α read off the breakpoints by hand (np.interp)."""
    rows = []
    for s in range(steps):
        total = 0
        for steer in steers:
            points = steer.curve or ((0.0, steer.alpha),)
            alpha = float(np.interp(s / frame_rate, [t for t, _ in points], [a for _, a in points]))
            beta = loaded.require_stats().max_activation[steer.feature]
            total = total + alpha * beta * loaded.sae.W_dec[steer.feature]
        rows.append(total.detach())
    return torch.stack(rows)


def test_lanes_follow_the_curve_linearly_and_hold_its_ends(tiny_lm, tiny_sae):
    f = alive_features(tiny_sae)[0]
    spec = SteeringSpec((parse_steer(f"{f}=1:0,3:2,5:0", curves=True),))
    lanes = Lanes(tiny_lm.hidden_size, 50, torch.device("cpu"), torch.float32)
    lanes.install(curve_lanes(spec, tiny_sae, steps=400, frame_rate=50))
    unit = tiny_sae.require_stats().max_activation[f] * tiny_sae.sae.W_dec[f].detach()
    for seconds, alpha in ((0.0, 0.0), (1.0, 0.0), (2.0, 1.0), (3.0, 2.0), (4.5, 0.5), (7.9, 0.0), (60.0, 0.0)):
        clock = torch.tensor([round(seconds * 50)])
        torch.testing.assert_close(lanes.vector_at(clock), alpha * unit, atol=1e-5, rtol=1e-4)


def test_a_looped_lane_starts_where_it_is_told_and_wraps():
    lanes = Lanes(3, 10, torch.device("cpu"), torch.float32)
    ramp = Lane(torch.tensor([1.0, 0.0, 0.0]), torch.arange(5, dtype=torch.float32), loop=True)
    held = Lane(torch.tensor([0.0, 1.0, 0.0]), torch.tensor([2.0, 3.0]))
    lanes.install([ramp, held], start=7)
    got = [lanes.vector_at(torch.tensor([c])).tolist() for c in (0, 7, 8, 11, 12, 13, 30)]
    assert got == [[0, 2, 0], [0, 2, 0], [1, 3, 0], [4, 3, 0], [0, 3, 0], [1, 3, 0], [3, 3, 0]]
    lanes.clear()
    assert not lanes.active and lanes.vector_at(torch.tensor([9])).abs().sum() == 0
    with pytest.raises(MgsteerError, match="at most 16"):
        lanes.install([held] * 17)


def test_the_vector_added_at_each_step_is_the_curve(tiny_lm, tiny_sae):
    f1, f2 = alive_features(tiny_sae)
    steers = (parse_steer(f"{f1}=0:0,0.4:2", curves=True), FeatureSteer(f2, -0.5))
    steps = 40
    before = ResidualTap(tiny_lm, SAE_LAYER, cfg_doubled=True)
    steerer = Steerer(tiny_lm, tiny_sae, cfg_doubled=True)
    after = ResidualTap(tiny_lm, SAE_LAYER, cfg_doubled=True)
    try:
        before.recording = after.recording = True
        steerer.set(SteeringSpec(steers[1:]))  # the constant one: the vector
        steerer.set_lanes(curve_lanes(SteeringSpec(steers), tiny_sae, steps + 8, tiny_lm.frame_rate))
        loop = TokenLoop(tiny_lm, ["simple melody"], SamplingConfig(seed=0), max_context=steps + 8)
        steerer.attach(loop)
        for _ in range(steps):
            loop.step()
        diffs = (after.take() - before.take())[0]  # each step's added vector, conditional row
    finally:
        for tap in (before, steerer, after):
            tap.close()
    assert diffs.shape[0] == steps
    torch.testing.assert_close(diffs, _expected(tiny_sae, steers, steps, tiny_lm.frame_rate), atol=1e-4, rtol=1e-4)


def test_a_stretch_at_zero_gives_the_unsteered_tokens(tiny_lm, tiny_sae):
    f = alive_features(tiny_sae)[0]
    plain = render(tiny_lm, "simple melody", 2.0, SamplingConfig(seed=3), tiny_sae, SteeringSpec())
    curve = SteeringSpec((parse_steer(f"{f}=0:0,1:0,1.2:3", curves=True),))
    moved = render(tiny_lm, "simple melody", 2.0, SamplingConfig(seed=3), tiny_sae, curve)
    quiet = 50 - tiny_lm.num_codebooks  # frames whose every codebook was sampled before 1 s
    assert torch.equal(plain.codes[:, :quiet], moved.codes[:, :quiet])
    assert not torch.equal(plain.codes, moved.codes)


def test_render_takes_a_curve_and_says_it(tiny_sae_dir, tiny_sae, tmp_path, capsys):
    f = alive_features(tiny_sae)[0]
    out = tmp_path / "swell.wav"
    main(["render", "--model", "tiny", "--sae", str(tiny_sae_dir), "--steer", f"{f}=0:0,0.5:2,1:0",
          "--seconds", "1", "--out", str(out), "--backend", "torch"])  # fmt: skip
    assert out.is_file() and f"feature {f} α=0 s 0 → 0.5 s 2 → 1 s 0" in capsys.readouterr().out
    assert main(["render", "--model", "tiny", "--sae", str(tiny_sae_dir), "--steer", f"{f}=0:0,1:1",
                 "--mode", "clamp", "--out", str(out)]) == 2  # fmt: skip
    assert "a steering curve moves an added direction: use --mode add" in capsys.readouterr().err
