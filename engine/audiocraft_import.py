"""A MusicGen trained with audiocraft → a transformers folder that `--model DIR` loads.

audiocraft's trainer (and most shared fine-tunes) leave a folder with `state_dict.bin` (the LM:
`{"best_state": …, "xp.cfg": YAML}`) and `compression_state_dict.bin` (the codec, or the name of
a pretrained one). audiocraft itself cannot be installed beside a current torch, so the
checkpoints are read here with `torch.load(weights_only=True)` (tensors, strings and numbers
only: no pickled code runs) and renamed into transformers' MusicGen layout, as transformers'
own conversion script does:

- `emb.q` → `embed_tokens.q`, `transformer.layers.i` → `layers.i`, `out_norm` → `layer_norm`,
  `linears.q` → `lm_heads.q`;
- in a layer, `linear1/2` → `fc1/2`, `norm1` → `self_attn_layer_norm`, `norm2` →
  `final_layer_norm`, `cross_attention` → `encoder_attn`, `norm_cross` →
  `encoder_attn_layer_norm`, and each attention's fused `in_proj_weight` split into q, k, v;
- the text conditioner's `output_proj` → `enc_to_dec_proj`; a melody model's chroma
  conditioner's → `audio_enc_to_dec_proj`.

The T5 text encoder is not in the checkpoint (audiocraft keeps it frozen, outside the state):
it is loaded by the name the config gives (`t5-base` → google-t5/t5-base) or `--text-encoder`.
The codec is the pretrained EnCodec the compression checkpoint names, or the one it holds
(a SEANet EnCodec trained with audiocraft, renamed as transformers' EnCodec conversion does:
`encoder/decoder.model.i` → `layers.i`, the `conv.conv`/`convtr.convtr` wrappers dropped,
weight norm's `weight_g`/`weight_v` → its parametrisation, `quantizer.vq.layers.i._codebook`
→ `quantizer.layers.i.codebook`), or `--codec`. Anything
that does not map — a key, a shape, a setting transformers' MusicGen has no place for — is
listed, one line each, and nothing is written.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.errors import MgsteerError

LM_FILE = "state_dict.bin"
CODEC_FILE = "compression_state_dict.bin"
MAX_POSITIONS = 2048  # transformers' MusicGen table (audiocraft's sinusoid has no length)

# Inside a transformer layer: audiocraft's module names → transformers'.
LAYER_NAMES = {
    "linear1": "fc1",
    "linear2": "fc2",
    "norm1": "self_attn_layer_norm",
    "norm2": "final_layer_norm",
    "norm_cross": "encoder_attn_layer_norm",
    "cross_attention": "encoder_attn",
    "self_attn": "self_attn",
}
TEXT_PROJ = "condition_provider.conditioners.description.output_proj."
CHROMA_PROJ = "condition_provider.conditioners.self_wav.output_proj."
CHROMA_FILTERS = "condition_provider.conditioners.self_wav.chroma."  # its STFT window and filter bank
T5_IDS = {name: f"google-t5/{name}" for name in ("t5-small", "t5-base", "t5-large", "t5-3b", "t5-11b")}


class UnmappedCheckpoint(MgsteerError):
    """Keys, shapes or settings that do not map; `problems` holds one line for each (the CLI
    prints them above the error's own line)."""

    def __init__(self, src, problems: list[str]) -> None:
        super().__init__(
            f"{src}: {len(problems)} weights or settings do not map onto transformers' MusicGen "
            "(each listed above); nothing was written"
        )
        self.problems = problems


@dataclass
class Checkpoint:
    """An audiocraft LM checkpoint, read: its state, its config and what the codec file says."""

    state: dict[str, torch.Tensor]
    cfg: dict[str, Any]
    codec: str | None  # the pretrained EnCodec it names (None: it trained its own…)
    codec_state: dict[str, torch.Tensor] | None = None  # …these weights
    codec_cfg: dict[str, Any] | None = None  # …built so


def read_checkpoint(src: str | Path) -> Checkpoint:
    """Both files of an audiocraft folder, weights only; one line when either cannot be read."""
    folder = Path(src).expanduser()
    if not folder.is_dir():
        raise MgsteerError(f"'{src}' is not a folder: give the folder holding {LM_FILE} and {CODEC_FILE}")
    lm = _load(folder / LM_FILE)
    codec = _load(folder / CODEC_FILE)
    if not isinstance(lm, dict) or "best_state" not in lm or "xp.cfg" not in lm:
        raise MgsteerError(f"{folder / LM_FILE} has no best_state and xp.cfg: it is not an audiocraft LM export")
    cfg = _yaml(lm["xp.cfg"], folder / LM_FILE)
    if not isinstance(cfg.get("transformer_lm"), dict):
        raise MgsteerError(f"{folder / LM_FILE}: its xp.cfg has no transformer_lm section")
    named = codec.get("pretrained") if isinstance(codec, dict) else None
    if named:
        return Checkpoint(state=dict(lm["best_state"]), cfg=cfg, codec=str(named))
    if not isinstance(codec, dict) or "best_state" not in codec or "xp.cfg" not in codec:
        raise MgsteerError(f"{folder / CODEC_FILE} names no pretrained codec and holds no best_state and xp.cfg")
    return Checkpoint(
        state=dict(lm["best_state"]), cfg=cfg, codec=None, codec_state=dict(codec["best_state"]),
        codec_cfg=_yaml(codec["xp.cfg"], folder / CODEC_FILE),
    )  # fmt: skip


def _yaml(text, where: Path) -> dict:
    import yaml

    if isinstance(text, dict):
        return text
    try:
        out = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MgsteerError(f"{where}: its xp.cfg is not readable YAML ({exc})") from exc
    if not isinstance(out, dict):
        raise MgsteerError(f"{where}: its xp.cfg is not a mapping")
    return out


def _load(path: Path):
    if not path.is_file():
        raise MgsteerError(f"{path} does not exist: an audiocraft export holds {LM_FILE} and {CODEC_FILE}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0][:160]
        raise MgsteerError(f"{path} holds more than weights, refused unread ({first})") from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise MgsteerError(f"cannot read {path}: {str(exc).strip().splitlines()[0][:160]}") from exc


def decoder_config(ckpt: Checkpoint, problems: list[str]):
    """transformers' decoder config from xp.cfg; settings it cannot express go to `problems`."""
    from transformers import MusicgenDecoderConfig, MusicgenMelodyDecoderConfig

    lm, cfg = ckpt.cfg["transformer_lm"], ckpt.cfg
    melody = is_melody(cfg)
    channels = int(cfg.get("channels", 1) or 1)
    n_q, card = int(lm.get("n_q", 4)), int(lm.get("card", 2048))
    for name, want in (("norm_first", True), ("positional_embedding", "sin"), ("layer_scale", None)):
        if lm.get(name, want) != want:
            problems.append(f"transformer_lm.{name} is {lm.get(name)!r}: transformers' MusicGen needs {want!r}")
    for name, want in (("max_period", 10_000), ("positional_scale", 1.0)):
        if float(lm.get(name, want)) != want:
            problems.append(f"transformer_lm.{name} is {lm.get(name)!r}: transformers' MusicGen needs {want!r}")
    delays = (cfg.get("codebooks_pattern") or {}).get("delay", {}).get("delays")
    expected = [q // channels for q in range(n_q)]
    if delays is not None and list(delays)[:n_q] != expected and list(delays)[:n_q] != list(range(n_q)):
        problems.append(f"codebooks_pattern.delay.delays is {delays}: transformers' MusicGen delays {expected}")
    kind = MusicgenMelodyDecoderConfig if melody else MusicgenDecoderConfig
    return kind(
        vocab_size=card,
        num_hidden_layers=int(lm["num_layers"]),
        hidden_size=int(lm["dim"]),
        num_attention_heads=int(lm["num_heads"]),
        ffn_dim=int(float(lm.get("hidden_scale", 4)) * int(lm["dim"])),
        num_codebooks=n_q,
        audio_channels=channels,
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=card,
        bos_token_id=card,
        activation_function=str(lm.get("activation", "gelu")),
        dropout=float(lm.get("dropout", 0.0)),
    )


def is_melody(cfg: dict) -> bool:
    """A model whose chroma conditioner (`self_wav`) is prepended: musicgen-melody."""
    fuser = cfg.get("fuser") or {}
    return "self_wav" in (fuser.get("prepend") or []) or "self_wav" in (cfg.get("conditioners") or {})


def rename(state: dict[str, torch.Tensor], hidden: int, problems: list[str]) -> tuple[dict, dict, dict]:
    """audiocraft LM keys → (decoder state, text projection state, chroma projection state)."""
    decoder: dict[str, torch.Tensor] = {}
    text: dict[str, torch.Tensor] = {}
    chroma: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(TEXT_PROJ):
            text[key[len(TEXT_PROJ) :]] = value
        elif key.startswith(CHROMA_PROJ):
            chroma[key[len(CHROMA_PROJ) :]] = value
        elif key.startswith(CHROMA_FILTERS):
            continue  # the chroma extractor's fixed filters: engine.melody computes the same
        elif m := re.fullmatch(r"emb\.(\d+)\.weight", key):
            decoder[f"model.decoder.embed_tokens.{m[1]}.weight"] = value
        elif m := re.fullmatch(r"linears\.(\d+)\.(weight|bias)", key):
            decoder[f"lm_heads.{m[1]}.{m[2]}"] = value
        elif m := re.fullmatch(r"out_norm\.(weight|bias)", key):
            decoder[f"model.decoder.layer_norm.{m[1]}"] = value
        elif m := re.fullmatch(r"transformer\.layers\.(\d+)\.(\w+)\.(?:mha\.)?(.+)", key):
            _rename_layer(int(m[1]), m[2], m[3], value, hidden, decoder, problems, key)
        else:
            problems.append(f"{key} {tuple(value.shape)}: no place for it in transformers' MusicGen")
    return decoder, text, chroma


def _rename_layer(i, module, rest, value, hidden, decoder, problems, key) -> None:
    name = LAYER_NAMES.get(module)
    if name is None:
        problems.append(f"{key} {tuple(value.shape)}: no place for it in transformers' MusicGen")
        return
    prefix = f"model.decoder.layers.{i}.{name}"
    if rest == "in_proj_weight":
        if value.shape[0] != 3 * hidden:
            problems.append(
                f"{key} has shape {tuple(value.shape)}: a fused q/k/v of width {hidden} is ({3 * hidden}, …)"
            )
            return
        for part, piece in zip(("q_proj", "k_proj", "v_proj"), value.split(hidden), strict=True):
            decoder[f"{prefix}.{part}.weight"] = piece
    else:
        decoder[f"{prefix}.{rest}"] = value


def _checked_load(module: torch.nn.Module, state: dict, where: str, problems: list[str]) -> None:
    """Load `state` into `module`, listing every key and shape that does not fit."""
    own = module.state_dict()
    fitting = {}
    for key, value in state.items():
        if key not in own:
            problems.append(f"{where}{key} {tuple(value.shape)}: no such weight in transformers' MusicGen")
        elif own[key].shape != value.shape:
            problems.append(
                f"{where}{key}: shape {tuple(value.shape)}, transformers' MusicGen has {tuple(own[key].shape)}"
            )
        else:
            fitting[key] = value
    for key in own:
        if key not in state:
            problems.append(f"{where}{key}: missing from the checkpoint")
    module.load_state_dict(fitting, strict=False)


def import_audiocraft(
    src: str | Path, out: str | Path, text_encoder: str | None = None, codec: str | None = None, progress=print
) -> Path:
    """Convert the audiocraft export in `src` into a transformers MusicGen folder `out`."""
    from transformers import (
        AutoTokenizer,
        EncodecModel,
        MusicgenForCausalLM,
        MusicgenForConditionalGeneration,
        MusicgenMelodyForCausalLM,
        MusicgenMelodyForConditionalGeneration,
        T5EncoderModel,
    )

    from engine.hub import fetch_pretrained, load_parts, quiet_transformers
    from engine.staged import staged

    ckpt = read_checkpoint(src)
    problems: list[str] = []
    config = decoder_config(ckpt, problems)
    melody = is_melody(ckpt.cfg)
    decoder_state, text_proj, chroma_proj = rename(ckpt.state, config.hidden_size, problems)
    with quiet_transformers():
        decoder = (MusicgenMelodyForCausalLM if melody else MusicgenForCausalLM)(config)
    _checked_load(decoder, decoder_state, "", problems)
    if problems:
        raise UnmappedCheckpoint(src, problems)

    t5_name = text_encoder or _t5_name(ckpt.cfg)
    progress(f"text encoder: {t5_name}")
    t5, tokenizer = fetch_pretrained(
        t5_name,
        lambda source, local: load_parts(source, local, "text encoder", "a T5 encoder", T5EncoderModel, AutoTokenizer),
        "text encoder",
        "give --text-encoder DIR|ID (the T5 the model was trained with, e.g. google-t5/t5-base)",
    )
    codec_name = codec or ckpt.codec
    if codec_name is None:
        progress("codec: the one the export holds")
        encodec = codec_from_audiocraft(ckpt.codec_state, ckpt.codec_cfg, problems)
        if problems:
            raise UnmappedCheckpoint(src, problems)
    else:
        progress(f"codec: {codec_name}")
        (encodec,) = fetch_pretrained(
            codec_name,
            lambda source, local: load_parts(source, local, "codec", "an EnCodec", EncodecModel),
            "codec",
            "give --codec DIR|ID (an EnCodec in transformers' format, e.g. facebook/encodec_32khz)",
        )
    kind = MusicgenMelodyForConditionalGeneration if melody else MusicgenForConditionalGeneration
    with quiet_transformers():
        model = kind(text_encoder=t5, audio_encoder=encodec, decoder=decoder)
    for proj, state, where in (
        ("enc_to_dec_proj", text_proj, TEXT_PROJ),
        ("audio_enc_to_dec_proj", chroma_proj, CHROMA_PROJ),
    ):
        module = getattr(model, proj, None)
        if module is not None:
            _checked_load(module, state, where, problems)
        elif state:
            problems.append(f"{where}*: this model's encoder already has the decoder's width, it takes no projection")
    if problems:
        raise UnmappedCheckpoint(src, problems)
    gen = model.generation_config
    gen.decoder_start_token_id = gen.pad_token_id = gen.bos_token_id = config.pad_token_id
    gen.do_sample, gen.guidance_scale, gen.top_k, gen.max_length = True, 3.0, 250, 1500
    with staged(out) as stage:
        model.save_pretrained(stage)
        tokenizer.save_pretrained(stage)
    return Path(out)


def codec_from_audiocraft(state: dict[str, torch.Tensor], cfg: dict, problems: list[str]):
    """transformers' EnCodec holding the weights of a SEANet EnCodec trained with audiocraft."""
    import math

    from transformers import EncodecConfig, EncodecModel

    from engine.hub import quiet_transformers

    seanet, rvq = cfg.get("seanet") or {}, cfg.get("rvq") or {}
    if seanet.get("norm", "weight_norm") != "weight_norm":
        problems.append(f"compression seanet.norm is {seanet.get('norm')!r}: only weight_norm is imported")
    if seanet.get("causal", False) or seanet.get("disable_norm_outer_blocks", 0):
        problems.append("compression seanet: causal or norm-less outer blocks, which transformers' EnCodec lacks")
    rate, n_q, bins = int(cfg.get("sample_rate", 32000)), int(rvq.get("n_q", 4)), int(rvq.get("bins", 2048))
    ratios = [int(r) for r in seanet.get("ratios", [8, 5, 4, 4])]
    frame_rate = rate / math.prod(ratios)
    config = EncodecConfig(
        sampling_rate=rate, audio_channels=int(cfg.get("channels", 1)), upsampling_ratios=ratios,
        codebook_size=bins, codebook_dim=int(seanet.get("dimension", 128)),
        hidden_size=int(seanet.get("dimension", 128)), num_filters=int(seanet.get("n_filters", 32)),
        num_residual_layers=int(seanet.get("n_residual_layers", 1)), kernel_size=int(seanet.get("kernel_size", 7)),
        last_kernel_size=int(seanet.get("last_kernel_size", 7)),
        residual_kernel_size=int(seanet.get("residual_kernel_size", 3)),
        dilation_growth_rate=int(seanet.get("dilation_base", 2)), use_causal_conv=False,
        pad_mode=str(seanet.get("pad_mode", "reflect")), compress=int(seanet.get("compress", 2)),
        num_lstm_layers=int(seanet.get("lstm", 2)), use_conv_shortcut=not seanet.get("true_skip", True),
        target_bandwidths=[n_q * frame_rate * math.log2(bins) / 1000], normalize=False, norm_type="weight_norm",
    )  # fmt: skip
    with quiet_transformers():
        model = EncodecModel(config)
    renamed = {}
    for key, value in state.items():
        name = _codec_name(key)
        if name is None:
            problems.append(f"compression {key} {tuple(value.shape)}: no place for it in transformers' EnCodec")
        else:
            renamed[name] = value
    _checked_load(model, renamed, "compression ", problems)
    return model.eval()


def _codec_name(key: str) -> str | None:
    """An audiocraft EnCodec key → transformers' (None: it has no place there)."""
    if m := re.fullmatch(r"quantizer\.vq\.layers\.(\d+)\._codebook\.(inited|cluster_size|embed|embed_avg)", key):
        return f"quantizer.layers.{m[1]}.codebook.{m[2]}"
    m = re.fullmatch(
        r"(encoder|decoder)\.model\.(\d+)\.(block\.\d+\.|shortcut\.)?(conv\.conv|convtr\.convtr|lstm)\.(.+)", key
    )
    if m is None:
        return None
    side, index, inner, wrapper, rest = m.groups()
    module = "lstm" if wrapper == "lstm" else "conv"
    rest = {"weight_g": "parametrizations.weight.original0", "weight_v": "parametrizations.weight.original1"}.get(
        rest, rest
    )
    return f"{side}.layers.{index}.{inner or ''}{module}.{rest}"


def _t5_name(cfg: dict) -> str:
    t5 = ((cfg.get("conditioners") or {}).get("description") or {}).get("t5") or {}
    name = str(t5.get("name", "t5-base"))
    return T5_IDS.get(name, name)
