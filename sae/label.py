"""`mgsteer label`: top examples → audio snippets → labelers → validation → catalog.

Work is split by feature over `--shard i/n` workers and is resumable: a feature is written
to the worker's part file as soon as it is labeled, and a rerun skips it. Each feature's top
windows are split in two by rank: even ranks (and half the random windows) are what the
labelers hear; odd ranks (and the other half) are held out for validation.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.errors import MgsteerError
from engine.inputs import read_json_object
from engine.model import LoadedModel
from sae.catalog import CATALOG_FILE, RUN_FILE, append_record, is_done, merge, part_path, read_records
from sae.examples import ExampleConfig, FeatureExamples, Window, find_examples
from sae.files import LoadedSAE, load_sae
from sae.labelers import Labeler, LabelerError, LabelerSettings, WindowSet, build_labelers
from sae.store import ActivationStore
from sae.validate import detection
from sae.window_audio import WindowAudio

SNIPPET_DIR = "examples"


@dataclass(frozen=True)
class LabelConfig:
    labelers: tuple[str, ...] = ("descriptors",)
    features: tuple[int, ...] | None = None  # default: the paper's filter survivors, else every live feature
    every_live: bool = False  # every feature that fired, ignoring filter.json
    limit: int | None = None  # at most this many features (the most frequent first)
    examples: ExampleConfig = field(default_factory=ExampleConfig)
    shard: tuple[int, int] = (0, 1)
    settings: LabelerSettings = field(default_factory=LabelerSettings)


def choose_features(loaded: LoadedSAE, cfg: LabelConfig) -> list[int]:
    """Explicit ids, or the features `filter.json` kept, or every feature that ever fired."""
    stats = loaded.require_stats()
    if cfg.features is not None:
        ids = [loaded.check_feature(f) for f in cfg.features]
    else:
        kept = []
        filter_path = loaded.path / "filter.json"
        if filter_path.is_file() and not cfg.every_live:
            kept = read_json_object(filter_path, "feature filter").get("kept", [])
        if filter_path.is_file() and not kept and not cfg.every_live:
            print(f"note: {filter_path} kept no feature: labeling every feature that fires")
        ids = kept or (stats.firing_rate > 0).nonzero().flatten().tolist()
        ids = sorted(ids, key=lambda f: -float(stats.firing_rate[f]))
    return ids[: cfg.limit] if cfg.limit is not None else ids


def write_snippet(path: Path, audio: np.ndarray, sample_rate: int) -> str:
    """Ogg Vorbis (a tenth of the size of WAV; browsers play it); WAV where soundfile is not
    installed or its libsndfile lacks Vorbis."""
    from engine.wavfile import write_wav

    path.parent.mkdir(parents=True, exist_ok=True)
    audio = np.clip(audio, -1, 1)
    try:
        import soundfile as sf

        sf.write(str(path.with_suffix(".ogg")), audio, sample_rate, format="OGG", subtype="VORBIS")
        return path.with_suffix(".ogg").name
    except (ImportError, OSError, RuntimeError, TypeError):
        write_wav(path.with_suffix(".wav"), audio, sample_rate)
        return path.with_suffix(".wav").name


def label_features(
    sae_dir: str | Path,
    store_dir: str | Path,
    lm: LoadedModel,
    cfg: LabelConfig | None = None,
    labelers: list[Labeler] | None = None,
    progress: bool = False,
) -> dict:
    """Label this worker's features that are not done yet; returns a summary. `labelers`
    replaces the named ones (for embedding custom labelers)."""
    from tqdm import tqdm

    cfg = cfg or LabelConfig()
    loaded = load_sae(sae_dir, device=lm.device)
    store = ActivationStore(store_dir)
    if store.meta.d_in != loaded.cfg.d_in:
        raise MgsteerError(f"store '{store_dir}' holds width {store.meta.d_in}; the SAE reads {loaded.cfg.d_in}")
    folder = loaded.path
    worker, workers = cfg.shard
    mine = choose_features(loaded, cfg)[worker::workers]
    names = tuple(lab.name for lab in labelers) if labelers is not None else cfg.labelers
    records = read_records(folder)
    todo = [f for f in mine if f not in records or not is_done(records[f], names)]
    summary = {"assigned": len(mine), "skipped": len(mine) - len(todo), "labeled": 0, "errors": 0}
    if not todo and (folder / CATALOG_FILE).is_file():
        return summary
    labelers = labelers if labelers is not None else build_labelers(cfg.labelers, cfg.settings)
    if not todo:  # everything was labeled but the catalog was never merged (a crash in between)
        merge(folder, _clap_of(labelers))
        return summary
    examples = find_examples(store, loaded, todo, lm.frame_rate, cfg.examples, progress)
    audio = WindowAudio(store, lm)
    sr = audio.sample_rate
    negatives = [audio(w) for w in examples.negatives]
    # tokens only for labelers that read them: a store's tokens live in its activation shards
    tokens = any(lab.reads_tokens for lab in labelers)
    negative_codes = audio.codes(examples.negatives) if tokens else None
    _write_run(folder, store, lm, cfg, names, examples.negatives, negatives)
    clap = _clap_of(labelers)
    out = part_path(folder, worker, workers)
    for f in tqdm(todo, unit="feature", desc="label", disable=not progress):
        fx = examples.features[f]
        top = [audio(w) for w in fx.top]
        snippets = [write_snippet(folder / SNIPPET_DIR / str(f) / str(r), a, sr) for r, a in enumerate(top)]
        record = _base_record(f, loaded, fx, store, lm.frame_rate, snippets)
        top_codes = audio.codes(fx.top) if tokens else None
        heard = WindowSet(top[0::2], negatives[0::2], sr, *_halves(top_codes, negative_codes, 0))
        for labeler in labelers:
            record["labelers"].append(labeler.name)
            try:
                labels = labeler.label(heard)
            except LabelerError as exc:
                record["errors"][labeler.name] = {"message": str(exc), "retry": exc.retry}
                summary["errors"] += 1
                continue
            record["labels"][labeler.name] = [lab.to_json() for lab in labels]
            if labels:
                record["validation"][labeler.name] = detection(
                    labels[0], labeler.name, labelers, top[1::2], negatives[1::2], sr,
                    *_halves(top_codes, negative_codes, 1),
                )  # fmt: skip
        if clap is not None and top:
            record["clap_embedding"] = clap.embed_audio(top, sr).mean(0).tolist()
        append_record(out, record)
        summary["labeled"] += 1
    merge(folder, clap)
    return summary


def _halves(top, negatives, half: int) -> tuple[list | None, list | None]:
    """The heard (0) or held-out (1) half of the windows' tokens, when the store kept them."""
    if top is None or negatives is None:
        return None, None
    return top[half::2], negatives[half::2]


def _clap_of(labelers: list[Labeler]):
    return next((lab for lab in labelers if lab.name == "clap"), None)


def _base_record(f: int, loaded: LoadedSAE, fx: FeatureExamples, store, frame_rate: int, snippets: list[str]) -> dict:
    stats = loaded.require_stats()
    clip_rate = stats.firing_rate_clip
    return {
        "id": f,
        "firing_rate": round(float(stats.firing_rate[f]), 6),
        "firing_rate_clip": round(float(clip_rate[f]), 6) if clip_rate is not None else None,
        "beta": round(float(stats.max_activation[f]), 6),
        "mean_activation": round(float(stats.mean_activation[f]), 6),
        "labelers": [],
        "labels": {},
        "errors": {},
        "validation": {},
        "examples": [
            _window_json(w, store, frame_rate) | {"audio": f"{SNIPPET_DIR}/{f}/{name}"}
            for w, name in zip(fx.top, snippets, strict=True)
        ],
        "top_clips": [{"clip": store.clips[c], "mean_activation": round(m, 6)} for c, m in fx.top_clips],
        "histogram": {"max": round(fx.hist_max, 6), "counts": fx.histogram},
    }


def _window_json(w: Window, store: ActivationStore, frame_rate: int) -> dict:
    return {
        "clip": store.clips[w.clip],
        "start_s": round(w.start / frame_rate, 3),
        "end_s": round(w.stop / frame_rate, 3),
        "peak_s": round(w.peak / frame_rate, 3),
        "activation": round(w.activation, 6),
    }


def _write_run(
    folder: Path, store, lm, cfg: LabelConfig, names, windows: list[Window], audio: list[np.ndarray]
) -> None:
    """Settings of the run and its shared random windows (written once per run; same seed, same windows)."""
    sr = lm.sample_rate
    random = [
        _window_json(w, store, lm.frame_rate)
        | {"audio": f"{SNIPPET_DIR}/random/{write_snippet(folder / SNIPPET_DIR / 'random' / str(i), a, sr)}"}
        for i, (w, a) in enumerate(zip(windows, audio, strict=True))
    ]
    run = {
        "sae": str(folder),
        "store": str(store.folder),
        "model": lm.name,
        "labelers": list(names),
        "window_s": cfg.examples.window_s,
        "top_n": cfg.examples.top_n,
        "random_windows": random,
    }
    path = folder / RUN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # workers may write it side by side
    tmp.write_text(json.dumps(run, indent=1))
    os.replace(tmp, path)
