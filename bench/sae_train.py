"""SAE training benchmark: throughput, peak memory and FVU at fixed steps, as JSON.

Data: a planted dictionary at musicgen-small's width (d = 1024), written to a temporary
activation store and read back through the same shard pipeline training uses.

    python bench/sae_train.py [--expansion 8] [--k 32] [--batch-size 4096] [--steps 60] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from planted import planted_dictionary, planted_store, recovery

from sae.store import ActivationStore
from sae.train import TrainConfig, Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=1024)
    parser.add_argument("--features", type=int, default=4096, help="planted true features")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--expansion", type=int, default=8)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    true = planted_dictionary(args.d, args.features)
    with tempfile.TemporaryDirectory() as tmp:
        store = ActivationStore(planted_store(Path(tmp) / "acts", true, args.rows, shard_rows=50_000))
        marks = sorted({max(1, args.steps // 4), args.steps // 2, args.steps})
        cfg = TrainConfig(
            k=args.k, expansion=args.expansion, steps=args.steps, batch_size=args.batch_size,
            log_every=1, checkpoint_every=10**9, ce_clips=0, device=args.device,
        )  # fmt: skip
        trainer = Trainer(store, Path(tmp) / "sae", cfg)
        if trainer.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        trainer.run()
        seconds = time.perf_counter() - started
        lines = [json.loads(x) for x in (Path(tmp) / "sae" / "metrics.jsonl").read_text().splitlines()]
        fvu = {m["step"]: m["fvu"] for m in lines if m.get("step") in marks and "fvu" in m}
        result = {
            "device": str(trainer.device),
            "d_in": args.d,
            "d_sae": trainer.sae_cfg.d_sae,
            "k": args.k,
            "batch_size": args.batch_size,
            "steps": args.steps,
            "rows_per_s": round(args.steps * args.batch_size / seconds, 1),
            "seconds": round(seconds, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "peak_cuda_mb": (
                round(torch.cuda.max_memory_allocated() / 2**20, 1) if trainer.device.type == "cuda" else None
            ),
            "fvu_at_step": fvu,
            "planted_recovery_cos0.9": round(recovery(trainer.sae.W_dec.detach().cpu(), true), 4),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
