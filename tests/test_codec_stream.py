"""Chunked EnCodec decoding: same audio as one decode, except inside crossfades; joins inaudible."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from engine.codec import decode_codes
from engine.codec_stream import ChunkConfig, ChunkedDecoder, codec_right_reach, fade_curves
from engine.errors import MgsteerError
from engine.host import LOW_LATENCY_CHUNK, LOW_LATENCY_CHUNKS
from engine.tokenloop import SamplingConfig, TokenLoop


@pytest.fixture(scope="module")
def tokens_and_oneshot(tiny_lm):
    codes = TokenLoop(tiny_lm, ["simple melody"], SamplingConfig(seed=5)).frames(500)  # 10 s
    return codes, decode_codes(tiny_lm, codes)[0].numpy()


def _stream(lm, codes, cfg):
    decoder = ChunkedDecoder(lm, cfg)
    blocks = [b for frame in codes[0].T if (b := decoder.push(frame)) is not None]
    blocks.append(decoder.flush())
    return np.concatenate(blocks), decoder


def _window_stats(audio, starts, width):
    """Per-window max sample jump and max spectral flux, for windows starting at `starts`."""
    jumps = np.abs(np.diff(audio, prepend=audio[0]))
    n_fft, hop = 256, 64
    frames = np.lib.stride_tricks.sliding_window_view(audio, n_fft)[::hop] * np.hanning(n_fft)
    mag = np.abs(np.fft.rfft(frames, axis=-1))
    flux = np.concatenate([[0.0], (np.maximum(mag[1:] - mag[:-1], 0) ** 2).sum(-1)])
    out = []
    for s in starts:
        f0, f1 = max(0, (s - n_fft) // hop), (s + width) // hop + 1
        out.append((jumps[s : s + width].max(), flux[f0:f1].max()))
    return np.array(out)


def _join_report(audio, joins, width):
    starts = range(width, len(audio) - 2 * width, width // 8)
    inside = [s for s in starts if all(s + width <= j or s >= j + width for j in joins)]
    ref = _window_stats(audio, inside, width)
    at_joins = _window_stats(audio, joins, width)
    return at_joins, np.percentile(ref, 99, axis=0)


@pytest.mark.parametrize(
    "cfg",
    [ChunkConfig(), ChunkConfig(chunk=16), replace(LOW_LATENCY_CHUNK, chunk=LOW_LATENCY_CHUNKS[0])],
    ids=["default", "default-cpu", "low-latency"],
)
def test_stream_matches_oneshot_outside_crossfades(tiny_lm, tokens_and_oneshot, cfg):
    codes, oneshot = tokens_and_oneshot
    streamed, decoder = _stream(tiny_lm, codes, cfg)
    assert len(streamed) == len(oneshot)
    assert len(decoder.joins) >= 0.9 * codes.shape[-1] / cfg.chunk  # a join per chunk
    outside = np.ones(len(streamed), bool)
    for j in decoder.joins:
        outside[j : j + decoder.xf] = False
    err = np.abs(streamed - oneshot)
    assert err[outside].max() < 2e-3 * np.abs(oneshot).max()
    # Inside-chunk windows exceed their own 99th percentile 1% of the time by definition, so joins
    # may too by chance; a click would put most joins above it (see the negative control below).
    at_joins, p99 = _join_report(streamed, decoder.joins, decoder.xf)
    jump_above, flux_above = (at_joins > p99).mean(axis=0)
    assert jump_above <= 0.05, f"{jump_above:.0%} of joins have a sample jump above the inside p99"
    assert flux_above <= 0.05, f"{flux_above:.0%} of joins have spectral flux above the inside p99"


def test_join_metric_flags_clicks(tiny_lm, tokens_and_oneshot):
    """Control for the metric: a step at every join is flagged at most joins (by flux at least:
    single-sample jumps are a weak detector on the tiny model's noise-like audio)."""
    codes, _ = tokens_and_oneshot
    streamed, decoder = _stream(tiny_lm, codes, ChunkConfig())
    clicked = streamed.copy()
    peak = np.abs(streamed).max()
    for i, j in enumerate(decoder.joins):
        clicked[j + decoder.xf // 2 :] += (1.0 if i % 2 == 0 else -1.0) * peak
    at_joins, p99 = _join_report(clicked, decoder.joins, decoder.xf)
    assert (at_joins > p99).mean(axis=0).max() > 0.8


def test_holdback_is_what_makes_chunks_exact(tiny_lm, tokens_and_oneshot):
    """Control for the design: without hold-back the non-causal codec's block ends are wrong."""
    codes, oneshot = tokens_and_oneshot
    naive = ChunkedDecoder(tiny_lm, ChunkConfig(holdback=0, crossfade_ms=0.0))
    audio = np.concatenate([b for frame in codes[0].T if (b := naive.push(frame)) is not None])
    err = np.abs(audio - oneshot[: len(audio)])
    assert err.max() > 0.2 * np.abs(oneshot).max()


@pytest.mark.parametrize("cfg", [ChunkConfig(), LOW_LATENCY_CHUNK], ids=["default", "low-latency"])
def test_holdback_covers_the_codec_reach(tiny_lm, cfg):
    hop = tiny_lm.sample_rate // tiny_lm.frame_rate
    reach = codec_right_reach(tiny_lm)
    assert 1 <= reach <= 6
    assert cfg.holdback * hop >= reach * hop + cfg.crossfade_samples(tiny_lm.sample_rate)
    assert cfg.context >= 10 and cfg.crossfade_ms >= 20


def test_fade_curves():
    out, inn = fade_curves(1280, "equal-gain")
    np.testing.assert_allclose(out + inn, 1.0, atol=1e-6)
    out, inn = fade_curves(1280, "equal-power")
    np.testing.assert_allclose(out**2 + inn**2, 1.0, atol=1e-6)
    assert inn[0] < 0.01 and inn[-1] > 0.99


def test_bad_chunk_configs(tiny_lm):
    for cfg, needle in [
        (ChunkConfig(chunk=0), "bad chunking"),
        (ChunkConfig(holdback=1, crossfade_ms=40), "must fit"),
        (ChunkConfig(curve="linear"), "unknown crossfade curve"),
    ]:
        with pytest.raises(MgsteerError, match=needle):
            ChunkedDecoder(tiny_lm, cfg)


def test_flush_plays_everything(tiny_lm):
    codes = torch.randint(0, tiny_lm.codebook_size, (1, tiny_lm.num_codebooks, 13))
    streamed, _ = _stream(tiny_lm, codes, ChunkConfig())
    assert len(streamed) == 13 * tiny_lm.sample_rate // tiny_lm.frame_rate


def test_a_stereo_stream_matches_its_oneshot_in_both_channels(stereo_lm):
    codes = TokenLoop(stereo_lm, ["simple melody"], SamplingConfig(seed=5)).frames(150)
    oneshot = decode_codes(stereo_lm, codes)[0].numpy().T  # [samples, 2]
    streamed, decoder = _stream(stereo_lm, codes, ChunkConfig())
    assert streamed.shape == oneshot.shape and streamed.shape[1] == 2
    outside = np.ones(len(streamed), bool)
    for j in decoder.joins:
        outside[j : j + decoder.xf] = False
    assert np.abs(streamed - oneshot)[outside].max() < 2e-3 * np.abs(oneshot).max()
    assert not np.allclose(streamed[:, 0], streamed[:, 1])
