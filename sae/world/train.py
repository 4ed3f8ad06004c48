"""`mgsteer world train`: teach a small MusicGen the planted grammar, and measure how well.

The model is the real `MusicgenForConditionalGeneration` at small sizes, its codes are the
synth codec's, and its prompts name some of each clip's attributes (each with probability
`named_p`); a share `cfg_dropout` of clips is trained with the null condition, so
classifier-free guidance works at generation time. Training is teacher forcing over the
delay pattern, on clips sampled afresh from the grammar every step (seeded by the step, so a
resumed run sees the same data as an uninterrupted one).

The folder it writes loads like any model (`--model DIR`): `save_pretrained` files, the
tokenizer, and `world.json`, which tells the loader to decode with the synth codec.
Checkpoints (weights, the optimizer's moments in safetensors, the step) make it resumable.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from engine.errors import MgsteerError
from engine.hub import quiet_transformers
from engine.inputs import read_json_object
from engine.model import WORLD_CLIP_SECONDS, WORLD_FILE, LoadedModel, load_musicgen
from engine.outputs import clear_own
from engine.prompts import tokenize_prompts
from engine.staged import settle, staged
from engine.synth_codec import TOKEN_LAYOUT
from engine.tiny import ArchSpec, build_random_musicgen
from engine.tokenloop import SamplingConfig, TokenLoop
from sae.harvest import delayed_sequence
from sae.world.grammar import (
    ATTRIBUTES,
    GRAMMAR,
    ExactScorer,
    attribute_values,
    prompt_for,
    sample_attributes,
    sample_clip,
)

FORMAT = "mgsteer-world/1"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "train_state.json"
# What a world checkpoint is made of (an --overwrite clears these only).
WORLD_FOLDER_OWN = (
    WORLD_FILE, STATE_FILE, OPTIMIZER_FILE, "model.safetensors", "model-*.safetensors", "model.safetensors.index.json",
    "config.json", "generation_config.json", "tokenizer*.json", "special_tokens_map.json", ".staged",
)  # fmt: skip
WORLD_ARCH = ArchSpec(
    codebook_size=128,
    decoder_layers=4,
    hidden_size=128,
    heads=4,
    ffn_dim=512,
    text_dim=64,
    text_layers=2,
    text_heads=4,
    tokenizer_vocab=160,
    audible_codec=False,
    # Every step's clips are fresh draws from the grammar, so there is nothing to overfit:
    # dropout only slowed learning (and cost an eighth of each step in random masks).
    dropout=0.0,
)


# Share of `mgsteer world train`'s steps on short clips by default. On two CPUs the same 2000
# steps of 16 clips reached a prompted accuracy of 0.96–1.00 for every attribute with 1300 of
# them short, and 0.86–0.96 with none (tempo 0.86 on one CPU), in about half the time.
SHORT_SHARE = 0.65


# Settings a resume may change: they decide how long to train and how often to save, not
# what is learned at each step.
RESUME_FREE = ("steps", "checkpoint_every")


@dataclass(frozen=True)
class WorldTrainConfig:
    steps: int = 3000
    batch_size: int = 16
    seconds: float = WORLD_CLIP_SECONDS  # clip length (what endless play re-primes inside)
    # The first `short_steps` steps train on clips of `short_seconds`: what the prompt decides
    # shows in a clip's first second (the key's third is frame 10 or 25), and a step on 1 s
    # clips costs a third of one on 4 s clips. The later steps teach the whole clip's span.
    short_steps: int = 0
    short_seconds: float = 1.0
    lr: float = 2e-3
    warmup_steps: int = 100
    cfg_dropout: float = 0.2
    named_p: float = 0.75  # chance that a prompt names each attribute
    checkpoint_every: int = 250
    seed: int = 0
    # Loss weight of each codebook's first token: it alone must come from the prompt (every
    # later token can also be read off the clip so far), so unweighted it teaches little.
    first_weight: float = 32.0
    # Loss weight of every token in a clip's first `early_frames` frames: where the prompt
    # decides the music (the third, which tells major from minor, is the second note: frame 10
    # or 25), before the clip so far can tell the model. A weight that depends on the position
    # only keeps the learned distribution calibrated (weighting note changes would not).
    early_weight: float = 8.0
    early_frames: int = 30
    # The synth codec's token layout and the grammar version the clips are written in: a folder
    # trained on another is neither resumed nor reused.
    tokens: int = TOKEN_LAYOUT
    grammar: int = GRAMMAR

    def frames(self, frame_rate: int = 50, step: int | None = None) -> int:
        """Frames of a clip: at `step` when given (short clips first, then full ones)."""
        short = step is not None and step < self.short_steps
        return round((min(self.short_seconds, self.seconds) if short else self.seconds) * frame_rate)


def world_corpus() -> list[str]:
    """Every word a world prompt can use, for its tokenizer."""
    values = attribute_values()
    words = [" ".join(values[name]) for name in ATTRIBUTES]
    return [*words, "melody drums register", "slow A minor melody, dark, sparse drums, low register"]


def new_world_model(seed: int):
    return build_random_musicgen(seed=seed, spec=WORLD_ARCH, corpus=world_corpus())


def batch_for(step: int, cfg: WorldTrainConfig, frames: int) -> tuple[list[str], torch.Tensor]:
    """The prompts and codes `[B, 4, frames]` of one step: the same for the same step."""
    rng = np.random.default_rng([cfg.seed, step])
    prompts, codes = [], []
    for _ in range(cfg.batch_size):
        attrs = sample_attributes(rng)
        named = tuple(name for name in ATTRIBUTES if rng.random() < cfg.named_p)
        prompts.append(prompt_for(attrs, named))
        codes.append(sample_clip(rng, attrs, frames))
    return prompts, torch.from_numpy(np.stack(codes))


def teacher_forced_loss(
    lm: LoadedModel,
    prompts: list[str],
    codes: torch.Tensor,
    drop: torch.Tensor,
    first_weight: float = 1.0,
    early: tuple[float, int] = (1.0, 0),
) -> torch.Tensor:
    """Cross-entropy of every non-padding delayed token (each codebook's first one weighted by
    `first_weight`, the rest of its first `early[1]` frames by `early[0]`); rows in `drop` get
    the null condition."""
    model, pad = lm.model, lm.pad_token_id
    ids, mask = tokenize_prompts(lm, prompts)
    states = model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    if getattr(model, "enc_to_dec_proj", None) is not None:
        states = model.enc_to_dec_proj(states)
    mask = mask * (~drop)[:, None]
    states = states * mask[..., None].to(states.dtype)
    seq = delayed_sequence(codes, pad)
    inputs, targets = seq[..., :-1], seq[..., 1:]
    b, k, length = inputs.shape
    out = model.decoder(
        input_ids=inputs.reshape(b * k, length), encoder_hidden_states=states, encoder_attention_mask=mask
    )
    logits = out.logits.reshape(b, k, length, -1)
    valid = targets != pad
    weight = torch.ones(k, length)
    for q in range(k):  # codebook q's first target is at q
        weight[q, q : q + early[1]] = early[0]
        weight[q, q] = first_weight
    weight = weight.expand(b, k, length)[valid]
    losses = torch.nn.functional.cross_entropy(logits[valid], targets[valid], reduction="none")
    return (losses * weight).sum() / weight.sum()


class WorldTrainer:
    def __init__(self, out: str | Path, cfg: WorldTrainConfig) -> None:
        self.out, self.cfg = Path(out), cfg

    def run(self, resume: bool = False, overwrite: bool = False, progress: bool = False) -> dict:
        cfg, out = self.cfg, self.out
        state = self._state_file()
        if out.is_dir():
            settle(out)  # a checkpoint a kill interrupted: finished or dropped
        if resume:
            if not state.is_file():
                raise MgsteerError(f"nothing to resume in '{out}': train without --resume first")
            saved = _saved_state(state)
            now = {**asdict(cfg), **{k: saved["config"].get(k) for k in RESUME_FREE}}
            if saved["config"] != now:
                differ = ", ".join(f"{k} {v}, not {now.get(k)}" for k, v in saved["config"].items() if now.get(k) != v)
                raise MgsteerError(
                    f"'{out}' was trained with other settings ({differ}); resume with the same ones or --overwrite"
                )
            lm = load_musicgen(str(out), "cpu", "float32")
            start = saved["step"]
        else:
            if out.exists() and any(out.iterdir()):
                if not overwrite:
                    raise MgsteerError(f"'{out}' is not empty: --resume to continue, --overwrite to start again")
                kept = clear_own(out, WORLD_FOLDER_OWN, (WORLD_FILE, STATE_FILE), "world model")
                if kept:
                    print(f"note: --overwrite kept what world training did not write in '{out}': {', '.join(kept)}")
            model, tokenizer = new_world_model(cfg.seed)
            lm = LoadedModel(model=model, tokenizer=tokenizer, spec=str(out), device=torch.device("cpu"),
                             dtype=torch.float32)  # fmt: skip
            start = 0
        model = lm.model.train()
        model.requires_grad_(True)
        model.audio_encoder.requires_grad_(False)  # the synth codec decodes; EnCodec is unused
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01, fused=True)
        if resume:
            self._load_optimizer(opt, params)
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=start, unit="step", disable=not progress, leave=False)
        loss = float("nan")
        for step in range(start, cfg.steps):
            prompts, codes = batch_for(step, cfg, cfg.frames(step=step))
            torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout and CFG dropout: the same after a resume
            drop = torch.rand(cfg.batch_size) < cfg.cfg_dropout
            for group in opt.param_groups:
                group["lr"] = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps)) * _cosine(step, cfg.steps)
            value = teacher_forced_loss(
                lm, prompts, codes, drop, cfg.first_weight, (cfg.early_weight, cfg.early_frames)
            )
            opt.zero_grad(set_to_none=True)
            value.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            loss = float(value.detach())
            if not math.isfinite(loss):
                raise MgsteerError(f"training diverged at step {step} (loss {loss}); try a lower --lr")
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
                self._save(lm, opt, params, step + 1, loss)
        bar.close()
        model.eval().requires_grad_(False)
        return {"steps": cfg.steps, "loss": round(loss, 4)}

    # ---- files --------------------------------------------------------------------------------
    def _state_file(self) -> Path:
        return self.out / STATE_FILE

    def _save(self, lm: LoadedModel, opt, params, step: int, loss: float) -> None:
        """A checkpoint is the whole folder, replaced as one (engine.staged): a kill at any
        instant leaves the previous step's weights, optimizer and state together."""
        with staged(self.out) as stage:
            with quiet_transformers(bars=False):
                lm.model.save_pretrained(stage)
                lm.tokenizer.save_pretrained(stage)
            marker = {"format": FORMAT, "codec": "synth", "tokens": TOKEN_LAYOUT, "grammar": GRAMMAR,
                      "codebook_size": lm.codebook_size, "steps": step,
                      "context_seconds": self.cfg.seconds}  # fmt: skip
            (stage / WORLD_FILE).write_text(json.dumps(marker, indent=1))
            tensors = {}
            for i, p in enumerate(params):
                for name, value in opt.state.get(p, {}).items():
                    if torch.is_tensor(value):
                        tensors[f"{i}.{name}"] = value.detach().contiguous()
            save_file(tensors, str(stage / OPTIMIZER_FILE))
            state = {"step": step, "loss": loss, "config": asdict(self.cfg)}
            (stage / STATE_FILE).write_text(json.dumps(state, indent=1))

    def _load_optimizer(self, opt, params) -> None:
        path = self.out / OPTIMIZER_FILE
        if not path.is_file():
            return
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise MgsteerError(f"'{path}' is damaged ({exc}); train again with --overwrite") from exc
        for i, p in enumerate(params):
            state = {name.split(".", 1)[1]: t for name, t in tensors.items() if name.split(".", 1)[0] == str(i)}
            if state:
                opt.state[p] = state


def _saved_state(path: Path) -> dict:
    """A world folder's training state, or one line saying it is damaged."""
    state = read_json_object(path, "world training state")
    if not isinstance(state.get("config"), dict) or not isinstance(state.get("step"), int):
        raise MgsteerError(f"'{path}' is damaged (no step or config); train again with --overwrite")
    return state


def saved_state(folder: Path) -> dict | None:
    """A world folder's training state: step, loss, settings (None: nothing trained there yet)."""
    settle(folder)
    path = folder / STATE_FILE
    return _saved_state(path) if path.is_file() else None


def _cosine(step: int, total: int) -> float:
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))


@torch.no_grad()
def prompted_accuracy(
    lm: LoadedModel, generations: int = 50, seconds: float = 4.0, seed: int = 0, backend=None
) -> dict:
    """Per-attribute accuracy of the exact scorer on generations whose prompt names every
    attribute (guidance 3, all prompts in one batch), and their mean grammar log-likelihood
    per token. `backend`: another runtime for the decoder (a quantized ONNX step), to compare."""
    rng = np.random.default_rng(seed + 7919)
    truth = [sample_attributes(rng) for _ in range(generations)]
    prompts = [prompt_for(attrs) for attrs in truth]
    frames = round(seconds * lm.frame_rate)
    context = frames + lm.delay_steps + 8 if backend is not None else None  # within an export's max_context
    codes = TokenLoop(lm, prompts, SamplingConfig(seed=seed), max_context=context, backend=backend).frames(frames)
    scorer = ExactScorer(lm.codebook_size)
    hits = dict.fromkeys(ATTRIBUTES, 0)
    loglik = 0.0
    for attrs, clip in zip(truth, codes.numpy(), strict=True):
        guess = scorer.predict(clip)
        loglik += scorer.loglik_per_token(clip) / generations
        for name in ATTRIBUTES:
            hits[name] += getattr(guess, name) == getattr(attrs, name)
    accuracy = {name: hits[name] / generations for name in ATTRIBUTES}
    return {"generations": generations, "seconds": seconds, **accuracy, "grammar_loglik": round(loglik, 4)}
