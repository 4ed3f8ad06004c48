"""The planted grammar and its exact scorer: the truth the world's measurements rest on."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from engine.synth_codec import SynthCodec, token_notes
from sae.descriptors import describe
from sae.world.grammar import (
    ATTRIBUTES,
    DENSITIES,
    REGISTERS,
    RELEASES,
    TEMPOS,
    Attributes,
    ExactScorer,
    attribute_values,
    prompt_for,
    sample_attributes,
    sample_clip,
)


def test_the_scorer_recovers_every_planted_attribute():
    rng, scorer = np.random.default_rng(0), ExactScorer()
    for _ in range(40):
        attrs = sample_attributes(rng)
        assert scorer.predict(sample_clip(rng, attrs, 400)) == attrs


def test_the_posterior_is_a_distribution_and_survives_broken_grammar():
    rng, scorer = np.random.default_rng(1), ExactScorer()
    attrs = sample_attributes(rng)
    codes = sample_clip(rng, attrs, 400)
    noisy = codes.copy()
    hit = rng.random(noisy.shape) < 0.03  # 3 % of tokens replaced by anything
    noisy[hit] = rng.integers(0, 128, hit.sum())
    post = scorer.posterior(noisy)
    for name in ATTRIBUTES:
        assert sum(post[name].values()) == pytest.approx(1.0)
    assert scorer.predict(noisy) == attrs


def test_a_short_clip_is_honestly_uncertain():
    """One slow note cannot tell a major key from its relative minor: the posterior says so."""
    rng, scorer = np.random.default_rng(2), ExactScorer()
    attrs = sample_attributes(rng)
    post = scorer.posterior(sample_clip(rng, attrs, TEMPOS["slow"]))
    assert max(post["key"].values()) < 0.5


def test_the_tempo_is_audible_as_note_starts_and_slow_notes_as_release_rests():
    """Both tempos are something heard: fast notes start every 10 frames, and slow ones end in
    a rest that the rendered audio leaves silent."""
    rng, codec = np.random.default_rng(3), SynthCodec(128)
    for tempo, length in TEMPOS.items():
        attrs = Attributes(**{**sample_attributes(rng).as_dict(), "tempo": tempo, "density": "busy"})
        codes = sample_clip(rng, attrs, 100)
        notes = token_notes(codes[0], codes[1])
        onsets = np.flatnonzero((notes > 0) & (np.concatenate([[0], notes[:-1]]) != notes))
        assert set(onsets % length) == {0}  # notes start only on the tempo's grid
        rests = np.flatnonzero(notes == 0)
        assert set(rests % length) == set(range(length - RELEASES[tempo], length))
        audio = codec.decode(torch.from_numpy(codes)[None])[0].numpy()
        assert np.abs(audio).max() > 0.1
        if RELEASES[tempo]:  # the rest's inner frames are silent but for the drums' tails
            drumless = np.concatenate([codes[:3], np.zeros_like(codes[3:])])
            tone = codec.decode(torch.from_numpy(drumless)[None])[0].numpy()
            inner = [r for r in rests if {r - 1, r + 1} <= set(rests)]  # no fade in or out
            silence = np.concatenate([tone[r * codec.hop : (r + 1) * codec.hop] for r in inner])
            assert np.sqrt(np.mean(silence**2)) < 0.01 * np.sqrt(np.mean(tone**2))


def test_prompts_name_the_chosen_attributes():
    attrs = sample_attributes(np.random.default_rng(4))
    text = prompt_for(attrs, ("tempo", "key", "timbre"))
    assert attrs.tempo in text and attrs.key in text and attrs.timbre in text and "drums" not in text


def test_the_second_note_of_a_bar_is_the_third_and_tells_the_mode():
    rng = np.random.default_rng(5)
    for mode, third in (("major", 4), ("minor", 3)):
        attrs = Attributes(**{**sample_attributes(rng).as_dict(), "key": f"C {mode}", "tempo": "fast"})
        codes = sample_clip(rng, attrs, 40)
        notes = token_notes(codes[0], codes[1])
        assert notes[10] - notes[0] == third  # frame 10 starts the bar's second note


def test_a_window_from_mid_clip_is_scored_from_where_it_starts():
    rng, scorer = np.random.default_rng(6), ExactScorer()
    for _ in range(20):
        attrs = sample_attributes(rng)
        clip = sample_clip(rng, attrs, 400)
        start = int(rng.integers(1, 200))
        assert scorer.predict(clip[:, start : start + 200], start) == attrs
        aligned = scorer.log_likelihoods(clip[:, start : start + 200], start).max()
        assert aligned > scorer.log_likelihoods(clip[:, start : start + 200], start + 3).max()


def test_a_key_writes_the_same_pitch_class_tokens_in_every_register():
    """The key fixes codebook 0 alone, the register codebook 1 alone: neither is a conjunction,
    and no register's octave tokens are another's (the middle one is not the other two's overlap)."""
    rng = np.random.default_rng(7)
    for key in attribute_values()["key"]:
        classes, octaves = {}, {}
        for register in REGISTERS:
            attrs = Attributes(key, register, "fast", "dark", "sparse")
            codes = np.concatenate([sample_clip(rng, attrs, 400) for _ in range(5)], axis=1)
            classes[register], octaves[register] = set(codes[0]), set(codes[1])
        assert classes["low"] == classes["mid"] == classes["high"] and len(classes["low"]) == 7
        for one, other in itertools.combinations(REGISTERS, 2):  # each register tokens of its own
            assert octaves[one].isdisjoint(octaves[other]), (key, one, other)
    lows = {
        frozenset(sample_clip(rng, Attributes(k, "low", "fast", "dark", "sparse"), 2000)[1])
        for k in ("C major", "A minor")
    }
    assert len(lows) == 1  # the register's octaves whatever the key


def test_each_drum_density_writes_hits_the_other_does_not_and_busy_is_heard_busier():
    """Neither density is only the other's silence (a feature can detect only what is there):
    sparse bars have a snare, busy ones kicks on every note; and busy drums give more onsets."""
    rng, codec = np.random.default_rng(8), SynthCodec(128)
    for tempo in TEMPOS:
        heard, starts = {}, np.arange(0, 400, TEMPOS[tempo])
        for density in DENSITIES:
            attrs = Attributes("C major", "mid", tempo, "dark", density)
            codes = sample_clip(rng, attrs, 400)
            heard[density] = describe(codec.decode(torch.from_numpy(codes)[None])[0].numpy(), codec.sample_rate)
            hits = codes[3][starts]
            if density == "sparse":
                assert set(hits[2::4]) == {2} and set(hits[1::2]) == {0}  # a snare on each bar's third note
            else:
                assert set(hits) == {1}  # a kick on every note, and no snare
        assert heard["busy"].onset_rate > 1.5 * heard["sparse"].onset_rate
