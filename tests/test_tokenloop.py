"""Our token loop against transformers' generate(): same seed, same audio."""

from __future__ import annotations

import pytest
import torch

from engine.codec import decode_codes
from engine.errors import MgsteerError
from engine.prompts import encode_prompts, teacher_forced_logits
from engine.tokenloop import SamplingConfig, TokenLoop


@pytest.mark.parametrize("guidance", [3.0, 1.0])
def test_loop_matches_hf_generate(tiny_lm, guidance):
    frames, k = 30, tiny_lm.num_codebooks
    tok = tiny_lm.tokenizer(["simple melody"], return_tensors="pt")
    torch.manual_seed(7)
    ref = tiny_lm.model.generate(
        **tok, max_new_tokens=frames + k - 1, do_sample=True, guidance_scale=guidance, top_k=250
    )
    codes = TokenLoop(tiny_lm, ["simple melody"], SamplingConfig(guidance=guidance, seed=7)).frames(frames)
    ours = decode_codes(tiny_lm, codes)
    assert ours.shape == ref[:, 0].shape == (1, frames * tiny_lm.sample_rate // tiny_lm.frame_rate)
    assert torch.equal(ours, ref[:, 0].float())


def test_delay_pattern_bookkeeping(tiny_lm):
    loop = TokenLoop(tiny_lm, ["a", "b"], SamplingConfig(seed=1))
    k = tiny_lm.num_codebooks
    first = [loop.step() for _ in range(k - 1)]
    assert [f.shape for f in first] == [(2, k, 0)] * (k - 1)
    frame = loop.step()
    assert frame.shape == (2, k, 1)
    codes = loop.frames(10)
    assert codes.shape == (2, k, 10)
    assert loop.position == k + 10  # frame 0 after K steps, then one frame per step
    assert int(codes.min()) >= 0 and int(codes.max()) < tiny_lm.codebook_size


def test_seed_controls_sampling(tiny_lm):
    def run(seed):
        return TokenLoop(tiny_lm, ["simple melody"], SamplingConfig(seed=seed)).frames(20)

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_bad_sampling_settings():
    with pytest.raises(MgsteerError, match="guidance"):
        SamplingConfig(guidance=0.5)
    with pytest.raises(MgsteerError, match="temperature"):
        SamplingConfig(temperature=0.0)


def _next_residual(lm, loop):
    """Residual of the last layer at the next step (consumes one step)."""
    from engine.hooks import ResidualTap

    with ResidualTap(lm, lm.num_layers - 1, cfg_doubled=True, record_rows="all") as tap:
        tap.recording = True
        loop.step()
        return tap.take()


@pytest.mark.parametrize("piece", [2, 7, 64])
def test_full_reprime_reproduces_the_context(tiny_lm, piece):
    """Re-priming with everything kept rebuilds the same cache, whatever the piece size."""
    plain = TokenLoop(tiny_lm, ["simple melody"], SamplingConfig(seed=2))
    primed = TokenLoop(tiny_lm, ["simple melody"], SamplingConfig(seed=2))
    for loop in (plain, primed):
        loop.frames(30)
    primed.begin_reprime(keep_positions=primed.position)
    swaps = 0
    while primed.repriming:
        swaps += primed.reprime_step(piece)
        if primed.repriming:  # the head keeps moving while the new cache catches up
            plain.step()
            primed.step()
    assert swaps == 1 and primed.reprimes == 1 and primed.cache_len == primed.position
    torch.testing.assert_close(_next_residual(tiny_lm, primed), _next_residual(tiny_lm, plain), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("model", ["tiny_lm", "stereo_lm", "melody_lm"])
def test_partial_reprime_equals_a_fresh_start_on_the_kept_music(model, request, a_melody):
    """After keeping the last 20 positions, the model sees a fresh start followed by them (a
    melody model: behind its condition, which the taps leave alone in the HF forward)."""
    tiny_lm = request.getfixturevalue(model)
    melody = a_melody if tiny_lm.melody else None
    loop = TokenLoop(tiny_lm, ["simple melody"], SamplingConfig(seed=4), melody=melody)
    loop.frames(40)
    loop.begin_reprime(keep_positions=20)
    while not loop.reprime_step(8):
        pass
    offset = loop.position - loop.cache_len
    history = list(loop._history)
    first = loop.position - len(history) + 1
    k, pad = tiny_lm.num_codebooks, tiny_lm.pad_token_id
    columns = [torch.full((1, k), pad)]
    for p in range(1, loop.cache_len + 1):
        column = history[offset + p - first].clone()
        column[:, torch.tensor(tiny_lm.delays) >= p] = pad
        columns.append(column)
    fresh = torch.stack(columns, dim=-1)  # [1, K, cache_len + 1], last column = next input
    from engine.hooks import ResidualTap

    with ResidualTap(tiny_lm, tiny_lm.num_layers - 1, cfg_doubled=True, record_rows="all") as tap, torch.no_grad():
        tap.recording = True
        # transformers' own forward, no cache
        teacher_forced_logits(tiny_lm, torch.cat([fresh, fresh]).reshape(-1, fresh.shape[-1]), loop._condition)
        expected = tap.take()[:, -1:]
    torch.testing.assert_close(_next_residual(tiny_lm, loop), expected, atol=1e-4, rtol=1e-4)
    assert offset > 0 and loop.cache_len == loop.position - offset


def test_reprime_with_a_new_prompt_swaps_the_condition(tiny_lm):
    loop = TokenLoop(tiny_lm, ["simple melody"], SamplingConfig(seed=0))
    loop.frames(10)
    before = loop._condition[0].clone()
    loop.begin_reprime(8, prompts=["techno groove with a driving kick"])
    torch.testing.assert_close(loop._condition[0], before)  # the old condition plays on until the swap
    while not loop.reprime_step(4):
        loop.step()
    expected, _ = encode_prompts(tiny_lm, ["techno groove with a driving kick"], null_half=True)
    torch.testing.assert_close(loop._condition[0], expected)


def test_a_stereo_model_delays_each_channel_pair_alike(stereo_lm):
    assert (stereo_lm.num_codebooks, stereo_lm.audio_channels) == (8, 2)
    assert stereo_lm.delays == (0, 0, 1, 1, 2, 2, 3, 3) and stereo_lm.delay_steps == 4


@pytest.mark.parametrize("guidance", [3.0, 1.0])
def test_the_stereo_loop_matches_hf_generate_in_both_channels(stereo_lm, guidance):
    frames = 30
    tok = stereo_lm.tokenizer(["simple melody"], return_tensors="pt")
    torch.manual_seed(7)
    ref = stereo_lm.model.generate(
        **tok, max_new_tokens=frames + stereo_lm.delay_steps - 1, do_sample=True, guidance_scale=guidance, top_k=250
    )
    codes = TokenLoop(stereo_lm, ["simple melody"], SamplingConfig(guidance=guidance, seed=7)).frames(frames)
    ours = decode_codes(stereo_lm, codes)
    assert ours.shape == ref.shape == (1, 2, frames * stereo_lm.sample_rate // stereo_lm.frame_rate)
    assert torch.equal(ours, ref.float())
    assert not torch.equal(ours[:, 0], ours[:, 1])  # two channels, not one twice


@pytest.mark.parametrize("guidance", [3.0, 1.0])
@pytest.mark.parametrize("with_melody", [True, False])
def test_the_melody_loop_matches_hf_generate(melody_lm, a_melody, guidance, with_melody):
    """musicgen-melody: the condition (chroma, then text; the null melody without one) prepended
    and prefilled once, the tokens then exactly those of transformers' generate.

    transformers 5.17's melody generate strays from its own forward (greedy, it picks other
    tokens than a cache-free argmax of that forward; 5.25's agrees with both): the engine's step
    is checked against the forward on every version (test_static_step), against generate from
    5.25."""
    import transformers

    if tuple(int(p) for p in transformers.__version__.split(".")[:2]) < (5, 25):
        pytest.skip(f"transformers {transformers.__version__}'s melody generate strays from its own forward")
    frames, prompt = 30, ["techno groove with a driving kick"]
    tok = melody_lm.tokenizer(prompt, return_tensors="pt")
    melody = a_melody if with_melody else None
    features = {"input_features": a_melody[None]} if with_melody else {}
    torch.manual_seed(7)
    ref = melody_lm.model.generate(
        **tok, **features, max_new_tokens=frames + 3, do_sample=True, guidance_scale=guidance, top_k=250
    )
    codes = TokenLoop(melody_lm, prompt, SamplingConfig(guidance=guidance, seed=7), melody=melody).frames(frames)
    assert torch.equal(decode_codes(melody_lm, codes), ref[:, 0].float())


def test_a_reprime_with_a_new_melody_swaps_the_condition(melody_lm, a_melody):
    loop = TokenLoop(melody_lm, ["simple melody"], SamplingConfig(seed=0))
    loop.frames(10)
    before = loop._condition[0].clone()
    loop.begin_reprime(8, melody=a_melody)
    torch.testing.assert_close(loop._condition[0], before)  # the old condition plays on until the swap
    while not loop.reprime_step(4):
        loop.step()
    expected, _ = encode_prompts(melody_lm, ["simple melody"], null_half=True, melody=a_melody)
    torch.testing.assert_close(loop._condition[0], expected)
    assert not torch.equal(expected, before)
    assert loop.frames(5).shape == (1, melody_lm.num_codebooks, 5)


def test_a_melody_on_a_text_model_is_one_line(tiny_lm, a_melody):
    with pytest.raises(MgsteerError, match="not a melody model"):
        TokenLoop(tiny_lm, ["simple melody"], melody=a_melody)
