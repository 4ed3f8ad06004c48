"""bench/cache_attention.py runs ONNX Runtime's fused attention over a float32 and an int8
cache, in place, at every context asked for (the figures behind docs/ONNX.md's attention line)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("onnxruntime")


def test_every_cache_format_is_timed_at_every_context():
    argv = [sys.executable, "bench/cache_attention.py", "--layers", "2", "--heads", "2", "--head-dim", "16",
            "--contexts", "8,40", "--repeats", "1"]  # fmt: skip
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout[done.stdout.index('{\n "machine"') :])
    caches = out["caches"]
    assert set(caches) == {"float32", "int8, per-tensor scale", "int8, per-channel scales"}
    for row in caches.values():
        assert set(row["ms_by_context"]) == {"8", "40"} and all(ms > 0 for ms in row["ms_by_context"].values())
    # 2 layers × (keys + values) × 2 rows × 2 heads × 16 dims × 1000 positions, 4 bytes or 1
    assert caches["float32"]["cache_mb_per_1000_positions"] == pytest.approx(1.024)
    assert caches["int8, per-tensor scale"]["cache_mb_per_1000_positions"] == pytest.approx(0.256)
    assert out["machine"]["cpu"]


def test_the_int8_cache_quality_rounds_every_key_and_value():
    argv = [sys.executable, "bench/cache_attention.py", "--layers", "1", "--heads", "2", "--head-dim", "16",
            "--contexts", "8", "--repeats", "1", "--model", "tiny", "--seconds", "1"]  # fmt: skip
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    quality = json.loads(done.stdout[done.stdout.index('{\n "machine"') :])["int8_cache_quality"]
    assert quality["model"] == "tiny" and quality["positions"] == 51  # 1 s at 50 Hz, and the start
    for scales in ("per-channel scales", "per-tensor scale"):
        row = quality[scales]
        # Rounded keys and values move the distributions: a hook that did nothing would give 0.
        assert row["kl_mean"] > 0 and row["kl_p95"] > 0 and 0 < row["top_token_agrees"] <= 1
