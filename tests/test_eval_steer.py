"""eval-steer's protocol on planted ground truth: a scorer that knows what the steered clips
sound like must find the feature steerable over every baseline; an indifferent one must not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import alive_features

from engine.errors import MgsteerError
from engine.render import render
from engine.steering import FeatureSteer, SteeringSpec
from engine.tokenloop import SamplingConfig
from sae.eval_steer import (
    EvalConfig,
    concept_for,
    evaluate_steering,
    paired_test,
    random_direction,
    well_formed_tests,
    write_report,
)
from sae.labelers.base import Labeler

PROMPTS = ("simple melody", "techno groove", "sad cello")


class SoundsLike(Labeler):
    """Scores a clip by closeness to the nearest reference clip (0 = identical)."""

    name = "reference"

    def __init__(self, references: list[np.ndarray]) -> None:
        self.references = references

    def label(self, windows):
        return []

    def score(self, label, audio, sample_rate):
        return np.array([max(-float(np.mean((a - r) ** 2)) for r in self.references) for a in audio])


class Indifferent(SoundsLike):
    def score(self, label, audio, sample_rate):
        return None if label == "unknowable" else np.zeros(len(audio))


def test_planted_steering_effect_is_found_and_an_indifferent_scorer_finds_none(tiny_lm, tiny_sae):
    feature = alive_features(tiny_sae)[0]
    cfg = EvalConfig(features=(feature,), concepts={feature: "the planted concept"}, prompts=PROMPTS,
                     seeds=(0, 1), seconds=1.0, alpha=2.0)  # fmt: skip
    spec = SteeringSpec((FeatureSteer(feature, 2.0),))
    refs = [
        render(tiny_lm, p, 1.0, SamplingConfig(seed=s), sae=tiny_sae, spec=spec).audio for p in PROMPTS for s in (0, 1)
    ]
    report = evaluate_steering(tiny_lm, tiny_sae, SoundsLike(refs), cfg)
    result = report["features"][0]
    assert result["concept"] == "the planted concept"
    for baseline in ("none", "random", "prompt"):
        vs = result["vs"][baseline]
        assert vs["pairs"] == 6 and vs["wins"] == 6 and vs["gain"] > 0 and vs["p"] < 0.05, (baseline, vs)
    assert result["mean_score"]["steered"] == 0.0  # the steered clips are the references
    assert result["steerable"] and report["steerable_share"] == 1.0

    flat = evaluate_steering(tiny_lm, tiny_sae, Indifferent([]), EvalConfig(
        features=(feature,), concepts={feature: "x"}, prompts=PROMPTS[:1], seeds=(0,), seconds=0.3))  # fmt: skip
    assert flat["features"][0]["vs"]["none"] == {"gain": 0.0, "p": 1.0, "wins": 0, "pairs": 1}
    assert flat["steerable_share"] == 0.0
    skipped = evaluate_steering(tiny_lm, tiny_sae, Indifferent([]), EvalConfig(
        features=(feature,), concepts={feature: "unknowable"}, prompts=PROMPTS[:1], seeds=(0,), seconds=0.3,
        prompt_baseline=False))  # fmt: skip
    assert "cannot judge" in skipped["features"][0]["skipped"] and skipped["steerable_share"] is None


def test_random_direction_has_the_norm_and_not_the_direction():
    like = torch.randn(64) * 3
    v = random_direction(like, seed=1)
    assert float(v.norm()) == pytest.approx(float(like.norm()), rel=1e-5)
    assert abs(float(torch.nn.functional.cosine_similarity(v, like, dim=0))) < 0.5
    torch.testing.assert_close(v, random_direction(like, seed=1))


def test_paired_test_is_one_sided():
    up = paired_test(np.arange(8) + 1.0, np.zeros(8))
    down = paired_test(np.zeros(8), np.arange(8) + 1.0)
    assert up["p"] < 0.01 and down["p"] > 0.99 and up["wins"] == 8 and up["gain"] == 4.5


def test_scores_equal_but_for_rounding_are_ties_not_losses():
    # the world's tempo: 12 pairs moved, 1 lost, 19 at 1 both ways, some summed to 1 − 2e-16
    steered = np.array([1.0] * 12 + [0.0] + [1.0] * 19)
    random = np.array([0.0] * 12 + [1.0] + [1.0 - 2.2e-16] * 13 + [1.0] * 6)
    dusty, exact = paired_test(steered, random), paired_test(steered, np.round(random, 9))
    assert dusty == exact and dusty["wins"] == 12 and dusty["p"] < 0.01


def test_a_steer_that_only_breaks_the_music_is_not_steerable_while_it_stays_music():
    pairs = 8
    scores = {"none": np.full(pairs, 0.2), "steered": np.full(pairs, 0.9), "random": np.full(pairs, 0.5)}
    broken = {"none": np.ones(pairs, bool), "steered": np.zeros(pairs, bool), "random": np.zeros(pairs, bool)}
    assert paired_test(scores["steered"], scores["random"])["p"] < 0.01  # by the score alone it wins
    result = well_formed_tests(scores, broken, 0.01)
    assert result["share"] == {"none": 1.0, "steered": 0.0, "random": 0.0}
    assert not result["steerable"] and result["vs"]["none"]["gain"] == pytest.approx(-0.2)
    # kept music: steering wins; a random push that breaks the music counts as 0, not as 0.5
    music = broken | {"steered": np.ones(pairs, bool)}
    result = well_formed_tests(scores, music, 0.01)
    assert result["steerable"] and result["vs"]["random"]["gain"] == pytest.approx(0.9)


def test_concepts_come_from_the_catalog_or_fail_clearly(tmp_path):
    catalog = {"features": [{"id": 3, "labels": {"descriptors": [{"label": "C major key"}],
                                                 "classifier": [{"label": "Piano"}]}}]}  # fmt: skip
    cfg = EvalConfig(features=(3,))
    assert concept_for(3, catalog, cfg) == "Piano"
    assert concept_for(3, catalog, EvalConfig(features=(3,), concepts={3: "drums"})) == "drums"
    with pytest.raises(MgsteerError, match="--concept 4=TEXT"):
        concept_for(4, catalog, cfg)
    with pytest.raises(MgsteerError, match="at least one feature"):
        EvalConfig(features=())
    report = {"features": [{"id": 1, "concept": "<b>", "skipped": "no"}], "steerable_share": None, "evaluated": 0,
              "prompts": ["a"], "seeds": [0], "alpha": 1.0, "scorer": "clap", "model": "tiny", "sae": "s"}  # fmt: skip
    _, page = write_report(report, tmp_path)
    assert "&lt;b&gt;" in page.read_text() and "nothing evaluated" in page.read_text()


def test_a_world_model_is_steered_under_prompts_in_its_own_words(world_demo_dir, tiny_lm):
    from engine.model import load_musicgen
    from sae.eval_steer import DEFAULT_PROMPTS, WORLD_PROMPTS, default_prompts
    from sae.world.grammar import attribute_values

    world = load_musicgen(str(world_demo_dir / "world"))
    assert default_prompts(world) == WORLD_PROMPTS and default_prompts(tiny_lm) == DEFAULT_PROMPTS
    keys = set(attribute_values()["key"])
    assert all(prompt.removesuffix(" melody") in keys for prompt in WORLD_PROMPTS)


def test_steered_clips_are_rendered_in_the_configured_mode_and_halves(tiny_lm, tiny_sae):
    feature = alive_features(tiny_sae)[0]
    spec = SteeringSpec((FeatureSteer(feature, 3.0),), mode="clamp", halves="cond")
    refs = [render(tiny_lm, p, 0.5, SamplingConfig(seed=0), sae=tiny_sae, spec=spec).audio for p in PROMPTS[:2]]
    base = dict(features=(feature,), concepts={feature: "c"}, prompts=PROMPTS[:2], seeds=(0,), seconds=0.5,
                alpha=3.0, prompt_baseline=False)  # fmt: skip
    clamped = evaluate_steering(tiny_lm, tiny_sae, SoundsLike(refs), EvalConfig(**base, mode="clamp", halves="cond"))
    assert clamped["mode"] == "clamp" and clamped["halves"] == "cond"
    assert clamped["features"][0]["mean_score"]["steered"] == 0.0  # the references, exactly
    added = evaluate_steering(tiny_lm, tiny_sae, SoundsLike(refs), EvalConfig(**base))
    assert added["features"][0]["mean_score"]["steered"] < 0.0
