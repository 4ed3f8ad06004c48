"""Recipe sweep for SAE training on planted data: which learning rate and warm-up learn most
per row. Prints one JSON list (one entry per setting), sparsify's default recipe first when
the optional `bench` extra is installed.

    python bench/sae_sweep.py --d 128 --expansion 32 --k 32 --steps 200
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from common import machine
from sae_train import import_sparsify, train_ours, train_sparsify

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from planted import planted_dictionary, planted_rows, planted_store, recovery

from engine.device import resolve_device
from sae.store import ActivationStore
from sae.train import TrainConfig, default_lr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--features", type=int, default=512)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--expansion", type=int, default=32)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lrs", default="1e-4,4e-4,1.6e-3,6.4e-3,1.28e-2,2.56e-2", help="learning rates to try")
    parser.add_argument("--warmups", default="0,100", help="warm-up steps")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    true = planted_dictionary(args.d, args.features)
    held_out = planted_rows(true, 8192, seed=2)
    base = TrainConfig(
        k=args.k, expansion=args.expansion, steps=args.steps, batch_size=args.batch_size, ce_clips=0, device=args.device
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = ActivationStore(planted_store(Path(tmp) / "acts", true, args.rows, shard_rows=50_000))
        try:
            import_sparsify()
            theirs = train_sparsify(store, 0, base, held_out, resolve_device(base.device))
            rows.append({"recipe": "sparsify default", **_figures(theirs, true)})
        except ImportError:
            pass
        default = default_lr(args.expansion * args.d)
        for lr in (float(x) for x in args.lrs.split(",")):
            for warmup in (int(x) for x in args.warmups.split(",")):
                cfg = replace(base, lr=lr, warmup_steps=warmup)
                ours = train_ours(store, Path(tmp) / f"sae-{lr}-{warmup}", cfg, held_out)
                recipe = f"ours lr {lr:g} ({lr / default:.3g}× default), warm-up {warmup}"
                rows.append({"recipe": recipe, **_figures(ours, true)})
                print(json.dumps(rows[-1]), file=sys.stderr)
    print(json.dumps({"machine": machine(resolve_device(base.device)), "runs": rows}, indent=1))


def _figures(run: dict, true: torch.Tensor) -> dict:
    return {
        "lr": run["lr"],
        "rows_per_s": run["rows_per_s"],
        "held_out_fvu": run["held_out_fvu"],
        "planted_recovery_cos0.9": round(recovery(run["w_dec"], true), 4),
    }


if __name__ == "__main__":
    main()
