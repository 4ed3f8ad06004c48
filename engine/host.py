"""The resident host: plays forever, reading the parameter bus once per step.

One generation thread owns the model. Each step it takes the bus snapshot, moves the
steering vector toward the snapshot's target (smoothing, so jumps do not click), runs one
decoder step, feeds complete frames to the chunked decoder and queues finished blocks in
the sink. It keeps `lookahead_ms` of audio queued — enough never to underrun, little
enough that a knob is heard soon: knob → sound ≈ lookahead + chunk + holdback + 3 frames.

Two latency profiles (`HostConfig.for_latency`): `default` (300 ms queued, 8-frame chunks, a
6-frame hold-back; 16-frame chunks where a step and its share of 8-frame decodes take over
80 % of a frame, as on a 2-core CPU: a decode's fixed cost and its 16 frames of context are
then spread over twice the frames) and `low` (a 5-frame hold-back with a 20 ms crossfade, and chunk and
lookahead measured while playing: the smallest chunk of `LOW_LATENCY_CHUNKS` whose decoder
step plus share of a decode takes at most 60 % of a frame's time, and the smallest lookahead
that covers the sink's block and the slowest recent stretch of compute between two blocks).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from engine import limits
from engine.audio import Sink, WavRecorder
from engine.automation import knob_lane
from engine.codec_stream import ChunkConfig, ChunkedDecoder
from engine.errors import MgsteerError
from engine.limits import LATENCY_PROFILES
from engine.model import LoadedModel
from engine.params import ParameterBus, Snapshot
from engine.steering import METER_SLOTS, Halves, Steerer
from engine.tokenloop import SamplingConfig, TokenLoop
from sae.files import LoadedSAE

# The low profile's chunking: the smallest hold-back whose seam stays exact. The codec reaches
# 4 frames to the right; hold-back 5 = that reach + the 20 ms crossfade
# (tests/test_codec_stream.py). It starts at the largest chunk and shrinks once measured.
LOW_LATENCY_CHUNK = ChunkConfig(chunk=8, holdback=5, crossfade_ms=20.0)
LOW_LATENCY_CHUNKS = (2, 4, 8)  # chunk sizes the low profile chooses among, by measured cost
DEFAULT_CHUNKS = (8, 16)  # …and the default profile
# Share of a frame's time the low profile lets a step and its share of a decode take: a chunk
# is chosen when it fits the first, and left for a larger one only past the second (hysteresis).
CHUNK_BUDGET = (0.6, 0.8)
MEASURED_LOOKAHEAD_MS = (20.0, 1000.0)  # bounds of a measured lookahead
FIRST_LOOKAHEAD_MS = 300.0  # a measured lookahead before enough blocks were timed (the default's)
FIRST_BLOCKS = 4  # blocks whose compute is not timed: first-call costs, the prompt's encoding
RESET_GAP_S = 0.5  # audio generated between two resets at least (storms coalesce)


@dataclass(frozen=True)
class HostConfig:
    lookahead_ms: float | None = 300.0  # None: measured while playing (the low-latency profile)
    chunk: ChunkConfig = field(default_factory=ChunkConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # Re-prime so that the context never holds more than this (None: the longest clip the model
    # was trained on, `LoadedModel.context_s`: 30 s for MusicGen, a world's clip length)…
    reprime_at_s: float | None = None
    reprime_keep_s: float | None = None  # …keeping this much of the most recent music (None: a third)
    reprime_piece: int = 32  # positions prefilled per step while re-priming
    halves: Halves = "both"
    graph: bool = True  # on CUDA, replay the step as a CUDA graph (`TokenLoop`)
    backend: Any = None  # engine.onnx_backend.OnnxBackend: decoder and codec on ONNX Runtime
    meters: list[int] | None = None  # features to meter each step
    meter_knobs: bool = False  # instead, meter the features the knobs drive (the GUI's meters)
    readback: int | None = None  # steps per read-back of sampled tokens (None: the token loop's default)
    chunk_choices: tuple[int, ...] = ()  # chunk sizes to choose among by measured cost while playing (): fixed
    # A melody model's melody (engine.melody_input): a file's, or a live input's last seconds,
    # taken at each re-prime and on "follow now" (`ParameterBus.follow_melody`).
    melody: Any = None

    @classmethod
    def for_latency(
        cls, profile: str = "default", *, lookahead_ms: float | None = None, chunk: int | None = None, **fields
    ) -> HostConfig:
        """A profile's lookahead and chunking; `lookahead_ms` and `chunk`, when given, win."""
        if profile not in LATENCY_PROFILES:
            raise MgsteerError(f"unknown latency profile '{profile}': use {' or '.join(LATENCY_PROFILES)}")
        if profile == "low":
            chunking = LOW_LATENCY_CHUNK if chunk is None else replace(LOW_LATENCY_CHUNK, chunk=chunk)
            readback = min(LOW_LATENCY_CHUNKS[0], chunking.chunk)
            choices = LOW_LATENCY_CHUNKS if chunk is None else ()
            return cls(lookahead_ms=lookahead_ms, chunk=chunking, readback=readback, chunk_choices=choices, **fields)
        chunking = ChunkConfig() if chunk is None else ChunkConfig(chunk=chunk)
        lookahead = cls.lookahead_ms if lookahead_ms is None else lookahead_ms
        choices = DEFAULT_CHUNKS if chunk is None else ()
        return cls(lookahead_ms=lookahead, chunk=chunking, chunk_choices=choices, **fields)

    def validate(self, lm: LoadedModel) -> None:
        if self.melody is not None and not lm.melody:
            raise MgsteerError(f"model '{lm.spec}' is not a melody model: a melody needs musicgen-melody")
        if self.lookahead_ms is not None and not (math.isfinite(self.lookahead_ms) and self.lookahead_ms > 0):
            raise MgsteerError(f"lookahead must be a positive number of ms, got {self.lookahead_ms}")
        if self.reprime_piece < 2:  # the head moves one position a step: catching up takes keep/(piece−1) steps
            raise MgsteerError(f"re-prime piece must be ≥ 2 positions, got {self.reprime_piece}")
        limit = lm.max_positions / lm.frame_rate
        at, keep = self.reprime_span(lm)
        catch_up = self.catch_up_steps(lm)
        if not 0 < keep < at or at * lm.frame_rate - catch_up <= keep * lm.frame_rate or at > limit:
            raise MgsteerError(
                f"need 0 < re-prime keep ({keep:g} s) < re-prime at ({at:g} s), with room to catch up, "
                f"within this model's {limit:.0f} s"
            )

    def reprime_span(self, lm: LoadedModel) -> tuple[float, float]:
        """(seconds the context may hold, seconds a re-prime keeps) for `lm`."""
        at = self.reprime_at_s if self.reprime_at_s is not None else lm.context_s
        return at, self.reprime_keep_s if self.reprime_keep_s is not None else at / 3

    def catch_up_steps(self, lm: LoadedModel) -> int:
        """Steps a re-prime takes to catch up with the head (it prefills `reprime_piece`
        positions a step while the head moves one), with a step to spare on either side."""
        keep = int(self.reprime_span(lm)[1] * lm.frame_rate)
        return math.ceil(keep / (self.reprime_piece - 1)) + 2

    def context_positions(self, lm: LoadedModel) -> int:
        """KV cache size: the most the context holds. A re-prime starts early enough to be
        swapped in by then, so the model never plays past what it was trained on."""
        return int(self.reprime_span(lm)[0] * lm.frame_rate)


@dataclass(frozen=True)
class Status:
    position_s: float  # audio played
    generated_s: float  # audio generated
    x_realtime: float  # speed: audio seconds generated per second of compute (> 1: faster than real time)
    step_ms_p50: float
    step_ms_p95: float
    lookahead_ms: float  # audio queued in the sink now
    underruns: int
    latency_ms_p50: float | None  # knob → sound
    latency_ms_p95: float | None
    reprimes: int
    steps: int
    nonfinite_steps: int = 0  # steps whose steered logits were not finite and were run unsteered
    recording: str | None = None  # why the recording stopped, if it did (the music goes on)

    def line(self) -> str:
        latency = (
            "n/a" if self.latency_ms_p50 is None else f"{self.latency_ms_p50:.0f}/{self.latency_ms_p95:.0f} ms p50/p95"
        )
        return (
            f"t {self.position_s:6.1f} s | speed {self.x_realtime:.2f}× real time | "
            f"step {self.step_ms_p50:.1f}/{self.step_ms_p95:.1f} ms "
            f"p50/p95 | lookahead {self.lookahead_ms:.0f} ms | underruns {self.underruns} | "
            f"knob→sound {latency} | reprimes {self.reprimes}"
            + (f" | non-finite steps {self.nonfinite_steps} (run unsteered)" if self.nonfinite_steps else "")
            + (f" | {self.recording}" if self.recording else "")
        )


def _percentile(values, q: float) -> float | None:
    return float(np.percentile(np.fromiter(values, dtype=np.float64), q)) if values else None


class Host:
    """Start/stop/reset and status around the generation thread."""

    def __init__(
        self,
        lm: LoadedModel,
        bus: ParameterBus,
        sink: Sink,
        sae: LoadedSAE | None = None,
        config: HostConfig | None = None,
        recorder: WavRecorder | None = None,
    ) -> None:
        self.lm, self.bus, self.sink, self.recorder = lm, bus, sink, recorder
        self.config = config or HostConfig()
        self.config.validate(lm)
        bus.prompt_check = lambda text: limits.prompt_tokens(lm.tokenizer, text)
        bus.prompt_check(bus.snapshot().prompt)
        self.hop = lm.sample_rate // lm.frame_rate
        self.steerer = Steerer(lm, sae, cfg_doubled=self.config.sampling.cfg) if sae is not None else None
        if self.steerer is not None:
            self.steerer.watch(self.config.meters)
        self._thread: threading.Thread | None = None
        self._running = threading.Event()
        self.error: BaseException | None = None
        self._step_ms: deque[float] = deque(maxlen=1000)
        self._latency_ms: deque[float] = deque(maxlen=200)
        self._markers: deque[tuple[float, float]] = deque()  # (changed_at, model-rate sample index)
        self._busy_s = 0.0
        self._since_block_s = 0.0  # compute since the last block was queued
        self._blocks = 0
        self._block_ms: deque[float] = deque(maxlen=200)  # compute between consecutive blocks
        self._measured_lookahead_ms = FIRST_LOOKAHEAD_MS  # from `_block_ms`, renewed with each block
        self._model_ms: deque[float] = deque(maxlen=200)  # decoder steps alone
        self._decode_frame_ms: deque[float] = deque(maxlen=50)  # chunk decodes, per frame of their window
        self._generated = 0  # model-rate samples generated
        self._reprimes_before = 0
        self._nonfinite_before = 0
        self.steps = 0
        self._loop: TokenLoop | None = None
        self._decoder: ChunkedDecoder | None = None
        self._applied_version = -1
        self._target: torch.Tensor | None = None  # steering vector of the current snapshot
        self._glide_left = 0.0  # share of the way from the vector in use to the target still to go
        self._lanes_key: tuple | None = ()  # the automated knobs the installed lanes play
        self._last_meter = 0.0
        self._recording_said = False
        at, keep = self.config.reprime_span(lm)
        self._reprime_at = int(at * lm.frame_rate) - self.config.catch_up_steps(lm)
        self._keep = int(keep * lm.frame_rate)
        self.applied: deque[tuple[int, int]] = deque(maxlen=4096)  # (step, snapshot version) when applied
        # The latest generated blocks, for scopes on other threads (a deque appends atomically).
        self.monitor: deque[np.ndarray] = deque(maxlen=32)
        # Called on the generation thread with each step's complete frames `[batch, K, n]`
        # (benchmarks score the tokens): it must be quick.
        self.on_frames: Callable[[torch.Tensor], None] | None = None

    # ---- control --------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        if self.config.melody is not None and self.config.melody.live:
            self.config.melody.start()
        self.sink.start()
        self._running.set()
        self._thread = threading.Thread(target=self._guarded_run, name="mgsteer-generation", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._running.clear()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.sink.stop()
        if self.config.melody is not None and self.config.melody.live:
            self.config.melody.stop()
        if self.recorder is not None:
            self.recorder.close()
        if self.steerer is not None:
            self.steerer.close()

    def reset(self) -> None:
        self.bus.reset()

    @property
    def graph_error(self) -> str | None:
        """Why the step runs eagerly on a GPU where a graph was asked for, if it does."""
        loop = self._loop
        if loop is None or loop.graphs is None:
            return None
        return loop.graphs.error or loop.eager_reason

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def status(self) -> Status:
        generated_s = self._generated / self.lm.sample_rate
        steps = list(self._step_ms)
        lat = list(self._latency_ms)
        return Status(
            position_s=self.sink.played_model_samples / self.lm.sample_rate,
            generated_s=generated_s,
            x_realtime=generated_s / self._busy_s if self._busy_s else 0.0,
            step_ms_p50=_percentile(steps, 50) or 0.0,
            step_ms_p95=_percentile(steps, 95) or 0.0,
            lookahead_ms=1000 * self.sink.queued_seconds,
            underruns=self.sink.underruns,
            latency_ms_p50=_percentile(lat, 50),
            latency_ms_p95=_percentile(lat, 95),
            reprimes=self._reprimes_before + (self._loop.reprimes if self._loop is not None else 0),
            steps=self.steps,
            nonfinite_steps=self._nonfinite_before + (self._loop.nonfinite_steps if self._loop is not None else 0),
            recording=self.recorder.error if self.recorder is not None else None,
        )

    # ---- generation thread ------------------------------------------------------------------------
    def _guarded_run(self) -> None:
        try:
            with torch.inference_mode():
                self._run()
        except BaseException as exc:  # surfaced by `alive`/`error`; the CLI reports it
            self.error = exc
            self._running.clear()

    def _new_loop(self, snap: Snapshot) -> None:
        if self._decoder is not None:
            self._emit(self._decoder.flush())
            self._reprimes_before += self._loop.reprimes
            self._nonfinite_before += self._loop.nonfinite_steps
        context = self.config.context_positions(self.lm)
        backend = self.config.backend
        self._loop = TokenLoop(
            self.lm, [snap.prompt], self.config.sampling, max_context=context, graph=self.config.graph,
            readback=self.config.readback, backend=backend,
            melody=self.config.melody.current() if self.config.melody is not None else None,
        )  # fmt: skip
        if self.steerer is not None:
            self.steerer.attach(self._loop)
            self._lanes_key = None  # automation starts again with the music
        self._decoder = ChunkedDecoder(self.lm, self.config.chunk, backend.decode_codes if backend else None)
        self._loop_base = self._generated  # model-rate sample where this loop's audio starts
        self._prompt = snap.prompt
        self._reset_seen = snap.reset_count
        self._follow_seen = snap.follow_count

    def _reset_due(self, snap: Snapshot) -> bool:
        """Resets coalesce: one at most every RESET_GAP_S of audio generated while playing (a
        reset storm restarts the music a few times a second, never at every step); a later
        one waits for its turn."""
        return not snap.playing or (self._generated - self._loop_base) / self.lm.sample_rate >= RESET_GAP_S

    def _run(self) -> None:
        while self._running.is_set():
            if self._tick():
                self._pace()
            else:
                time.sleep(0.01)

    def _tick(self) -> bool:
        """One generation step under the current snapshot; False when the transport is stopped."""
        snap = self.bus.snapshot()
        if self._loop is None or (snap.reset_count != self._reset_seen and self._reset_due(snap)):
            self._new_loop(snap)
        if not snap.playing:
            self.sink.pause_counting()
            return False
        started = time.perf_counter()
        loop = self._loop
        if snap.version != self._applied_version:
            self._applied_version = snap.version
            if self.steerer is not None:
                self._follow_knobs(snap)
                self._follow_automation(snap, loop)
                first = self._target is None
                self._target = self.steerer.vector_for(snap.alphas())
                self._glide_left = 1.0
                if first:  # first snapshot: start at the target, no glide
                    self._glide(0.0)
            if self.applied:  # a change after start: mark where its sound begins
                # The coarse codebook of frame `position` is sampled in this step.
                self._markers.append((snap.changed_at, self._loop_base + loop.position * self.hop))
            self.applied.append((self.steps, snap.version))
        if self._glide_left > 0:
            self._glide(snap.smoothing_ms)
        if snap.prompt != self._prompt and not loop.repriming:
            loop.begin_reprime(self._keep, [snap.prompt], **self._live_melody())
            self._prompt = snap.prompt
        if snap.follow_count != self._follow_seen and not loop.repriming:
            self._follow_seen = snap.follow_count
            if self._live_melody():
                loop.begin_reprime(self._keep, **self._live_melody())
        frames = loop.step()
        self._model_ms.append(1000 * (time.perf_counter() - started))
        if self.on_frames is not None and frames.shape[-1]:
            self.on_frames(frames)
        self.steps += 1
        queued_before = self._generated
        for frame in frames[0].unbind(-1):
            self._emit(self._push(frame))
        if self.config.chunk_choices and self.steps % 50 == 0 and self._decode_frame_ms:
            self._decoder.cfg = replace(self._decoder.cfg, chunk=self.fitted_chunk())
        if not loop.repriming and loop.cache_len >= self._reprime_at:
            loop.begin_reprime(self._keep, **self._live_melody())
        if loop.repriming:
            self._reprime_piece(loop)
        took = time.perf_counter() - started
        self._busy_s += took
        self._step_ms.append(1000 * took)
        self._since_block_s += took
        if self._generated > queued_before:
            self._blocks += 1
            if self._blocks > FIRST_BLOCKS:
                self._block_ms.append(1000 * self._since_block_s)
                self._measure_lookahead()
            self._since_block_s = 0.0
        self._publish_meters(started)
        return True

    def _live_melody(self) -> dict:
        """A live melody input's chroma now, for a re-prime to take ({} without one: the
        melody in play stays)."""
        source = self.config.melody
        return {"melody": source.current()} if source is not None and source.live else {}

    def _publish_meters(self, now: float) -> None:
        if self.steerer is None or now - self._last_meter <= 1 / 30:
            return
        meters = self.steerer.read_meters()
        if meters is not None:
            self._last_meter = now
            self.bus.publish_meters(dict(zip(self.steerer.watched, meters, strict=True)))

    def _follow_knobs(self, snap: Snapshot) -> None:
        """With `meter_knobs`, watch the knobs' features (generation thread, between steps)."""
        if not self.config.meter_knobs:
            return
        wanted = list(dict.fromkeys(f for knob in snap.knobs for f, _ in knob.features))[:METER_SLOTS]
        if wanted != self.steerer.watched:
            self.steerer.watch(wanted)

    def _follow_automation(self, snap: Snapshot, loop: TokenLoop) -> None:
        """Install the automated knobs as lanes when they changed, counted from the next step:
        from then on the step reads their α on the device (no host work per step)."""
        automated = [k for k in snap.knobs if k.automation]
        key = tuple((k.features, k.lo, k.hi, k.curve, k.automation, k.loop) for k in automated)
        if key == self._lanes_key:
            return
        self._lanes_key = key
        fr = self.lm.frame_rate
        lanes = [knob_lane(k, self.steerer.direction(k.features), fr) for k in automated if k.features]
        self.steerer.set_lanes(lanes, start=loop.position)

    def _reprime_piece(self, loop: TokenLoop) -> None:
        if self.steerer is not None:
            self.steerer.metering = False
        try:
            loop.reprime_step(self.config.reprime_piece)
        finally:
            if self.steerer is not None:
                self.steerer.metering = True

    def _glide(self, smoothing_ms: float) -> None:
        """One-pole glide in audio time, 99 % of the way after `smoothing_ms`; snaps to the
        target once within 0.1 % of the way, so the steady state is exact. The arithmetic runs
        on the device: a glide never waits for it."""
        frame_ms = 1000.0 / self.lm.frame_rate
        a = 1.0 if smoothing_ms <= 0 else 1.0 - math.exp(-frame_ms * math.log(100.0) / smoothing_ms)
        self._glide_left *= 1.0 - a
        if self._glide_left < 1e-3:
            self._glide_left = 0.0
            self.steerer.set_vector(self._target, self.config.halves)
        else:
            self.steerer.glide(self._target, a)

    def _emit(self, block: np.ndarray | None) -> None:
        if block is None or not len(block):
            return
        mono = block.mean(axis=1) if block.ndim == 2 else block
        self.sink.write(block if self.sink.channels == block.ndim else mono)  # a stereo model on a mono sink: the mix
        self.monitor.append(mono)  # the scope and level meter show the mix
        if self.recorder is not None:
            self.recorder.write(block)  # queued: the recorder writes on its own thread
            if self.recorder.error is not None and not self._recording_said:
                self._recording_said = True  # controllers hear it once, as status feedback
                self.bus.publish_status({"recording": self.recorder.error})
        self._generated += len(block)

    def _push(self, frame: torch.Tensor) -> np.ndarray | None:
        """Feed a frame to the chunked decoder, timing the decodes (the low profile sizes its
        chunk by them)."""
        started = time.perf_counter()
        block = self._decoder.push(frame)
        if block is not None:
            cfg = self._decoder.cfg
            window = cfg.context + cfg.chunk + cfg.holdback
            self._decode_frame_ms.append(1000 * (time.perf_counter() - started) / window)
        return block

    @property
    def chunk_frames(self) -> int:
        """Frames per decode now (the low profile changes it as it measures)."""
        return self._decoder.cfg.chunk if self._decoder is not None else self.config.chunk.chunk

    def fitted_chunk(self) -> int:
        """The smallest of the profile's chunks whose step + decode ÷ chunk takes ≤ 60 % of a
        frame (a decode reads context + chunk + hold-back frames); the chunk in use stays
        while it takes ≤ 80 %; the largest if none fits."""
        cfg = self._decoder.cfg
        step_ms = _percentile(self._model_ms, 50) or 0.0
        per_frame = _percentile(self._decode_frame_ms, 50) or 0.0
        frame_ms = 1000 / self.lm.frame_rate

        def share(chunk: int) -> float:
            return (step_ms + per_frame * (cfg.context + chunk + cfg.holdback) / chunk) / frame_ms

        fits, keeps = CHUNK_BUDGET
        choices = self.config.chunk_choices
        best = next((c for c in choices if share(c) <= fits), choices[-1])
        return cfg.chunk if best > cfg.chunk and share(cfg.chunk) <= keeps else best

    def lookahead_target_ms(self) -> float:
        """Audio the host keeps queued: the configured amount, or the measured one."""
        return self.config.lookahead_ms if self.config.lookahead_ms is not None else self._measured_lookahead_ms

    def _measure_lookahead(self) -> None:
        """The sink's block plus 1.5 × the 99th percentile of the compute between two blocks,
        within bounds (once 8 blocks are timed): renewed as a block is queued, not per step."""
        if self.config.lookahead_ms is not None or len(self._block_ms) < 8:
            return
        lo, hi = MEASURED_LOOKAHEAD_MS
        wanted = 1000 * self.sink.block_seconds + 1.5 * (_percentile(self._block_ms, 99) or 0.0)
        self._measured_lookahead_ms = min(hi, max(lo, wanted))

    def _pace(self) -> None:
        limit = self.lookahead_target_ms() / 1000.0
        while self._running.is_set() and self.sink.queued_seconds > limit:
            self._collect_latencies()
            time.sleep(0.002)
        self._collect_latencies()

    def _collect_latencies(self) -> None:
        """Generation thread only: markers whose first sample has now left the sink."""
        played = self.sink.played_model_samples
        now = time.perf_counter()
        while self._markers and self._markers[0][1] <= played:
            changed_at, _ = self._markers.popleft()
            self._latency_ms.append(1000 * (now - changed_at))
