"""`mgsteer export-onnx`: write the prompt, step and codec graphs and their manifest.

Our own exporter (torch.onnx.export of `engine.onnx_graphs`) rather than optimum-onnx:
optimum's MusicGen export has no steering input and no residual output, and its decoder
takes and returns whole caches every step; the step graph here takes the caches as inputs
and returns only the new positions, which is what lets the runtime keep them in place.

The manifest records what the graphs were made from and for (model, a fingerprint of its
weights, steering layer, shapes, codec, opset, dtype, versions); `load_manifest` refuses a
folder that does not match the model it will run with, in one line. The graphs and the
manifest are written as one (engine.staged), so a kill during a re-export leaves the old set.

A model that speaks its own codec (a planted world's synth codec, a numpy renderer) exports
no codec graph: the backend decodes its tokens with that codec, as the torch path does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from engine.codec_stream import ChunkConfig
from engine.errors import MgsteerError
from engine.inputs import read_json_object
from engine.model import LoadedModel
from engine.onnx_graphs import CodecGraph, PrefixStepGraph, PromptGraph, StepGraph
from engine.staged import settle, staged

FORMAT = "mgsteer-onnx/2"  # 2: the step graph reads the cache and no longer rewrites it
OPSET = 18
MANIFEST = "manifest.json"
FILES = {"prompt": "prompt.onnx", "step": "step.onnx", "codec": "codec.onnx"}
STEP_FILES = {"fp32": FILES["step"], "int8": "step.int8.onnx", "int4": "step.int4.onnx"}
PRECISIONS = tuple(STEP_FILES)  # smallest weights last: the fastest where memory bandwidth bounds the step
# 4-bit blocks: 32 weights share a scale (as fast as 128 with a lower KL; 16 is slower: bench/int4_blocks.py);
# accuracy level 4 computes in int8 (VNNI where the CPU has it) instead of dequantising to float32.
INT4_BLOCK = 32
INT4_ACCURACY_LEVEL = 4


@dataclass(frozen=True)
class Manifest:
    model: str
    layer: int  # the steering layer: the step graph's steering input and residual output
    max_context: int  # most self-attention positions a loop may use (the context axis is dynamic)
    codec_frames: int  # frames per codec window (context + chunk + hold-back)
    hidden: int
    layers: int
    heads: int
    head_dim: int
    codebooks: int
    vocab: int
    sample_rate: int
    frame_rate: int
    opset: int
    dtype: str
    torch: str
    transformers: str
    int8: bool
    sae: str | None = None  # the SAE the layer was taken from, if any
    weights: str | None = None  # `weights_fingerprint` of the model exported
    codec: str = "encodec"  # "encodec": codec.onnx; "own": the model's own codec, not exported
    int4: bool = False  # step.int4.onnx: 4-bit MatMul weights (MatMulNBits)
    # "cross": the prompt graph makes cross-attention keys; "prefix": a melody model's condition
    # is prefilled into the cache by the host (engine.onnx_backend), no prompt graph
    condition: str = "cross"
    format: str = FORMAT

    @property
    def precisions(self) -> tuple[str, ...]:
        """The step graphs this export holds, float32 first."""
        return ("fp32",) + ("int8",) * self.int8 + ("int4",) * self.int4


FINGERPRINT_SAMPLES = 4096  # elements read from each tensor for the fingerprint


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A hash of every parameter's name, shape and an evenly strided sample of its values.

    Why a sample: hashing musicgen-small's 2.4 GB on every start would cost seconds; a model
    retrained or fine-tuned since the export differs in (almost) every value, so a few
    thousand from each tensor tell it apart as surely."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // FINGERPRINT_SAMPLES)].float().cpu().contiguous()
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:32]


def manifest_for(
    lm: LoadedModel, layer: int, max_context: int, codec_frames: int, int8: bool, sae: str | None, int4: bool = False
):
    import transformers

    config = lm.model.config.decoder
    return Manifest(
        model=lm.spec,
        layer=layer,
        max_context=max_context,
        codec_frames=codec_frames,
        hidden=lm.hidden_size,
        layers=lm.num_layers,
        heads=config.num_attention_heads,
        head_dim=lm.hidden_size // config.num_attention_heads,
        codebooks=lm.num_codebooks,
        vocab=lm.codebook_size,
        sample_rate=lm.sample_rate,
        frame_rate=lm.frame_rate,
        opset=OPSET,
        dtype="float32",
        torch=torch.__version__,
        transformers=transformers.__version__,
        int8=int8,
        int4=int4,
        sae=sae,
        weights=weights_fingerprint(lm.model),
        codec="own" if lm.own_codec is not None else "encodec",
        condition="prefix" if lm.melody else "cross",
    )


def export_onnx(
    lm: LoadedModel,
    out: Path,
    layer: int,
    max_context: int,
    int8: bool = False,
    sae: str | None = None,
    chunk: ChunkConfig | None = None,
    progress=print,
    int4: bool = False,
) -> Manifest:
    """Export the three graphs of `lm` (float32, on the CPU) into `out`."""
    if lm.device.type != "cpu" or lm.dtype != torch.float32:
        raise MgsteerError("export-onnx works on the float32 CPU model: use --device cpu --dtype float32")
    lm.check_layer(layer)
    chunk = chunk or ChunkConfig()
    frames = chunk.context + chunk.chunk + chunk.holdback
    with staged(out) as stage:
        return _export(lm, stage, layer, max_context, int8, int4, sae, frames, progress)


def _export(
    lm, out: Path, layer: int, max_context: int, int8: bool, int4: bool, sae, frames: int, progress
) -> Manifest:
    k, rows, heads = lm.num_codebooks, 2, lm.model.config.decoder.num_attention_heads
    head_dim = lm.hidden_size // heads
    tok = lm.tokenizer(["a prompt to trace"], return_tensors="pt")
    cross = torch.zeros(lm.num_layers, rows, heads, tok["input_ids"].shape[1], head_dim)
    step_inputs = (
        torch.full((rows, k, 3), lm.pad_token_id, dtype=torch.long),
        torch.arange(3),
        cross,
        cross.clone(),
        torch.ones(rows, 1, 1, cross.shape[3], dtype=torch.bool),
        torch.ones(rows, 1, 1, dtype=torch.bool),
        torch.zeros(lm.hidden_size),
        torch.ones(rows, 1, 1),
        *torch.zeros(lm.num_layers, rows, heads, head_dim, 16).unbind(),  # keys transposed; the context axis is dynamic
        *torch.zeros(lm.num_layers, rows, heads, 16, head_dim).unbind(),
    )
    cache_names = cache_inputs(lm.num_layers)
    step_names = ["columns", "positions", "cross_k", "cross_v", "cross_mask", "cross_any", "steer", "steer_rows"]
    step_names += cache_names
    jobs = [
        (
            "prompt",
            PromptGraph(lm),
            (tok["input_ids"], tok["attention_mask"]),
            ["input_ids", "attention_mask"],
            ["cross_k", "cross_v", "cross_mask", "cross_any"],
            {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}},
        ),
        (
            "step",
            StepGraph(lm, layer),
            step_inputs,
            step_names,
            ["logits", "new_k", "new_v", "residual"],
            {
                "columns": {0: "rows", 2: "n"},
                "positions": {0: "n"},
                **{name: {0: "rows", (3 if name.startswith("self_k") else 2): "context"} for name in cache_names},
                "cross_k": {1: "rows", 3: "tokens"},
                "cross_v": {1: "rows", 3: "tokens"},
                "cross_mask": {0: "rows", 3: "tokens"},
                "cross_any": {0: "rows"},
                "steer_rows": {0: "rows"},
            },
        ),
        (
            "codec",
            CodecGraph(lm),
            (torch.zeros(1, k // lm.audio_channels, frames, dtype=torch.long),),  # one channel's codebooks
            ["codes"],
            ["audio"],
            {"codes": {2: "frames"}, "audio": {0: "samples"}},
        ),
    ]
    if lm.own_codec is not None:
        jobs = jobs[:2]  # its own codec decodes (module docstring)
    if lm.melody:  # no cross-attention: no prompt graph, no cross inputs (engine.onnx_graphs.PrefixStepGraph)
        cross_names = {"cross_k", "cross_v", "cross_mask", "cross_any"}
        _, _, args, names, outputs, dynamic = jobs[1]
        keep = [i for i, name in enumerate(names) if name not in cross_names]
        jobs[1] = (
            "step", PrefixStepGraph(lm, layer), tuple(args[i] for i in keep), [names[i] for i in keep], outputs,
            {name: axes for name, axes in dynamic.items() if name not in cross_names},
        )  # fmt: skip
        jobs = jobs[1:]
    for name, module, args, inputs, outputs, dynamic in jobs:
        progress(f"exporting the {name} graph …")
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter announces its own deprecation
            torch.onnx.export(
                module.eval(),
                args,
                str(out / FILES[name]),
                dynamo=False,
                input_names=inputs,
                output_names=outputs,
                dynamic_axes=dynamic,
                opset_version=OPSET,
                do_constant_folding=True,
            )
    if int8:
        progress("quantizing the step graph's MatMuls to int8 …")
        quantize_step(out / FILES["step"], out / STEP_FILES["int8"])
    if int4:
        progress("quantizing the step graph's MatMul weights to 4 bits …")
        quantize_step_int4(out / FILES["step"], out / STEP_FILES["int4"])
    manifest = manifest_for(lm, layer, max_context, frames, int8, sae, int4)
    write_manifest(out, manifest)
    return manifest


def write_manifest(folder: Path, manifest: Manifest) -> None:
    (folder / MANIFEST).write_text(json.dumps(asdict(manifest), indent=1))


def cache_inputs(layers: int) -> list[str]:
    """The step graph's self-attention cache inputs: each layer's keys, then its values."""
    return [f"self_k_{i}" for i in range(layers)] + [f"self_v_{i}" for i in range(layers)]


def quantize_step(src: Path, dst: Path) -> None:
    """Dynamic int8 quantisation of the MatMuls (weights int8, activations quantised per call)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet(logging.getLogger()):  # it advises pre-processing, which a transformer step does not need
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8)


@contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    """The quantizers' log lines (one per node, advice) off while they run: the export's own
    progress lines are what a user reads."""
    was = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(was)


def quantize_step_int4(
    src: Path, dst: Path, block: int = INT4_BLOCK, level: int = INT4_ACCURACY_LEVEL, heads: bool = True
) -> None:
    """Weight-only 4-bit quantisation of the MatMuls (MatMulNBits: symmetric, `block` weights
    per scale). Why weight-only: the step reads every weight once per token, so its time is the
    weight bytes over memory bandwidth; activations stay float32 at the steering input, the
    residual output and the logits. `heads` False keeps the lm heads in float32: their error
    goes straight into the logits, and they are 2–3 % of the weights."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True, accuracy_level=level or None)
    with _quiet(logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")):
        model = onnx.load(str(src))
        kept = [] if heads else [n.name for n in model.graph.node if n.op_type == "MatMul" and "lm_heads" in n.name]
        quantizer = MatMulNBitsQuantizer(model, algo_config=config, nodes_to_exclude=kept)
        quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)


def load_manifest(folder: str | Path, lm: LoadedModel | None = None, layer: int | None = None) -> Manifest:
    """The folder's manifest, checked against the model it will run with; one line if it does
    not fit."""
    folder = Path(folder)
    if folder.is_dir():
        settle(folder)  # an export a kill interrupted: finished or dropped
    path = folder / MANIFEST
    if not path.is_file():
        raise MgsteerError(f"'{folder}' has no {MANIFEST}: make it with mgsteer export-onnx --out {folder}")
    try:
        raw = read_json_object(path, "ONNX manifest")
        earlier = raw.get("format") == "mgsteer-onnx/1"
        if not earlier and raw.get("format") != FORMAT:
            raise MgsteerError(f"{path}: not a {FORMAT} manifest")
        manifest = None if earlier else Manifest(**raw)
    except (MgsteerError, TypeError, AttributeError) as exc:
        raise MgsteerError(f"{path} is damaged ({exc}); export again with mgsteer export-onnx") from exc
    if manifest is None:
        raise MgsteerError(f"'{folder}' was exported by an earlier mgsteer (a slower step graph): export it again")
    if lm is not None:
        _check_fits(folder, manifest, lm)
    if layer is not None and manifest.layer != layer:
        raise MgsteerError(f"'{folder}' steers layer {manifest.layer}, but the SAE is at layer {layer}: export again")
    graphs = [FILES["prompt"]] * (manifest.condition == "cross") + [FILES["step"]]
    graphs += [FILES["codec"]] * (manifest.codec == "encodec")
    for name in [*graphs, *(STEP_FILES[p] for p in manifest.precisions[1:])]:
        if not (folder / name).is_file():
            raise MgsteerError(f"'{folder}' lacks {name}: export it again with mgsteer export-onnx")
    return manifest


def _check_fits(folder: Path, manifest: Manifest, lm: LoadedModel) -> None:
    """The manifest's model, shapes, codec and weights are those of `lm`."""
    if manifest.model != lm.spec:
        raise MgsteerError(f"'{folder}' was exported from model '{manifest.model}', not '{lm.spec}': export it again")
    config = lm.model.config.decoder
    expected = {
        "hidden": lm.hidden_size, "layers": lm.num_layers, "heads": config.num_attention_heads,
        "codebooks": lm.num_codebooks, "vocab": lm.codebook_size, "sample_rate": lm.sample_rate,
        "frame_rate": lm.frame_rate, "codec": "own" if lm.own_codec is not None else "encodec",
        "condition": "prefix" if lm.melody else "cross",
    }  # fmt: skip
    wrong = [f"{k} {getattr(manifest, k)}, not {v}" for k, v in expected.items() if getattr(manifest, k) != v]
    if wrong:
        raise MgsteerError(f"'{folder}' was exported for another model shape ({', '.join(wrong)}): export it again")
    if manifest.weights != weights_fingerprint(lm.model):
        why = "before weights were fingerprinted" if manifest.weights is None else "from other weights"
        raise MgsteerError(
            f"'{folder}' was exported {why} than '{lm.spec}' has now (retrained since?): export it again"
        )
