"""Does `make demo` steer on any machine? Its whole pipeline on N worlds that differ only in
their training seed: what another CPU's float sums amount to (a world trained on an AVX-512
Xeon differs from one trained on an AVX2 EPYC as much as one trained with another seed).

A world counts as steered when the demo's clip reaches the chosen value with the music kept:
the exact scorer's posterior of that value rises by at least 0.5, to at least 0.5, and the
steered clip's grammar log-likelihood stays above the selection's quality floor. Prints one
JSON object (the machine, each world's choice and figures, how many steered).

    python bench/demo_robust.py --worlds 8 [--out DIR]   # about 6 min a world on two cores
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from common import machine, one_line_errors

from cli.demo import DemoConfig, run_demo
from sae.world.pipeline import SteerSelection

MIN_RISE = 0.5


def steered(result: dict) -> bool:
    before, after = result["posterior"]["plain"], result["posterior"]["steered"]
    return bool(result["target"]["reached_and_grammatical"]) and after - before >= MIN_RISE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", type=int, default=8, help="training seeds 0 … N − 1")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--out", help="folder for the worlds (default: a temporary one)")
    args = parser.parse_args()
    base = DemoConfig()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        for seed in range(args.first_seed, args.first_seed + args.worlds):
            cfg = replace(base, world=replace(base.world, seed=seed))
            started = time.perf_counter()
            with contextlib.redirect_stdout(sys.stderr):  # the demo's lines; stdout is the JSON
                result = run_demo(root / f"world-seed{seed}", cfg)
            target = result["target"]
            runs.append({
                "training_seed": seed,
                "attribute": target["attribute"],
                "value": target["value"],
                "feature": target["feature"],
                "source": target["source"],
                "alpha": target["alpha"],
                "clip_seed": target["seed"],
                "posterior": result["posterior"],
                "grammar_loglik": result["grammar_loglik"],
                "steered": steered(result),
                "seconds": round(time.perf_counter() - started, 1),
            })  # fmt: skip
            print(f"world seed {seed}: {json.dumps(runs[-1])}", file=sys.stderr, flush=True)
    print(json.dumps({
        "machine": machine(),
        "worlds": len(runs),
        "steered": sum(r["steered"] for r in runs),
        "rule": f"posterior rise ≥ {MIN_RISE} to ≥ 0.5, grammar ≥ {SteerSelection().quality_floor}",
        "runs": runs,
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    one_line_errors(main)
