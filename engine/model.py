"""Load MusicGen (tiny, a hub id or a local folder) into one `LoadedModel`.

Why one loader: every command (render, play, harvest, train) must see the same facts about
the model (depth, hidden size, codebooks, frame rate) and fail the same clear way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoTokenizer,
    MusicgenForConditionalGeneration,
    MusicgenMelodyForConditionalGeneration,
    PreTrainedTokenizerBase,
)

from engine.device import resolve_device, resolve_dtype
from engine.errors import MgsteerError
from engine.hub import fetch_pretrained, load_parts
from engine.staged import settle
from engine.tiny import PRESETS, build_random_musicgen

HUB_IDS = (
    "facebook/musicgen-small", "facebook/musicgen-medium", "facebook/musicgen-large",
    "facebook/musicgen-stereo-small", "facebook/musicgen-stereo-medium", "facebook/musicgen-stereo-large",
    "facebook/musicgen-melody", "facebook/musicgen-melody-large",
    "facebook/musicgen-stereo-melody", "facebook/musicgen-stereo-melody-large",
)  # fmt: skip
ALTERNATIVES = (
    "offline, use --model demo_out/world (a MusicGen trained on a planted world by `make demo`), "
    "--model tiny (random weights, for plumbing) or a local folder saved with save_pretrained"
)


@dataclass
class LoadedModel:
    """A MusicGen with its tokenizer and the facts the engine needs, read once."""

    model: MusicgenForConditionalGeneration | MusicgenMelodyForConditionalGeneration
    tokenizer: PreTrainedTokenizerBase
    spec: str
    device: torch.device
    dtype: torch.dtype
    own_codec: Any = None  # a codec other than the checkpoint's EnCodec (engine.synth_codec)
    # Leading positions of a full-sequence HF pass that are a melody model's prepended
    # condition: the taps skip them (engine.prompts.condition_prefix sets it for the pass).
    prefix_positions: int = 0
    # The longest clip it was trained on: past it the model plays what it never learned (a
    # world trained on 4 s clips falls silent by 15 s), so endless play re-primes inside it.
    context_s: float = 30.0  # MusicGen's training clips

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.model.decoder.model.decoder.layers

    @property
    def num_layers(self) -> int:
        return len(self.decoder_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.decoder.hidden_size)

    @property
    def num_codebooks(self) -> int:
        return int(self.model.config.decoder.num_codebooks)

    @property
    def audio_channels(self) -> int:
        """1, or 2 for the stereo checkpoints: codebooks 0, 2, 4, … are the left channel's."""
        return int(getattr(self.model.config.decoder, "audio_channels", 1))

    @property
    def delays(self) -> tuple[int, ...]:
        """Each codebook's delay in frames: codebook q holds frame p − delay − 1 at position p
        (mono: q; stereo: q // 2, a channel pair delayed alike, as transformers' pattern)."""
        return tuple(q // self.audio_channels for q in range(self.num_codebooks))

    @property
    def delay_steps(self) -> int:
        """Steps from a frame's first codebook to its last, plus one: N frames take N + this − 1
        steps after the start column (mono: K; stereo: K / 2)."""
        return self.delays[-1] + 1

    @property
    def melody(self) -> bool:
        """musicgen-melody: the condition (a melody's chroma, then the text) is prepended to the
        decoder's input as `condition_length` positions; there is no cross-attention."""
        return self.model.config.model_type == "musicgen_melody"

    @property
    def family(self) -> str:
        """What kind of MusicGen: mono or stereo, conditioned on text or on text and a melody."""
        return f"{'stereo' if self.audio_channels == 2 else 'mono'}, {'text + melody' if self.melody else 'text'}"

    @property
    def codebook_size(self) -> int:
        return int(self.model.config.decoder.vocab_size)

    @property
    def pad_token_id(self) -> int:
        """The start/pad token of the delay pattern (one past the last codebook entry)."""
        return int(self.model.config.decoder.pad_token_id)

    @property
    def sample_rate(self) -> int:
        if self.own_codec is not None:
            return self.own_codec.sample_rate
        return int(self.model.config.audio_encoder.sampling_rate)

    @property
    def frame_rate(self) -> int:
        if self.own_codec is not None:
            return self.own_codec.frame_rate
        return int(self.model.config.audio_encoder.frame_rate)

    @property
    def codec(self):
        """The codec its tokens mean (engine.codec): EnCodec for every MusicGen checkpoint."""
        from engine.codec import EncodecCodec

        if self.own_codec is not None:
            return self.own_codec
        return EncodecCodec(self.model.audio_encoder, self.device, self.num_codebooks, self.audio_channels)

    @property
    def max_positions(self) -> int:
        """Token positions the positional table holds; a melody model's condition takes its
        first `chroma_length` + (at most) the longest prompt's tokens."""
        table = int(self.model.config.decoder.max_position_embeddings)
        if not self.melody:
            return table
        from engine.limits import MAX_PROMPT_TOKENS

        return table - int(self.model.config.chroma_length) - MAX_PROMPT_TOKENS

    @property
    def name(self) -> str:
        """The name written into SAE files, so an SAE can say which model it was trained on."""
        return self.spec if self.spec in PRESETS else self.model.config.name_or_path or self.spec

    def check_layer(self, layer: int) -> int:
        if not isinstance(layer, int) or not 0 <= layer < self.num_layers:
            raise MgsteerError(
                f"layer {layer} is out of range: model '{self.spec}' has decoder layers 0..{self.num_layers - 1}"
            )
        return layer

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def load_musicgen(spec: str, device: str = "auto", dtype: str = "auto", seed: int = 0) -> LoadedModel:
    """Load `tiny`/`random-small` (random, offline), a hub id or a local folder.

    A hub id is looked up in the local cache first, so a cached model loads with no network;
    otherwise the hub is probed once, quickly, so an unreachable hub is one clear error rather
    than half a minute of retries and a stack trace.
    """
    check_transformers()
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if spec in PRESETS:
        # The large random sizes are for speed and memory figures: drawn where they will run.
        # `tiny` is drawn on the CPU everywhere, so its weights (and SAEs made on it) match.
        where = dev if spec != "tiny" else None
        model, tokenizer = build_random_musicgen(seed=seed, spec=PRESETS[spec], device=where)
    else:
        if os.path.isdir(os.path.expanduser(spec)):
            settle(os.path.expanduser(spec))  # a checkpoint a kill interrupted: finished or dropped
        model, tokenizer = _load_pretrained(spec, dt)
    try:
        model = model.to(device=dev, dtype=dt).eval()
    except torch.cuda.OutOfMemoryError as exc:
        raise MgsteerError(out_of_memory(spec, model, dt, dev)) from exc
    model.requires_grad_(False)
    codec, context_s = _own_codec(spec)
    return LoadedModel(
        model=model, tokenizer=tokenizer, spec=spec, device=dev, dtype=dt, own_codec=codec, context_s=context_s
    )


WORLD_FILE = "world.json"  # beside a model trained on the synth codec (sae/world)


def _own_codec(spec: str):
    """(the synth codec, the clip length it was trained on) for a folder that says it speaks
    it; (None: EnCodec, MusicGen's 30 s) otherwise."""
    from pathlib import Path

    from engine.inputs import read_json_object

    marker = Path(spec).expanduser() / WORLD_FILE
    if not marker.is_file():
        return None, 30.0
    from engine.synth_codec import TOKEN_LAYOUT, SynthCodec

    try:
        world = read_json_object(marker, "world marker")
        codec = SynthCodec(int(world["codebook_size"]))
    except (MgsteerError, ValueError, KeyError, TypeError) as exc:
        raise MgsteerError(f"{marker} is damaged ({exc}): train the world again with mgsteer world train") from exc
    if world.get("tokens", 1) != TOKEN_LAYOUT:
        raise MgsteerError(
            f"{marker.parent} was trained on an older synth codec's tokens: train it again "
            f"(mgsteer world train --out {marker.parent} --overwrite)"
        )
    return codec, _trained_seconds(marker.parent, world)


def _trained_seconds(folder, world: dict) -> float:
    """A world's clip length: its world.json says so; folders trained before it did have it in
    their training state; failing both, the world trainer's default."""
    from engine.inputs import read_json_object

    if "context_seconds" in world:
        return float(world["context_seconds"])
    try:
        return float(read_json_object(folder / "train_state.json", "world training state")["config"]["seconds"])
    except (MgsteerError, ValueError, KeyError, TypeError):
        return WORLD_CLIP_SECONDS


WORLD_CLIP_SECONDS = 4.0  # a world's clip length by default (sae.world.train)


# The oldest transformers the engine's tests run on (CI runs the core tests a second time on
# it). The engine's step never hands transformers a cache (engine.static_decoder), so the
# 5.17 positional-embedding bug (a device tensor as the cache length) is never reached.
MIN_TRANSFORMERS = (5, 17)


def check_transformers() -> None:
    import transformers

    version = transformers.__version__
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if parts < MIN_TRANSFORMERS:
        need = ".".join(map(str, MIN_TRANSFORMERS))
        raise MgsteerError(f"transformers {version} is too old: this needs ≥ {need} (pip install -U transformers)")


def out_of_memory(spec: str, model: nn.Module, dtype: torch.dtype, device: torch.device) -> str:
    """One line naming the model's size and the memory free on the device."""
    params = sum(p.numel() for p in model.parameters())
    need = params * torch.empty((), dtype=dtype).element_size() / 2**30
    free = ""
    if device.type == "cuda":
        available, total = torch.cuda.mem_get_info(device)
        free = f"; {available / 2**30:.1f} GiB of {total / 2**30:.1f} GiB free on {device}"
    return (
        f"out of GPU memory loading {spec} ({params / 1e9:.2f} B parameters, {need:.1f} GiB in "
        f"{str(dtype).removeprefix('torch.')}{free}): try --dtype bfloat16 or a smaller model"
    )


def _load_pretrained(spec: str, dtype: torch.dtype):
    hint = f"{ALTERNATIVES} (known hub ids: {', '.join(HUB_IDS)})"
    return fetch_pretrained(spec, lambda source, local_only: _from_pretrained(source, dtype, local_only), "model", hint)


def _from_pretrained(source: str, dtype: torch.dtype, local_only: bool):
    model, tokenizer = load_parts(
        source,
        local_only,
        "model",
        "a MusicGen checkpoint",
        _AnyMusicgen,
        AutoTokenizer,
        dtype=dtype,
    )
    if model.config.model_type not in ("musicgen", "musicgen_melody"):
        raise MgsteerError(f"'{source}' is a {model.config.model_type} model, not MusicGen")
    return model, tokenizer


class _AnyMusicgen:
    """`from_pretrained` of the class a checkpoint's config names: MusicGen, or MusicGen Melody
    (whose decoder takes the condition as a prefix)."""

    @staticmethod
    def from_pretrained(source: str, **kwargs):
        config = AutoConfig.from_pretrained(source, local_files_only=kwargs["local_files_only"])
        melody = config.model_type == "musicgen_melody"
        cls = MusicgenMelodyForConditionalGeneration if melody else MusicgenForConditionalGeneration
        return cls.from_pretrained(source, config=config if melody else None, **kwargs)
