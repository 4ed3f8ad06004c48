"""Knobs from examples: directions recovered from planted data, written as one-feature SAEs."""

from __future__ import annotations

import json

import pytest
import torch

from cli.main import main
from engine.errors import MgsteerError
from engine.steering import FeatureSteer, Steerer, SteeringSpec, build_plan
from sae.concept import (
    CONCEPT_FILE,
    METHODS,
    append_concept,
    auroc,
    build_concept,
    fit_direction,
    save_concept,
    with_concepts,
)
from sae.files import load_sae


def _clips(d: int, shift: torch.Tensor, count: int, gen: torch.Generator, noise: torch.Tensor | None = None):
    """`count` clips of 20 frames: isotropic noise (or `noise`-shaped) plus `shift`."""
    scale = noise if noise is not None else torch.ones(d)
    return [torch.randn(20, d, generator=gen) * scale + shift for _ in range(count)]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_recovers_a_planted_direction_and_separate_held_out_clips(method):
    gen = torch.Generator().manual_seed(0)
    d = 32
    u = torch.randn(d, generator=gen)
    u /= u.norm()
    concept = build_concept(_clips(d, 1.5 * u, 6, gen), _clips(d, -1.5 * u, 6, gen), method)
    assert torch.dot(concept.direction, u) > 0.85  # toward the positive side (a random one: ~0.18)
    assert concept.heldout_auroc > 0.95
    assert (concept.positive_clips, concept.negative_clips) == (6, 6)


def test_without_a_difference_the_held_out_auroc_is_chance():
    gen = torch.Generator().manual_seed(1)
    concept = build_concept(_clips(16, torch.zeros(16), 8, gen), _clips(16, torch.zeros(16), 8, gen))
    assert abs(concept.heldout_auroc - 0.5) < 0.15


def test_the_probe_discounts_a_direction_that_varies_a_lot_inside_each_set():
    """Both sets shift by 1 along u (quiet) and along n (loud, σ = 10): the mean difference
    points between them, the probe at u, and it separates held-out clips better."""
    gen = torch.Generator().manual_seed(2)
    d = 8
    u, n = torch.eye(d)[0], torch.eye(d)[1]
    noise = torch.full((d,), 0.2)
    noise[1] = 10.0
    pos = _clips(d, 0.5 * (u + n), 8, gen, noise)
    neg = _clips(d, -0.5 * (u + n), 8, gen, noise)
    mean = build_concept(pos, neg, "mean-diff")
    probe = build_concept(pos, neg, "probe")
    assert torch.dot(probe.direction, u) > 0.95 > torch.dot(mean.direction, u)
    assert probe.heldout_auroc > mean.heldout_auroc


def test_rfm_finds_a_quality_the_sets_do_not_differ_in_on_average():
    """Positive frames sit far out along u on either side (a loud accent, up or down), negative
    ones near 0: the means are alike, so neither the mean difference nor a linear probe points
    at u, and the kernel machine's most predictive direction does."""
    gen = torch.Generator().manual_seed(3)
    d = 16
    u = torch.eye(d)[0]
    accent = 3 * u * torch.tensor([1.0, -1.0]).repeat(10)[:, None]
    pos = [torch.randn(20, d, generator=gen) * 0.3 + accent for _ in range(6)]
    neg = [torch.randn(20, d, generator=gen) * 0.3 for _ in range(6)]
    rfm = fit_direction(torch.cat(pos), torch.cat(neg), "rfm")
    assert abs(torch.dot(rfm, u)) / rfm.norm() > 0.9
    for method in ("mean-diff", "probe"):
        assert abs(torch.dot(fit_direction(torch.cat(pos), torch.cat(neg), method), u)) < 0.5


def test_a_concept_is_an_sae_folder_every_path_reads(tmp_path):
    gen = torch.Generator().manual_seed(3)
    u = torch.eye(16)[3]
    concept = build_concept(_clips(16, u, 4, gen), _clips(16, -u, 4, gen))
    folder = save_concept(concept, tmp_path / "knob", layer=2, model="tiny")
    loaded = load_sae(folder)
    assert (loaded.cfg.d_sae, loaded.cfg.k, loaded.cfg.hook_layer) == (1, 1, 2)
    beta = float(loaded.require_stats().max_activation[0])
    assert beta == pytest.approx(concept.beta)
    # The feature reads how far past the midpoint a frame lies along the direction.
    frame = concept.midpoint + 0.5 * beta * concept.direction
    assert float(loaded.sae.encode(frame[None])[0, 0]) == pytest.approx(0.5 * beta, rel=1e-4)
    assert float(loaded.sae.encode((concept.midpoint - concept.direction)[None])[0, 0]) == 0.0
    torch.testing.assert_close(loaded.sae.W_dec[0], concept.direction)
    meta = json.loads((folder / CONCEPT_FILE).read_text())
    assert meta["positive_clips"] == meta["negative_clips"] == 4 and meta["method"] == "mean-diff"
    assert meta["heldout_auroc"] == round(concept.heldout_auroc, 4) and meta["layer"] == 2


def test_a_concept_grows_a_loaded_sae_by_one_feature_that_steers_and_meters_like_its_folder(tiny_lm, tiny_sae_dir):
    loaded = load_sae(tiny_sae_dir)
    d, d_sae = loaded.cfg.d_in, loaded.cfg.d_sae
    gen = torch.Generator().manual_seed(4)
    u = torch.eye(d)[5]
    concept = build_concept(_clips(d, u, 4, gen), _clips(d, -u, 4, gen), "probe")
    steerer = Steerer(tiny_lm, loaded, cfg_doubled=True)
    try:
        old = steerer.vector_for({3: 1.0}).clone()
        assert append_concept(loaded, concept) == d_sae
        assert loaded.cfg.d_sae == d_sae + 1 and loaded.check_feature(d_sae) == d_sae
        torch.testing.assert_close(steerer.vector_for({3: 1.0, d_sae: 2.0}), old + 2 * concept.beta * concept.direction)
        steerer.watch([d_sae])  # the meter reads how far past the midpoint a frame lies, as the folder's feature
        frame = concept.midpoint + 0.25 * concept.direction
        steerer.meter(frame[None, None], slice(0, 1))
        assert steerer.read_meters() == pytest.approx([0.25], rel=1e-4)
    finally:
        steerer.close()
    stats = loaded.require_stats()
    assert stats.max_activation.shape == (d_sae + 1,) and float(stats.max_activation[-1]) == pytest.approx(concept.beta)


def test_bad_example_sets_are_one_line():
    one = [torch.randn(5, 4)]
    with pytest.raises(MgsteerError, match="at least 2 examples on each side"):
        build_concept(one, one * 2)
    same = [torch.ones(5, 4)] * 2
    with pytest.raises(MgsteerError, match="same mean residual"):
        build_concept(same, same)
    with pytest.raises(MgsteerError, match="unknown concept method 'pca'"):
        fit_direction(torch.randn(4, 3), torch.randn(4, 3), "pca")


def test_auroc_counts_ties_half():
    assert auroc(torch.tensor([1.0, 2.0]), torch.tensor([0.0])) == 1.0
    assert auroc(torch.tensor([1.0]), torch.tensor([1.0])) == 0.5


def test_cli_makes_a_knob_from_prompts_and_it_steers(tmp_path, capsys):
    knob = tmp_path / "knob"
    args = ["concept", "--model", "tiny", "--out", str(knob), "--seconds", "1", "--takes", "2"]
    args += ["--positive", "techno groove", "--positive", "fast drums", "--negative", "sad cello", "--negative", "calm"]
    main(args)
    out = capsys.readouterr().out
    assert "from 4 + 4 clips" in out and f"--sae {knob} --steer 0=1" in out
    plain, steered = tmp_path / "plain.wav", tmp_path / "steered.wav"
    render = ["render", "--model", "tiny", "--seconds", "1", "--backend", "torch"]
    main([*render, "--out", str(plain)])
    main([*render, "--out", str(steered), "--sae", str(knob), "--steer", "0=2"])
    assert plain.read_bytes() != steered.read_bytes()


def test_cli_refuses_a_side_without_examples(tmp_path, capsys):
    assert main(["concept", "--model", "tiny", "--out", str(tmp_path / "k"), "--positive", "x"]) == 2
    assert "one of the arguments --negative --negative-audio is required" in capsys.readouterr().err


def _saved_concept(folder, d: int, layer: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=gen)
    concept = build_concept(_clips(d, u, 4, gen), _clips(d, -u, 4, gen))
    return concept, save_concept(concept, folder, layer=layer, model="tiny")


def test_saved_concepts_grow_an_sae_in_order_or_are_one(tmp_path, tiny_sae_dir):
    sae = load_sae(tiny_sae_dir)
    d, layer, d_sae = sae.cfg.d_in, sae.cfg.hook_layer, sae.cfg.d_sae
    first, a = _saved_concept(tmp_path / "busier", d, layer, 0)
    second, b = _saved_concept(tmp_path / "darker", d, layer, 1)
    grown, added = with_concepts(sae, [str(a), str(b)])
    assert added == [(d_sae, "busier"), (d_sae + 1, "darker")] and grown.cfg.d_sae == d_sae + 2
    vector = build_plan(SteeringSpec((FeatureSteer(d_sae + 1, 1.0),)), grown, torch.device("cpu"), torch.float32).vector
    torch.testing.assert_close(vector, second.beta * second.direction, atol=1e-5, rtol=0)
    alone, added = with_concepts(None, [str(a), str(b)])
    assert added == [(0, "busier"), (1, "darker")] and alone.cfg.d_sae == 2
    torch.testing.assert_close(alone.sae.W_dec[0], first.direction)
    _, other_layer = _saved_concept(tmp_path / "elsewhere", d, layer + 1, 2)
    with pytest.raises(MgsteerError, match=f"made at layer {layer + 1}.*--layer {layer}"):
        with_concepts(load_sae(tiny_sae_dir), [str(other_layer)])
    with pytest.raises(MgsteerError, match="is not a concept folder"):
        with_concepts(None, [str(tiny_sae_dir)])


def test_render_and_play_take_saved_concepts_and_a_preset_names_them(tmp_path, tiny_lm, capsys):
    layer = tiny_lm.num_layers // 2
    _, knob = _saved_concept(tmp_path / "busier", tiny_lm.hidden_size, layer, 3)
    render = ["render", "--model", "tiny", "--seconds", "1", "--backend", "torch"]
    plain, steered = tmp_path / "plain.wav", tmp_path / "steered.wav"
    assert main([*render, "--out", str(plain)]) in (0, None)
    assert main([*render, "--out", str(steered), "--concept", str(knob), "--steer", "0=2"]) in (0, None)
    assert "concept 'busier': feature 0" in capsys.readouterr().out
    assert plain.read_bytes() != steered.read_bytes()
    preset = tmp_path / "p.json"
    preset.write_text(json.dumps({"format": "mgsteer-preset/1", "model": "tiny", "concepts": ["busier"],
                                  "features": {"0": 1.5}}))  # fmt: skip
    played = tmp_path / "played.wav"
    args = ["play", "--preset", str(preset), "--no-audio", "--seconds", "0.5", "--out", str(played)]
    assert main([*args, "--backend", "torch"]) in (0, None)
    assert "concept 'busier': feature 0" in capsys.readouterr().out and played.is_file()
    assert main([*render, "--out", str(steered), "--steer", "0=2"]) == 2
    assert "--steer needs --sae DIR (or --concept DIR)" in capsys.readouterr().err
