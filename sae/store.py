"""A sharded, appendable, resumable store of residual-stream activations.

Layout of a store folder:
  index.json                     model, layers, width, dtype (written once, checked on reuse)
  part-{i}-of-{n}.json           worker i's committed shards and finished clips
  L{layer}-w{i}-{k:05d}.safetensors   acts [rows, d] (fp16/bf16), clip [rows], frame [rows];
                                 and the clips' token codes [K, Σ frames] + code_lengths

Each part file also lists every clip's source ({"path", "start_s", "seconds"} for audio,
{"prompt", "seed", "row", "batch"} for generation: row `row` of a batch of `batch` prompts played
with that seed), so labeling can cut or re-decode the audio of any window.

Why per-worker parts: `--shard i/n` processes and torchrun ranks write side by side without
locks. A clip counts as done only once its rows are in a shard that was renamed into place
*and* listed in the part file (written atomically); a killed run loses at most the clips in
its unwritten buffer, and a restart redoes exactly those: no duplicated or missing rows.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from engine.errors import MgsteerError
from engine.inputs import CATALOG_BYTES, read_json

FORMAT = "mgsteer-acts/1"
STORE_FILE = re.compile(r"index\.json|part-\d+-of-\d+\.json|L\d+-w\d+-\d+\.safetensors")  # (+ .tmp)
STORE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class StoreMeta:
    model: str
    layers: tuple[int, ...]
    d_in: int
    dtype: str = "float16"
    source: str = "audio"  # audio (teacher-forced) or generation
    num_codebooks: int = 4

    def to_json(self) -> dict:
        return {"format": FORMAT, **{k: list(v) if k == "layers" else v for k, v in self.__dict__.items()}}


def _read_json(path: Path) -> dict:
    """A store's JSON file, or one line saying it is damaged."""
    try:
        data = read_json(path, "activation store file", CATALOG_BYTES)
    except MgsteerError as exc:
        raise MgsteerError(f"the activation store is damaged: {exc}; harvest into a new folder") from None
    if not isinstance(data, dict):
        raise MgsteerError(f"'{path}' is damaged (not a JSON object); harvest into a new folder")
    return data


def _differences(old: dict, new: dict) -> str:
    """What changed between two harvests' inputs, in words."""
    out = []
    for key in new:
        if old.get(key) == new[key]:
            continue
        if key.endswith("_digest"):
            what = key.removesuffix("_digest")
            count = f" ({old.get(what)} then, {new.get(what)} now)" if what in new else ""
            out.append(f"the {what} differ{count}")
        elif f"{key}_digest" not in new:
            out.append(f"{key} {old.get(key)!r} then, {new[key]!r} now")
    return "; ".join(out)


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


class StoreWriter:
    """Appends clips for one worker; `flush` commits a shard per layer."""

    def __init__(
        self,
        folder: str | Path,
        meta: StoreMeta,
        worker: int = 0,
        workers: int = 1,
        shard_rows: int = 65536,
        inputs: dict | None = None,
    ):
        """`inputs`: what the clips come from (see `sae.harvest.audio_inputs`); recorded in a new
        store, and a store recorded from other inputs is refused (resuming would mix them)."""
        if meta.dtype not in STORE_DTYPES:
            raise MgsteerError(f"unknown store dtype '{meta.dtype}': use {', '.join(STORE_DTYPES)}")
        if shard_rows < 1:
            raise MgsteerError(f"rows per shard must be ≥ 1, got {shard_rows}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.meta, self.worker, self.workers, self.shard_rows = meta, worker, workers, shard_rows
        self._check_or_write_index(inputs)
        self.part_path = self.folder / f"part-{worker}-of-{workers}.json"
        self.part = _read_json(self.part_path) if self.part_path.exists() else {"shards": [], "clips": []}
        self.part.setdefault("sources", [None] * len(self.part["clips"]))
        self.done = set(self.part["clips"])
        self._buffer: dict[int, list[tuple[torch.Tensor, int]]] = {layer: [] for layer in meta.layers}
        self._codes: list[torch.Tensor] = []
        self._pending: list[str] = []
        self._sources: list[dict | None] = []
        self._rows = 0
        self.frames, self.seconds, self.write_s = 0, 0.0, 0.0  # this run: frames harvested, wall and writing time

    def _check_or_write_index(self, inputs: dict | None) -> None:
        path = self.folder / "index.json"
        wanted = self.meta.to_json()
        if path.exists():
            have = _read_json(path)
            if {k: have.get(k) for k in wanted} != wanted:
                raise MgsteerError(
                    f"store '{self.folder}' holds {have.get('model')} layers {have.get('layers')} "
                    f"({have.get('source')}, {have.get('dtype')}); it cannot take {self.meta.model} "
                    f"layers {list(self.meta.layers)} ({self.meta.source}, {self.meta.dtype}); use a new --out folder"
                )
            recorded = have.get("inputs")
            if inputs is not None and recorded is not None and recorded != inputs:
                raise MgsteerError(
                    f"store '{self.folder}' was harvested from other inputs ({_differences(recorded, inputs)}); "
                    "resuming would mix them: use a new --out folder"
                )
        else:
            if any(not STORE_FILE.match(p.name) for p in self.folder.iterdir()):  # (another worker's are fine)
                raise MgsteerError(f"'{self.folder}' is not empty and not an activation store; use a new --out folder")
            _write_json_atomic(path, wanted | {"inputs": inputs})

    def add_clip(
        self, clip_id: str, acts: dict[int, torch.Tensor], codes: torch.Tensor | None = None, source: dict | None = None
    ) -> None:
        """acts: {layer: [frames, d]} for one clip; codes: its tokens [K, frames]; source: where it came from."""
        clip_index = len(self.done) + len(self._pending)
        for layer in self.meta.layers:
            self._buffer[layer].append((acts[layer].to(STORE_DTYPES[self.meta.dtype]).cpu(), clip_index))
        if codes is not None:
            self._codes.append(codes.to(torch.int16).cpu())
        self._pending.append(clip_id)
        self._sources.append(source)
        self._rows += acts[self.meta.layers[0]].shape[0]
        if self._rows >= self.shard_rows:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        number = len(self.part["shards"])
        names = {}
        for layer in self.meta.layers:
            rows = self._buffer[layer]
            tensors = {
                "acts": torch.cat([a for a, _ in rows]).contiguous(),
                "clip": torch.cat([torch.full((len(a),), c, dtype=torch.int32) for a, c in rows]),
                "frame": torch.cat([torch.arange(len(a), dtype=torch.int32) for a, _ in rows]),
            }
            if self._codes:
                lengths = torch.tensor([c.shape[1] for c in self._codes], dtype=torch.int32)
                tensors["codes"] = torch.cat(self._codes, dim=1).contiguous()
                tensors["code_lengths"] = lengths
            name = f"L{layer}-w{self.worker}-{number:05d}.safetensors"
            save_file(tensors, str(self.folder / (name + ".tmp")))
            os.replace(self.folder / (name + ".tmp"), self.folder / name)
            names[str(layer)] = name
        first = len(self.done)
        self.part["shards"].append({"files": names, "rows": self._rows, "clips": [first, first + len(self._pending)]})
        self.part["clips"].extend(self._pending)
        self.part["sources"].extend(self._sources)
        _write_json_atomic(self.part_path, self.part)
        self.done.update(self._pending)
        self._buffer = {layer: [] for layer in self.meta.layers}
        self._codes, self._pending, self._sources, self._rows = [], [], [], 0


class ActivationStore:
    """Read side: all workers' committed shards."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        path = self.folder / "index.json"
        if not path.is_file():
            raise MgsteerError(f"'{folder}' is not an activation store (no index.json); make one with mgsteer harvest")
        raw = _read_json(path)
        if raw.get("format") != FORMAT:
            raise MgsteerError(f"{path}: unknown format {raw.get('format')!r}")
        try:
            self.meta = StoreMeta(
                model=str(raw["model"]),
                layers=tuple(int(layer) for layer in raw["layers"]),
                d_in=int(raw["d_in"]),
                dtype=str(raw["dtype"]),
                source=str(raw["source"]),
                num_codebooks=int(raw.get("num_codebooks", 4)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MgsteerError(f"'{path}' is damaged (missing or bad field {exc}); harvest into a new folder") from exc
        self.inputs: dict | None = raw.get("inputs")
        self.shards: list[dict] = []
        self.clips: list[str] = []
        self.sources: list[dict | None] = []
        self._clip_at: list[tuple[int, int]] = []  # store clip index → (shard number, index in shard)
        for part in sorted(self.folder.glob("part-*-of-*.json")):
            data = _read_json(part)
            for shard in data["shards"]:
                first, stop = shard["clips"]
                self._clip_at.extend((len(self.shards), i) for i in range(stop - first))
                self.shards.append(shard | {"part_offset": len(self.clips)})
            self.clips.extend(data["clips"])
            self.sources.extend(data.get("sources", [None] * len(data["clips"])))
        self._codes_cache: tuple[int, list[torch.Tensor]] | None = None

    def rows(self) -> int:
        return sum(s["rows"] for s in self.shards)

    def check_layer(self, layer: int) -> int:
        if layer not in self.meta.layers:
            raise MgsteerError(f"store '{self.folder}' has layers {list(self.meta.layers)}, not {layer}")
        return layer

    def shard_files(self, layer: int) -> list[Path]:
        self.check_layer(layer)
        return [self.folder / s["files"][str(layer)] for s in self.shards]

    def load_shard(self, path: Path) -> dict[str, torch.Tensor]:
        try:
            return load_file(str(path))
        except Exception as exc:
            raise MgsteerError(f"activation shard {path} is unreadable ({exc})") from exc

    def iter_acts(self, layer: int) -> Iterator[torch.Tensor]:
        for path in self.shard_files(layer):
            yield self.load_shard(path)["acts"]

    def load_layer(self, layer: int) -> torch.Tensor:
        """All rows of one layer in memory (float32): for small stores and tests."""
        return torch.cat([a.float() for a in self.iter_acts(layer)]) if self.shards else torch.empty(0, self.meta.d_in)

    def iter_shards(self, layer: int) -> Iterator[tuple[dict[str, torch.Tensor], int]]:
        """Each shard's tensors with the offset that turns its `clip` column into store clip indices."""
        for shard, path in zip(self.shards, self.shard_files(layer), strict=True):
            yield self.load_shard(path), shard["part_offset"]

    def _shard_codes(self, number: int) -> list[torch.Tensor]:
        if self._codes_cache is None or self._codes_cache[0] != number:
            path = self.folder / self.shards[number]["files"][str(self.meta.layers[0])]
            shard = self.load_shard(path)
            codes = []
            if "codes" in shard:
                start = 0
                for length in shard["code_lengths"].tolist():
                    codes.append(shard["codes"][:, start : start + length].long())
                    start += length
            self._codes_cache = (number, codes)
        return self._codes_cache[1]

    def clip_codes(self, clip: int) -> torch.Tensor | None:
        """Token codes `[K, frames]` of store clip `clip`, if the store kept them."""
        number, index = self._clip_at[clip]
        codes = self._shard_codes(number)
        return codes[index] if codes else None

    def iter_codes(self) -> Iterator[torch.Tensor]:
        """Token codes `[K, frames]` of each clip that has them, in store order."""
        for number in range(len(self.shards)):
            codes = self._shard_codes(number)
            if not codes:
                return
            yield from codes
