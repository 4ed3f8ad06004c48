"""Labeling benchmark: what a labeling run costs per row and per window, as JSON.

- the top-examples pass (SAE encode + running top-k, histograms, clip means) over a planted
  store at musicgen-small's width (d = 1024) with a paper-sized SAE (×32, k = 100);
- descriptors per 3 s window (numpy/scipy);
- CLAP audio embedding per window and the classifier per window, on the *real* architectures
  (HTSAT + RoBERTa, AST base) with random weights: speed does not depend on weight values.

    python bench/label.py [--rows 50000] [--expansion 32] [--k 100] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from common import machine, one_line_errors

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from planted import planted_dictionary, planted_store

from engine.device import resolve_device
from sae.descriptors import describe
from sae.examples import ExampleConfig, find_examples
from sae.files import LoadedSAE
from sae.store import ActivationStore
from sae.topk import SAEConfig, TopKSAE

SR = 32000


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats


def examples_pass(args, device) -> dict:
    true = planted_dictionary(args.d, 4096)
    cfg = SAEConfig(d_in=args.d, d_sae=args.d * args.expansion, k=args.k, hook_layer=0, model_name="planted")
    sae = TopKSAE(cfg).to(device).eval().requires_grad_(False)
    with tempfile.TemporaryDirectory() as tmp:
        store = ActivationStore(planted_store(Path(tmp) / "acts", true, args.rows, shard_rows=25_000))
        with torch.no_grad():
            peaks = sae.encode(store.load_layer(0)[:4096].to(device)).max(0).values
        zeros = torch.zeros(cfg.d_sae, device=device)
        from sae.files import FeatureStats

        loaded = LoadedSAE(sae, FeatureStats(zeros, zeros, peaks.clamp(min=1e-3)), Path(tmp))
        features = list(range(min(args.features, cfg.d_sae)))
        started = time.perf_counter()
        find_examples(store, loaded, features, 50, ExampleConfig())
        seconds = time.perf_counter() - started
    return {
        "d_in": args.d,
        "d_sae": cfg.d_sae,
        "k": args.k,
        "rows": args.rows,
        "features": len(features),
        "examples_rows_per_s": round(args.rows / seconds, 1),
        "examples_seconds": round(seconds, 2),
    }


def window_costs(device, repeats: int) -> dict:
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification, ClapConfig, ClapModel

    from sae.labelers.base import extracted

    rng = np.random.default_rng(0)
    windows = [(0.1 * rng.standard_normal(3 * SR)).astype(np.float32) for _ in range(8)]
    out = {"descriptors_ms_per_window": round(1000 * timed(lambda: describe(windows[0], SR), repeats), 1)}

    from transformers import ClapFeatureExtractor

    clap = ClapModel(ClapConfig()).to(device).eval()
    clap_fe = ClapFeatureExtractor(truncation="rand_trunc")

    @torch.no_grad()
    def clap_batch():
        for inputs in extracted(clap_fe, windows, SR, device, batch=len(windows)):
            clap.get_audio_features(**inputs)

    out["clap_ms_per_window"] = round(1000 * timed(clap_batch, repeats) / len(windows), 1)
    ast = ASTForAudioClassification(ASTConfig(num_labels=527)).to(device).eval()
    ast_fe = ASTFeatureExtractor()

    @torch.no_grad()
    def ast_batch():
        for inputs in extracted(ast_fe, windows, SR, device, batch=len(windows)):
            ast(**inputs)

    out["classifier_ms_per_window"] = round(1000 * timed(ast_batch, repeats) / len(windows), 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=1024)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--expansion", type=int, default=32)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--features", type=int, default=1000, help="features whose examples are gathered")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    warnings.filterwarnings("ignore", message="At least one mel filter")  # AST's stock extractor settings
    torch.manual_seed(0)
    result = {
        "device": str(device),
        "machine": machine(device),
        **examples_pass(args, device),
        **window_costs(device, args.repeats),
    }
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    one_line_errors(main)
