"""`mgsteer export-onnx`: write the prompt, step and codec graphs and their manifest.

Our own exporter (torch.onnx.export of `engine.onnx_graphs`) rather than optimum-onnx:
optimum's MusicGen export has no steering input and no residual output, and its decoder
takes and returns whole caches every step; the step graph here takes the caches as inputs
and returns only the new positions, which is what lets the runtime keep them in place.

The manifest records what the graphs were made from and for (model, steering layer, shapes,
opset, dtype, versions); `load_manifest` refuses a folder that does not match in one line.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from engine.codec_stream import ChunkConfig
from engine.errors import MgsteerError
from engine.inputs import read_json_object
from engine.model import LoadedModel
from engine.onnx_graphs import CodecGraph, PromptGraph, StepGraph

FORMAT = "mgsteer-onnx/1"
OPSET = 18
MANIFEST = "manifest.json"
FILES = {"prompt": "prompt.onnx", "step": "step.onnx", "codec": "codec.onnx"}
INT8_STEP = "step.int8.onnx"


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
    format: str = FORMAT


def manifest_for(lm: LoadedModel, layer: int, max_context: int, codec_frames: int, int8: bool, sae: str | None):
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
        sae=sae,
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
) -> Manifest:
    """Export the three graphs of `lm` (float32, on the CPU) into `out`."""
    if lm.device.type != "cpu" or lm.dtype != torch.float32:
        raise MgsteerError("export-onnx works on the float32 CPU model: use --device cpu --dtype float32")
    lm.check_layer(layer)
    chunk = chunk or ChunkConfig()
    frames = chunk.context + chunk.chunk + chunk.holdback
    out.mkdir(parents=True, exist_ok=True)
    k, rows, heads = lm.num_codebooks, 2, lm.model.config.decoder.num_attention_heads
    head_dim = lm.hidden_size // heads
    tok = lm.tokenizer(["a prompt to trace"], return_tensors="pt")
    cache = torch.zeros(lm.num_layers, rows, heads, max_context, head_dim)
    cross = torch.zeros(lm.num_layers, rows, heads, tok["input_ids"].shape[1], head_dim)
    step_inputs = (
        torch.full((rows, k, 3), lm.pad_token_id, dtype=torch.long),
        torch.arange(3),
        cache,
        cache.clone(),
        cross,
        cross.clone(),
        torch.ones(rows, 1, 1, cross.shape[3], dtype=torch.bool),
        torch.ones(rows, 1, 1, dtype=torch.bool),
        torch.zeros(lm.hidden_size),
        torch.ones(rows, 1, 1),
    )
    step_names = ["columns", "positions", "self_k", "self_v", "cross_k", "cross_v", "cross_mask", "cross_any"]
    step_names += ["steer", "steer_rows"]
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
                "self_k": {1: "rows", 3: "context"},
                "self_v": {1: "rows", 3: "context"},
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
            (torch.zeros(1, k, frames, dtype=torch.long),),
            ["codes"],
            ["audio"],
            {"codes": {2: "frames"}, "audio": {0: "samples"}},
        ),
    ]
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
        quantize_step(out / FILES["step"], out / INT8_STEP)
    manifest = manifest_for(lm, layer, max_context, frames, int8, sae)
    (out / MANIFEST).write_text(json.dumps(asdict(manifest), indent=1))
    return manifest


def quantize_step(src: Path, dst: Path) -> None:
    """Dynamic int8 quantisation of the MatMuls (weights int8, activations quantised per call)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8)


def load_manifest(folder: str | Path, model: str | None = None, layer: int | None = None) -> Manifest:
    """The folder's manifest, checked against what it will run with; one line if it does not fit."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise MgsteerError(f"'{folder}' has no {MANIFEST}: make it with mgsteer export-onnx --out {folder}")
    try:
        raw = read_json_object(path, "ONNX manifest")
        if raw.get("format") != FORMAT:
            raise MgsteerError(f"{path}: not a {FORMAT} manifest")
        manifest = Manifest(**raw)
    except (MgsteerError, TypeError, AttributeError) as exc:
        raise MgsteerError(f"{path} is damaged ({exc}); export again with mgsteer export-onnx") from exc
    if model is not None and manifest.model != model:
        raise MgsteerError(f"'{folder}' was exported from model '{manifest.model}', not '{model}': export it again")
    if layer is not None and manifest.layer != layer:
        raise MgsteerError(f"'{folder}' steers layer {manifest.layer}, but the SAE is at layer {layer}: export again")
    for name in [*FILES.values(), *([INT8_STEP] if manifest.int8 else [])]:
        if not (folder / name).is_file():
            raise MgsteerError(f"'{folder}' lacks {name}: export it again with mgsteer export-onnx")
    return manifest
