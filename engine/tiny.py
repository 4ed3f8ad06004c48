"""Seeded, randomly initialised MusicGens of the real architecture, built offline.

Why: no weights can be downloaded where tests and demos run, yet every code path (text
encoder + cross-attention, 4-codebook decoder with the delay pattern, EnCodec at 32 kHz /
50 Hz) must be exercised exactly as with `facebook/musicgen-*`. Only the sizes differ:
`tiny` is small enough for tests; `random-small` has musicgen-small's sizes, for speed and
memory figures, which do not depend on the weights. `tiny-stereo` and `random-stereo-small`
are the stereo checkpoints' architecture at those sizes; `tiny-melody` and `random-melody`
musicgen-melody's (the condition, text and a melody's chroma, prepended to the decoder's input
instead of cross-attended).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from torch import nn
from transformers import (
    EncodecConfig,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    MusicgenMelodyConfig,
    MusicgenMelodyDecoderConfig,
    MusicgenMelodyForConditionalGeneration,
    PreTrainedTokenizerFast,
    T5Config,
)

from engine.hub import quiet_transformers

# A small music vocabulary so prompts tokenize into real sub-words, not only <unk>.
PROMPT_CORPUS = [
    "simple melody",
    "calm piano melody with soft strings",
    "80s pop track with bassy drums and synth",
    "90s rock song with loud guitars and heavy drums",
    "lofi hip hop beat with warm vinyl crackle",
    "ambient drone with slow evolving pads",
    "jazz trio with upright bass, brushed drums and piano",
    "techno groove with a driving kick and acid bassline",
    "orchestral film score with brass and timpani",
    "acoustic folk guitar with gentle vocals humming",
    "happy upbeat ukulele tune",
    "sad minor key cello solo",
    "fast drum and bass with chopped breaks",
    "reggae rhythm with offbeat guitar skank",
    "classical string quartet in a major key",
    "funky bass and clavinet with tight drums",
    "dreamy shoegaze wall of guitars",
    "minimal electronic arpeggio at 120 bpm",
    "latin percussion with congas and timbales",
    "epic choir and organ in a cathedral",
]


@dataclass(frozen=True)
class ArchSpec:
    """Sizes of a random MusicGen; the structure is always musicgen-small's."""

    codebook_size: int = 128
    num_codebooks: int = 4
    decoder_layers: int = 4
    hidden_size: int = 64
    heads: int = 4
    ffn_dim: int = 128
    max_positions: int = 2048
    text_dim: int = 32
    text_layers: int = 1
    text_heads: int = 4
    text_vocab: int | None = None  # None: the tokenizer's size
    codec_filters: int = 8
    codec_hidden: int = 32
    codec_dim: int = 32
    tokenizer_vocab: int = 256
    audible_codec: bool = True  # randomise codebooks and remove DC (see _make_codec_audible)
    dropout: float = 0.1  # musicgen-small's (decoder and T5 alike)
    audio_channels: int = 1  # 2: the stereo checkpoints (num_codebooks counts both channels)
    melody: bool = False  # musicgen-melody: a prepended text + chroma condition, no cross-attention


TINY = ArchSpec()
# facebook/musicgen-small's sizes: for speed and memory figures (they do not depend on weights).
SMALL = ArchSpec(
    codebook_size=2048,
    decoder_layers=24,
    hidden_size=1024,
    heads=16,
    ffn_dim=4096,
    text_dim=768,
    text_layers=12,
    text_heads=12,
    text_vocab=32128,
    codec_filters=64,
    codec_hidden=128,
    codec_dim=128,
)
# musicgen-medium and -large: the same text encoder (T5-base) and codec, a wider, deeper decoder.
MEDIUM = replace(SMALL, decoder_layers=48, hidden_size=1536, heads=24, ffn_dim=6144)
LARGE = replace(SMALL, decoder_layers=48, hidden_size=2048, heads=32, ffn_dim=8192)
# facebook/musicgen-stereo-*: 8 codebooks, left and right interleaved (0, 2, 4, 6 left), each
# pair delayed alike, over the same mono EnCodec run once per channel.
TINY_STEREO = replace(TINY, num_codebooks=8, audio_channels=2)
SMALL_STEREO = replace(SMALL, num_codebooks=8, audio_channels=2)
# facebook/musicgen-melody: musicgen-medium's decoder with the condition prepended.
TINY_MELODY = replace(TINY, melody=True)
MELODY = replace(MEDIUM, melody=True)
PRESETS = {
    "tiny": TINY, "tiny-stereo": TINY_STEREO, "tiny-melody": TINY_MELODY, "random-small": SMALL,
    "random-medium": MEDIUM, "random-large": LARGE, "random-stereo-small": SMALL_STEREO, "random-melody": MELODY,
}  # fmt: skip


def build_tiny_tokenizer(vocab_size: int = 256, corpus: list[str] | None = None) -> PreTrainedTokenizerFast:
    """Train a byte-level-free BPE on `corpus` (the bundled prompts); deterministic and offline."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], show_progress=False)
    tok.train_from_iterator(corpus or PROMPT_CORPUS, trainer=trainer)
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", eos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def build_config(spec: ArchSpec, text_vocab: int) -> MusicgenConfig | MusicgenMelodyConfig:
    """Compose the three sub-configs like the hub's musicgen-small, at `spec`'s sizes."""
    nbits = (spec.codebook_size - 1).bit_length()
    frame_rate = 50  # 32000 Hz / (8*5*4*4)
    # EnCodec derives its number of quantizers from the bandwidth: pick the one giving each
    # channel's codebooks (a stereo decoder's codebooks are two channels of one mono EnCodec).
    bandwidth_kbps = spec.num_codebooks // spec.audio_channels * frame_rate * nbits / 1000
    text = T5Config(
        vocab_size=spec.text_vocab or text_vocab,
        d_model=spec.text_dim,
        d_kv=spec.text_dim // spec.text_heads,
        d_ff=4 * spec.text_dim,
        num_layers=spec.text_layers,
        num_decoder_layers=spec.text_layers,
        num_heads=spec.text_heads,
        pad_token_id=0,
        eos_token_id=1,
        dropout_rate=spec.dropout,
    )
    audio = EncodecConfig(
        sampling_rate=32000,
        audio_channels=1,
        upsampling_ratios=[8, 5, 4, 4],
        codebook_size=spec.codebook_size,
        codebook_dim=spec.codec_dim,
        target_bandwidths=[bandwidth_kbps],
        num_filters=spec.codec_filters,
        hidden_size=spec.codec_hidden,
        num_lstm_layers=2,
        use_causal_conv=False,  # musicgen's 32 kHz EnCodec is non-causal, with reflect padding
        pad_mode="reflect",
        normalize=False,
    )
    decoder = (MusicgenMelodyDecoderConfig if spec.melody else MusicgenDecoderConfig)(
        vocab_size=spec.codebook_size,
        num_hidden_layers=spec.decoder_layers,
        hidden_size=spec.hidden_size,
        num_attention_heads=spec.heads,
        ffn_dim=spec.ffn_dim,
        num_codebooks=spec.num_codebooks,
        max_position_embeddings=spec.max_positions,
        pad_token_id=spec.codebook_size,
        bos_token_id=spec.codebook_size,
        dropout=spec.dropout,
        audio_channels=spec.audio_channels,
    )
    if spec.melody:
        return MusicgenMelodyConfig(text_encoder=text, audio_encoder=audio, decoder=decoder)
    return MusicgenConfig(text_encoder=text, audio_encoder=audio, decoder=decoder)


def build_random_musicgen(
    seed: int = 0, spec: ArchSpec = TINY, corpus: list[str] | None = None, device: torch.device | None = None
) -> tuple[MusicgenForConditionalGeneration | MusicgenMelodyForConditionalGeneration, PreTrainedTokenizerFast]:
    """Build a random model and its tokenizer (trained on `corpus`, the bundled prompts if
    None); the same seed gives the same weights on the same device. `device` builds it there
    directly: musicgen-large's 3.3 B random weights are drawn in seconds on a GPU, in minutes
    on the CPU."""
    tokenizer = build_tiny_tokenizer(spec.tokenizer_vocab, corpus)
    on_gpu = device is not None and device.type == "cuda"
    with quiet_transformers(), torch.random.fork_rng(devices=[device] if on_gpu else []):
        config = build_config(spec, text_vocab=len(tokenizer))
        torch.manual_seed(seed)
        with torch.device(device or "cpu"):
            kind = MusicgenMelodyForConditionalGeneration if spec.melody else MusicgenForConditionalGeneration
            model = kind(config)
        if spec.audible_codec:
            _make_codec_audible(model)
    gen = model.generation_config
    gen.decoder_start_token_id = gen.pad_token_id = gen.bos_token_id = spec.codebook_size
    gen.do_sample, gen.guidance_scale, gen.top_k = True, 3.0, 250
    return model.eval(), tokenizer


@torch.no_grad()
def _make_codec_audible(model: nn.Module) -> None:
    """Make the random EnCodec's audio a function of its codes.

    Random init leaves the codebooks (buffers) at zero, so every code decodes to the same
    sound, and random conv biases add a DC offset far larger than anything code-dependent.
    Wide random codebooks, bias-free decoder convs and a gain on the last conv give a
    zero-mean signal, driven by the tokens, at a level one can hear.
    """
    for layer in model.audio_encoder.quantizer.layers:
        book = layer.codebook
        book.embed.normal_(0.0, 30.0)
        book.embed_avg.copy_(book.embed)
        book.cluster_size.fill_(1.0)
    convs = [m for m in model.audio_encoder.decoder.modules() if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d))]
    for conv in convs:
        if conv.bias is not None:
            conv.bias.zero_()
    last = convs[-1]
    # Weight-normed convs recompute `weight` from a magnitude (original0) and a direction.
    gain = last.parametrizations.weight.original0 if hasattr(last, "parametrizations") else last.weight
    gain.mul_(6.0)
