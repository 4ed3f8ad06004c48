"""Harvest residual-stream activations from MusicGen, per frame.

Two sources:
- audio (as the paper did): each file → 32 kHz mono → EnCodec tokens → the delay-pattern
  layout → one teacher-forced decoder pass, unconditional or with a caption;
- generation: generate from prompts and record the conditional half at every step.

Row r of a clip is decoder position r + 1, whose input holds frame r's coarse codebook: so a
clip of N frames gives exactly N rows per layer. Work is split by clip across `--shard i/n`
workers (or torchrun ranks) and written to a resumable `ActivationStore`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from engine import limits
from engine.errors import MgsteerError
from engine.hooks import recording
from engine.inputs import TEXT_BYTES, read_bytes
from engine.model import LoadedModel
from engine.prompts import encode_prompts, null_condition, teacher_forced_logits
from engine.tokenloop import SamplingConfig, TokenLoop
from sae.store import StoreMeta, StoreWriter

MIN_CLIP_SECONDS = 0.1
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".aif", ".aiff")


@dataclass(frozen=True)
class Clip:
    id: str
    path: Path | None = None  # audio clips
    start_s: float = 0.0
    seconds: float = 0.0
    text: str | None = None  # caption (audio) or prompt (generation)


def parse_shard(text: str | None) -> tuple[int, int]:
    """`i/n` (or torchrun's RANK/WORLD_SIZE when not given) → (worker, workers)."""
    if text is None:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    try:
        worker, workers = (int(x) for x in text.split("/"))
    except ValueError as exc:
        raise MgsteerError(f"bad --shard '{text}': use i/n, e.g. 0/4") from exc
    if not 0 <= worker < workers:
        raise MgsteerError(f"bad --shard '{text}': need 0 ≤ i < n")
    return worker, workers


def audio_files(root: Path) -> list[Path]:
    """The audio files under `root`, in a stable order."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)


def audio_clips(folder: str | Path, clip_seconds: float, captions: dict[str, str] | None = None) -> list[Clip]:
    """Each file cut into consecutive windows of `clip_seconds` (a last window ≥ 1 s is kept)."""
    if not clip_seconds >= MIN_CLIP_SECONDS:
        raise MgsteerError(f"clips must be at least {MIN_CLIP_SECONDS} s long, got {clip_seconds}")
    root = Path(folder)
    if not root.is_dir():
        raise MgsteerError(f"audio folder '{folder}' does not exist")
    files = audio_files(root)
    if not files:
        raise MgsteerError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under '{folder}'")
    clips = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        clips += file_windows(path, rel, clip_seconds, captions.get(rel) if captions else None)
    return clips


def file_windows(path: Path, name: str, clip_seconds: float, text: str | None = None) -> list[Clip]:
    """One file cut into consecutive windows of `clip_seconds` (a last window ≥ 1 s is kept)."""
    from engine.wavfile import audio_info

    duration, _ = audio_info(path)
    windows = max(1, math.floor(duration / clip_seconds + 1e-9))
    if duration - windows * clip_seconds >= 1.0:
        windows += 1
    starts = [w * clip_seconds for w in range(windows)]
    return [Clip(f"{name}#{w}", path, t, min(clip_seconds, duration - t), text) for w, t in enumerate(starts)]


def read_captions(path: str | Path) -> dict[str, str]:
    """A CSV with columns `file,caption` (file relative to the audio folder)."""
    try:
        text = read_bytes(path, "captions", TEXT_BYTES).decode("utf-8")
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    except OSError as exc:
        raise MgsteerError(f"cannot read captions '{path}': {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise MgsteerError(f"captions '{path}' are not a UTF-8 CSV file ({exc})") from exc
    if rows and not {"file", "caption"} <= set(rows[0]):
        raise MgsteerError(f"captions '{path}' need the columns file,caption")
    return {r["file"]: limits.prompt_text(r["caption"] or "", f"caption of '{r['file']}'") for r in rows}


def audio_inputs(folder: str | Path, clip_seconds: float, captions: dict[str, str] | None) -> dict:
    """What an audio harvest reads, as a store records it: the folder, every file's size and
    modification time (a changed or replaced file changes them), the clip length and captions."""
    root = Path(folder).resolve()
    files = audio_files(root)
    listing = [[p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    return {
        "folder": str(root),
        "files": len(listing),
        "files_digest": _digest(listing),
        "clip_seconds": clip_seconds,
        "captions_digest": _digest(sorted(captions.items())) if captions else None,
    }


def prompt_inputs(clips: list[Clip], seconds: float, seed: int) -> dict:
    """What a generation harvest reads: its prompts, seconds per prompt and seed."""
    return {"prompts": len(clips), "prompts_digest": _digest([c.text for c in clips]), "seconds": seconds, "seed": seed}


def _digest(data) -> str:
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16]


def clip_frames_limit(lm: LoadedModel, generated: bool) -> int:
    """Frames one clip may have: one decoder pass, less the delay pattern's tail when generated."""
    return lm.max_positions - 1 - (lm.delay_steps if generated else 0)


def check_clip_length(lm: LoadedModel, seconds: float, generated: bool) -> None:
    """Refuse clips longer than one pass of the model (they used to be cut short without a word)."""
    frames = clip_frames_limit(lm, generated)
    if round(seconds * lm.frame_rate) > frames:
        flag = "--seconds" if generated else "--clip-seconds"
        limit = frames / lm.frame_rate
        raise MgsteerError(f"{flag} {seconds:g} is longer than one pass of this model allows ({limit:.1f} s)")


def load_audio(clip: Clip, sample_rate: int) -> np.ndarray:
    """The clip's window as mono float32 at `sample_rate`."""
    from scipy.signal import resample_poly

    from engine.wavfile import read_audio

    audio, sr = read_audio(clip.path, clip.start_s, clip.seconds)
    audio = audio.mean(axis=1)
    if sr != sample_rate:
        g = math.gcd(sr, sample_rate)
        audio = resample_poly(audio, sample_rate // g, sr // g)
    return audio.astype(np.float32)


@torch.no_grad()
def encode_audio(lm: LoadedModel, audio: np.ndarray) -> torch.Tensor:
    """The codec's tokens `[K, frames]` of mono audio at the model's rate."""
    return lm.codec.encode(torch.from_numpy(audio)[None])[0]


def delayed_sequence(codes: torch.Tensor, pad: int, channels: int = 1) -> torch.Tensor:
    """Codes `[..., K, N]` → the whole delayed sequence `[..., K, N + D]` (D = K / channels):
    S[q, p] = codes[q, p − q // channels − 1] (stereo pairs are delayed alike)."""
    k, n = codes.shape[-2:]
    out = torch.full((*codes.shape[:-1], n + k // channels), pad, dtype=torch.long, device=codes.device)
    for q in range(k):
        d = q // channels
        out[..., q, d + 1 : d + 1 + n] = codes[..., q, :]
    return out


def delayed_inputs(codes: torch.Tensor, pad: int, channels: int = 1) -> torch.Tensor:
    """Codes `[K, N]` → the decoder's input columns `[K, N + 1]` (the delayed sequence's first N + 1)."""
    return delayed_sequence(codes, pad, channels)[..., : codes.shape[-1] + 1]


@torch.no_grad()
def teacher_forced_activations(
    lm: LoadedModel, codes: list[torch.Tensor], layers: list[int], texts: list[str | None] | None = None
) -> list[dict[int, torch.Tensor]]:
    """For each clip's codes `[K, frames]`: {layer: [frames, hidden]}, in one decoder pass.

    Clips of different lengths are right-padded: the decoder is causal, so a clip's positions
    never see the padding after them and its rows are those of a pass on the clip alone (equal
    up to float rounding of the batched products; tested). Unconditional unless `texts` gives
    captions; a batch is either all captioned or all unconditional (`_batches`)."""
    texts = texts or [None] * len(codes)
    longest = max(c.shape[1] for c in codes)
    shape = (len(codes), lm.num_codebooks, longest + 1)
    inputs = torch.full(shape, lm.pad_token_id, dtype=torch.long, device=lm.device)
    for row, clip in enumerate(codes):
        inputs[row, :, : clip.shape[1] + 1] = delayed_inputs(clip.to(lm.device), lm.pad_token_id, lm.audio_channels)
    if texts[0] is None:
        states, mask = null_condition(lm, batch=len(codes))
    else:
        states, mask = encode_prompts(lm, list(texts))
    with recording(lm, layers, record_rows="all") as taps:
        teacher_forced_logits(lm, inputs.reshape(-1, longest + 1), (states, mask))
        taken = {layer: tap.take() for layer, tap in taps.items()}
    return [
        {layer: acts[row, 1 : clip.shape[1] + 1].float().cpu() for layer, acts in taken.items()}
        for row, clip in enumerate(codes)
    ]


def harvest_generation(
    lm: LoadedModel,
    prompts: list[str],
    layers: list[int],
    frames: int,
    sampling: SamplingConfig | None = None,
) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Activations `{layer: [prompts, frames, hidden]}` recorded while generating `frames` frames,
    and the generated codes `[prompts, K, frames]`."""
    sampling = sampling or SamplingConfig()
    with recording(lm, layers, cfg_doubled=sampling.cfg) as taps:
        # Recording taps append on the host at every call: no graph could replay that.
        loop = TokenLoop(lm, prompts, sampling, max_context=frames + lm.delay_steps, graph=False)
        codes = loop.frames(frames)
        return {layer: tap.take()[:, 1 : frames + 1].float().cpu() for layer, tap in taps.items()}, codes.cpu()


def assigned(clips: list[Clip], worker: int, workers: int) -> list[Clip]:
    """The clips worker `worker` of `workers` harvests (every workers-th, from its index)."""
    return [c for i, c in enumerate(clips) if i % workers == worker]


def harvest_to_store(
    lm: LoadedModel,
    clips: list[Clip],
    layers: list[int],
    out: str | Path,
    source: str,
    worker: int = 0,
    workers: int = 1,
    dtype: str = "float16",
    shard_rows: int = 65536,
    sampling: SamplingConfig | None = None,
    progress: bool = False,
    inputs: dict | None = None,
    batch_clips: int = 8,
) -> StoreWriter:
    """Harvest this worker's clips that the store does not hold yet; returns the writer.
    `inputs` (`audio_inputs`/`prompt_inputs`) is recorded, and a store made from other inputs
    is refused rather than mixed."""
    from tqdm import tqdm

    for layer in layers:
        lm.check_layer(layer)
    meta = StoreMeta(lm.name, tuple(layers), lm.hidden_size, dtype, source, lm.num_codebooks)
    writer = StoreWriter(out, meta, worker, workers, shard_rows, inputs=inputs)
    mine = assigned(clips, worker, workers)
    todo = [c for c in mine if c.id not in writer.done]
    bar = tqdm(total=len(todo) + len(writer.done), initial=len(writer.done), unit="clip", disable=not progress)
    started, frames = time.perf_counter(), 0
    batches = _harvest(lm, mine, set(writer.done), layers, source, sampling or SamplingConfig(), batch_clips)
    for clip, acts, codes, origin in batches:
        writing = time.perf_counter()
        writer.add_clip(clip.id, acts, codes, origin)
        writer.write_s += time.perf_counter() - writing
        frames += codes.shape[-1]
        bar.update(1)
    writing = time.perf_counter()
    writer.flush()
    writer.write_s += time.perf_counter() - writing
    bar.close()
    writer.frames, writer.seconds = frames, time.perf_counter() - started
    return writer


def _batches(clips: list[Clip], size: int) -> Iterator[list[Clip]]:
    """Consecutive clips, `size` at a time; captioned and unconditional clips apart."""
    batch: list[Clip] = []
    for clip in clips:
        if batch and (len(batch) == size or (batch[0].text is None) != (clip.text is None)):
            yield batch
            batch = []
        batch.append(clip)
    if batch:
        yield batch


def _harvest(
    lm, clips: list[Clip], done: set[str], layers, source, sampling, batch_clips: int = 8
) -> Iterator[tuple[Clip, dict, torch.Tensor, dict]]:
    """Activations, codes and source of every clip not in `done`, `batch_clips` at a time."""
    if source == "audio":
        for batch in _batches([c for c in clips if c.id not in done], batch_clips):
            limit = clip_frames_limit(lm, generated=False)
            codes = [encode_audio(lm, load_audio(clip, lm.sample_rate))[:, :limit] for clip in batch]
            acts = teacher_forced_activations(lm, codes, layers, [clip.text for clip in batch])
            for clip, clip_codes, clip_acts in zip(batch, codes, acts, strict=True):
                origin = {"path": str(clip.path.resolve()), "start_s": clip.start_s, "seconds": clip.seconds}
                yield clip, clip_acts, clip_codes.cpu(), origin
        return
    # Generated clips play together, batch by batch, seeded by the batch's first clip. The
    # batches are cut from the whole list, not from what is left to do, so a resumed harvest
    # replays a batch exactly as the interrupted one began it (and keeps only its missing clips).
    limit = clip_frames_limit(lm, generated=True)
    for batch in _batches(clips, batch_clips):
        if all(clip.id in done for clip in batch):
            continue
        lengths = [min(limit, round(clip.seconds * lm.frame_rate)) for clip in batch]
        seeded = replace(sampling, seed=sampling.seed + hash_id(batch[0]))
        acts, codes = harvest_generation(lm, [clip.text for clip in batch], layers, max(lengths), seeded)
        for row, (clip, frames) in enumerate(zip(batch, lengths, strict=True)):
            if clip.id not in done:
                origin = {"prompt": clip.text, "seed": seeded.seed, "row": row, "batch": len(batch)}
                yield clip, {layer: a[row, :frames] for layer, a in acts.items()}, codes[row, :, :frames], origin


def hash_id(clip: Clip) -> int:
    """A stable per-clip seed offset (Python's hash() is salted per process)."""
    return sum((i + 1) * ord(ch) for i, ch in enumerate(clip.id)) % 100_003


def prompt_clips(path: str | Path, seconds: float) -> list[Clip]:
    try:
        lines = [line.strip() for line in read_bytes(path, "prompts", TEXT_BYTES).decode("utf-8").splitlines()]
    except UnicodeDecodeError as exc:
        raise MgsteerError(f"prompts '{path}' is not a UTF-8 text file ({exc.reason} at byte {exc.start})") from exc
    prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise MgsteerError(f"no prompts in '{path}' (one per line)")
    for number, prompt in enumerate(prompts, 1):
        limits.prompt_text(prompt, f"prompt {number} of '{path}'")
    return [Clip(f"prompt{i}", seconds=seconds, text=p) for i, p in enumerate(prompts)]
