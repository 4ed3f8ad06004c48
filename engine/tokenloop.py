"""MusicGen's token loop, one decoder step at a time, written out instead of `generate()`.

Why our own loop: between any two steps the engine must be able to read a parameter
snapshot, swap the steering plan and hand complete frames to the audio path; `generate()`
runs to the end and returns only audio.

Delay pattern (K codebooks): codebook q at decoder position p holds frame p − q − 1; position
0 is the start token and positions p ≤ q of codebook q are padding. So after sampling
position p ≥ K, frame p − K is complete: N frames need N + K − 1 steps. Stereo checkpoints
delay each left/right pair alike (delay q // 2, `LoadedModel.delays`): there K / 2 stands for K.

Endless play (re-priming): MusicGen was trained on ≤ 30 s and has a fixed positional table.
Before the context fills, a second KV cache is built from the last few seconds of tokens —
the same delayed columns, shifted so they start at position 0 behind a fresh start column —
a few positions per step (`reprime_step`), chasing the head; once it has caught up it
replaces the old cache. Generation never pauses for it, and a new prompt can be swapped in
the same way.

Memory: each self-attention cache is preallocated once (`max_context` positions) and the two
caches of a re-prime are reused in turn, so endless play allocates nothing per step and the
resident size stays flat (a cache that grows by concatenation fragments the heap).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from engine.device import to_device
from engine.errors import MgsteerError
from engine.hooks import ResidualTap
from engine.model import LoadedModel
from engine.static_decoder import StaticDecoder
from engine.step_graph import StepGraphs


@dataclass(frozen=True)
class SamplingConfig:
    """MusicGen's defaults: top-k 250, temperature 1, classifier-free guidance 3."""

    guidance: float = 3.0
    top_k: int = 250
    temperature: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.guidance >= 1.0 and self.temperature > 0 and self.top_k >= 0):
            raise MgsteerError(
                f"bad sampling settings (guidance {self.guidance} must be ≥ 1, temperature {self.temperature} > 0, "
                f"top-k {self.top_k} ≥ 0)"
            )

    @property
    def cfg(self) -> bool:
        return self.guidance > 1.0


RING = 64  # sampled columns kept on the device between two read-backs (> any read-back batch)


@dataclass
class _Reprime:
    """A cache set being rebuilt from delayed columns `offset + 1 …` (see module docstring)."""

    offset: int
    slot: int  # which of the two cache sets is being built
    condition: object  # the decoder's encoding of the prompt the new context plays
    done: int = 0  # positions already in the new cache
    pieces: list[int] = field(default_factory=list)
    bad: torch.Tensor | None = None  # device flag: a prefill piece's logits were not finite
    unsteered: bool = False  # rebuilding without the edit after a non-finite prefill


class TokenLoop:
    """Generates frames for a batch of prompts; `step()` is one decoder step.

    The step runs on `StaticDecoder`'s fixed buffers and keeps its own state on the device
    (next input column, cache position, step count, a ring of sampled columns, a non-finite
    flag per step), so it never waits for the device: on a GPU it is captured as a CUDA graph
    and replayed (`graph`, default on CUDA), and columns are read back in batches of
    `readback` steps (one copy per batch, default 8 on a GPU, 1 elsewhere).

    Both cache sets and their graphs are made at the first step, before any audio: a capture
    synchronises the device, which must not happen in the middle of a set. A forward hook on
    a decoder layer that a replay would not run (anything but a `ResidualTap` that says it is
    `graph_safe`) makes the step run eagerly while it is there, and `eager_reason` says so.
    """

    def __init__(
        self,
        lm: LoadedModel,
        prompts: list[str],
        sampling: SamplingConfig | None = None,
        max_context: int | None = None,
        graph: bool | None = None,
        readback: int | None = None,
        backend=None,
        melody: torch.Tensor | None = None,
    ) -> None:
        self.lm = lm
        self.sampling = sampling or SamplingConfig()
        self.batch = len(prompts)
        self.max_context = min(max_context or lm.max_positions, lm.max_positions)
        self.position = 0  # steps taken = absolute decoder position of the next input column
        self.cache_len = 0  # positions held in the live cache
        self.reprimes = 0
        # Defence in depth: a step whose logits are not finite (an extreme steering edit, a
        # float16 overflow) is run again inside `unsteered()`, which the steering owner sets.
        self.unsteered: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
        self.nonfinite_steps = 0  # steps (and re-primes) that had to be run again
        device, k, pad = lm.device, lm.num_codebooks, lm.pad_token_id
        rows, cfg = self.batch * (2 if self.sampling.cfg else 1), self.sampling.cfg
        # `backend` (engine.onnx_backend) swaps in another decoder with the same methods.
        self.backend = backend
        make = StaticDecoder if backend is None else backend.decoder
        self.decoder = make(lm, rows, self.max_context, cfg)
        self._generator = torch.Generator(device=device).manual_seed(self.sampling.seed)
        # What the context plays: the prompts and, for a melody model, a melody's chroma `[frames, 12]`.
        self.prompts, self.melody = list(prompts), melody
        self._condition = self.decoder.encode(prompts, melody)
        self._sets: list = [self.decoder.cache_for(None, self.decoder.condition_length(self._condition)), None]
        self._live = 0
        self.decoder.set_prompt(self._sets[0], self._condition)
        self._reprime: _Reprime | None = None
        self._start = torch.full((self.batch, k), pad, dtype=torch.long, device=device)
        # Device state of a step: what a captured graph reads and updates in place.
        self._tokens = self._start.clone()  # the next input column
        self._pos = torch.zeros(1, dtype=torch.long, device=device)  # its position in the live cache
        self._step_no = torch.zeros(1, dtype=torch.long, device=device)  # steps taken
        self._delays = torch.tensor(lm.delays, device=device)  # each codebook's delay in the pattern
        self._delays_host = torch.tensor(lm.delays)  # the same, for re-prime columns built on the host
        self._ring = torch.full((self.batch, k, RING), pad, dtype=torch.long, device=device)
        self._bad = torch.zeros(RING, dtype=torch.bool, device=device)
        # Host state: delayed columns read back so far, newest (at `_read`) last.
        self._history: deque[torch.Tensor] = deque([self._start.cpu()], maxlen=lm.max_positions)
        self._read = 0
        self._rng = self._generator.get_state()  # the sampler's state at `_read`, for retries
        self.readback = max(1, min(readback or (8 if device.type == "cuda" else 1), RING // 2))
        state = [self._tokens, self._pos, self._step_no, self._ring, self._bad]
        use_graph = device.type == "cuda" and graph is not False and backend is None
        self.graphs = StepGraphs(self._step_core, state, self._generator) if use_graph else None
        if self.graphs is not None:  # the re-prime's cache set too, so both are captured up front
            self._sets[1] = self.decoder.cache_for(None, self.decoder.condition_length(self._condition))
        self._prepared = False

    # ---- one step -----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self) -> torch.Tensor:
        """Run one decoder step; return the complete frames `[batch, K, n]` read back by it:
        none for the first K − 1 steps, then one per step (or a batch every `readback` steps)."""
        if self.cache_len >= self.max_context:
            raise MgsteerError(f"the context is full ({self.max_context} positions); re-prime before continuing")
        self._advance()
        if self.position - self._read >= self.readback:
            return self._collect()
        return self._no_frames()

    @torch.no_grad()
    def flush(self) -> torch.Tensor:
        """Read back the frames of steps taken since the last read-back."""
        return self._collect() if self.position > self._read else self._no_frames()

    @property
    def graphed(self) -> bool:
        """Whether the next step will replay a captured graph."""
        return self.graphs is not None and self.graphs.usable and self.eager_reason is None

    @property
    def eager_reason(self) -> str | None:
        """Why a step that could replay a graph runs eagerly now: a forward hook on a decoder
        layer whose work a replay would freeze (it runs only while being captured)."""
        if self.graphs is None:
            return None
        for i, layer in enumerate(self.lm.decoder_layers):
            for hook in layer._forward_hooks.values():
                owner = getattr(hook, "__self__", None)
                if isinstance(owner, ResidualTap) and not owner.graph_safe:
                    return f"the tap at decoder layer {i} records, or edits in a way a CUDA graph cannot replay (clamp)"
                if not isinstance(owner, ResidualTap):
                    name = getattr(hook, "__qualname__", type(hook).__name__)
                    return f"decoder layer {i} has a forward hook a CUDA graph would not replay ({name})"
        return None

    def _advance(self) -> None:
        cache = self._sets[self._live]
        replayed = False
        if self.graphed:  # one look at the hooks a step
            if not self._prepared:
                self._prepared = True
                for key, each in enumerate(self._sets):
                    if not self.graphs.prepare(key, each):
                        break
            replayed = self.graphs.usable and self.graphs.replay(self._live, cache)
        if not replayed:
            self._step_core(cache)
        self.position += 1
        self.cache_len += 1

    def _step_core(self, cache) -> None:
        """The step itself: device tensors in, device tensors updated in place; no host sync."""
        tokens = self._tokens
        columns = torch.cat([tokens, tokens], dim=0) if self.sampling.cfg else tokens
        logits = self.decoder.forward(columns[..., None], cache, self._pos)[:, :, -1].float()
        self._step_no.add_(1)
        slot = self._step_no % RING
        self._bad.index_copy_(0, slot, (~torch.isfinite(logits).all()).view(1))
        logits = torch.nan_to_num(logits, nan=0.0, posinf=1e4, neginf=-1e4)  # the music must not stop
        # Delay pattern: codebook q is padding until position delay(q) + 1.
        sampled = self._sample(logits).masked_fill(self._delays >= self._step_no, self.lm.pad_token_id)
        self._tokens.copy_(sampled)
        self._ring.index_copy_(2, slot, sampled[..., None])
        self._pos.add_(1)

    def _collect(self, check: bool = True) -> torch.Tensor:
        """Copy the columns sampled since the last read-back, with their steps' non-finite
        flags, to the host (one copy, the read-back's one wait) and return the frames they
        complete. A step whose logits were not finite is taken back with everything after it
        and run again unsteered (the sampler rewound too, where no graph holds it), so one bad
        edit costs a repeated step, never the stream."""
        first, last = self._read + 1, self.position
        slots = torch.arange(first, last + 1, device=self._ring.device) % RING
        columns = self._ring.index_select(2, slots)
        size = columns.numel()
        packed = torch.cat([columns.flatten(), self._bad.index_select(0, slots).long()]).cpu()
        columns, bad = packed[:size].view(columns.shape), packed[size:]
        if check and bool(bad.any()):
            return self._retry(first, last, int(bad.sum()))
        self._history.extend(columns.unbind(-1))
        self._read = last
        if self.graphs is None:
            self._rng = self._generator.get_state()
        frames = [self._frame(p) for p in range(max(first, self.lm.delay_steps), last + 1)]
        return torch.stack(frames, dim=-1) if frames else self._no_frames()

    def _retry(self, first: int, last: int, bad_steps: int) -> torch.Tensor:
        self.nonfinite_steps += bad_steps
        steps = last - first + 1
        self.position -= steps
        self.cache_len -= steps
        # The taken-back positions may hold NaN keys and values: masked, but 0·NaN is NaN.
        self.decoder.clear(self._sets[self._live], self.cache_len, self.cache_len + steps)
        self._pos.fill_(self.cache_len)
        self._step_no.fill_(self.position)
        self._tokens.copy_(to_device(self._history[-1], self._tokens.device))
        if self.graphs is None:
            self._generator.set_state(self._rng)
        with self.unsteered():
            for _ in range(steps):
                self._advance()
        return self._collect(check=False)

    def _frame(self, p: int) -> torch.Tensor:
        """Frame p − D (D: `delay_steps`): codebook q from the column sampled at step
        p − D + 1 + delay(q)."""
        first = self._read - len(self._history) + 1
        start = p - self.lm.delay_steps + 1 - first
        return torch.stack([self._history[start + d][:, q] for q, d in enumerate(self.lm.delays)], dim=1)

    def _no_frames(self) -> torch.Tensor:
        return torch.empty(self.batch, self.lm.num_codebooks, 0, dtype=torch.long)

    # ---- re-priming ---------------------------------------------------------------------------
    @property
    def repriming(self) -> bool:
        return self._reprime is not None

    def begin_reprime(
        self, keep_positions: int, prompts: list[str] | None = None, melody: torch.Tensor | str | None = "same"
    ) -> None:
        """Start rebuilding the context from the last `keep_positions` steps (and a new prompt,
        or a new melody's chroma: None for none, "same" to keep it)."""
        keep = max(1, min(keep_positions, self._read, len(self._history) - 1))
        condition = self._condition
        if prompts is not None or not isinstance(melody, str):
            self.prompts = prompts if prompts is not None else self.prompts
            self.melody = self.melody if isinstance(melody, str) else melody
            condition = self.decoder.encode(self.prompts, self.melody)
        slot = 1 - self._live
        cache = self.decoder.cache_for(self._sets[slot], self.decoder.condition_length(condition))
        if cache is not self._sets[slot] and self.graphs is not None:
            self.graphs.forget(slot)
        self._sets[slot] = cache
        self.decoder.set_prompt(cache, condition)
        self._reprime = _Reprime(offset=self._read - keep, slot=slot, condition=condition)

    @torch.no_grad()
    def reprime_step(self, piece: int = 32) -> bool:
        """Prefill up to `piece` positions of the new context; True when it was swapped in.

        The head advances one position per step, so with `piece` p the new cache catches up
        after about keep / (p − 1) steps: p must be ≥ 2. Only read-back columns can be
        prefilled, so the swap happens at a read-back."""
        re = self._reprime
        if re is None:
            return False
        ready = self._read - re.offset  # positions whose columns the host has
        if re.done < ready:
            end = min(re.done + piece, ready)
            columns = torch.stack([self._shifted_column(re, p) for p in range(re.done, end)], dim=-1)
            columns = to_device(columns, self.lm.device)
            rows = torch.cat([columns, columns], dim=0) if self.sampling.cfg else columns
            positions = torch.arange(re.done, end, device=self.lm.device)
            with self.unsteered() if re.unsteered else contextlib.nullcontext():
                logits = self.decoder.forward(rows, self._sets[re.slot], positions)
            bad = ~torch.isfinite(logits).all()
            re.bad = bad if re.bad is None else re.bad | bad
            re.pieces.append(end - re.done)
            re.done = end
        if re.done < self.position - re.offset:
            return False
        if not re.unsteered and bool(re.bad):  # one sync per re-prime
            self.nonfinite_steps += 1
            re.done, re.bad, re.unsteered = 0, None, True
            self.decoder.clear(self._sets[re.slot], 0, None)  # the NaN the bad pieces left
            return False
        self._live, self.cache_len = re.slot, re.done
        self._pos.fill_(self.cache_len)
        self._condition = re.condition
        self._reprime = None
        self.reprimes += 1
        return True

    def _shifted_column(self, re: _Reprime, p: int) -> torch.Tensor:
        """Column p of the re-primed sequence: old column offset + p, with the start pattern."""
        if p == 0:
            return self._history[0].new_full(self._history[0].shape, self.lm.pad_token_id)
        first = self._read - len(self._history) + 1
        column = self._history[re.offset + p - first].clone()
        column[:, self._delays_host >= p] = self.lm.pad_token_id  # codebooks delayed ≥ p: padding at a fresh start
        return column

    def _sample(self, logits: torch.Tensor) -> torch.Tensor:
        s = self.sampling
        if s.cfg:
            cond, uncond = logits.split(self.batch, dim=0)
            logits = uncond + (cond - uncond) * s.guidance
        logits = logits / s.temperature
        if 0 < s.top_k < logits.shape[-1]:
            kth = logits.topk(s.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = logits.softmax(dim=-1).reshape(-1, logits.shape[-1])
        return torch.multinomial(probs, 1, generator=self._generator).reshape(self.batch, -1)

    def frames(self, count: int, progress: bool = False) -> torch.Tensor:
        """Generate `count` more complete frames; returns codes `[batch, K, count]` (on the CPU)."""
        from tqdm import tqdm

        # Steps up to position P complete P − D + 1 frames (D: `delay_steps`).
        target = max(self._read, self.lm.delay_steps - 1) + count
        out: list[torch.Tensor] = []
        with tqdm(total=count, unit="frame", disable=not progress, leave=False) as bar:
            while self.position < target:
                out.append(self.step())
                bar.update(out[-1].shape[-1])
            out.append(self.flush())
        return torch.cat(out, dim=-1)
