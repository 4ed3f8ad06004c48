"""SAE training benchmark: throughput, memory, held-out FVU and planted recovery, as JSON.

Data: a planted dictionary (known true features) written to an activation store and read back
through the pipeline training uses. With `--against sparsify` (needs the optional `bench`
extra: `pip install -e ".[bench]"`, which brings EleutherAI's `eai-sparsify`), sparsify's
`SparseCoder` is trained with its own default recipe (ScheduleFree SignSGD, lr 5e-3/√(m/2¹⁴),
b_dec at the first batch's mean, unit-norm decoder, no AuxK) on the same batches in the same
process, and both trainers' figures and the ratios are printed.

    python bench/sae_train.py --d 128 --expansion 32 --k 32 --steps 200 --against sparsify   # CPU
    python bench/sae_train.py --d 1024 --expansion 32 --k 100 --steps 300 --against sparsify --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import math
import resource
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
from common import machine, one_line_errors

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from planted import planted_dictionary, planted_rows, planted_store, recovery

from engine.device import resolve_device, sync
from sae.store import ActivationStore
from sae.train import Position, ShardBatches, TrainConfig, Trainer


def import_sparsify():
    """sparsify prints a line on import; keep stdout for the JSON. Its package also imports
    its trainer, which needs `datasets` (and pyarrow); where that is missing (a bare GPU image
    with wheels carried in), the race loads the two modules it uses, the coder and SignSGD,
    without the package's own start-up."""
    with contextlib.redirect_stdout(sys.stderr):
        try:
            import sparsify
        except ModuleNotFoundError as exc:
            if exc.name != "datasets":
                raise
            sparsify = _bare_sparsify()
    return sparsify


def _bare_sparsify():
    spec = importlib.util.find_spec("sparsify")
    package = types.ModuleType("sparsify")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["sparsify"] = package
    package.SparseCoder = importlib.import_module("sparsify.sparse_coder").SparseCoder
    package.SparseCoderConfig = importlib.import_module("sparsify.config").SparseCoderConfig
    return package


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    return float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def train_ours(store, out: Path, cfg: TrainConfig, held_out: torch.Tensor) -> dict:
    trainer = Trainer(store, out, cfg)
    trainer.initialise()
    trainer.out.mkdir(parents=True, exist_ok=True)
    batches = trainer.data.iterate(Position(), trainer.device)
    batch = next(batches)[1]  # warm-up step (allocations, first-call costs) outside the clock
    trainer.train_step(batch)
    sync(trainer.device)
    started = time.perf_counter()
    for _ in range(cfg.steps - 1):
        trainer.train_step(next(batches)[1])
        trainer.state.step += 1
    trainer.read_metrics()  # the one sync at the end, as a log line would
    sync(trainer.device)
    seconds = time.perf_counter() - started
    with torch.no_grad():
        sae = trainer.folded_sae()
        x = held_out.to(trainer.device)
        result_fvu = fvu(x, sae(x))
    return {
        "rows_per_s": round((cfg.steps - 1) * cfg.batch_size / seconds, 1),
        "held_out_fvu": round(result_fvu, 4),
        "w_dec": sae.W_dec.detach().cpu(),
        "lr": trainer.lr,
    }


def train_sparsify(store, layer: int, cfg: TrainConfig, held_out: torch.Tensor, device: torch.device) -> dict:
    """sparsify's SparseCoder with its trainer's default recipe (sparsify/trainer.py), on our batches."""
    from schedulefree import ScheduleFreeWrapper

    sparsify = import_sparsify()
    SparseCoder, SparseCoderConfig = sparsify.SparseCoder, sparsify.SparseCoderConfig
    from sparsify.sign_sgd import SignSGD

    d_in = store.meta.d_in
    torch.manual_seed(cfg.seed)
    sae = SparseCoder(d_in, SparseCoderConfig(expansion_factor=cfg.expansion, k=cfg.k), device=device)
    lr = 5e-3 / math.sqrt(sae.num_latents / 2**14)
    opt = ScheduleFreeWrapper(SignSGD([{"params": sae.parameters(), "lr": lr}]), momentum=0.95)
    opt.train()
    batches = ShardBatches(store, layer, cfg).iterate(Position(), device)

    def step(x: torch.Tensor, first: bool) -> None:
        x = x.float()
        if first:
            sae.b_dec.data = x.mean(0)
        sae.set_decoder_norm_to_unit_norm()
        out = sae(x)
        out.fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()

    step(next(batches)[1], first=True)
    sync(device)
    started = time.perf_counter()
    for _ in range(cfg.steps - 1):
        step(next(batches)[1], first=False)
    sync(device)
    seconds = time.perf_counter() - started
    opt.eval()  # schedule-free: evaluate the averaged weights, as sparsify saves them
    with torch.no_grad():
        x = held_out.to(device)
        top_acts, top_indices, _ = sae.encode(x)
        result_fvu = fvu(x, sae.decode(top_acts, top_indices))
    return {
        "rows_per_s": round((cfg.steps - 1) * cfg.batch_size / seconds, 1),
        "held_out_fvu": round(result_fvu, 4),
        "w_dec": sae.W_dec.detach().cpu(),
        "lr": lr,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=1024)
    parser.add_argument("--features", type=int, default=4096, help="planted true features")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--expansion", type=int, default=32)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lr", type=float, help="our learning rate (not given: the default recipe's)")
    parser.add_argument("--dense", action="store_true", help="our dense reference path instead of the sparse one")
    parser.add_argument("--against", choices=("sparsify",), help="also train this peer on the same batches")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    if args.against == "sparsify":
        try:
            import_sparsify()
        except ImportError:
            print('bench: --against sparsify needs eai-sparsify: pip install -e ".[bench]"', file=sys.stderr)
            sys.exit(2)

    torch.set_num_threads(torch.get_num_threads())
    true = planted_dictionary(args.d, args.features)
    held_out = planted_rows(true, 8192, seed=2)
    cfg = TrainConfig(
        k=args.k, expansion=args.expansion, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        ce_clips=0, device=args.device, sparse=not args.dense,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        store = ActivationStore(planted_store(Path(tmp) / "acts", true, args.rows, shard_rows=50_000))
        trainer_device = resolve_device(args.device)
        if trainer_device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        ours = train_ours(store, Path(tmp) / "sae", cfg, held_out)
        peak_cuda = torch.cuda.max_memory_allocated() / 2**20 if trainer_device.type == "cuda" else None
        result = {
            "device": str(trainer_device),
            "machine": machine(trainer_device),
            "threads": torch.get_num_threads(),
            "d_in": args.d,
            "d_sae": args.expansion * args.d,
            "k": args.k,
            "batch_size": args.batch_size,
            "steps": args.steps,
            "rows_seen": args.steps * args.batch_size,
            "ours": {
                "path": "dense" if args.dense else "sparse",
                "lr": ours["lr"],
                "rows_per_s": ours["rows_per_s"],
                "held_out_fvu": ours["held_out_fvu"],
                "planted_recovery_cos0.9": round(recovery(ours["w_dec"], true), 4),
                "peak_cuda_mb": None if peak_cuda is None else round(peak_cuda, 1),
            },
        }
        if args.against == "sparsify":
            theirs = train_sparsify(store, store.meta.layers[0], cfg, held_out, trainer_device)
            result["sparsify"] = {
                "lr": theirs["lr"],
                "rows_per_s": theirs["rows_per_s"],
                "held_out_fvu": theirs["held_out_fvu"],
                "planted_recovery_cos0.9": round(recovery(theirs["w_dec"], true), 4),
            }
            recovered = (result["ours"]["planted_recovery_cos0.9"], result["sparsify"]["planted_recovery_cos0.9"])
            result["ratios_ours_over_sparsify"] = {
                "rows_per_s": round(ours["rows_per_s"] / theirs["rows_per_s"], 3),
                "planted_recovery": round(recovered[0] / max(recovered[1], 1e-9), 3),
                "held_out_fvu": round(ours["held_out_fvu"] / theirs["held_out_fvu"], 3),
            }
        result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    one_line_errors(main)
