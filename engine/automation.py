"""Steering that moves over time: lanes of α, each scaling one direction, read on the device.

A lane is a direction (Σ weight·β·W_dec of some features, at α = 1) and its α at every
generation step; the step adds Σ α_lane[s]·direction_lane on top of the installed vector.
Why lanes rather than a vector per step: a lane costs one float per step (a minute-long loop
is 3000 floats, not 3000 residual vectors), and the lookup is a gather on the device from the
token loop's own step counter, so a captured CUDA graph follows the curve with no host work
per step.

Two sources: `render --steer F=T:α,…` (one lane per curved feature, held at its ends) and a
preset's `automation` block (one lane per automated knob: its value over time, through the
knob's range and curve, held or looped).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from engine.device import to_device
from engine.errors import MgsteerError

Points = tuple[tuple[float, float], ...]  # (seconds, value) breakpoints, linear between
MAX_LANE_SECONDS = 600.0  # one lane's table: 30 000 steps at 50 Hz, 120 kB


def check_points(points: Sequence[Sequence[float]], what: str) -> Points:
    """Breakpoints as floats: times finite, ≥ 0, each later than the last, within MAX_LANE_SECONDS."""
    try:
        out = tuple((float(t), float(v)) for t, v in points)
    except (TypeError, ValueError):
        raise MgsteerError(f"{what}: must be [seconds, value] pairs") from None
    times = [t for t, _ in out]
    if not out:
        raise MgsteerError(f"{what}: give at least one breakpoint")
    if any(not math.isfinite(t) or t < 0 for t in times) or any(b <= a for a, b in itertools.pairwise(times)):
        raise MgsteerError(f"{what}: breakpoint times must be seconds ≥ 0, each later than the last")
    if times[-1] > MAX_LANE_SECONDS:
        raise MgsteerError(f"{what}: the last breakpoint is at {times[-1]:g} s; at most {MAX_LANE_SECONDS:g} s")
    if any(not math.isfinite(v) for _, v in out):
        raise MgsteerError(f"{what}: every value must be a finite number")
    return out


def curve_at(points: Points, times: torch.Tensor) -> torch.Tensor:
    """The value at `times` (seconds): linear between breakpoints, the end values held outside them."""
    ts = torch.tensor([t for t, _ in points], dtype=torch.float64)
    values = torch.tensor([v for _, v in points], dtype=torch.float64)
    if len(ts) == 1:
        return values.expand_as(times).clone()
    right = torch.searchsorted(ts, times.double(), right=True).clamp(1, len(ts) - 1)
    left = right - 1
    w = ((times - ts[left]) / (ts[right] - ts[left])).clamp(0.0, 1.0)
    return values[left] + w * (values[right] - values[left])


def lane_steps(points: Points, frame_rate: int, loop: bool, at_least: int = 1) -> torch.Tensor:
    """Step times (seconds) a lane's table covers: one loop period (up to the last breakpoint,
    which is the loop's length), or, held, up to the last breakpoint and at least `at_least`
    steps (past its end the last row is held)."""
    end = max(1, math.ceil(points[-1][0] * frame_rate))
    steps = end if loop else max(end + 1, at_least)
    return torch.arange(steps, dtype=torch.float64) / frame_rate


@dataclass(frozen=True)
class Lane:
    direction: torch.Tensor  # [d_in]: what α = 1 adds
    alphas: torch.Tensor  # [steps] float: α at step s from the lane's start
    loop: bool = False  # True: step s plays row s mod steps; False: the last row is held


def knob_lane(knob, direction: torch.Tensor, frame_rate: int) -> Lane:
    """An automated knob (engine.params.Knob) as a lane: its value along the breakpoints at each
    step, through the knob's range and curve, times `direction` (its features' Σ weight·β·W_dec)."""
    values = curve_at(knob.automation, lane_steps(knob.automation, frame_rate, knob.loop)).clamp(0.0, 1.0)
    return Lane(direction, knob.alpha_at(values).float(), knob.loop)


LANE_SLOTS = 16  # lanes at once: a bank's knobs (limits.MAX_KNOBS), or curved features in a render


class Lanes:
    """Lanes on the device in persistent buffers of fixed size, refilled in place: α tables
    (one row per slot, `MAX_LANE_SECONDS` wide), their lengths and loop flags, the directions
    and the step the lanes started at. Fixed, because a captured step reads the addresses it
    was captured with: new lanes must land where it looks. Unused slots have a zero direction."""

    def __init__(self, d_in: int, frame_rate: int, device: torch.device, dtype: torch.dtype) -> None:
        self.width = math.ceil(MAX_LANE_SECONDS * frame_rate) + 1
        self.table = torch.zeros(LANE_SLOTS, self.width, device=device)
        self.length = torch.ones(LANE_SLOTS, dtype=torch.long, device=device)
        self.loop = torch.zeros(LANE_SLOTS, dtype=torch.bool, device=device)
        self.directions = torch.zeros(LANE_SLOTS, d_in, device=device, dtype=dtype)
        self.start = torch.zeros(1, dtype=torch.long, device=device)
        self.active = False  # host copy of "some lane is set"

    def install(self, lanes: Sequence[Lane], start: int = 0) -> None:
        """Fill the slots with `lanes` (the rest emptied), counting from step `start`."""
        if len(lanes) > LANE_SLOTS:
            raise MgsteerError(f"{len(lanes)} moving curves at once; at most {LANE_SLOTS}")
        longest = max((len(lane.alphas) for lane in lanes), default=0)
        if longest > self.width:
            raise MgsteerError(f"a steering curve of {longest} steps; at most {self.width}")
        table = torch.zeros(LANE_SLOTS, self.width)
        length = torch.ones(LANE_SLOTS, dtype=torch.long)
        loop = torch.zeros(LANE_SLOTS, dtype=torch.bool)
        directions = torch.zeros(self.directions.shape, dtype=torch.float32)
        for i, lane in enumerate(lanes):
            n = len(lane.alphas)
            table[i, :n] = lane.alphas.float()
            table[i, n:] = float(lane.alphas[-1])
            length[i], loop[i] = n, lane.loop
            directions[i] = lane.direction.detach().float().cpu()
        filled = ((self.table, table), (self.length, length), (self.loop, loop), (self.directions, directions))
        for buffer, host in filled:
            buffer.copy_(to_device(host, buffer.device))  # queued: the generation thread never waits
        self.start.fill_(start)
        self.active = bool(lanes)

    def clear(self) -> None:
        self.install([])

    def alphas_at(self, clock: torch.Tensor) -> torch.Tensor:
        """Each slot's α at step `clock` (a one-element device tensor): device ops only."""
        t = (clock - self.start).clamp(min=0)
        rows = torch.where(self.loop, t % self.length, torch.minimum(t, self.length - 1))
        return self.table.gather(1, rows[:, None])[:, 0]

    def vector_at(self, clock: torch.Tensor) -> torch.Tensor:
        return self.alphas_at(clock).to(self.directions.dtype) @ self.directions
