"""Steering: turn (feature, α) pairs into an edit of the residual stream at the SAE's layer.

Two modes:
- `add` (the paper): x' = x + Σ α·β_j·W_dec[j], with β_j the feature's max activation.
- `clamp`: set feature j's activation to α·β_j — encode, edit, decode, keep the SAE's
  reconstruction error — i.e. x' = x + Σ (α·β_j − z_j(x))·W_dec[j].

Everything that does not depend on x (the summed vector, the target values) is computed
once per change by `build_plan`, outside the step; an add-mode vector is then copied into the
`Steerer`'s persistent buffer, which the edit reads on the device. Only the engine's
generation thread installs edits, between steps.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch

from engine import limits
from engine.automation import Lane, Lanes, check_points, curve_at, lane_steps
from engine.device import to_device
from engine.errors import MgsteerError
from engine.hooks import ResidualTap
from engine.model import LoadedModel
from sae.files import LoadedSAE, check_sae_fits
from sae.topk import TopKSAE

Mode = Literal["add", "clamp"]
Halves = Literal["both", "cond"]
MODES: tuple[str, ...] = ("add", "clamp")
METER_SLOTS = 16  # features metered at once (the GUI meters the knobs' features)
REBUILD_EVERY = 512  # live steering-sum updates between two sums from scratch
HALVES: tuple[str, ...] = ("both", "cond")


@dataclass(frozen=True)
class FeatureSteer:
    feature: int
    alpha: float  # with a curve: its first breakpoint's
    curve: tuple[tuple[float, float], ...] = ()  # (seconds, α) breakpoints, linear between; (): α throughout


@dataclass(frozen=True)
class SteeringSpec:
    """What to steer; `halves="cond"` leaves the unconditional CFG half untouched."""

    steers: tuple[FeatureSteer, ...] = ()
    mode: Mode = "add"
    halves: Halves = "both"


def parse_steer(text: str, curves: bool = False) -> FeatureSteer:
    """Parse `FEATURE=ALPHA` as given to `--steer`, or with `curves` also
    `FEATURE=T:ALPHA,T:ALPHA,…` (seconds and α breakpoints, linear between, held outside)."""
    feature, sep, value = text.partition("=")
    try:
        if not sep:
            raise ValueError
        if ":" not in value:
            steer = FeatureSteer(int(feature), float(value))
        else:
            points = tuple((float(t), float(a)) for t, a in (p.split(":") for p in value.split(",")))
            steer = FeatureSteer(int(feature), points[0][1], check_points(points, f"--steer {text}"))
    except ValueError as exc:
        use = "use FEATURE=ALPHA, e.g. 12=0.8, or FEATURE=T:ALPHA,… e.g. 12=0:0,4:2"
        raise MgsteerError(f"bad --steer '{text}': {use}") from exc
    if steer.curve and not curves:
        raise MgsteerError(
            f"--steer {text}: a curve (T:ALPHA,…) steers render only; live, automate a knob in a preset "
            "(README, Presets) or turn it (FEATURE=ALPHA)"
        )
    for alpha in [steer.alpha, *(a for _, a in steer.curve)]:
        limits.alpha(alpha, f"--steer {text}: α")
    return steer


def curve_lanes(spec: SteeringSpec, loaded: LoadedSAE, steps: int, frame_rate: int) -> list[Lane]:
    """One lane per feature steered along a curve, `steps` long at least: its direction
    β·W_dec[j], its α at each step (step s sounds at s / frame_rate seconds), held after its
    last breakpoint. Features at a constant α are not lanes: they belong in the vector."""
    lanes = []
    for steer in (s for s in spec.steers if s.curve):
        loaded.check_feature(steer.feature)
        alphas = curve_at(steer.curve, lane_steps(steer.curve, frame_rate, loop=False, at_least=steps)).float()
        beta = loaded.require_stats().max_activation[steer.feature].item()
        lanes.append(Lane(beta * loaded.sae.W_dec[steer.feature].detach(), alphas))
    return lanes


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


def beta_scaled(
    loaded: LoadedSAE, ids: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature ids and their α·β on the SAE's device. Both are made on the host (`beta` is
    there) and sent in one queued copy each: a knob change must not make the generation
    thread wait for the steps already queued."""
    device = loaded.sae.W_dec.device
    return to_device(ids, device), to_device(alpha * beta[ids], device)


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
    ids_host = torch.tensor([s.feature for s in spec.steers], dtype=torch.long)
    alpha_host = torch.tensor([s.alpha for s in spec.steers], dtype=torch.float32)
    ids, scale = beta_scaled(loaded, ids_host, alpha_host, loaded.require_stats().max_activation.cpu())
    if spec.mode == "add":
        vector = scale @ w_dec[ids] if len(ids) else w_dec.new_zeros(w_dec.shape[1])
        return SteeringPlan(halves=spec.halves, vector=vector.to(device=device, dtype=dtype))
    if len(set(ids_host.tolist())) != len(ids_host):
        raise MgsteerError("clamp mode takes each feature once; a feature is listed twice")
    return SteeringPlan(
        halves=spec.halves,
        sae=loaded.sae.to(device),
        ids=ids.to(device),
        targets=scale.to(device),
        rows=w_dec[ids].to(device),
    )


class Steerer:
    """Steers one model with one SAE: owns the tap at the SAE's layer and the current edit.

    An add-mode edit lives in persistent device buffers (`vector`, a CFG-halves switch and an
    on/off switch) that change in place, so a step captured as a CUDA graph keeps following
    the knobs. A clamp plan needs the SAE inside the step and runs eagerly (`graph_safe`)."""

    def __init__(self, lm: LoadedModel, loaded: LoadedSAE, *, cfg_doubled: bool) -> None:
        check_sae_fits(loaded, lm)
        # The edit and the meters read the SAE at every step, beside the model's residual: it
        # moves to the model's device (in place: one copy of a large SAE, not two).
        loaded.sae.to(lm.device)
        self.lm = lm
        self.loaded = loaded
        device = lm.device
        self.vector = torch.zeros(lm.hidden_size, device=device, dtype=lm.dtype)
        self._cond_only = torch.zeros((), dtype=torch.bool, device=device)
        self._on = torch.zeros((), dtype=torch.bool, device=device)
        self._steering = False  # host copy of "a vector is set"
        self.lanes = Lanes(lm.hidden_size, lm.frame_rate, device, lm.dtype)  # moving α on top of `vector`
        self._clock: torch.Tensor | None = None  # the attached loop's device step counter
        self._halves: Halves = "both"  # host copy of the halves switch
        self._clamp: SteeringPlan | None = None
        # Meters: METER_SLOTS fixed encoder columns, refilled in place by `watch`.
        sae = loaded.sae
        self._w_watch = torch.zeros(sae.W_enc.shape[0], METER_SLOTS, device=sae.W_enc.device, dtype=sae.W_enc.dtype)
        self._b_watch = torch.zeros(METER_SLOTS, device=sae.W_enc.device, dtype=sae.W_enc.dtype)
        self.watched: list[int] = []
        self._meter_buf: torch.Tensor | None = None  # [batch, METER_SLOTS], written each step
        self.metering = True  # off while a call is not a generation step (e.g. a re-prime prefill)
        self.bypass = False  # on while a step is run again without the edit (see `unsteered`)
        self._meter_copy: tuple[torch.Tensor, torch.cuda.Event] | None = None
        self._meter_values: list[float] | None = None
        self.tap = ResidualTap(lm, loaded.cfg.hook_layer, cfg_doubled=cfg_doubled)
        self.tap.edit = self._edit
        # The live sum behind `vector_for`: the α map it stands for, and updates since a full sum.
        self._alphas: dict[int, float] = {}
        self._sum: torch.Tensor | None = None
        self._updates = 0
        self._beta: torch.Tensor | None = None  # β on the host, read when first steered

    @property
    def graph_safe(self) -> bool:
        return self._clamp is None

    def set(self, spec: SteeringSpec | None) -> SteeringPlan | None:
        """Build the plan here (caller's thread), then install it."""
        plan = None if spec is None else build_plan(spec, self.loaded, self.lm.device, self.lm.dtype)
        if self.lanes.active:
            self.lanes.clear()
        if plan is not None and plan.vector is not None:
            self.set_vector(plan.vector, plan.halves)
        else:
            self._clamp, self._steering = plan, False
            self._switch()
        return plan

    def set_vector(self, vector: torch.Tensor, halves: Halves = "both") -> None:
        """Install an add-mode vector. On a GPU it is copied into the persistent buffer a
        captured graph reads (the copy is queued on the stream, between steps); elsewhere the
        buffer is replaced whole, so a step running on another thread adds the old vector or
        the new one, never half of each (a copy on the CPU runs at once, beside the step)."""
        if self.vector.is_cuda:
            self.vector.copy_(vector)
        else:
            self.vector = vector.to(self.vector.dtype).clone()
        self._cond_only.fill_(halves == "cond")
        self._halves = halves
        self._clamp, self._steering = None, True
        self._switch()

    def glide(self, target: torch.Tensor, fraction: float) -> None:
        """Move the vector `fraction` of the way to `target`, on the device (no sync)."""
        self.vector.lerp_(target.to(self.vector.dtype), fraction)

    def _switch(self) -> None:
        self._on.fill_(self._steering and not self.bypass)

    def vector_for(self, alphas: Mapping[int, float]) -> torch.Tensor:
        """Σ α·β·W_dec[j] for a {feature: α} map, on the model's device and dtype.

        Live, the map changes a few features at a time (a fader, a knob) while thousands may be
        set: the sum is updated by the features whose α changed since the last call, so a
        change costs what changed, not the size of the SAE. It is summed afresh when most of
        the map changed, and every REBUILD_EVERY updates, so float rounding never drifts."""
        changed = {f for f, _ in alphas.items() ^ self._alphas.items()}
        if self._sum is None or not alphas or len(changed) > len(alphas) // 2 or self._updates >= REBUILD_EVERY:
            self._sum = self._scaled_sum(list(alphas), list(alphas.values()))
            self._updates = 0
        elif changed:
            ids = sorted(changed)
            self._sum += self._scaled_sum(ids, [alphas.get(f, 0.0) - self._alphas.get(f, 0.0) for f in ids], delta=True)
            self._updates += 1
        self._alphas = dict(alphas)
        return self._sum.to(device=self.lm.device, dtype=self.lm.dtype)

    def direction(self, features: tuple[tuple[int, float], ...]) -> torch.Tensor:
        """Σ weight·β·W_dec[j] over a knob's (feature, weight) pairs: what α = 1 adds."""
        return self._scaled_sum([f for f, _ in features], [w for _, w in features])

    def _scaled_sum(self, features: list[int], alphas: list[float], delta: bool = False) -> torch.Tensor:
        """Σ α·β·W_dec[j] in float32 on the SAE's device, checked as tensors (one pass in C,
        not a Python check per feature): known features, finite α within ±MAX_ALPHA (twice
        that for a change of α)."""
        w_dec = self.loaded.sae.W_dec.detach()
        if not features:
            return w_dec.new_zeros(w_dec.shape[1], dtype=torch.float32)
        ids = torch.tensor(features, dtype=torch.long)
        alpha = torch.tensor(alphas, dtype=torch.float32)
        if int(ids.min()) < 0 or int(ids.max()) >= self.loaded.cfg.d_sae:
            bad = next(f for f in features if not 0 <= f < self.loaded.cfg.d_sae)
            self.loaded.check_feature(bad)
        top = limits.MAX_ALPHA * (2 if delta else 1)
        if not bool(torch.isfinite(alpha).all()) or float(alpha.abs().max()) > top:
            bad = next(a for a in alphas if not math.isfinite(a) or abs(a) > top)
            limits.within(bad, "steering strength", -top, top)
        if self._beta is None or len(self._beta) != self.loaded.cfg.d_sae:  # (grown: sae.concept.append_concept)
            self._beta = self.loaded.require_stats().max_activation.float().cpu()
        ids, scale = beta_scaled(self.loaded, ids, alpha, self._beta)
        return scale @ w_dec[ids].float()

    def watch(self, features: list[int] | None) -> None:
        """Meter these features (at most METER_SLOTS) at every generation step; None: none.

        A meter is the feature's pre-TopK activation ReLU(w_j·(x − b_dec) + b_j): equal to its
        SAE code whenever it is among the k strongest, continuous when it is not (no flicker to
        zero), and it costs O(slots × d) instead of a full encode (a ×32 SAE of musicgen-small
        reads 128 MB of encoder weights per step: 3 % of a CPU step). The slots are refilled in
        place, so a captured step meters the new features without a new capture. Call it from
        the generation thread, between steps."""
        features = list(features or [])
        if len(features) > METER_SLOTS:
            raise MgsteerError(f"at most {METER_SLOTS} meters, got {len(features)}")
        for f in features:
            self.loaded.check_feature(f)
        self._w_watch.zero_()
        self._b_watch.zero_()
        if features:
            ids = to_device(torch.tensor(features), self._w_watch.device)
            self._w_watch[:, : len(features)] = self.loaded.sae.W_enc[:, ids]
            self._b_watch[: len(features)] = self.loaded.sae.b_enc[ids]
        self.watched = features
        self._meter_copy = self._meter_values = None

    @property
    def meters(self) -> torch.Tensor | None:
        """Watched features' activations at the last step, `[batch, watched]`."""
        if self._meter_buf is None or not self.watched:
            return None
        return self._meter_buf[:, : len(self.watched)]

    def read_meters(self) -> list[float] | None:
        """The first prompt's meters, without waiting for the device: on a GPU each call starts
        a copy and returns the values of the latest copy that has finished."""
        meters = self.meters
        if meters is None:
            return None
        if meters.device.type != "cuda":
            return meters[0].tolist()
        if self._meter_copy is not None and self._meter_copy[1].query():
            self._meter_values = self._meter_copy[0][: len(self.watched)].tolist()
            self._meter_copy = None
        if self._meter_copy is None:
            host = torch.empty(METER_SLOTS, pin_memory=True)
            host.copy_(self._meter_buf[0], non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            self._meter_copy = (host, done)
        return self._meter_values

    @contextlib.contextmanager
    def unsteered(self) -> Iterator[None]:
        """The model as if no steering were set: what a token loop falls back to when a steered
        step's logits are not finite (`TokenLoop.unsteered`)."""
        self.bypass = True
        self._switch()
        try:
            yield
        finally:
            self.bypass = False
            self._switch()

    def attach(self, loop) -> None:
        """Let `loop` fall back to an unsteered step when a steered one is not finite (whether
        the edit can be captured, the loop asks the tap, which asks `graph_safe`)."""
        loop.unsteered = self.unsteered
        self._clock = getattr(loop, "_step_no", None)
        if getattr(loop, "backend", None) is not None:  # a runtime that takes the edit as an input
            loop.backend.attach(self)

    def _edit(self, hidden: torch.Tensor, cond: slice) -> torch.Tensor:
        if self._clamp is not None:
            out = hidden if self.bypass else self._clamp.apply(hidden, cond)
        else:
            out = self._add(hidden)
        if self.metering:
            self.meter(out, cond)
        return out

    def meter(self, hidden: torch.Tensor, cond: slice) -> None:
        """Write the watched features' activations at the last position of `hidden`'s
        conditional rows into the meter buffer (in place: a captured graph keeps writing here)."""
        x = hidden[cond][:, -1].to(self._w_watch.dtype) - self.loaded.sae.b_dec
        value = torch.relu(x @ self._w_watch + self._b_watch)
        if self._meter_buf is None or self._meter_buf.shape != value.shape:
            self._meter_buf = value.clone()
        else:
            self._meter_buf.copy_(value)

    def row_switch(self, rows: int) -> torch.Tensor:
        """Per-row steering switch `[rows, 1, 1]` (1: add the vector) for a runtime that takes
        the edit as an input (the ONNX step graph): what the device switches select here."""
        on = self._steering and not self.bypass
        switch = torch.full((rows, 1, 1), float(on))
        if on and self._halves == "cond" and self.tap.cfg_doubled:
            switch[rows // 2 :] = 0.0
        return switch

    def set_lanes(self, lanes: list[Lane], start: int = 0, halves: Halves | None = None) -> None:
        """Add moving α × direction lanes on top of the vector, counted from step `start` of
        the attached loop (its step counter, read on the device: a captured graph follows the
        curves with no host work per step). [] removes them. In place: call it between steps."""
        self.lanes.install(lanes, start)
        if halves is not None:
            self._cond_only.fill_(halves == "cond")
            self._halves = halves
        if lanes:
            self._clamp, self._steering = None, True
        self._switch()

    def vector_now(self) -> torch.Tensor:
        """The vector the current step adds: the installed one plus the lanes' at this step
        (on a GPU always, so a step captured before any lane was set follows later ones)."""
        if self._clock is None or not (self.lanes.active or self.vector.is_cuda):
            return self.vector
        return self.vector + self.lanes.vector_at(self._clock)

    def _add(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden + vector on the rows the halves switch selects, where the on switch is set:
        device selects, so neither switch needs a new graph."""
        edited = hidden + self.vector_now()
        if self.tap.cfg_doubled:
            half = hidden.shape[0] // 2
            cond_only = torch.cat([edited[:half], hidden[half:]], dim=0)
            edited = torch.where(self._cond_only, cond_only, edited)
        return torch.where(self._on, edited, hidden)

    def close(self) -> None:
        self.tap.close()

    def __enter__(self) -> Steerer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
