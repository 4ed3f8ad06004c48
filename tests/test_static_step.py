"""The static decoder step: transformers' arithmetic on fixed buffers, state on the device,
columns read back in batches, non-finite steps taken back and run unsteered."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from conftest import alive_features

from engine.hooks import recording
from engine.prompts import encode_prompts, teacher_forced_logits
from engine.static_decoder import StaticDecoder
from engine.steering import FeatureSteer, Steerer, SteeringSpec
from engine.step_graph import StepGraphs
from engine.tokenloop import SamplingConfig, TokenLoop


@pytest.mark.parametrize("model", ["tiny_lm", "stereo_lm", "melody_lm"])
def test_static_forward_equals_transformers_forward(model, request, a_melody):
    """Prefill of a piece, then single positions, against the HF decoder's full-sequence forward
    on the same columns (the sampled tokens match `generate()` exactly: test_tokenloop). A
    melody model's condition (chroma and text) is prepended there, prefilled here."""
    tiny_lm = request.getfixturevalue(model)
    gen = torch.Generator().manual_seed(0)
    k, steps = tiny_lm.num_codebooks, 24
    columns = torch.randint(0, tiny_lm.codebook_size, (1, k, steps), generator=gen)
    melody = a_melody if tiny_lm.melody else None
    enc, mask = encode_prompts(tiny_lm, ["a prompt of several tokens", "short"], null_half=True, melody=melody)
    rows = torch.cat([columns, columns, columns, columns])  # two prompts, CFG-doubled
    with torch.no_grad():
        ref = teacher_forced_logits(tiny_lm, rows.reshape(-1, steps), (enc, mask)).reshape(4, k, steps, -1)
        decoder = StaticDecoder(tiny_lm, rows=4, max_context=32)
        cache = decoder.new_cache(enc.shape[1])
        decoder.set_prompt(cache, (enc, mask))
        ours = [decoder.forward(rows[..., :8], cache, torch.arange(8))]
        ours += [decoder.forward(rows[..., p : p + 1], cache, torch.tensor([p])) for p in range(8, steps)]
    torch.testing.assert_close(torch.cat(ours, dim=2), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("readback", [3, 8])
def test_batched_read_back_yields_the_same_frames(tiny_lm, readback):
    sampling = SamplingConfig(seed=11)
    plain = TokenLoop(tiny_lm, ["simple melody"], sampling).frames(30)
    loop = TokenLoop(tiny_lm, ["simple melody"], sampling, readback=readback)
    out = [loop.step() for _ in range(20)]
    # Frames leave once per `readback` steps, never one by one.
    k = tiny_lm.num_codebooks
    assert [i + 1 for i, f in enumerate(out) if f.shape[-1]] == [s for s in range(readback, 21, readback) if s >= k]
    so_far = sum(f.shape[-1] for f in out)
    got = torch.cat([*out, loop.frames(30 - so_far)], dim=-1)
    assert torch.equal(got, plain)


def test_a_non_finite_batch_is_taken_back_and_replayed_unsteered(tiny_lm, tiny_sae):
    """With read-back every 5 steps the bad steps are found late; the whole batch is rewound,
    sampler included, and the music is exactly the unsteered music."""
    plain = TokenLoop(tiny_lm, ["x"], SamplingConfig(seed=3)).frames(16)
    with Steerer(tiny_lm, tiny_sae, cfg_doubled=True) as steerer:
        steerer.set_vector(torch.full((tiny_lm.hidden_size,), float("inf")))
        loop = TokenLoop(tiny_lm, ["x"], SamplingConfig(seed=3), readback=5)
        steerer.attach(loop)
        assert torch.equal(loop.frames(16), plain)
        assert loop.nonfinite_steps == 16 + tiny_lm.num_codebooks - 1


def test_switching_steering_on_and_off_mid_run_follows_the_buffers(tiny_lm, tiny_sae):
    """The edit is read from persistent buffers each step: switching it between steps changes
    exactly the steps after the switch, as a fresh plan per step would."""
    f = alive_features(tiny_sae, 1)[0]
    spec = SteeringSpec((FeatureSteer(f, 3.0),))
    with Steerer(tiny_lm, tiny_sae, cfg_doubled=True) as steerer:
        steerer.set(spec)
        loop = TokenLoop(tiny_lm, ["x"], SamplingConfig(seed=5))
        steered = loop.frames(10)
        steerer.set(None)
        after = loop.frames(10)
        plain = TokenLoop(tiny_lm, ["x"], SamplingConfig(seed=5)).frames(20)
        assert not torch.equal(steered, plain[..., :10])
        assert not torch.equal(after, plain[..., 10:])  # same sampler, different context
        steerer.set(spec)
        again = TokenLoop(tiny_lm, ["x"], SamplingConfig(seed=5)).frames(10)
    assert torch.equal(again, steered)


def test_cond_half_steering_leaves_the_unconditional_rows(tiny_lm, tiny_sae):
    from engine.hooks import ResidualTap

    f = alive_features(tiny_sae, 1)[0]
    seen = []
    with Steerer(tiny_lm, tiny_sae, cfg_doubled=True) as steerer:
        vector = steerer.vector_for({f: 2.0})
        with ResidualTap(tiny_lm, tiny_sae.cfg.hook_layer, cfg_doubled=True, record_rows="all") as after:
            after.recording = True  # registered after the steerer's tap: sees the edited residual
            for v, halves in ((torch.zeros_like(vector), "both"), (vector, "cond"), (vector, "both")):
                steerer.set_vector(v, halves)
                TokenLoop(tiny_lm, ["x"], SamplingConfig(seed=1)).step()
                seen.append(after.take()[:, -1])
    base, cond, both = seen
    assert torch.equal(cond[1], base[1])  # the unconditional row is untouched
    torch.testing.assert_close(cond[0], base[0] + vector)
    torch.testing.assert_close(both, base + vector)


def test_clamp_mode_is_not_graph_safe_and_add_mode_is(tiny_lm, tiny_sae):
    f = alive_features(tiny_sae, 1)[0]
    with Steerer(tiny_lm, tiny_sae, cfg_doubled=True) as steerer:
        loop = TokenLoop(tiny_lm, ["x"], SamplingConfig(seed=0), graph=True)
        steerer.attach(loop)
        assert loop.graphs is None and not loop.graphed  # no CUDA here: the step is eager
        steerer.set(SteeringSpec((FeatureSteer(f, 1.0),), mode="clamp"))
        assert not steerer.graph_safe and not steerer.tap.graph_safe
        steerer.set(SteeringSpec((FeatureSteer(f, 1.0),)))
        assert steerer.graph_safe and steerer.tap.graph_safe


def _with_graphs(loop: TokenLoop) -> TokenLoop:
    """A CPU loop given the graph bookkeeping a CUDA loop has (nothing is captured here)."""
    loop.graphs = StepGraphs(loop._step_core, [loop._tokens], loop._generator)
    return loop


def test_a_hook_a_replay_would_freeze_makes_the_step_eager(tiny_lm, tiny_sae):
    """A replayed graph runs no Python: a recording tap or any other hook on a decoder layer
    would run once, at capture, and then silently never again."""
    loop = _with_graphs(TokenLoop(tiny_lm, ["x"], SamplingConfig(seed=0)))
    assert loop.eager_reason is None and loop.graphed
    with Steerer(tiny_lm, tiny_sae, cfg_doubled=True) as steerer:
        steerer.set_vector(steerer.vector_for({alive_features(tiny_sae, 1)[0]: 1.0}))
        assert loop.eager_reason is None  # the steering tap reads only device buffers
        with recording(tiny_lm, [1]):
            assert "decoder layer 1" in loop.eager_reason and not loop.graphed
        handle = tiny_lm.decoder_layers[0].register_forward_hook(lambda module, args, output: None)
        try:
            assert "decoder layer 0" in loop.eager_reason
        finally:
            handle.remove()
        assert loop.graphed


def test_a_dropped_loop_is_freed_without_the_cycle_collector(tiny_lm):
    """The graphs hold the loop's step weakly: a loop (its caches, on a GPU its graph pool)
    goes as soon as its last reference does."""
    loop = _with_graphs(TokenLoop(tiny_lm, ["x"], SamplingConfig(seed=0)))
    gone = weakref.ref(loop)
    gc.disable()
    try:
        del loop
        assert gone() is None
    finally:
        gc.enable()


def test_a_melody_condition_shorter_than_its_cache_room_is_masked(melody_lm, a_melody):
    """On a GPU a melody model's condition room is rounded up (so a new prompt keeps the captured
    graph); the positions past the condition must be masked: the same logits as a cache with
    exactly the condition's room."""
    enc, mask = encode_prompts(melody_lm, ["techno groove"], null_half=True, melody=a_melody)
    columns = torch.randint(0, melody_lm.codebook_size, (2, melody_lm.num_codebooks, 12))
    decoder = StaticDecoder(melody_lm, rows=2, max_context=16)
    out = []
    with torch.no_grad():
        for room in (enc.shape[1], enc.shape[1] + 29):
            cache = decoder.new_cache(room)
            decoder.set_prompt(cache, (enc, mask))
            assert cache.prefix == room and int(cache.prefix_len) == enc.shape[1]
            out.append(
                torch.cat([decoder.forward(columns[..., p : p + 1], cache, torch.tensor([p])) for p in range(12)], 2)
            )
    torch.testing.assert_close(out[1], out[0], atol=1e-5, rtol=1e-5)
