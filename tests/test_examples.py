"""Top windows per frame, clip-mean ranking, histograms and negatives on planted activations."""

from __future__ import annotations

import torch
from planted import identity_topk

from sae.examples import ExampleConfig, find_examples, window_around
from sae.files import FeatureStats, LoadedSAE
from sae.store import ActivationStore, StoreMeta, StoreWriter

D = 6
FRAME_RATE = 10  # window_s 1.0 → 10 frames


def identity_sae(peaks: torch.Tensor) -> LoadedSAE:
    """Codes = ReLU(x): feature j reads coordinate j, so planted rows are the ground truth."""
    zeros = torch.zeros(D)
    return LoadedSAE(identity_topk(D), FeatureStats(zeros, zeros, peaks), path=None)


def planted(tmp_path, workers: int = 2):
    """12 clips of 50 frames over 2 workers; feature 0 peaks at known places, feature 1 is a steady hum in clip 3."""
    gen = torch.Generator().manual_seed(0)
    clips = {}
    for c in range(12):
        x = -torch.rand(50, D, generator=gen)  # everything silent (ReLU → 0)
        x[:, 2] = 0.1  # feature 2 fires weakly everywhere
        clips[f"c{c}"] = x
    peaks = {("c5", 20): 9.0, ("c5", 24): 8.5, ("c5", 40): 7.0, ("c8", 3): 6.0, ("c1", 49): 5.0}
    for (name, frame), value in peaks.items():
        clips[name][frame, 0] = value
    clips["c3"][:, 1] = 1.0
    clips["c7"][10, 1] = 4.0
    folder = tmp_path / "acts"
    meta = StoreMeta("planted", (0,), D, "float32", "synthetic")
    writers = [StoreWriter(folder, meta, w, workers, shard_rows=120) for w in range(workers)]
    for i, (name, x) in enumerate(clips.items()):
        writers[i % workers].add_clip(name, {0: x})
    for w in writers:
        w.flush()
    return ActivationStore(folder)


def test_window_around_stays_inside_the_clip():
    assert window_around(20, 10, 50) == (15, 25)
    assert window_around(2, 10, 50) == (0, 10)
    assert window_around(49, 10, 50) == (40, 50)
    assert window_around(3, 10, 6) == (0, 6)


def test_top_windows_are_the_planted_peaks_without_overlap(tmp_path):
    store = planted(tmp_path)
    loaded = identity_sae(torch.tensor([9.0, 4.0, 0.1, 1, 1, 1]))
    ex = find_examples(store, loaded, [0, 1, 2], FRAME_RATE, ExampleConfig(top_n=4, window_s=1.0, negatives=6))
    top = ex.features[0].top
    got = [(store.clips[w.clip], w.peak, w.activation) for w in top]
    # c5@24 lies within one window of c5@20 and is skipped; c5@40 does not overlap
    assert got == [("c5", 20, 9.0), ("c5", 40, 7.0), ("c8", 3, 6.0), ("c1", 49, 5.0)]
    assert all(w.stop - w.start == 10 and w.start <= w.peak < w.stop for w in top)
    assert (top[-1].start, top[-1].stop) == (40, 50)
    # clip means: the steady hum of c3 beats the single spike in c7 for feature 1
    assert [store.clips[c] for c, _ in ex.features[1].top_clips] == ["c3", "c7"]
    assert abs(ex.features[1].top_clips[0][1] - 1.0) < 1e-6
    assert ex.features[1].top[0].activation == 4.0  # yet the single strongest frame is c7's
    # histogram: feature 0 fired 5 times; feature 2 fired on all 600 frames
    assert sum(ex.features[0].histogram) == 5 and ex.features[0].histogram[-1] == 1
    assert sum(ex.features[2].histogram) == 600
    assert len(ex.negatives) == 6 and all(0 <= w.start < w.stop <= 50 for w in ex.negatives)


def test_negatives_are_reproducible_and_clip_lookup_matches(tmp_path):
    store = planted(tmp_path)
    loaded = identity_sae(torch.ones(D))
    a = find_examples(store, loaded, [0], FRAME_RATE, ExampleConfig(negatives=5, seed=3)).negatives
    b = find_examples(store, loaded, [0], FRAME_RATE, ExampleConfig(negatives=5, seed=3)).negatives
    assert a == b
    top_clips = find_examples(store, loaded, [0], FRAME_RATE).features[0].top_clips
    assert store.clips.index("c8") in {c for c, _ in top_clips}
