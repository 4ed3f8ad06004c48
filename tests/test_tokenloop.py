"""Our token loop against transformers' generate(): same seed, same audio."""

from __future__ import annotations

import pytest
import torch

from engine.errors import MgsteerError
from engine.tokenloop import SamplingConfig, TokenLoop, decode_codes


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
    assert first == [None] * (k - 1)
    frame = loop.step()
    assert frame.shape == (2, k)
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
