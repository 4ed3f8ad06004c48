"""Steering: turn (feature, α) pairs into an edit of the residual stream at the SAE's layer.

Two modes:
- `add` (the paper): x' = x + Σ α·β_j·W_dec[j], with β_j the feature's max activation.
- `clamp`: set feature j's activation to α·β_j — encode, edit, decode, keep the SAE's
  reconstruction error — i.e. x' = x + Σ (α·β_j − z_j(x))·W_dec[j].

Everything that does not depend on x (the summed vector, the target values) is computed
once per change by `build_plan`, outside the hook; the hook only reads `Steerer._plan` once
per call, so a controller thread can swap plans between steps without a lock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch

from engine import limits
from engine.errors import MgsteerError
from engine.hooks import ResidualTap
from engine.model import LoadedModel
from sae.files import LoadedSAE, check_sae_fits
from sae.topk import TopKSAE

Mode = Literal["add", "clamp"]
Halves = Literal["both", "cond"]
MODES: tuple[str, ...] = ("add", "clamp")
HALVES: tuple[str, ...] = ("both", "cond")


@dataclass(frozen=True)
class FeatureSteer:
    feature: int
    alpha: float


@dataclass(frozen=True)
class SteeringSpec:
    """What to steer; `halves="cond"` leaves the unconditional CFG half untouched."""

    steers: tuple[FeatureSteer, ...] = ()
    mode: Mode = "add"
    halves: Halves = "both"


def parse_steer(text: str) -> FeatureSteer:
    """Parse `FEATURE=ALPHA` as given to `--steer`."""
    feature, sep, alpha = text.partition("=")
    try:
        if not sep:
            raise ValueError
        steer = FeatureSteer(int(feature), float(alpha))
    except ValueError as exc:
        raise MgsteerError(f"bad --steer '{text}': use FEATURE=ALPHA, e.g. 12=0.8") from exc
    limits.alpha(steer.alpha, f"--steer {text}: α")
    return steer


@dataclass(frozen=True)
class SteeringPlan:
    """A precomputed edit. `vector` for add mode; `sae`, `ids`, `targets`, `rows` for clamp."""

    halves: Halves
    vector: torch.Tensor | None = None
    sae: TopKSAE | None = None
    ids: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    rows: torch.Tensor | None = field(default=None, repr=False)

    def delta(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.vector is not None:
            return self.vector
        codes = self.sae.encode(hidden.float())
        current = codes[..., self.ids]
        return ((self.targets - current) @ self.rows).to(hidden.dtype)

    def apply(self, hidden: torch.Tensor, cond: slice) -> torch.Tensor:
        if self.halves == "both":
            return hidden + self.delta(hidden)
        out = hidden.clone()
        part = hidden[cond]
        out[cond] = part + self.delta(part)
        return out


def build_plan(spec: SteeringSpec, loaded: LoadedSAE, device: torch.device, dtype: torch.dtype) -> SteeringPlan:
    """Validate the spec against the SAE and precompute the edit."""
    if spec.mode not in MODES:
        raise MgsteerError(f"unknown steering mode '{spec.mode}': use {' or '.join(MODES)}")
    if spec.halves not in HALVES:
        raise MgsteerError(f"unknown CFG halves '{spec.halves}': use {' or '.join(HALVES)}")
    for steer in spec.steers:
        loaded.check_feature(steer.feature)
        limits.alpha(steer.alpha, f"steering strength for feature {steer.feature}")
    w_dec = loaded.sae.W_dec.detach()
    beta = loaded.require_stats().max_activation.to(w_dec.device)  # stats load on the CPU, the SAE may not
    ids = torch.tensor([s.feature for s in spec.steers], dtype=torch.long, device=w_dec.device)
    alphas = torch.tensor([s.alpha for s in spec.steers], dtype=torch.float32, device=w_dec.device)
    if spec.mode == "add":
        vector = (alphas * beta[ids]) @ w_dec[ids] if len(ids) else torch.zeros(w_dec.shape[1])
        return SteeringPlan(halves=spec.halves, vector=vector.to(device=device, dtype=dtype))
    if len(set(ids.tolist())) != len(ids):
        raise MgsteerError("clamp mode takes each feature once; a feature is listed twice")
    return SteeringPlan(
        halves=spec.halves,
        sae=loaded.sae.to(device),
        ids=ids.to(device),
        targets=(alphas * beta[ids]).to(device),
        rows=w_dec[ids].to(device),
    )


class Steerer:
    """Steers one model with one SAE: owns the tap at the SAE's layer and the current plan."""

    def __init__(self, lm: LoadedModel, loaded: LoadedSAE, *, cfg_doubled: bool) -> None:
        check_sae_fits(loaded, lm)
        self.lm = lm
        self.loaded = loaded
        self._plan: SteeringPlan | None = None
        self._watch: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.metering = True  # off while a call is not a generation step (e.g. a re-prime prefill)
        self.bypass = False  # on while a step is run again without the edit (see `unsteered`)
        self.meters: torch.Tensor | None = None  # watched features' activations at the last step
        self.tap = ResidualTap(lm, loaded.cfg.hook_layer, cfg_doubled=cfg_doubled)
        self.tap.edit = self._edit

    def set(self, spec: SteeringSpec | None) -> SteeringPlan | None:
        """Build the new plan here (caller's thread), then swap it in with one assignment."""
        plan = None if spec is None else build_plan(spec, self.loaded, self.lm.device, self.lm.dtype)
        self._plan = plan
        return plan

    def set_vector(self, vector: torch.Tensor, halves: Halves = "both") -> None:
        """Swap in an add-mode plan for a precomputed vector (the host smooths toward targets)."""
        self._plan = SteeringPlan(halves=halves, vector=vector)

    def vector_for(self, alphas: dict[int, float]) -> torch.Tensor:
        """Σ α·β·W_dec[j] for a {feature: α} map, on the model's device and dtype."""
        spec = SteeringSpec(tuple(FeatureSteer(f, a) for f, a in alphas.items()))
        return build_plan(spec, self.loaded, self.lm.device, self.lm.dtype).vector

    def watch(self, features: list[int] | None) -> None:
        """Meter these features at every generation step (None: no meters).

        A meter is the feature's pre-TopK activation ReLU(w_j·(x − b_dec) + b_j): equal to its
        SAE code whenever it is among the k strongest, continuous when it is not (no flicker to
        zero), and it costs O(watched × d) instead of a full encode (a ×32 SAE of musicgen-small
        reads 128 MB of encoder weights per step: 3 % of a CPU step)."""
        if not features:
            self._watch = None
            return
        for f in features:
            self.loaded.check_feature(f)
        ids = torch.tensor(features, device=self.loaded.sae.W_enc.device)
        sae = self.loaded.sae
        self._watch = (sae.W_enc[:, ids].contiguous(), sae.b_enc[ids].clone(), sae.b_dec.clone())

    @contextlib.contextmanager
    def unsteered(self) -> Iterator[None]:
        """The model as if no steering were set: what a token loop falls back to when a steered
        step's logits are not finite (`TokenLoop.unsteered`)."""
        self.bypass = True
        try:
            yield
        finally:
            self.bypass = False

    def attach(self, loop) -> None:
        """Let `loop` fall back to an unsteered step when a steered one is not finite."""
        loop.unsteered = self.unsteered

    def _edit(self, hidden: torch.Tensor, cond: slice) -> torch.Tensor:
        plan = None if self.bypass else self._plan
        out = hidden if plan is None else plan.apply(hidden, cond)
        watch = self._watch
        if watch is not None and self.metering:
            w_enc, b_enc, b_dec = watch
            self.meters = torch.relu((out[cond][:, -1].float() - b_dec) @ w_enc + b_enc)
        return out

    def close(self) -> None:
        self.tap.close()

    def __enter__(self) -> Steerer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
