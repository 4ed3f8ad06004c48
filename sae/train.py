"""Train a TopK (or BatchTopK) SAE on an activation store.

Recipe (Gao et al. 2024, as SAELens and dictionary_learning do it):
- inputs scaled so E‖x‖² = d_in (the scale is folded into the saved weights, so the saved
  SAE reads raw activations and SAELens sees `normalize_activations: none`);
- b_dec starts at the geometric median (or mean) of the data; W_enc = W_decᵀ, unit-norm rows;
- loss = normalised MSE + AuxK/32: dead latents (not fired for `dead_steps` steps) are asked
  to reconstruct the residual error, which revives them;
- decoder rows stay unit-norm: the gradient component parallel to each row is removed
  before the Adam step and rows are renormalised after it;
- Adam with linear warm-up and a linear decay to zero over the last `decay_frac` of steps.

Data: each epoch visits the shards in a seeded order, `group_shards` at a time; a group's rows
are shuffled together (so batches mix shards) and cut into batches. The position (epoch,
group, batch) is all the data state there is, so a checkpoint resumes exactly. Under torchrun
every rank takes its own slice of each global batch and gradients are averaged (all_reduce;
gloo on CPU, NCCL on GPU), so N processes train the same SAE as one.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from engine.errors import MgsteerError
from engine.inputs import read_json_object
from engine.outputs import clear_own
from sae.files import FeatureStats, StatsAccumulator, cfg_json, save_sae
from sae.sparse import sparse_decode, topk_encode
from sae.store import ActivationStore
from sae.topk import SAEConfig, TopKSAE

ARCHITECTURES = ("topk", "batchtopk")
# At 16384 latents; scaled by default_lr. 32× Gao et al.'s 2e-4, with no warm-up: the best of the
# planted-data sweep in docs/SAE_TOOLKIT.md (it learns per row at least as fast as sparsify's recipe).
DEFAULT_LR_16K = 6.4e-3
AUX_CHECK_EVERY = 10  # steps between host reads of "is any latent dead?" (AuxK on or off)


@dataclass(frozen=True)
class TrainConfig:
    layer: int | None = None  # None: the store's only layer
    k: int = 32
    expansion: int = 4
    architecture: str = "topk"
    steps: int = 10_000
    batch_size: int = 4096
    lr: float | None = None  # None: default_lr(d_sae) = 6.4e-3 / √(d_sae / 16384)
    warmup_steps: int = 0
    decay_frac: float = 0.2
    aux_k: int | None = None  # None: min(d_in / 2, d_sae)
    aux_coef: float = 1 / 32
    dead_steps: int = 200  # a latent not fired for this many steps is dead
    b_dec_init: str = "geometric_median"
    group_shards: int = 4
    checkpoint_every: int = 1000
    log_every: int = 50
    ce_clips: int = 8  # clips for codebook CE recovered at the end (0: skip; needs codes in the store)
    seed: int = 0
    device: str = "auto"
    sparse: bool = True  # TopK through sae.sparse (False: the dense reference path)

    def validate(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise MgsteerError(f"unknown architecture '{self.architecture}': use {' or '.join(ARCHITECTURES)}")
        if self.b_dec_init not in ("geometric_median", "mean"):
            raise MgsteerError(f"unknown b_dec init '{self.b_dec_init}': use geometric_median or mean")
        for name in ("k", "expansion", "steps", "batch_size", "group_shards", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise MgsteerError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(self, name)}")
        if not ((self.lr is None or self.lr > 0) and 0 <= self.decay_frac <= 1 and self.warmup_steps >= 0):
            raise MgsteerError("need lr > 0, 0 ≤ decay fraction ≤ 1 and warm-up ≥ 0")


@dataclass
class Position:
    epoch: int = 0
    group: int = 0
    batch: int = 0


class ShardBatches:
    """Deterministic shuffled batches over a store's shards for one layer (see module doc)."""

    def __init__(self, store: ActivationStore, layer: int, cfg: TrainConfig, rank: int = 0, world: int = 1):
        self.files = store.shard_files(layer)
        self.store, self.cfg, self.rank, self.world = store, cfg, rank, world
        if store.rows() < cfg.batch_size:
            raise MgsteerError(
                f"store '{store.folder}' has {store.rows()} rows, fewer than one batch ({cfg.batch_size}); "
                "lower --batch-size or harvest more"
            )
        if cfg.batch_size % world:
            raise MgsteerError(f"--batch-size {cfg.batch_size} must divide among {world} processes")

    def _groups(self, epoch: int) -> list[list[Path]]:
        gen = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        order = torch.randperm(len(self.files), generator=gen).tolist()
        g = self.cfg.group_shards
        return [[self.files[i] for i in order[s : s + g]] for s in range(0, len(order), g)]

    def _group_keys(self, start: Position) -> Iterator[tuple[int, int, list[Path], int]]:
        """(epoch, group, files, first batch) from `start` on, forever."""
        epoch, group, batch = start.epoch, start.group, start.batch
        while True:
            groups = self._groups(epoch)
            for number in range(group, len(groups)):
                yield epoch, number, groups[number], batch
                batch = 0
            epoch, group = epoch + 1, 0

    def _load(self, files: list[Path], pin: bool) -> torch.Tensor:
        """A group's rows in the store's dtype (half the bytes of float32), pinned for a GPU."""
        acts = torch.cat([self.store.load_shard(p)["acts"] for p in files])
        return acts.pin_memory() if pin else acts

    def iterate(self, start: Position, device: torch.device | None = None) -> Iterator[tuple[Position, torch.Tensor]]:
        """Batches from `start` on, on `device`. The next group is read on a second thread while
        this one trains, copied to the device in one asynchronous transfer, and shuffled and cut
        there, so the host holds at most two groups and the device never waits on indexing."""
        device = device or torch.device("cpu")
        pin = device.type == "cuda"
        per = self.cfg.batch_size
        keys = self._group_keys(start)
        with ThreadPoolExecutor(1, thread_name_prefix="mgsteer-prefetch") as pool:
            key = next(keys)
            loading = pool.submit(self._load, key[2], pin)
            while True:
                epoch, group, _, first = key
                acts = loading.result()
                key = next(keys)
                loading = pool.submit(self._load, key[2], pin)
                acts = acts.to(device, non_blocking=True)
                gen = torch.Generator().manual_seed(hash((self.cfg.seed, epoch, group)) % 2**62)
                perm = torch.randperm(len(acts), generator=gen).to(device)
                for batch in range(first, len(acts) // per):
                    idx = perm[batch * per : (batch + 1) * per][self.rank :: self.world]
                    yield Position(epoch, group, batch + 1), acts[idx]


def geometric_median(x: torch.Tensor, iterations: int = 30) -> torch.Tensor:
    """Weiszfeld's algorithm: robust centre of the data (less pulled by outliers than the mean)."""
    median = x.mean(0)
    for _ in range(iterations):
        weights = 1.0 / (x - median).norm(dim=1).clamp(min=1e-6)
        median = (weights[:, None] * x).sum(0) / weights.sum()
    return median


@dataclass
class TrainState:
    step: int = 0
    position: Position = field(default_factory=Position)
    scale: float = 1.0


class Trainer:
    def __init__(self, store: ActivationStore, out: str | Path, cfg: TrainConfig) -> None:
        from engine.device import resolve_device

        cfg.validate()
        self.store, self.out, self.cfg = store, Path(out), cfg
        self.rank, self.world = _dist_info()
        if self.world > 1 and cfg.device == "auto":
            self.device = torch.device(
                f"cuda:{self.rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"
            )
        else:
            self.device = resolve_device(cfg.device)
        layers = store.meta.layers
        if cfg.layer is None and len(layers) > 1:
            raise MgsteerError(f"store '{store.folder}' has layers {list(layers)}: choose one with --layer")
        self.layer = store.check_layer(cfg.layer if cfg.layer is not None else layers[0])
        d_in = store.meta.d_in
        if cfg.k > cfg.expansion * d_in:
            raise MgsteerError(
                f"--k {cfg.k} exceeds the SAE's {cfg.expansion * d_in} features "
                f"(expansion {cfg.expansion} × d_in {d_in}); lower --k or raise --expansion"
            )
        self.sae_cfg = SAEConfig(d_in, cfg.expansion * d_in, cfg.k, self.layer, store.meta.model)
        self.aux_k = cfg.aux_k or min(d_in // 2, self.sae_cfg.d_sae)
        self.data = ShardBatches(store, self.layer, cfg, self.rank, self.world)
        torch.manual_seed(cfg.seed)
        self.sae = TopKSAE(self.sae_cfg).to(self.device)
        self.lr = cfg.lr or default_lr(self.sae_cfg.d_sae)
        self.opt = torch.optim.Adam(self.sae.parameters(), lr=self.lr, betas=(0.9, 0.999))
        self.since_fired = torch.zeros(self.sae_cfg.d_sae, dtype=torch.long, device=self.device)
        self.aux_on = False  # refreshed from since_fired every AUX_CHECK_EVERY steps
        self._sums = torch.zeros(5, device=self.device)  # metric sums since the last read
        self._read_at = 0
        self._bad_step = torch.tensor(-1, device=self.device)  # first step whose loss was not finite
        self.state = TrainState()
        self.metrics_path = self.out / "metrics.jsonl"

    # ---- lifecycle ----------------------------------------------------------------------------
    def initialise(self) -> None:
        """Input scale and b_dec from the first batches (identical on every rank)."""
        sample = torch.cat([b for _, b in _take(ShardBatches(self.store, self.layer, self.cfg).iterate(Position()), 4)])
        sample = sample[:8192].to(self.device).float()
        self.state.scale = math.sqrt(self.sae_cfg.d_in / sample.pow(2).sum(1).mean().item())
        scaled = sample * self.state.scale
        centre = geometric_median(scaled) if self.cfg.b_dec_init == "geometric_median" else scaled.mean(0)
        with torch.no_grad():
            self.sae.b_dec.copy_(centre)

    @torch.enable_grad()  # a caller may have turned gradients off for its own inference
    def run(
        self, resume: bool = False, stop_after: int | None = None, progress: bool = False, overwrite: bool = False
    ) -> dict:
        """Train to `cfg.steps` (or `stop_after` steps, for tests); returns the last metrics.

        A fresh run needs an empty `out` (or `overwrite`, which clears an earlier SAE or run
        there): stale labels, examples or checkpoints of another SAE must never sit beside
        this one."""
        from tqdm import tqdm

        if resume:
            self.load_checkpoint()
        else:
            if self.rank == 0:
                claim_folder(self.out, overwrite)
                (self.out / "train_config.json").write_text(json.dumps(asdict(self.cfg), indent=1))
                self.metrics_path.write_text("")
            if self.world > 1:
                dist.barrier()
            self.initialise()
        last: dict = {}
        end = self.cfg.steps if stop_after is None else min(self.cfg.steps, stop_after)
        bar = tqdm(total=self.cfg.steps, initial=self.state.step, unit="step", disable=not progress or self.rank)
        batches = self.data.iterate(self.state.position, self.device)
        started, first = time.perf_counter(), self.state.step
        while self.state.step < end:
            pos, batch = next(batches)
            self.train_step(batch)
            self.state.position = pos
            self.state.step += 1
            bar.update(1)
            if self.state.step % self.cfg.log_every == 0 or self.state.step == self.cfg.steps:
                rows_per_s = (self.state.step - first) * self.cfg.batch_size / (time.perf_counter() - started)
                last = {**self.read_metrics(), "step": self.state.step, "rows_per_s": round(rows_per_s, 1)}
                self._log(last)
            if self.state.step % self.cfg.checkpoint_every == 0 and self.state.step < self.cfg.steps:
                self._check_finite()
                self.save_checkpoint()
        bar.close()
        self._check_finite()
        if self.world > 1:
            dist.barrier()
            dist.destroy_process_group()
        if self.state.step >= self.cfg.steps and self.rank == 0:
            last = {**last, **self.save_final()}
        return last

    def _check_finite(self) -> None:
        """Stop if a loss since the last check, or a weight now, is not finite (one host sync)."""
        bad_step = int(self._bad_step)
        if bad_step >= 0:
            self.state.step = bad_step
            self._diverged("the loss is not finite")
        bad = [name for name, p in self.sae.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            self._diverged(f"non-finite {', '.join(bad)}")

    def _diverged(self, what: str) -> None:
        """Stop with one line; the last checkpoint written (if any) stays as it was."""
        pointer = self.out / "latest.json"
        kept = (
            f"the last good checkpoint ({read_json_object(pointer, 'checkpoint pointer').get('checkpoint')}) "
            "is kept for --resume"
            if pointer.is_file()
            else "no checkpoint was written yet"
        )
        raise MgsteerError(
            f"training diverged at step {self.state.step + 1} ({what}) with learning rate {self.lr:.3g}; "
            f"lower --lr; {kept}"
        )

    # ---- one step ------------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        cfg = self.cfg
        warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
        decay_start = cfg.steps * (1 - cfg.decay_frac)
        decay = 1.0 if step < decay_start else max(0.0, (cfg.steps - step) / max(1.0, cfg.steps - decay_start))
        return self.lr * warm * decay

    def codes(self, pre: torch.Tensor) -> torch.Tensor:
        """Dense codes of the reference path: TopK per row, or BatchTopK over the batch."""
        k = self.cfg.k
        if self.cfg.architecture == "batchtopk":
            flat = pre.flatten()
            values, indices = flat.topk(k * pre.shape[0])
            return torch.zeros_like(flat).scatter_(0, indices, values).view_as(pre)
        values, indices = pre.topk(k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, indices, values)

    def forward_losses(self, x: torch.Tensor, dead: torch.Tensor, aux_on: bool):
        """(fvu, aux, fired, l0) for a scaled batch: sparse for TopK (see sae.sparse), dense
        for BatchTopK and as the reference (`sparse=False`). No host synchronisation."""
        sae, cfg = self.sae, self.cfg
        variance = (x - x.mean(0)).pow(2).sum(-1).mean()
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")
        aux_k = self.aux_k if aux_on else 0
        if cfg.sparse and cfg.architecture == "topk":
            with autocast:
                values, indices, aux_values, aux_indices = topk_encode(
                    x - sae.b_dec, sae.W_enc, sae.b_enc, cfg.k, dead, aux_k
                )
                x_hat = sparse_decode(indices, values, sae.W_dec) + sae.b_dec
            x_hat = x_hat.float()
            err = x - x_hat
            positive = (values > 0).float()
            fired = torch.zeros(sae.cfg.d_sae, device=x.device).index_add_(0, indices.flatten(), positive.flatten()) > 0
            l0 = positive.sum(-1).mean()
            aux = torch.zeros((), device=x.device)
            if aux_k:
                aux_hat = sparse_decode(aux_indices, aux_values.float(), sae.W_dec)
                aux = (err.detach() - aux_hat).pow(2).sum(-1).mean() / variance
        else:
            with autocast:
                pre = sae.pre_activations(x)
                z = self.codes(pre)
                x_hat = z @ sae.W_dec + sae.b_dec
            x_hat, pre, z = x_hat.float(), pre.float(), z.float()
            err = x - x_hat
            fired = (z > 0).any(0)
            l0 = (z > 0).float().sum(-1).mean()
            aux = torch.zeros((), device=x.device)
            if aux_k:
                values, indices = torch.where(dead, pre, torch.zeros_like(pre)).topk(aux_k, dim=-1)
                z_aux = torch.zeros_like(pre).scatter_(-1, indices, values)
                aux = (err.detach() - z_aux @ sae.W_dec).pow(2).sum(-1).mean() / variance
        fvu = err.pow(2).sum(-1).mean() / variance
        return fvu, aux, fired, l0

    def train_step(self, x: torch.Tensor) -> None:
        """One optimizer step. Metrics accumulate on the device and are read every `log_every`
        steps (`read_metrics`); nothing here waits for the device."""
        sae, cfg = self.sae, self.cfg
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.state.step)
        x = x.float() * self.state.scale
        if self.state.step % AUX_CHECK_EVERY == 0:  # the one host read of dead latents, every few steps
            self.aux_on = bool((self.since_fired >= cfg.dead_steps).any()) and cfg.aux_coef > 0
        dead = self.since_fired >= cfg.dead_steps
        fvu, aux, fired, l0 = self.forward_losses(x, dead, self.aux_on)
        if self.world > 1:
            fired_any = fired.int()
            dist.all_reduce(fired_any, op=dist.ReduceOp.MAX)
            fired = fired_any.bool()
        self.since_fired = torch.where(fired, 0, self.since_fired + 1)
        loss = fvu + cfg.aux_coef * aux
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.world > 1:
            for p in sae.parameters():
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad /= self.world
        with torch.no_grad():
            w, g = sae.W_dec, sae.W_dec.grad
            g -= (g * w).sum(1, keepdim=True) * w
        self.opt.step()
        with torch.no_grad():
            sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True).clamp(min=1e-8)
            finite = torch.isfinite(loss)
            self._bad_step = torch.where(finite | (self._bad_step >= 0), self._bad_step, self.state.step)
            dead_frac = (self.since_fired >= cfg.dead_steps).float().mean()
            self._sums += torch.stack([loss.detach(), fvu.detach(), aux.detach(), l0, dead_frac])

    def read_metrics(self) -> dict:
        """Means over the steps since the last read (one host sync), then start afresh."""
        sums = self._sums.tolist()
        count = max(1, self.state.step - self._read_at)
        self._sums.zero_()
        self._read_at = self.state.step
        loss, fvu, aux, l0, dead_frac = (v / count for v in sums)
        return {
            "loss": round(loss, 6),
            "fvu": round(fvu, 6),
            "aux": round(aux, 6),
            "l0": round(l0, 2),
            "dead_frac": round(dead_frac, 4),
            "lr": self.lr_at(self.state.step - 1),
        }

    def _log(self, metrics: dict) -> None:
        if self.rank == 0:
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(metrics) + "\n")

    # ---- checkpoints -----------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        if self.rank != 0:
            return
        folder = self.out / f"checkpoint-{self.state.step}"
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "sae": self.sae.state_dict(),
                "optimizer": self.opt.state_dict(),
                "since_fired": self.since_fired.cpu(),
                "aux_on": self.aux_on,
                "step": self.state.step,
                "position": asdict(self.state.position),
                "scale": self.state.scale,
            },
            folder / "trainer_state.pt.tmp",
        )
        os.replace(folder / "trainer_state.pt.tmp", folder / "trainer_state.pt")  # whole, then pointed at
        tmp = self.out / "latest.json.tmp"
        tmp.write_text(json.dumps({"checkpoint": folder.name, "step": self.state.step}))
        os.replace(tmp, self.out / "latest.json")
        for old in self.out.glob("checkpoint-*"):
            if old != folder:
                for f in old.iterdir():
                    f.unlink()
                old.rmdir()

    def load_checkpoint(self) -> None:
        pointer = self.out / "latest.json"
        if not pointer.is_file():
            raise MgsteerError(f"nothing to resume in '{self.out}': no checkpoint yet (latest.json)")
        try:
            name = read_json_object(pointer, "checkpoint pointer")["checkpoint"]
        except (MgsteerError, KeyError, TypeError) as exc:
            raise MgsteerError(f"'{pointer}' is damaged ({exc}); start afresh with --overwrite") from exc
        self._check_same_run()
        try:
            state = torch.load(self.out / name / "trainer_state.pt", map_location=self.device, weights_only=True)
        except Exception as exc:
            raise MgsteerError(f"checkpoint '{self.out / name}' is unreadable ({exc})") from exc
        try:
            self.sae.load_state_dict(state["sae"])
            self.opt.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MgsteerError(f"checkpoint '{self.out / name}' does not fit this SAE ({first})") from exc
        self.since_fired = state["since_fired"].to(self.device)
        self.aux_on = bool(state.get("aux_on", False))
        self.state = TrainState(step=state["step"], position=Position(**state["position"]), scale=state["scale"])
        self._read_at = self.state.step
        if self.rank == 0:
            self._truncate_metrics(self.state.step)

    def _check_same_run(self) -> None:
        """A resume must continue the same run: the settings that shape the SAE or the batches
        must match the ones it started with."""
        path = self.out / "train_config.json"
        try:
            before = read_json_object(path, "training settings")
        except MgsteerError as exc:
            raise MgsteerError(f"cannot resume in '{self.out}': {path.name} is missing or damaged") from exc
        now = asdict(self.cfg)
        changed = [
            f"--{k.replace('_', '-')} {before.get(k)} → {now[k]}" for k in RESUME_FIXED if before.get(k) != now[k]
        ]
        if changed:
            raise MgsteerError(
                f"--resume must keep the run's settings; changed: {', '.join(changed)} "
                "(use --overwrite to start a new run instead)"
            )

    def _truncate_metrics(self, step: int) -> None:
        """Drop metrics logged after the checkpoint: they are logged again as training redoes them."""
        if not self.metrics_path.is_file():
            return
        kept = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except ValueError:
                continue  # a line cut short by the kill
        self.metrics_path.write_text("".join(k + "\n" for k in kept))

    def folded_sae(self) -> TopKSAE:
        """The trained SAE re-expressed on raw (unscaled) activations, on the training device
        (its statistics pass over the whole store runs there too; `save_sae` copies to the CPU)."""
        s = self.state.scale
        sae = TopKSAE(self.sae_cfg).to(self.device)
        with torch.no_grad():
            sae.W_enc.copy_(self.sae.W_enc.float() * s)
            sae.b_enc.copy_(self.sae.b_enc.float())
            sae.W_dec.copy_(self.sae.W_dec.float() / s)
            sae.b_dec.copy_(self.sae.b_dec.float() / s)
        return sae.eval().requires_grad_(False)

    def save_final(self) -> dict:
        """Write the SAE folder; returns the final evaluation (also appended to metrics.jsonl)."""
        sae = self.folded_sae()
        stats = feature_stats(sae, self.store, self.layer)
        save_sae(sae, self.out, stats)
        cfg = cfg_json(sae.cfg) | {
            "activation_scale_folded": self.state.scale,
            "training_architecture": self.cfg.architecture,
        }
        (self.out / "cfg.json").write_text(json.dumps(cfg, indent=2) + "\n")
        final = {"step": self.state.step, "final": True, **self.evaluate_ce(sae)}
        self._log(final)
        return final

    def evaluate_ce(self, sae: TopKSAE) -> dict:
        """Codebook CE recovered on the first clips of the store, if it holds their tokens."""
        clips = [c for _, c in zip(range(self.cfg.ce_clips), self.store.iter_codes(), strict=False)]
        if not clips:
            return {}
        from engine.model import load_musicgen
        from sae.metrics import ce_recovered, sae_reconstruct

        try:
            lm = load_musicgen(self.store.meta.model, device=str(self.device))
        except MgsteerError as exc:
            print(f"note: CE recovered skipped: {exc}")
            return {}
        return ce_recovered(lm, clips, self.layer, sae_reconstruct(sae.to(lm.device)))


# Settings a resumed run must share with its start (the rest, e.g. --steps or --log-every, may change).
RESUME_FIXED = (
    "layer", "k", "expansion", "architecture", "batch_size", "aux_k", "b_dec_init", "group_shards", "seed",
)  # fmt: skip
SAE_FOLDER_MARKS = ("cfg.json", "sae_weights.safetensors", "train_config.json", "latest.json")
# What training, filtering and labeling write into an SAE folder (an --overwrite clears these
# only: an activation store or anything else found there stays).
SAE_FOLDER_OWN = (
    *SAE_FOLDER_MARKS, "latest.json.tmp", "feature_stats.safetensors", "metrics.jsonl", "filter.json",
    "checkpoint-*", "features.json", "features.json.tmp", "features.part-*-of-*.jsonl", "examples", ".staged",
)  # fmt: skip


def default_lr(d_sae: int) -> float:
    """The default learning rate: Gao et al.'s scaling with the number of latents."""
    return DEFAULT_LR_16K / math.sqrt(d_sae / 16384)


def claim_folder(out: Path, overwrite: bool) -> None:
    """Make `out` an empty folder for a new run: refuse a non-empty one unless `overwrite`, and
    even then clear only a folder that holds an SAE or a training run (never arbitrary files)."""
    out.mkdir(parents=True, exist_ok=True)
    entries = list(out.iterdir())
    if not entries:
        return
    if not overwrite:
        hint = "--resume to continue its run, " if (out / "latest.json").is_file() else ""
        raise MgsteerError(f"'{out}' is not empty; {hint}--overwrite to clear it and start afresh, or a new --out")
    kept = clear_own(out, SAE_FOLDER_OWN, SAE_FOLDER_MARKS, "SAE or training run")
    if kept:
        print(f"note: --overwrite kept what training did not write in '{out}': {', '.join(kept)}")


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _dist_info() -> tuple[int, int]:
    """Join the torchrun group if launched by torchrun; (rank, world size)."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


@torch.no_grad()
def feature_stats(sae: TopKSAE, store: ActivationStore, layer: int, batch: int = 4096) -> FeatureStats:
    """Per-frame and per-clip firing rates, mean and max activation over the whole store,
    a batch at a time (dense codes of a whole shard would not fit: 65k rows × 32k features)."""
    device = sae.W_enc.device
    acc = StatsAccumulator(sae.cfg.d_sae, device)
    for path in store.shard_files(layer):
        shard = store.load_shard(path)
        acts, clip_ids = shard["acts"], shard["clip"]
        seen: dict[int, torch.Tensor] = {}  # clip → features that fired in it (a clip lies in one shard)
        for i in range(0, len(acts), batch):
            active = acc.add(sae.encode(acts[i : i + batch].to(device).float()))
            ids = clip_ids[i : i + batch].to(device)
            for clip in ids.unique().tolist():
                hit = active[ids == clip].any(0)
                seen[clip] = seen[clip] | hit if clip in seen else hit
        for hit in seen.values():
            acc.add_clip(hit)
    return acc.result()


def filter_report(stats: FeatureStats, lo: float = 0.01, hi: float = 0.25) -> dict:
    """The paper's filter on the per-clip firing rate, and how many survive other thresholds."""
    rate = stats.firing_rate_clip if stats.firing_rate_clip is not None else stats.firing_rate
    kept = ((rate >= lo) & (rate <= hi)).nonzero().flatten().tolist()
    table = [
        {"lo": a, "hi": b, "kept": int(((rate >= a) & (rate <= b)).sum())}
        for a in (0.001, 0.005, 0.01, 0.02, 0.05)
        for b in (0.1, 0.25, 0.5)
    ]
    return {
        "lo": lo,
        "hi": hi,
        "kept": kept,
        "dead": int((rate == 0).sum()),
        "rare": int(((rate > 0) & (rate < lo)).sum()),
        "generic": int((rate > hi).sum()),
        "total": len(rate),
        "sensitivity": table,
    }
