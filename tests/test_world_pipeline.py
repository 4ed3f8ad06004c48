"""The SAE pipeline against the planted world's truth: the world labeler, feature detection on
held-out windows, and eval-steer judged by the exact scorer on a model with a planted effect."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from planted import identity_topk

from cli.main import main
from engine.model import load_musicgen
from sae.eval_steer import EvalConfig, evaluate_steering
from sae.files import FeatureStats, load_sae, save_sae
from sae.labelers.base import LabelerError, WindowCodes, WindowSet
from sae.labelers.world import WorldLabeler, parse_label
from sae.store import ActivationStore, StoreMeta, StoreWriter
from sae.topk import SAEConfig, TopKSAE
from sae.world.detect import feature_detection
from sae.world.grammar import OPENING_FRAMES, TIMBRES, Attributes, sample_attributes, sample_clip
from sae.world.pipeline import (
    SteerSelection,
    WorldSAEConfig,
    choose_steering,
    contrast_direction,
    harvest_and_train,
    moves,
    with_margin,
)
from sae.world.train import WorldTrainConfig, WorldTrainer

BRIGHT, DARK = TIMBRES["bright"], TIMBRES["dark"]


def clips_with(rng, frames: int, count: int, **fixed) -> list[tuple[Attributes, np.ndarray]]:
    out = []
    for _ in range(count):
        attrs = Attributes(**{**sample_attributes(rng).as_dict(), **fixed})
        out.append((attrs, sample_clip(rng, attrs, frames)))
    return out


def test_the_world_labeler_names_what_the_top_windows_share():
    rng, labeler = np.random.default_rng(0), WorldLabeler()
    top = [WindowCodes(c[:, 50:150], 50) for _, c in clips_with(rng, 200, 6, register="high", tempo="fast")]
    rand = [WindowCodes(c[:, 50:150], 50) for _, c in clips_with(rng, 200, 12)]
    labels = labeler.label(WindowSet([], [], 32000, top, rand))
    names = [lab.label for lab in labels]
    assert "high register" in names and "fast" in names
    assert all(parse_label(n) is not None for n in names)
    scores = labeler.score_codes("high register", top + rand)
    assert scores[:6].min() > 0.9 and scores[6:].mean() < 0.7
    assert labeler.score_codes("piano", top) is None and labeler.score("high register", [], 32000) is None
    with pytest.raises(LabelerError, match="reads tokens") as err:
        labeler.label(WindowSet([np.zeros(10)], [np.zeros(10)], 32000))
    assert not err.value.retry


def test_the_world_labeler_tells_music_from_broken_music():
    rng, labeler = np.random.default_rng(1), WorldLabeler()
    music = [WindowCodes(c) for _, c in clips_with(rng, 150, 4)]
    noise = [WindowCodes(rng.integers(0, 128, c.codes.shape)) for c in music]
    assert labeler.well_formed(labeler.code_quality(music)).all()
    assert not labeler.well_formed(labeler.code_quality(noise)).any()


def planted_store(folder, rng, clips: int = 40, frames: int = 100) -> ActivationStore:
    """Activations whose dimension 0 is on exactly in bright clips, and in fast ones dimension 2
    during the opening (the plan) and dimension 1 after it (the music showing it); dimension 3
    spikes once every 25 frames in sparse-drum clips (an event, like a snare once a bar) and
    holds a low level all along in busy ones; plus noise, beside the clips' real tokens."""
    writer = StoreWriter(folder, StoreMeta("planted", (0,), 8, "float32", "generation", 4))
    for i, (attrs, codes) in enumerate(clips_with(rng, frames, clips)):
        acts = torch.from_numpy(rng.normal(0, 0.1, (frames, 8))).float().abs()
        acts[:, 0] += float(attrs.timbre == "bright")
        acts[OPENING_FRAMES:, 1] += float(attrs.tempo == "fast")
        acts[:OPENING_FRAMES, 2] += float(attrs.tempo == "fast")
        if attrs.density == "sparse":
            acts[12::25, 3] += 3.0
        else:
            acts[:, 3] += 0.3
        writer.add_clip(f"c{i}", {0: acts}, torch.from_numpy(codes))
    writer.flush()
    return ActivationStore(folder)


def identity_sae(folder, d: int = 8):
    ones = torch.ones(d)
    return load_sae(save_sae(identity_topk(d), folder, FeatureStats(ones, ones.clone(), ones.clone())))


def test_feature_detection_finds_the_planted_features_on_held_out_windows(tmp_path):
    store = planted_store(tmp_path / "acts", np.random.default_rng(1))
    result = feature_detection(store, identity_sae(tmp_path / "sae"), 0, window_s=0.5)
    assert result["values"]["timbre=bright"]["feature"] == 0
    assert result["values"]["timbre=bright"]["auroc_held_out"] == 1.0
    assert result["values"]["tempo=fast"]["feature"] == 1
    assert result["values"]["tempo=fast"]["auroc_held_out"] == 1.0
    assert {result["values"][k]["pool"] for k in ("timbre=bright", "tempo=fast", "density=busy")} == {"mean"}
    # an event read by its mean is diluted by the frames between: its peak tells the windows apart
    sparse = result["values"]["density=sparse"]
    assert (sparse["feature"], sparse["pool"], sparse["auroc_held_out"]) == (3, "peak", 1.0)
    assert sparse["auroc_held_out_mean_only"] < 0.9 and sparse["candidates"][0] == [3, 1.0]
    assert result["values_at_least_0.9"] == result["values_at_least_0.9_mean_only"] + 1
    # what the openings differ by is the plan, not what best detects the music
    (first, cosine), *_ = result["values"]["tempo=fast"]["aligned"]
    assert first == 2 and cosine > 0.9
    assert result["values"]["timbre=bright"]["aligned"][0][0] == 0
    # what the whole clips differ by is the music that follows the plan
    assert result["values"]["tempo=fast"]["aligned_whole"][0][0] == 1
    assert result["values"]["timbre=bright"]["aligned_whole"][0][0] == 0
    # the key is planted nowhere: no feature detects it reliably on held-out windows
    keys = [v["auroc_held_out"] for k, v in result["values"].items() if k.startswith("key=") and "feature" in v]
    assert keys and min(keys) < 0.9
    assert result["windows"] == 40 * 4  # 100 frames in 25-frame windows
    # the probe reads the residual itself: the planted value is there, the key is not
    assert result["values"]["timbre=bright"]["probe_auroc_held_out"] == 1.0
    key_probes = [
        v["probe_auroc_held_out"] for k, v in result["values"].items() if k.startswith("key=") and "feature" in v
    ]
    assert max(key_probes) < 0.9
    pairs = result["conjunctions"]
    assert all(name.startswith("key×register=") for name in pairs)
    assert result["conjunctions_measured"] == sum("auroc_held_out" in v for v in pairs.values())


@pytest.fixture(scope="module")
def planted_effect(tmp_path_factory):
    """A world model whose timbre head reads one residual direction u at the last layer: +u
    writes the bright token, −u the dark one; and an SAE whose feature 0 is u."""
    folder = tmp_path_factory.mktemp("planted_world")
    WorldTrainer(folder / "world", WorldTrainConfig(steps=1, batch_size=2, seconds=0.5, warmup_steps=1)).run()
    lm = load_musicgen(str(folder / "world"), "cpu")
    d, last = lm.hidden_size, lm.num_layers - 1
    u = torch.zeros(d)
    u[0] = 1.0
    with torch.no_grad():
        head = lm.model.decoder.lm_heads[2].weight  # [vocab, d]
        head.zero_()
        head[BRIGHT] = 8 * u
        head[DARK] = -8 * u
        lm.model.decoder.model.decoder.layer_norm.weight.fill_(1.0)
        lm.model.decoder.model.decoder.layer_norm.bias.zero_()
        lm.model.decoder.model.decoder.layer_norm.bias[0] = -1.0  # unsteered: mostly dark
    lm.model.save_pretrained(folder / "world")  # the command line loads it from there
    sae = TopKSAE(SAEConfig(d_in=d, d_sae=2, k=1, hook_layer=last, model_name=str(folder / "world")))
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.W_dec[0] = u
        sae.W_dec[1, 1] = 1.0  # a direction the heads ignore
        sae.W_enc.copy_(sae.W_dec.T)
    ones = torch.ones(2)
    sae_dir = save_sae(sae, folder / "sae", FeatureStats(ones * 0.1, ones, ones * 4.0))
    return lm, load_sae(sae_dir)


def test_eval_steer_with_the_exact_scorer_reproduces_the_planted_effect(planted_effect):
    lm, loaded = planted_effect
    cfg = EvalConfig(features=(0, 1), concepts={0: "bright", 1: "bright"}, prompts=("melody", "slow melody"),
                     seeds=(0, 1, 2), seconds=0.5, alpha=2.0)  # fmt: skip
    report = evaluate_steering(lm, loaded, WorldLabeler(lm.codebook_size), cfg)
    planted, ignored = report["features"]
    assert planted["mean_score"]["none"] < 0.5 and planted["mean_score"]["steered"] > 0.99
    assert planted["vs"]["none"]["wins"] == planted["vs"]["none"]["pairs"] == 6
    assert planted["vs"]["random"]["gain"] > 0.5
    assert planted["steerable"]
    assert ignored["mean_score"]["steered"] == pytest.approx(ignored["mean_score"]["none"], abs=0.05)
    assert not ignored["steerable"]
    quality = planted["quality"]
    assert set(quality) == {"none", "steered", "random", "prompt"}
    assert set(quality["none"]) == {"grammar_loglik", "token_entropy"}
    assert quality["steered"]["token_entropy"] <= quality["none"]["token_entropy"] + 1e-9  # one timbre token
    # a world trained for one step writes no music the grammar would: bright or not, no clip counts
    assert quality["none"]["grammar_loglik"] < -1
    assert set(planted["well_formed"]["share"].values()) == {0.0} and not planted["well_formed"]["steerable"]
    assert report["steerable_well_formed_share"] == 0.0


def test_the_feature_chosen_to_steer_with_is_the_one_that_moves_the_music(planted_effect):
    """Both features detect bright equally well on paper; only feature 0 makes music bright."""
    lm, loaded = planted_effect
    detection = {"values": {
        "timbre=bright": {"feature": 1, "candidates": [[1, 1.0], [0, 0.95]]},
        "timbre=dark": {"feature": 1, "candidates": [[1, 0.5]]},  # below the AUROC bar: not tried
        "tempo=fast": {"feature": 0, "candidates": [[0, 1.0]]},  # another attribute: not tried
    }}  # fmt: skip
    sel = SteerSelection(prompts=2, seeds=(100, 101), seconds=0.5, alphas=(1.0, 2.0), quality_floor=-100.0)
    choice = choose_steering(lm, loaded, detection, "timbre", sel)
    assert [(t["feature"], t["alpha"]) for t in choice["tried"]] == [(1, 1.0), (1, 2.0), (0, 1.0), (0, 2.0)]
    chosen = choice["chosen"]
    assert (chosen["value"], chosen["feature"]) == ("bright", 0) and chosen["moved_share"] > 0.5
    assert all(t["moved_share"] == 0.0 for t in choice["tried"] if t["feature"] == 1)
    # α 1 is the weakest that moves them all; α 2, one step stronger, moves as many: the margin
    assert (chosen["weakest_alpha"], chosen["alpha"]) == (1.0, 2.0)
    assert choose_steering(lm, loaded, detection, "timbre", replace(sel, margin=0))["chosen"]["alpha"] == 1.0
    # music below the quality floor is never chosen (0 is the grammar's best log-likelihood)
    assert choose_steering(lm, loaded, detection, "timbre", replace(sel, quality_floor=0.5))["chosen"] is None
    # a feature aligned with the value's opening direction is tried beside the detectors
    aligned = {"values": {"timbre=bright": {"feature": 1, "candidates": [[1, 1.0]], "aligned": [[1, 0.9], [0, 0.8]]}}}
    choice = choose_steering(lm, loaded, aligned, "timbre", replace(sel, alphas=(1.0,)))
    assert [(t["feature"], t["source"]) for t in choice["tried"]] == [(1, "detector"), (0, "aligned")]
    assert choice["chosen"]["feature"] == 0
    # and one aligned with its whole clips' direction, once (a value decided after the opening)
    bright = aligned["values"]["timbre=bright"] | {"aligned": [[1, 0.9]], "aligned_whole": [[1, 0.9], [0, 0.7]]}
    choice = choose_steering(lm, loaded, {"values": {"timbre=bright": bright}}, "timbre", replace(sel, alphas=(1.0,)))
    assert [(t["feature"], t["source"]) for t in choice["tried"]] == [(1, "detector"), (0, "aligned whole")]
    assert choice["chosen"]["feature"] == 0


def test_a_pair_pushed_out_of_the_music_has_not_moved():
    plain, pushed = [0.1, 0.1, 0.1, 1.0], [0.9, 0.9, 0.1, 1.0]
    assert moves(plain, pushed) == {
        "pairs_already_at_target": 1, "toward_target_share": 0.667, "moved_share_of_all_pairs": 0.5,
    }  # fmt: skip
    kept = np.array([True, False, True, True])
    assert moves(plain, pushed, kept)["toward_target_share"] == 0.333


def test_the_selection_counts_only_pairs_whose_steered_music_keeps_above_the_floor(planted_effect):
    lm, loaded = planted_effect
    detection = {"values": {"timbre=bright": {"feature": 0, "candidates": [[0, 1.0]]}}}
    sel = SteerSelection(prompts=2, seeds=(100, 101), seconds=0.5, alphas=(2.0,), quality_floor=-100.0)
    everything = choose_steering(lm, loaded, detection, "timbre", sel)["chosen"]
    assert everything["moved_share"] == 1.0
    # at the clips' mean log-likelihood the mean passes, and the pairs below it no longer count
    floor = everything["grammar_loglik"] - 1e-3  # the mean is rounded to three places
    cut = choose_steering(lm, loaded, detection, "timbre", replace(sel, quality_floor=floor))
    assert 0 < cut["chosen"]["moved_share"] < 1


def test_the_margin_steps_up_only_while_the_stronger_alpha_moves_as_many_pairs():
    sel = SteerSelection(alphas=(4.0, 0.5, 1.0, 2.0), margin=2)

    def tried(alpha: float, moved: float, value: str = "sparse") -> dict:
        return {"value": value, "feature": 7, "alpha": alpha, "moved_share": moved}

    weakest = tried(0.5, 0.75)
    # the grid is walked in order of strength, whatever order it was given in
    assert with_margin(weakest, [weakest, tried(1.0, 0.75), tried(2.0, 0.75), tried(4.0, 0.75)], sel)["alpha"] == 2.0
    # a step that moves fewer pairs ends the walk, and so does one below the quality floor (absent)
    assert with_margin(weakest, [weakest, tried(1.0, 0.5), tried(2.0, 0.75)], sel)["alpha"] == 0.5
    assert with_margin(weakest, [weakest, tried(2.0, 0.75)], sel)["alpha"] == 0.5
    # another value's feature at the stronger α is not the same choice
    assert with_margin(weakest, [weakest, tried(1.0, 0.75, "busy")], sel)["alpha"] == 0.5
    # the strongest α has no step above it
    assert with_margin(tried(4.0, 0.75), [tried(4.0, 0.75)], sel) == tried(4.0, 0.75) | {"weakest_alpha": 4.0}


def test_the_contrast_direction_is_what_the_prompt_changes_at_the_opening(planted_effect):
    lm, _ = planted_effect
    fast = contrast_direction(lm, 0, "tempo", "fast", draws=2)
    slow = contrast_direction(lm, 0, "tempo", "slow", draws=2)
    assert fast.shape == (lm.hidden_size,) and fast.norm() > 0  # the prompt reaches the residual
    assert torch.allclose(fast, -slow, atol=1e-5)  # paired draws: only the asked value differs
    keys = [contrast_direction(lm, 0, "key", key, draws=2) for key in ("C major", "A minor")]
    assert not torch.allclose(keys[0], -keys[1], atol=1e-3)  # eight keys: each against the other seven


def test_eval_steer_cli_takes_the_world_scorer(planted_effect, tmp_path, capsys):
    lm, loaded = planted_effect
    out = tmp_path / "ev"
    code = main(["eval-steer", "--model", lm.name, "--sae", str(loaded.path), "--features", "0",
                 "--concept", "0=bright", "--scorer", "world", "--seeds", "5", "--seconds", "0.5",
                 "--alpha", "2", "--no-prompt-baseline", "--out", str(out)])  # fmt: skip
    assert code == 0
    report = json.loads((out / "eval_steer.json").read_text())
    assert report["scorer"] == "world" and report["features"][0]["steerable"]
    assert "steerable: 100 % (0 % while the music stays music)" in capsys.readouterr().out


def test_the_sae_seed_changes_the_dictionary_and_not_the_harvested_clips(planted_effect, tmp_path):
    """Several dictionaries on the same activations tell the SAE's luck from the data's."""
    lm, _ = planted_effect
    cfg = WorldSAEConfig(clips=2, seconds=0.5, layer=0, steps=3, batch_size=16)
    runs = {seed: harvest_and_train(lm, tmp_path / str(seed), replace(cfg, sae_seed=seed)) for seed in (0, 1)}
    stores = {seed: [codes.numpy() for codes in store.iter_codes()] for seed, (store, _, _) in runs.items()}
    assert all((a == b).all() for a, b in zip(stores[0], stores[1], strict=True))
    weights = {seed: load_sae(sae_dir).sae.W_enc for seed, (_, sae_dir, _) in runs.items()}
    assert not torch.equal(weights[0], weights[1])
