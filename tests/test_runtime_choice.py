"""`--backend auto`: measured once per model and machine, remembered, said in one line."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from conftest import SAE_LAYER

from cli.main import main
from engine import runtime_choice
from engine.backends import open_backend
from engine.errors import MgsteerError
from engine.onnx_backend import OnnxBackend
from engine.runtime_choice import CHOICE_FILE, choose_backend, export_folder


@pytest.fixture()
def fast_torch(monkeypatch, tmp_path):
    """Torch measured at 10× real time, whatever else the machine is doing."""
    monkeypatch.setattr(runtime_choice, "_x_realtime", lambda *_: 10.0)
    monkeypatch.setenv("MGSTEER_CACHE", str(tmp_path))


def test_a_model_torch_steps_fast_enough_is_kept_on_torch_without_an_export(tiny_lm, fast_torch):
    lines = []
    assert choose_backend(tiny_lm, None, say=lines.append) is None
    assert len(lines) == 1 and "torch float32" in lines[0] and "nothing to export" in lines[0]
    assert not export_folder(tiny_lm, tiny_lm.num_layers // 2).exists()


@pytest.fixture()
def slow_torch(monkeypatch, tmp_path):
    """A world where torch is not enough: auto must export, time, judge and remember."""
    monkeypatch.setattr(runtime_choice, "TORCH_ENOUGH_X", float("inf"))
    monkeypatch.setenv("MGSTEER_CACHE", str(tmp_path))


def test_auto_exports_times_and_keeps_the_fastest_within_the_quality_budget(tiny_lm, tiny_sae, slow_torch):
    lines = []
    backend = choose_backend(tiny_lm, SAE_LAYER, say=lines.append)
    folder = export_folder(tiny_lm, SAE_LAYER)
    choice = json.loads((folder / CHOICE_FILE).read_text())
    assert set(choice["x_realtime"]) == {"torch float32", "onnx fp32", "onnx int8", "onnx int4"}
    eligible = {
        name: x
        for name, x in choice["x_realtime"].items()
        if choice["kl"].get(name.removeprefix("onnx "), 0.0) <= runtime_choice.KL_BUDGET
    }
    assert choice["runtime"] == max(eligible, key=eligible.get)
    if choice["runtime"].startswith("onnx"):
        assert isinstance(backend, OnnxBackend) and f"onnx {backend.precision}" == choice["runtime"]
    else:
        assert backend is None
    assert lines[-1].startswith(f"backend auto: {choice['runtime']}, ") and "measured now" in lines[-1]
    assert any("exporting" in line for line in lines)  # progress on the first use


def test_a_remembered_choice_is_not_measured_again_until_the_machine_changes(tiny_lm, slow_torch, monkeypatch):
    choose_backend(tiny_lm, None, say=lambda _: None)
    first = json.loads((export_folder(tiny_lm, tiny_lm.num_layers // 2) / CHOICE_FILE).read_text())

    def no_timing(*_):
        raise AssertionError("a remembered choice was timed again")

    monkeypatch.setattr(runtime_choice, "_x_realtime", no_timing)
    lines = []
    choose_backend(tiny_lm, None, say=lines.append)
    assert (
        lines == [lines[0]]
        and f"backend auto: {first['runtime']}, " in lines[0]
        and "measured on this CPU on" in lines[0]
    )

    monkeypatch.setattr(runtime_choice, "machine_key", lambda: {**first["machine"], "cores": 999})
    with pytest.raises(AssertionError, match="timed again"):  # another machine measures afresh
        choose_backend(tiny_lm, None, say=lambda _: None)


def test_a_quantized_graph_over_the_budget_is_not_chosen(tiny_lm, slow_torch, monkeypatch):
    monkeypatch.setattr(runtime_choice, "divergence", lambda *_: {"kl_mean": 0.5})  # far from float32
    lines = []
    backend = choose_backend(tiny_lm, None, say=lines.append)
    assert backend is None or backend.precision == "fp32"
    assert "not used: int8 KL 0.500 > 0.01, int4 KL 0.500 > 0.01" in lines[-1]


def test_without_onnxruntime_auto_stays_on_torch_and_says_how_to_get_it(tiny_lm, slow_torch, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    lines = []
    assert choose_backend(tiny_lm, None, say=lines.append) is None
    assert "onnxruntime is not installed" in lines[0] and "pip install" in lines[0]


def test_on_a_gpu_auto_is_torch():
    lines = []
    gpu = types.SimpleNamespace(device=torch.device("cuda"))
    assert choose_backend(gpu, None, say=lines.append) is None
    assert lines == ["backend auto: torch on cuda (a GPU steps fastest in torch)"]


def test_a_precision_with_auto_is_one_line(tiny_lm):
    with pytest.raises(MgsteerError, match="--precision int8 picks an ONNX step graph: use it with --backend onnx"):
        open_backend("auto", None, "int8", tiny_lm, None)


def test_auto_is_the_default_unless_the_environment_names_another(monkeypatch):
    from engine.backends import default_backend

    monkeypatch.delenv("MGSTEER_BACKEND")
    assert default_backend() == "auto"
    monkeypatch.setenv("MGSTEER_BACKEND", "onnx")
    assert default_backend() == "onnx"


def test_play_with_auto_names_what_it_chose(capsys, fast_torch):
    main(["play", "--model", "tiny", "--no-audio", "--seconds", "1", "--backend", "auto"])
    out = capsys.readouterr().out
    assert "backend auto: torch float32" in out
    assert "on cpu, torch float32 into" in out


def test_an_export_that_fails_leaves_auto_on_torch_with_the_reason(tiny_lm, slow_torch, monkeypatch):
    def broken(*_, **__):
        raise RuntimeError("Exporting the operator 'aten::weird' to ONNX opset 18 is not supported")

    monkeypatch.setattr("engine.onnx_export.export_onnx", broken)
    lines = []
    assert choose_backend(tiny_lm, None, say=lines.append) is None
    assert lines[-1].startswith("backend auto: torch float32, ")
    assert "the ONNX Runtime backend failed here: Exporting the operator 'aten::weird'" in lines[-1]
