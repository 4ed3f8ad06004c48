"""The feature catalog: `features.json` beside the SAE, built from resumable per-worker parts.

Each labeling worker appends one JSON line per finished feature to its own
`features.part-{i}-of-{n}.jsonl` (flushed and fsynced), so a killed run loses at most the
feature in hand and a rerun skips every feature already written; workers never share a file.
`merge` folds all parts (the last record of a feature wins) into `features.json`, written
atomically, with the catalog-wide CLAP shuffled-label baseline.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from engine.errors import MgsteerError
from engine.inputs import CATALOG_BYTES, read_json, read_json_object

CATALOG_FILE = "features.json"
FORMAT = "mgsteer-features/1"
RUN_FILE = "examples/run.json"  # settings and random windows of the labeling run


def part_path(folder: Path, worker: int, workers: int) -> Path:
    return folder / f"features.part-{worker}-of-{workers}.jsonl"


def append_record(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_records(folder: Path) -> dict[int, dict]:
    """The latest record of every feature over all parts (a torn last line is ignored)."""
    records: dict[int, dict] = {}
    for path in sorted(folder.glob("features.part-*-of-*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
                records[int(record["id"])] = record
            except (ValueError, KeyError, TypeError):  # a torn or foreign line
                continue
    return records


def is_done(record: dict, labelers: tuple[str, ...]) -> bool:
    """Labeled by every wanted labeler, with no failure worth retrying."""
    errors = record.get("errors", {})
    return all(name in record.get("labelers", []) and not errors.get(name, {}).get("retry") for name in labelers)


def merge(folder: Path, clap=None) -> Path:
    """Write `features.json` from all parts; `clap` (a ClapLabeler) adds the shuffled-label baseline."""
    records = read_records(folder)
    run_path = folder / RUN_FILE
    run = read_json_object(run_path, "labeling run") if run_path.is_file() else {}
    features = [records[i] for i in sorted(records)]
    baseline = _clap_baseline(features, clap) if clap is not None else {}
    for record in features:
        record.pop("clap_embedding", None)
    catalog = {"format": FORMAT, **run, "clap_baseline": baseline, "features": features}
    out = folder / CATALOG_FILE
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(catalog, indent=1))
    os.replace(tmp, out)
    return out


def _clap_baseline(features: list[dict], clap) -> dict:
    """Per non-CLAP labeler: CLAP cosine of each feature's own top label vs other features' labels."""
    from sae.validate import shuffled_baseline

    summary = {}
    labelers = sorted({name for r in features for name in r.get("labels", {}) if name != "clap"})
    for name in labelers:
        rows = [r for r in features if r.get("labels", {}).get(name) and r.get("clap_embedding")]
        if len(rows) < 2:
            continue
        audio = np.array([r["clap_embedding"] for r in rows], dtype=np.float32)
        audio /= np.linalg.norm(audio, axis=1, keepdims=True).clip(min=1e-12)
        texts = [r["labels"][name][0]["label"] for r in rows]
        match, shuffled, p = shuffled_baseline(audio, clap.embed_text(texts).numpy())
        for r, m, s in zip(rows, match, shuffled, strict=True):
            own = {"label": r["labels"][name][0]["label"], "own": round(float(m), 4), "shuffled": round(float(s), 4)}
            r.setdefault("clap_match", {})[name] = own
        summary[name] = {
            "features": len(rows),
            "own_label": round(float(match.mean()), 4),
            "shuffled_labels": round(float(shuffled.mean()), 4),
            "gain": round(float(match.mean() - shuffled.mean()), 4),
            "p_permutation": round(p, 4),
        }
    return summary


def load_catalog(folder: str | Path) -> dict:
    path = Path(folder) / CATALOG_FILE
    if not path.is_file():
        raise MgsteerError(
            f"SAE '{folder}' has no {CATALOG_FILE}; make it with mgsteer label --sae {folder} --acts ACTS"
        )
    catalog = read_json(path, "catalog", CATALOG_BYTES)
    if not isinstance(catalog, dict) or catalog.get("format") != FORMAT:
        raise MgsteerError(f"{path}: not a {FORMAT} catalog")
    check_catalog(catalog, str(path))
    return catalog


def check_catalog(catalog: dict, where: str) -> None:
    """The fields the window, the browser page and the demo read, in the types they expect
    (a catalog comes from other people too): one line naming the first that is not."""

    def fail(at: str, what: str) -> MgsteerError:
        return MgsteerError(f"{where}: {at} {what}"[:300])

    features = catalog.get("features", [])
    if not isinstance(features, list):
        raise fail("features", "must be a list")
    for i, record in enumerate(features):
        at = f"features[{i}]"
        if not isinstance(record, dict):
            raise fail(at, "must be an object")
        if isinstance(record.get("id"), bool) or not isinstance(record.get("id"), int) or record["id"] < 0:
            raise fail(f"{at}.id", f"must be a feature id (a whole number ≥ 0), got {record.get('id')!r}")
        rate = record.get("firing_rate")
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float)):
            raise fail(f"{at}.firing_rate", "must be a number")
        _check_windows(record.get("examples", []), f"{at}.examples", fail)
        for key in ("labels", "validation", "errors"):
            if not isinstance(record.get(key, {}), dict):
                raise fail(f"{at}.{key}", "must be an object")
        for name, labels in record.get("labels", {}).items():
            if not isinstance(labels, list) or not all(
                isinstance(x, dict) and isinstance(x.get("label", ""), str) for x in labels
            ):
                raise fail(f"{at}.labels.{name}"[:80], 'must be a list of {"label": text} objects')
        for name, result in record.get("validation", {}).items():
            auroc = result.get("auroc") if isinstance(result, dict) else None
            if not isinstance(result, dict) or not (auroc is None or isinstance(auroc, int | float)):
                raise fail(f"{at}.validation.{name}"[:80], "must be an object with a numeric auroc")
    _check_windows(catalog.get("random_windows", []), "random_windows", fail)


def _check_windows(windows, at: str, fail) -> None:
    """Example windows name their audio by a path inside the SAE folder: never an absolute
    path or one that climbs out (a shared catalog must not make us open other files)."""
    if not isinstance(windows, list):
        raise fail(at, "must be a list")
    for j, window in enumerate(windows):
        audio = window.get("audio") if isinstance(window, dict) else None
        if not isinstance(audio, str) or not audio:
            raise fail(f"{at}[{j}]", "must be an object with an 'audio' path")
        parts = Path(audio).parts
        if Path(audio).is_absolute() or ".." in parts or "\\" in audio or "\0" in audio:
            raise fail(f"{at}[{j}].audio", f"must be a path inside the SAE folder, got {audio!r}")


def best_label(record: dict) -> tuple[str, str, float | None]:
    """A catalogued feature's (label, labeler, label AUROC): its best-validated label, else
    the first labeler's first label (not validated: no AUROC), else nothing."""
    validation = record.get("validation") or {}
    best = max(validation.values(), key=lambda v: v.get("auroc") or 0.0, default=None)
    if best is not None:
        return best.get("label", ""), best.get("scorer", ""), best.get("auroc")
    for name, labels in (record.get("labels") or {}).items():
        if labels:
            return labels[0].get("label", ""), name, None
    return "", "", None
