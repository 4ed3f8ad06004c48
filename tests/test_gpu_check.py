"""The GPU check runs as it will on a lent GPU machine's image: without soundfile, cffi,
python-osc, mido, PyQt6, pytest-qt or sounddevice (a `sitecustomize` hides them here), from
the repo root, every stage to the end, one JSON with every figure."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ABSENT_ON_THE_IMAGE = ("soundfile", "cffi", "_cffi_backend", "pythonosc", "mido", "rtmidi", "PyQt6", "pytestqt",
                       "sounddevice")  # fmt: skip
HIDE = f'''
import sys

HIDDEN = {set(ABSENT_ON_THE_IMAGE)!r}


class _Hide:
    """Each import finder, blind to the packages the GPU image does not have."""

    def __init__(self, inner):
        self.inner = inner

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            return None
        return self.inner.find_spec(name, path, target)

    def __getattr__(self, name):
        return getattr(self.inner, name)


sys.meta_path[:] = [_Hide(finder) for finder in sys.meta_path]
'''
FIGURES = {
    "cuda_tests": ("tests", "passed", "failures", "errors", "skipped"),
    "stream_small_fp16": ("machine", "hf_generate_step_ms", "our_loop_step_ms", "steered_metered_step_ms",
                          "gpu_busy_ms_per_step", "encodec_chunk_decode_ms", "first_audio_ms", "x_realtime"),
    "live_default": ("machine", "underruns", "x_realtime", "step_ms_p95", "knob_to_sound_ms_p95", "first_audio_ms",
                     "memory", "chunk_frames", "lookahead_ms"),
    "harvest": ("machine", "runs"),
    "sae_train": ("machine", "ours"),
}  # fmt: skip
FIGURES["stream_small_bf16"] = FIGURES["stream_large_bf16"] = FIGURES["stream_small_fp16"]
FIGURES["live_low"] = FIGURES["live_default"]


def stripped_env(tmp_path: Path) -> dict:
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(HIDE)
    return dict(os.environ, PYTHONPATH=str(tmp_path / "site"))


def test_the_image_lacks_what_the_check_hides(tmp_path):
    """Control: the hiding works (each import fails there, and succeeds here)."""
    env = stripped_env(tmp_path)
    for name in ("soundfile", "pythonosc", "mido", "PyQt6"):
        hidden = subprocess.run([sys.executable, "-c", f"import {name}"], env=env, capture_output=True, text=True)
        assert hidden.returncode != 0 and "No module named" in hidden.stderr
        assert subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True).returncode == 0


def test_the_gpu_check_runs_every_stage_where_the_image_lacks_packages(tmp_path):
    out = tmp_path / "out"
    argv = [sys.executable, "bench/gpu_check.py", "--device", "cpu", "--quick", "--wheels", "none", "--out", str(out)]
    done = subprocess.run(argv, cwd=ROOT, env=stripped_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "gpu_check.json").read_text())
    assert set(result["stages"]) == set(FIGURES)
    for name, keys in FIGURES.items():
        stage = result["stages"][name]
        assert stage["ok"], f"{name}: {stage.get('error')}"
        assert all(key in stage["result"] for key in keys), f"{name} lacks {set(keys) - set(stage['result'])}"
    tests = result["stages"]["cuda_tests"]["result"]
    assert tests["tests"] >= 10 and tests["skipped"] == tests["tests"]  # collected, and skipped without a GPU
    assert result["stages"]["harvest"]["result"]["runs"][0]["frames_per_s"] > 0
    if importlib.util.find_spec("sparsify") is None:  # the peer's race is skipped with its reason
        assert "needs eai-sparsify" in result["stages"]["sae_train"]["peer_unavailable"]
    assert result["machine"]["cpu"] and isinstance(result["machine"]["simd"], list)
    assert (out / "pytest.log").is_file() and "===== harvest" in (out / "stages.log").read_text()


def test_a_benchmark_asked_for_a_missing_gpu_says_so_in_one_line():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the one-line refusal is for machines without one")
    done = subprocess.run([sys.executable, "bench/stream.py", "--device", "cuda", "--model", "tiny"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("bench: error: device 'cuda' asked for but no CUDA GPU")
