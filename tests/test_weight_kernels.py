"""bench/weight_kernels.py times the products a step does, in every weight format, and counts
the bytes each reads: a floor ratio is only as good as that count."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("onnxruntime")


def run_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "bench/weight_kernels.py", "--model", "tiny", "--repeats", "1", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip


def test_every_format_reads_the_bytes_its_weights_hold():
    done = run_bench("--groups", "32")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    kernels = out["kernels"]
    assert set(kernels) == {
        "torch float32", "torch bfloat16", "torch int8 (weight-only)", "torch int4 (weight-only, group 32)",
        "onnx float32", "onnx int8 (dynamic)", "onnx int4 (MatMulNBits, level 4)",
    }  # fmt: skip
    mb = {name: row["weight_mb"] for name, row in kernels.items()}
    # The same products in torch and in the ONNX graph: cross-attention's keys and values
    # (projected once per prompt) are in neither.
    assert mb["onnx float32"] == mb["torch float32"] == pytest.approx(out["parameters_m"] * 4, rel=0.01)
    assert mb["torch bfloat16"] == pytest.approx(mb["torch float32"] / 2, rel=0.01)
    for int8 in ("torch int8 (weight-only)", "onnx int8 (dynamic)"):
        assert mb["torch float32"] / 4 <= mb[int8] <= mb["torch float32"] / 4 * 1.05
    for int4 in ("torch int4 (weight-only, group 32)", "onnx int4 (MatMulNBits, level 4)"):
        assert mb["torch float32"] / 8 <= mb[int4] < mb["torch int8 (weight-only)"]
    assert all(row["ms"] > 0 and row["step_over_floor"] > 0 for row in kernels.values())
    assert out["machine"]["cpu"] and "simd" in out["machine"]


def test_a_group_that_does_not_divide_the_widths_is_one_line():
    done = run_bench("--groups", "48")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "bench: error: --groups 48 does not divide this model's input widths [64, 128]"
    ]
